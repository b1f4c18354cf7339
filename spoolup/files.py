"""Durable appends: files written during an ingest batch and synced before the
journal transaction that refers to them commits (invariant 1)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections import OrderedDict
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_SYNCFS_THRESHOLD = 32  # more dirty files than this: one syncfs() beats many fdatasync()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding `path` (Linux syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class AppendFiles:
    """Append-only files under one directory, with a bounded cache of open
    descriptors and a `sync()` that makes every append since the last sync
    durable (data and the directory entries of new files)."""

    def __init__(self, directory: Path, *, fsync: bool, max_open: int = 256):
        self.directory = directory
        self.fsync = fsync
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._dirty: set[str] = set()
        self._new_files = False

    def append(self, name: str, data) -> None:
        fd = self._fd(name)
        write_all(fd, data)
        self._dirty.add(name)

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            self._fds.move_to_end(name)
            return fd
        path = self.directory / name
        if not path.exists():
            self._new_files = True
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fds[name] = fd
        while len(self._fds) > self.max_open:
            old, old_fd = self._fds.popitem(last=False)
            if old in self._dirty and self.fsync:
                os.fdatasync(old_fd)
            self._dirty.discard(old)
            os.close(old_fd)
        return fd

    def sync(self) -> None:
        """Durable: everything appended so far survives a crash of the machine."""
        if not self.fsync:
            self._dirty.clear()
            self._new_files = False
            return
        if len(self._dirty) > _SYNCFS_THRESHOLD:
            syncfs(self.directory)
        else:
            for name in self._dirty:
                fd = self._fds.get(name)
                if fd is not None:
                    os.fdatasync(fd)
            if self._new_files:
                fsync_dir(self.directory)
        self._dirty.clear()
        self._new_files = False

    def forget(self, name: str) -> None:
        """Close a file's descriptor (after sync, or before deleting it)."""
        fd = self._fds.pop(name, None)
        if fd is not None:
            if name in self._dirty and self.fsync:
                os.fdatasync(fd)
            self._dirty.discard(name)
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sync()
        for name in list(self._fds):
            with contextlib.suppress(OSError):
                os.close(self._fds.pop(name))
