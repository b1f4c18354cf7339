"""The spool directory: which files there are, which journaled source each is,
and what changed since the last look.

Sources are identified by (device, inode), never by path, and by what
spoolup/identity.py adds to it (birth time, the bytes consumed).  A renamed file
keeps its source (and key).  A file whose inode now holds another file (birth
time, or its content under the offset, changed with its path) is a new source,
shipped from its start; a file whose content under the journaled offset changed
in place (truncated: logrotate's copytruncate) is shipped again from byte 0
(ingest does that: reader.SourceReader.restart), logged and counted.  watchdog events say
when to look (spoolup/watcher.py); a periodic rescan is the fallback.  Discovery is linear in the
number of files and journals all the files one scan found in one transaction.
Finding the files is spoolup/scan.py; deleting shipped ones, spoolup/reaper.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from pathlib import Path

from spoolup import identity, keys, quarantine
from spoolup.idle import Clock
from spoolup.files import fsync_dir
from spoolup.journal import Journal, SourceState
from spoolup.lru import LRU
from spoolup.quarantine import Entry
from spoolup.scan import NotRegular, ScanEntry, Source, open_regular, scan


class Spool:
    """The live sources of one spool directory."""

    def __init__(self, spool_dir: Path, journal: Journal, log, *, object_key: str | None, fsync: bool = True,
                 retry_max: float = 300.0, max_open: int = 512, key_room: int = 0):
        self.dir = spool_dir
        self.journal = journal
        self.log = log
        self.fsync = fsync  # sync a directory after moving a file aside or deleting it (before the journal says so)
        self.object_key = object_key  # lines format: template over {path}/{dir}/{name}
        self.key_room = key_room  # bytes a final key adds to the rendered one at most (Config.key_room)
        self.retry_max = retry_max  # longest delay between retries of a quarantined entry
        # sources holding a descriptor: at most max_open, the least recently used is closed
        self._open: LRU[int, Source] = LRU(max_open, lambda _id, old: self.close_fd(old))
        self.sources: dict[int, Source] = {}
        self.by_inode: dict[tuple[int, int], Source] = {}
        self.quarantined: dict[str, Entry] = {}  # by path: the journal's quarantine rows
        self.clock = Clock(time.time() - time.monotonic())  # the service sets the one it watches
        self.leases: dict = {"state": "unknown", "reason": None, "since": None}  # can write leases be taken?

    # -- loading and scanning ----------------------------------------------------

    def load(self) -> None:
        heads = self.journal.source_heads()
        for row in self.journal.live_sources():
            self._add(Source.from_row(row, heads.get(row.id)))
        now = time.time()
        for e in self.journal.quarantined():
            if e.rule.retry:
                e.next_retry = min(e.next_retry or now, now)  # a start is a retry of everything
            self.quarantined[e.path] = e
            src = self.sources.get(e.source_id) if e.source_id is not None else None
            if src is not None:
                src.quarantine = e
            elif e.source_id is not None:
                self.release(e, "its spool file is no longer tracked", gone=True)
                continue
            if e.reason == "invalid-key" and src is not None and not keys.final_key_problem(src.key or "",
                                                                                             self.key_room):
                self.release(e, "the object key is valid now")

    def _add(self, src: Source) -> None:
        if self.object_key is not None:
            src.key = keys.render_lines(self.object_key, src.key_path)
        self.sources[src.id] = src
        self.by_inode[(src.dev, src.ino)] = src

    def _drop(self, src: Source) -> None:
        self.close_fd(src)
        self.sources.pop(src.id, None)
        if self.by_inode.get((src.dev, src.ino)) is src:
            del self.by_inode[(src.dev, src.ino)]

    def sync_dir(self, directory: Path) -> None:
        if self.fsync:
            fsync_dir(directory)

    def rescan(self, now: float) -> list[Source]:
        """Look at the whole spool: new files, renames, shrunk or vanished files, and
        entries that cannot be shipped (quarantined while they are there).
        Returns the sources that are new (journaled together, in one transaction)."""
        found, odd = scan(self.dir)
        for path, (reason, what) in odd.items():
            e = self.quarantined.get(path)
            if e is None or e.reason != reason or quarantine.due(e.next_retry, now):
                self.quarantine(path, reason, what)  # (still there at its retry: one more attempt)
        for e in list(self.quarantined.values()):
            if e.source_id is None and e.path not in odd:
                self.release(e, "the entry is gone from the spool", gone=True)
        fresh: list[tuple[tuple[int, int], ScanEntry]] = []
        for ident, entry in found.items():
            src = self.by_inode.get(ident)
            if src is not None and (entry.path != src.path or not src.verified):
                other = self._other_file(src, entry)
                if other:
                    self._forget(src, f"its inode now holds a different file ({other})")
                    src = None
            if src is None:
                fresh.append((ident, entry))
                continue
            src.missing = 0
            if entry.path != src.path:
                self.log.info("spool file renamed; it keeps its object key", source=src.id,
                              old=keys.printable(src.path), new=keys.printable(entry.path), key=src.key)
                if src.quarantine is not None:
                    self._move_entry(src.quarantine, entry.path)
                src.path = entry.path
                self.journal.set_source(src.id, path=entry.path)
            self.observe(src, entry.st)
        replaced = {}
        if fresh:  # paths of journaled files not found any more (for the "replaced" message)
            replaced = {s.path: s for s in self.sources.values() if (s.dev, s.ino) not in found}
        for src in list(self.sources.values()):
            if (src.dev, src.ino) not in found:
                self._vanished(src)
        return self._discover(fresh, now, replaced) if fresh else []

    def _discover(self, fresh: list[tuple[tuple[int, int], ScanEntry]], now: float,
                  replaced: dict[str, Source]) -> list[Source]:
        rows = self.journal.add_sources(
            [(dev, ino, e.path, e.st.st_mtime, identity.birth_time(path=self.dir / e.path))
             for (dev, ino), e in fresh], now)
        new = []
        for row, (_ident, entry) in zip(rows, fresh):
            src = Source.from_row(row, None)
            self._add(src)
            src.size = entry.st.st_size
            new.append(src)
            if src.key is not None:
                problem = keys.final_key_problem(src.key, self.key_room)
                if problem:
                    self.quarantine(src.path, "invalid-key", f"object key {src.key!r} rendered from "
                                    f"{keys.printable(entry.path)!r} {problem}; the file stays in the spool",
                                    src=src, key=src.key)
                    continue
            old = replaced.get(entry.path)
            if old is not None:
                self.log.warning("spool file replaced: its path now holds another file (inode changed under the "
                                 "journaled offset); the new file is shipped from its start as a new spool file",
                                 path=keys.printable(entry.path), old_source=old.id, journaled_offset=old.offset,
                                 source=src.id)
            self.log.info("new spool file", source=src.id, path=keys.printable(entry.path), key=src.key,
                          size=src.size)
        return new

    def _other_file(self, src: Source, entry: ScanEntry) -> str | None:
        """A journaled inode found again (first look since start) or under another path:
        the same file (renamed), or another file on a reused inode (the old one was deleted)?
        Why it is another file, or None.  The birth time decides where the filesystem records
        one; else, under another path, the bytes consumed must still be there (a renamed file
        only grows; under its own path, a file whose bytes changed was truncated in place,
        which ingest handles).  An inode held open cannot be reused; a quarantined file is
        not looked into."""
        if src.fd is not None or src.offset == 0 or src.quarantine is not None:
            return None
        path = self.dir / entry.path
        src.verified = True
        if identity.other_file(src.btime, identity.birth_time(path=path)):
            return "another birth time"
        if entry.path == src.path:
            return None
        if entry.st.st_size < src.offset:
            return f"{entry.st.st_size} bytes, below the {src.offset} bytes consumed"
        try:
            fd = open_regular(path)
        except OSError:
            return None
        try:
            return self.content_changed(src, fd)
        except OSError:
            return None
        finally:
            os.close(fd)

    def content_changed(self, src: Source, fd: int) -> str | None:
        """Why the bytes before the offset are not those consumed, or None."""
        if src.head and os.pread(fd, len(src.head), 0) != src.head:
            return "its first bytes changed"
        if src.tail is not None:
            start = identity.sample_start(src.offset)
            if identity.digest(os.pread(fd, src.offset - start, start)) != src.tail:
                return f"the bytes before the journaled offset {src.offset} changed"
        return None

    def _vanished(self, src: Source) -> None:
        if src.fd is not None:
            try:
                src.size = os.fstat(src.fd).st_size
            except OSError:
                pass
            if src.offset < src.size and src.state == SourceState.ACTIVE:
                return  # deleted or moved away, but still open: read the rest first
        src.missing += 1
        if src.missing < 2:  # a rename between directories can hide a file for one scan
            return
        if src.state == SourceState.ACTIVE and src.offset < src.size:
            self._forget(src, f"file was removed from the spool with {src.size - src.offset} bytes unread")
        else:
            self._forget(src, None)

    def _forget(self, src: Source, error: str | None) -> None:
        if error:
            self.log.error("spool file lost", source=src.id, path=keys.printable(src.path), error=error)
        else:
            self.log.info("spool file gone", source=src.id, path=keys.printable(src.path))
        self.journal.set_source(src.id, state=SourceState.GONE, error=error)
        if src.quarantine is not None:
            self.release(src.quarantine, "its spool file is gone", gone=True)
        self._drop(src)

    def observe(self, src: Source, st: os.stat_result) -> None:
        """A fresh stat of a source: catches a file that shrank (truncated in place; ingest
        restarts it from byte 0).  Truncation to any size is caught when reading (the bytes
        before the offset are compared with those consumed)."""
        src.mtime = st.st_mtime
        if src.state == SourceState.ACTIVE and st.st_size < src.offset and src.changed is None:
            src.changed = f"it shrank to {st.st_size} bytes, below the {src.offset} bytes consumed"
        src.size = st.st_size

    # -- quarantine (spoolup/quarantine.py) ------------------------------------------

    def quarantine(self, path: str, reason: str, message: str, *, src: Source | None = None,
                   key: str | None = None) -> Entry:
        """Quarantine one spool entry (and its source, if it is one).  The first time, and
        when the reason changes, it is logged and journaled as an error; a failed retry only
        counts the attempt and moves the next retry further away."""
        now = time.time()
        e = self.quarantined.get(path)
        if e is not None and e.reason == reason:
            e.attempts += 1
            e.message = message
            e.next_retry = quarantine.next_retry(reason, e.attempts, now, self.retry_max)
            if src is not None:
                e.source_id = src.id
            self.journal.set_quarantine(e)
            self.log.debug("quarantined spool entry still failing", path=keys.printable(path), reason=reason,
                           attempts=e.attempts, error=message)
        else:
            e = Entry(path, reason, message, now, quarantine.next_retry(reason, 1, now, self.retry_max), 1,
                      src.id if src is not None else None, key)
            self.quarantined[path] = e
            self.journal.set_quarantine(e)
            self.log.warning("spool entry quarantined", path=keys.printable(path), reason=reason, error=message,
                             what_to_do=e.rule.what_to_do, source=e.source_id,
                             retry_in=None if e.next_retry is None else round(e.next_retry - now, 3))
            try:
                self.journal.record_error("ingest", "quarantine", reason, f"{keys.printable(path)}: {message}")
            except sqlite3.Error as err:  # (the quarantine row is journaled: status shows the entry)
                self.log.warning("cannot journal this; going on", what="an error", error=str(err))
        if src is not None:
            src.quarantine = e
            if e.rule.stops_reading:
                self.close_fd(src)
        return e

    def cleared(self, src: Source, *reasons: str) -> None:
        """`src` just did what its quarantine (one of `reasons`) prevented: it resumes."""
        e = src.quarantine
        if e is not None and e.reason in reasons:
            self.release(e, "the cause is gone")

    def release(self, e: Entry, because: str, *, gone: bool = False) -> None:
        self.quarantined.pop(e.path, None)
        self.journal.clear_quarantine(e.path)
        src = self.sources.get(e.source_id) if e.source_id is not None else None
        if src is not None and src.quarantine is e:
            src.quarantine = None
        self.log.info("quarantined spool entry gone" if gone else "spool entry resumed", path=keys.printable(e.path),
                      reason=e.reason, attempts=e.attempts, quarantined_seconds=round(time.time() - e.since, 3),
                      because=because)

    def _move_entry(self, e: Entry, path: str) -> None:
        self.quarantined.pop(e.path, None)
        self.journal.clear_quarantine(e.path)
        e.path = path
        self.quarantined[path] = e
        self.journal.set_quarantine(e)

    def readable(self, src: Source, now: float) -> bool:
        """Is `src` read now?  Not while a quarantine that stops reading holds, except when its
        retry is due (then the read is the retry)."""
        e = src.quarantine
        return e is None or not e.rule.stops_reading or quarantine.due(e.next_retry, now)

    def deletable(self, src: Source, now: float) -> bool:
        e = src.quarantine
        return e is None or (e.reason == "cannot-delete" and quarantine.due(e.next_retry, now))

    # -- reading -------------------------------------------------------------------

    def fd(self, src: Source) -> int | None:
        """The source's read descriptor (opened if needed); None when the path no longer holds
        this file (the next rescan sorts that out) or it cannot be read (quarantined).  At most
        max_open are kept: the least recently used is closed (and opened again when it grows)."""
        if src.fd is not None:
            self._open.get(src.id)  # (the most recently used now)
            return src.fd
        path = self.dir / src.path
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) != (src.dev, src.ino):
                return None  # the path now holds another entry
            fd = open_regular(path)
        except (FileNotFoundError, NotRegular):
            return None
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                self.quarantine(src.path, "unreadable", f"cannot open it: {e.strerror}", src=src)
            elif e.errno != errno.ELOOP:  # (ELOOP: replaced by a link since the lstat)
                self.quarantine(src.path, "read-error", f"cannot open it: {e.strerror}", src=src)
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (src.dev, src.ino):
            os.close(fd)  # the path now holds another file; the next rescan sorts it out
            return None
        if identity.other_file(src.btime, identity.birth_time(fd=fd)):
            os.close(fd)  # (the next rescan finds the new file on this inode and ships it as a new source)
            self._forget(src, "its inode now holds a different file (another birth time: the old file was deleted)")
            return None
        if src.head and src.changed is None and os.pread(fd, len(src.head), 0) != src.head:
            src.changed = "its first bytes changed"
        src.fd = fd
        self._open.put(src.id, src)
        self.cleared(src, "unreadable", "read-error")
        return fd

    def pread(self, src: Source, fd: int, n: int, offset: int) -> bytes | None:
        """Read from a source; an I/O error quarantines it (None)."""
        try:
            return os.pread(fd, n, offset)
        except OSError as e:
            self.quarantine(src.path, "read-error", f"reading at offset {offset} failed: {e.strerror}", src=src)
            return None

    def refresh(self, src: Source) -> None:
        """Cheap re-stat of an open source (fstat on the descriptor we hold)."""
        if src.fd is None:
            return
        try:
            self.observe(src, os.fstat(src.fd))
        except OSError:
            self.close_fd(src)

    def close_fd(self, src: Source) -> None:
        self._open.pop(src.id, None)
        if src.fd is not None:
            with contextlib.suppress(OSError):
                os.close(src.fd)
            src.fd = None

    def close(self) -> None:
        for src in self.sources.values():
            self.close_fd(src)

    def active(self) -> list[Source]:
        """The sources that are read now (quarantined ones only when their retry is due)."""
        now = time.time()
        return [s for s in self.sources.values() if s.state == SourceState.ACTIVE and self.readable(s, now)]

    def blocking_entries(self) -> list[Entry]:
        """Quarantined entries whose bytes (if any) are not shipped while they are quarantined."""
        return [e for e in self.quarantined.values() if e.rule.blocks_shipping]

    def reaped(self, src: Source) -> None:
        """`src` is deleted and journaled as reaped (spoolup/reaper.py): forget it."""
        self.sources.pop(src.id, None)
        self.by_inode.pop((src.dev, src.ino), None)

    def idle(self, src: Source, now: float) -> float:
        """Seconds `src` has been idle (spoolup/idle.py: never decided by a wall-clock step)."""
        return self.clock.idle(src.mtime, now, time.monotonic())
