"""Dead-letter files: bad records, verbatim, one file per spool file.

A bad record is never dropped: its line is appended to
`state-dir/dead-letter/<source id>-<spool path>.bad` (synced with the batch that
consumes it, before that batch commits), counted in the journal (shown by
`status`) and logged at most once per spool file per minute.

Exactly once, as for the objects: the journal counts the dead-letter bytes of
each spool file in the same transaction that moves its offset past them.  After
a crash, `reconcile` cuts the current file back to that count (the lines of a
batch that never committed are read and written again), and a file is rotated
to `.1`, `.2`, ... only after a commit, once it reached `rotate_bytes`, so
rotated files hold committed lines only.  Nothing is ever deleted.

The operator may delete dead-letter files at any time (after inspecting them).  A current
file deleted while its descriptor is held open would take the next lines into the deleted
inode: before the first line of each batch goes to a file, its path is checked against the
descriptor (AppendFiles.replaced); a file found gone is journaled as removed (its bytes,
per spool file, REMOVED_STATE) before a new one is started, so that `reconcile` keeps
cutting the new file back to exactly its committed lines, and `status` says what was removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Callable

from spoolup.files import AppendFiles

ROTATE_BYTES = 64 * 1024 * 1024
LOG_EVERY = 60.0
_NAME_RE = re.compile(r"^(\d+)-.*\.bad(?:\.(\d+))?$")
# journal state: {"bytes": {source id: bytes of its dead-letter files the operator removed}}
REMOVED_STATE = "dead-letters-removed"


def file_name(source_id: int, spool_path: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spool_path)[-120:]
    return f"{source_id}-{safe}.bad"


class DeadLetters:
    def __init__(self, directory: Path, *, fsync: bool, log, rotate_bytes: int = ROTATE_BYTES, max_open: int = 32):
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self.fsync = fsync
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files = AppendFiles(directory, fsync=fsync, max_open=max_open)
        self.log = log
        self._sizes: dict[str, int] = {}
        self._pending: set[str] = set()  # files written since the last commit
        self._last_log: dict[int, float] = {}
        self._suppressed: dict[int, int] = {}
        self.removed: dict[int, int] = {}  # source id -> bytes of its dead letters removed by the operator
        # journals `removed` (set by ingest, which owns the journal); called before any line is
        # written to the file that replaces a removed one
        self.journal_removed: Callable[[dict[int, int]], None] | None = None

    def write(self, source_id: int, spool_path: str, line: bytes, reason: str) -> int:
        """`spool_path` names the file: pass one that does not change (the path the
        spool file was discovered at), so that a renamed spool file keeps its file.
        Returns the bytes written (the line, and a newline if it had none)."""
        return self.stream(source_id, spool_path, (line,), reason)

    def stream(self, source_id: int, spool_path: str, pieces, reason: str) -> int:
        """One record given in pieces (a record longer than max-record-size is never held in
        memory whole: ingest reads it in blocks); a newline is added if its last piece has
        none.  Returns the bytes written."""
        name = file_name(source_id, spool_path)
        size = self._sizes.get(name)
        if size and name not in self._pending and self.files.replaced(name):
            size = self._gone(source_id, spool_path, name, size)
        if size is None:
            try:
                size = (self.directory / name).stat().st_size
            except FileNotFoundError:
                size = 0
        written, last = 0, b""
        for piece in pieces:
            if piece:
                self.files.append(name, piece)
                written += len(piece)
                last = piece[-1:]
        if last != b"\n":
            self.files.append(name, b"\n")
            written += 1
        self._sizes[name] = size + written
        self._pending.add(name)
        now = time.monotonic()
        if now - self._last_log.get(source_id, -LOG_EVERY) >= LOG_EVERY:
            self.log.warning("bad record written to the dead-letter file", source=source_id, path=spool_path,
                             reason=reason, dead_letter=str(self.directory / name),
                             more_since_last_log=self._suppressed.pop(source_id, 0))
            self._last_log[source_id] = now
        else:
            self._suppressed[source_id] = self._suppressed.get(source_id, 0) + 1
        return written

    def _gone(self, source_id: int, spool_path: str, name: str, size: int) -> int:
        """The current file (`size` committed bytes: no line of this batch is in it yet) was
        deleted by someone else: journal it as removed, start a new file."""
        self.files.forget(name)
        self.removed[source_id] = self.removed.get(source_id, 0) + size
        if self.journal_removed is not None:
            self.journal_removed(dict(self.removed))
        self.log.warning("dead-letter file removed while spoolup ran; a new one is started", source=source_id,
                         path=spool_path, dead_letter=str(self.directory / name), removed_bytes=size)
        return 0

    def discard(self) -> None:
        """Abandon the lines written since the last commit (their batch could not be made
        durable: the disk is full).  `reconcile` then cuts the files back to the journal."""
        self.files.close()
        self._sizes.clear()
        self._pending.clear()

    def committed(self) -> None:
        """The batch that wrote the pending lines is journaled: rotate the files that
        reached rotate_bytes (so a rotated file never holds an uncommitted line)."""
        for name in self._pending:
            if self._sizes.get(name, 0) >= self.rotate_bytes:
                self._rotate(name)
        self._pending.clear()

    def _rotate(self, name: str) -> None:
        self.files.forget(name)  # synced already (the batch committed after sync())
        n = 1
        while (self.directory / f"{name}.{n}").exists():
            n += 1
        os.replace(self.directory / name, self.directory / f"{name}.{n}")
        self._sizes[name] = 0

    def reconcile(self, journaled: dict[int, int], removed: dict[int, int] | None = None) -> list[str]:
        """At start, before anything is written: cut every current dead-letter file back to
        the bytes the journal counts for its spool file (`journaled`: source id -> bytes,
        rotated files included; `removed`: bytes the operator removed, REMOVED_STATE).  A
        current file missing or shorter than that was removed (or cut) by the operator while
        spoolup was not running: counted as removed (`self.removed`; journal it when it
        changed).  Returns what was done, for the recovery log."""
        self.removed = dict(removed or {})
        rotated: dict[int, int] = {}
        current: dict[int, list[os.DirEntry]] = {}
        for entry in os.scandir(self.directory):
            m = _NAME_RE.match(entry.name)
            if not m or not entry.is_file(follow_symlinks=False):
                continue
            sid = int(m.group(1))
            if m.group(2):
                rotated[sid] = rotated.get(sid, 0) + entry.stat().st_size
            else:
                current.setdefault(sid, []).append(entry)
        done = []
        for sid, total in journaled.items():
            keep = total - rotated.get(sid, 0) - self.removed.get(sid, 0)
            if sid not in current and keep > 0:
                self.removed[sid] = self.removed.get(sid, 0) + keep
                done.append(f"dead-letter file of spool file #{sid} is gone: {keep} bytes counted as removed")
        for sid, entries in current.items():
            if len(entries) != 1:
                continue  # written under several names (an older spoolup): leave them alone
            entry = entries[0]
            size = entry.stat().st_size
            keep = journaled.get(sid, 0) - rotated.get(sid, 0) - self.removed.get(sid, 0)
            if 0 <= size < keep:
                self.removed[sid] = self.removed.get(sid, 0) + keep - size
                done.append(f"dead-letter file {entry.name} holds {size} of its journaled {keep} bytes: "
                            f"{keep - size} bytes counted as removed")
            elif 0 <= keep < size:
                with open(entry.path, "r+b") as f:
                    f.truncate(keep)
                    if self.fsync:
                        os.fsync(f.fileno())
                done.append(f"truncate dead-letter file {entry.name} from {size} to its journaled {keep} bytes "
                            "(those lines are read from the spool again)")
        return done

    def sync(self) -> None:
        self.files.sync()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.files.close()
