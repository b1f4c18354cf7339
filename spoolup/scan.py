"""Finding spool files: the regular files under the spool dir by (device, inode), the
entries that cannot be shipped, and the Source record ingest keeps of each file.

Only regular files are shipped: links, FIFOs, sockets and devices are reported (and
quarantined by spool.py), and a file is opened so that nothing can block or follow a
link (open_regular).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from spoolup.journal import SourceRow
from spoolup.quarantine import Entry

@dataclass
class Source(SourceRow):
    """A live spool file: its journal row plus what ingest keeps in memory."""

    head: bytes | None = None  # first bytes: tells a reused inode from this file
    fd: int | None = None
    key: str | None = None  # rendered object-key (lines format)
    missing: int = 0  # consecutive rescans that did not find it
    partial_logged: bool = False
    quarantine: Entry | None = None  # why it is not read (or not deleted) for now
    scanned: int = 0  # bytes from offset up to here hold no newline (never searched twice)
    changed: str | None = None  # why its content under the offset is not what was consumed (ingest restarts it)
    verified: bool = False  # its birth time was compared since it was loaded from the journal
    checked_mtime: float | None = None  # mtime when the bytes before a fully read file's offset were compared

    @property
    def backlog(self) -> int:
        return max(self.size - self.offset, 0)

    @classmethod
    def from_row(cls, row: SourceRow, head: bytes | None) -> "Source":
        return cls(**vars(row), head=head, scanned=row.offset)


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
