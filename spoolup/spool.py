"""The spool directory: which files there are, which journaled source each is,
and what changed since the last look.

Sources are identified by (device, inode), never by path.  A renamed file keeps
its source (and key); a file that shrank below its journaled offset, or whose
first bytes changed (the inode was reused by a new file), is never silently
re-read.  watchdog events say when to look; a periodic rescan is the fallback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from spoolup import keys, quarantine
from spoolup.idle import Clock
from spoolup.files import fsync_dir
from spoolup.journal import Journal, SourceRow
from spoolup.quarantine import Entry

HEAD_BYTES = 64  # fingerprint length
REAPING = ".spoolup-reaping-"  # a shipped spool file's name between the two steps of its deletion


@dataclass
class Source(SourceRow):
    """A live spool file: its journal row plus what ingest keeps in memory."""

    head: bytes | None = None  # first bytes: tells a reused inode from this file
    fd: int | None = None
    key: str | None = None  # rendered object-key (lines format)
    missing: int = 0  # consecutive rescans that did not find it
    partial_logged: bool = False
    quarantine: Entry | None = None  # why it is not read (or not deleted) for now

    @property
    def backlog(self) -> int:
        return max(self.size - self.offset, 0)

    @classmethod
    def from_row(cls, row: SourceRow, head: bytes | None) -> "Source":
        return cls(**vars(row), head=head)


@dataclass
class ScanEntry:
    path: str
    st: os.stat_result


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link (spoolup follows no links)"))


def kind(mode: int) -> str:
    return next((text for test, text in _KINDS if test(mode)), "not a regular file")


class NotRegular(OSError):
    """The path holds something other than a regular file (FIFO, socket, device, link)."""


def open_regular(path: Path | str) -> int:
    """A read descriptor for a regular file, never blocking: O_NONBLOCK (a FIFO would block
    open() until a writer comes), O_NOFOLLOW (no links: ELOOP), and fstat must say S_ISREG."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, kind(st.st_mode), str(path))
    return fd


def scan(spool_dir: Path) -> tuple[dict[tuple[int, int], ScanEntry], dict[str, tuple[str, str]]]:
    """Every regular file under spool_dir, by (dev, ino); plus the entries it cannot ship:
    path -> (quarantine reason, what it is) for links, FIFOs, sockets, devices and
    directories it may not list."""
    found: dict[tuple[int, int], ScanEntry] = {}
    odd: dict[str, tuple[str, str]] = {}
    stack = [(spool_dir, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        except OSError as e:
            odd[rel or "."] = ("unreadable-directory", f"cannot list the directory: {e.strerror}")
            continue
        for entry in entries:
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), relpath))
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    found[(st.st_dev, st.st_ino)] = ScanEntry(relpath, st)
                else:
                    odd[relpath] = ("not-a-regular-file", kind(st.st_mode))
            except FileNotFoundError:
                continue
    return found, odd


def spool_dir_problem(spool_dir: Path) -> str | None:
    """What looks wrong with a spool dir before spoolup runs (a mistyped spool-dir is the
    usual cause): it does not exist, or holds no file at all."""
    if not spool_dir.exists():
        return (f"spool-dir {spool_dir} does not exist: `spoolup run` creates it, but nothing will ship until "
                "syslog-ng writes there. Is it the directory of syslog-ng's file() destination?")
    if not spool_dir.is_dir():
        return f"spool-dir {spool_dir} is not a directory"
    found, _skipped = scan(spool_dir)
    if not found:
        return (f"spool-dir {spool_dir} holds no files yet: nothing ships until syslog-ng writes there. "
                "Is it the directory of syslog-ng's file() destination?")
    return None


class Spool:
    """The live sources of one spool directory."""

    def __init__(self, spool_dir: Path, journal: Journal, log, *, object_key: str | None, fsync: bool = True,
                 retry_max: float = 300.0, max_open: int = 512):
        self.dir = spool_dir
        self.journal = journal
        self.log = log
        self.fsync = fsync  # sync a directory after moving a file aside or deleting it (before the journal says so)
        self.object_key = object_key  # lines format: template over {path}/{dir}/{name}
        self.retry_max = retry_max  # longest delay between retries of a quarantined entry
        self.max_open = max_open  # descriptors kept open for spool files (LRU)
        self._open: OrderedDict[int, Source] = OrderedDict()  # sources holding a descriptor, least recent first
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
                self._release(e, "its spool file is no longer tracked", gone=True)
                continue
            if e.reason == "invalid-key" and src is not None and not keys.key_problem(src.key or ""):
                self._release(e, "the object key is valid now")

    def revert(self) -> None:
        """Put the sources' offsets and fingerprints back to what the journal says (the
        batch that moved them was abandoned)."""
        heads = self.journal.source_heads()
        for row in self.journal.live_sources():
            src = self.sources.get(row.id)
            if src is not None:
                src.offset, src.head = row.offset, heads.get(row.id)

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

    def _sync_dir(self, directory: Path) -> None:
        if self.fsync:
            fsync_dir(directory)

    def rescan(self, now: float) -> list[Source]:
        """Look at the whole spool: new files, renames, shrunk or vanished files, and
        entries that cannot be shipped (quarantined while they are there).
        Returns the sources that are new."""
        found, odd = scan(self.dir)
        for path, (reason, what) in odd.items():
            e = self.quarantined.get(path)
            if e is None or e.reason != reason:
                self.quarantine(path, reason, what)
        for e in list(self.quarantined.values()):
            if e.source_id is None and e.path not in odd:
                self._release(e, "the entry is gone from the spool", gone=True)
        new: list[Source] = []
        for ident, entry in found.items():
            src = self.by_inode.get(ident)
            if src is not None and not self._same_file(src, entry):
                self._forget(src, "its inode now holds a different file (the old file was deleted)")
                src = None
            if src is None:
                new.append(self._discover(ident, entry, now, found))
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
        for src in list(self.sources.values()):
            if (src.dev, src.ino) not in found:
                self._vanished(src)
        return new

    def _discover(self, ident: tuple[int, int], entry: ScanEntry, now: float,
                  found: dict[tuple[int, int], ScanEntry] | None = None) -> Source:
        row = self.journal.add_source(ident[0], ident[1], entry.path, entry.st.st_mtime, now)
        src = Source.from_row(row, None)
        self._add(src)
        src.size = entry.st.st_size
        if src.key is not None:
            problem = keys.key_problem(src.key)
            if problem:
                self.quarantine(src.path, "invalid-key", f"object key {src.key!r} rendered from "
                                f"{keys.printable(entry.path)!r} {problem}; the file stays in the spool",
                                src=src, key=src.key)
                return src
        old = [s for s in self.sources.values() if s.path == entry.path and s is not src
               and (found is None or (s.dev, s.ino) not in found)]  # (not merely renamed away)
        if old:
            self.log.warning("spool file replaced: its path now holds another file (inode changed under the "
                             "journaled offset); the new file is shipped from its start as a new spool file",
                             path=keys.printable(entry.path), old_source=old[0].id, journaled_offset=old[0].offset,
                             source=src.id)
        self.log.info("new spool file", source=src.id, path=keys.printable(entry.path), key=src.key, size=src.size)
        return src

    def _same_file(self, src: Source, entry: ScanEntry) -> bool:
        """False when the inode was reused by a different file (first bytes differ)."""
        if src.fd is not None or not src.head or src.quarantine is not None:
            return True  # an inode we hold open cannot be reused; a quarantined file is not looked into
        try:
            fd = open_regular(self.dir / entry.path)
        except OSError:
            return True
        try:
            return os.pread(fd, len(src.head), 0) == src.head
        except OSError:
            return True
        finally:
            os.close(fd)

    def _vanished(self, src: Source) -> None:
        if src.fd is not None:
            try:
                src.size = os.fstat(src.fd).st_size
            except OSError:
                pass
            if src.offset < src.size and src.state == "active":
                return  # deleted or moved away, but still open: read the rest first
        src.missing += 1
        if src.missing < 2:  # a rename between directories can hide a file for one scan
            return
        if src.state == "active" and src.offset < src.size:
            self._forget(src, f"file was removed from the spool with {src.size - src.offset} bytes unread")
        else:
            self._forget(src, None)

    def _forget(self, src: Source, error: str | None) -> None:
        if error:
            self.log.error("spool file lost", source=src.id, path=keys.printable(src.path), error=error)
        else:
            self.log.info("spool file gone", source=src.id, path=keys.printable(src.path))
        self.journal.set_source(src.id, state="gone", error=error)
        if src.quarantine is not None:
            self._release(src.quarantine, "its spool file is gone", gone=True)
        self._drop(src)

    def observe(self, src: Source, st: os.stat_result) -> None:
        """A fresh stat of a source: catches truncation."""
        src.mtime = st.st_mtime
        if src.state != "active":
            src.size = st.st_size
            return
        if st.st_size < src.offset:
            self.quarantine(
                src.path, "truncated",
                f"spool file {keys.printable(src.path)} shrank to {st.st_size} bytes, below the {src.offset} bytes "
                "already shipped: it was truncated or rewritten in place (same inode). spoolup will not re-read it; "
                "move it out of the spool directory (data journaled before is safe)", src=src,
            )
            return
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
            with contextlib.suppress(Exception):
                self.journal.record_error("ingest", "quarantine", reason, f"{keys.printable(path)}: {message}")
        if src is not None:
            src.quarantine = e
            if e.rule.stops_reading:
                self.close_fd(src)
        return e

    def cleared(self, src: Source, *reasons: str) -> None:
        """`src` just did what its quarantine (one of `reasons`) prevented: it resumes."""
        e = src.quarantine
        if e is not None and e.reason in reasons:
            self._release(e, "the cause is gone")

    def _release(self, e: Entry, because: str, *, gone: bool = False) -> None:
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
            self._open.move_to_end(src.id)
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
        if src.head and os.pread(fd, len(src.head), 0) != src.head:
            os.close(fd)
            self._forget(src, "its inode now holds a different file (the old file was deleted)")
            return None
        src.fd = fd
        self._open[src.id] = src
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            self.close_fd(old)
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

    def set_head(self, src: Source, data: bytes) -> None:
        src.head = bytes(data[:HEAD_BYTES])

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
        return [s for s in self.sources.values() if s.state == "active" and self.readable(s, now)]

    def blocking_entries(self) -> list[Entry]:
        """Quarantined entries whose bytes (if any) are not shipped while they are quarantined."""
        return [e for e in self.quarantined.values() if e.rule.blocks_shipping]

    # -- reaping (invariant 6) ---------------------------------------------------------

    def try_reap(self, src: Source, now: float, idle_seconds: float, crash_point) -> bool:
        """Delete a fully shipped spool file whose writer has closed it.  The
        caller checked that every object holding its bytes is done.  True once
        the file is deleted and journaled as reaped.

        Two steps, because a writer may be opening the file by its path at the
        very moment it is deleted (syslog-ng reopens a file it closed after
        time-reap() when a new message comes): such a writer would write into a
        deleted inode, and its records would be lost.  So the first step renames
        the file to a reaping name (REAPING + source id) in its directory: new
        opens of the path now create a new file, and an open already under way
        still finds the file, which stays in the spool and is read like any
        other.  A second call (the caller makes it a moment later) deletes it if
        it is still fully shipped and idle and no one has it open, then journals
        the source as reaped.  A crash after the delete and before the journal leaves
        a journaled source whose file is gone with every byte consumed: the next
        scan forgets it quietly.  (Journaling first would leave a file the journal
        no longer tracks, read again from its start.)"""
        if src.state != "active" or src.offset < src.size or self.idle(src, now) < idle_seconds:
            return False
        self.close_fd(src)
        path = self.dir / src.path
        try:
            fd = open_regular(path)
        except (FileNotFoundError, NotRegular):
            return False
        except OSError as e:
            self.quarantine(src.path, "unreadable", f"cannot open it to check that it is closed: {e.strerror}",
                            src=src)
            return False
        keep_fd = False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (src.dev, src.ino) or st.st_size != src.offset:
                return False
            lease, why = _take_lease(fd)
            self._lease_state(lease, why)
            if lease is False:
                return False
            if not path.name.startswith(REAPING):
                # (the journal keeps the spool path: after a crash here, the scan finds the
                # file under its reaping name by its inode, as any renamed file)
                reaping = path.with_name(f"{REAPING}{src.id}")
                try:
                    os.rename(path, reaping)
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        return False
                    self._cannot_delete(src, f"renaming it aside to delete it failed: {e.strerror}")
                    return False
                self._sync_dir(reaping.parent)
                old, src.path = src.path, str(reaping.relative_to(self.dir))
                self.log.debug("shipped spool file moved aside to be deleted", source=src.id, path=old, to=src.path)
                return False
            crash_point("before-reap-unlink")
            try:
                os.unlink(path)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return False
                self._cannot_delete(src, f"deleting it failed: {e.strerror}")
                return False
            self._sync_dir(path.parent)  # durable before the journal says reaped: a file back after a power
            #                              loss would be a new, unknown file, read again from its start
            crash_point("after-reap-unlink")
            if lease and fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK:
                # someone opened it while we held the lease: whatever it writes goes to the
                # deleted inode, which we keep reading through this descriptor
                self.log.warning("a writer opened a spool file while it was being deleted; reading on from the "
                                 "deleted file until it is idle again", source=src.id, path=src.path)
                src.fd, keep_fd = fd, True
                return False
            self.journal.mark_reaped(src.id)
            if src.quarantine is not None:
                self._release(src.quarantine, "deleted")
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            if not keep_fd:
                os.close(fd)
        self.log.info("spool file shipped and deleted", source=src.id, path=keys.printable(src.key_path),
                      bytes=src.offset)
        self.sources.pop(src.id, None)
        self.by_inode.pop((src.dev, src.ino), None)
        return True


    def idle(self, src: Source, now: float) -> float:
        """Seconds `src` has been idle (spoolup/idle.py: never decided by a wall-clock step)."""
        return self.clock.idle(src.mtime, now, time.monotonic())

    def _lease_state(self, lease: bool | None, why: str | None) -> None:
        """Say once, in the log and in the journal (for status), when write leases cannot be taken."""
        state = "unavailable" if lease is None else "ok"
        if state == self.leases["state"]:
            return
        self.leases = {"state": state, "reason": why, "since": time.time()}
        if state == "unavailable":
            self.log.warning("write leases unavailable: whether a writer still has a spool file open cannot be "
                             "checked before deleting it; the idle time (spool-reap) alone decides. Give spoolup "
                             "CAP_LEASE (the shipped unit does) or run it as the spool files' owner", reason=why)
        else:
            self.log.info("write leases available again: deletions check that no writer has the file open")
        with contextlib.suppress(Exception):
            self.journal.set_state("leases", self.leases)

    def _cannot_delete(self, src: Source, what: str) -> None:
        self.quarantine(src.path, "cannot-delete", f"{what} (every byte of it is shipped)", src=src)


def _take_lease(fd: int) -> tuple[bool | None, str | None]:
    """A write lease is granted only when no other descriptor has the file open:
    the writer (syslog-ng) has really closed it.  True: we hold the lease; False:
    someone has the file open; None: leases are not available here (neither the
    owner nor CAP_LEASE: EACCES; NFS), and the idle time alone decides, as DESIGN
    says.  The second value says why leases are not available.

    A writer opening the file while we hold the lease makes the kernel send SIGIO,
    whose default action terminates the process: it is ignored (we give the lease
    up within microseconds anyway).  Signal dispositions can only be set from the
    main thread; elsewhere no lease is taken."""
    if signal.getsignal(signal.SIGIO) is signal.SIG_DFL:
        if threading.current_thread() is not threading.main_thread():
            return None, "not the main thread"
        signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        return True, None
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EBUSY):
            return False, None
        if e.errno in (errno.EACCES, errno.EPERM):
            return None, (f"F_SETLEASE: {e.strerror}: spoolup (uid {os.geteuid()}) neither owns the spool files "
                          "nor has CAP_LEASE")
        return None, f"F_SETLEASE: {e.strerror}"


DATA_POLL = 0.25  # seconds between looks at the active files for new bytes


class Watcher:
    """watchdog on the spool dir: files created, moved, deleted or closed after
    writing set `event`.  Appends are not watched: a writer such as syslog-ng
    appends thousands of times a second, and handling one inotify event per
    write cost more CPU than all of ingest; active files are looked at every
    DATA_POLL seconds instead (one fstat each).  Without inotify, polling only."""

    def __init__(self, spool_dir: Path, log):
        self.event = threading.Event()
        self.structure_changed = True
        self.observer = None
        self.log = log
        try:
            from watchdog.events import (
                DirCreatedEvent,
                DirDeletedEvent,
                DirMovedEvent,
                FileClosedEvent,
                FileCreatedEvent,
                FileDeletedEvent,
                FileMovedEvent,
                FileSystemEventHandler,
            )
            from watchdog.observers import Observer

            watcher = self

            class Handler(FileSystemEventHandler):
                def on_any_event(self, event):  # noqa: D401 - watchdog's callback
                    if event.event_type in ("created", "moved", "deleted"):
                        watcher.structure_changed = True
                    if event.event_type not in ("opened", "closed_no_write"):
                        watcher.event.set()

            self.observer = Observer()
            self.observer.schedule(
                Handler(), str(spool_dir), recursive=True,
                event_filter=[FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileDeletedEvent,
                              DirDeletedEvent, FileClosedEvent],
            )
            self.observer.daemon = True
            self.observer.start()
        except Exception as e:  # noqa: BLE001 - inotify limits, unsupported fs: poll instead
            self.observer = None
            log.warning("watchdog unavailable, polling the spool instead", error=str(e))

    def stop(self) -> None:
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer.stop()
                self.observer.join(timeout=5)
