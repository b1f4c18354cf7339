"""Durable appends: files written during an ingest batch and synced before the
journal transaction that refers to them commits (invariant 1)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from pathlib import Path

from spoolup.lru import LRU

# libc's functions through the process's own symbols (dlopen(NULL)), not ctypes.util.find_library("c"):
# that runs /sbin/ldconfig -p (or, without it, the C compiler) as a child process at every import
_libc = ctypes.CDLL(None, use_errno=True)
_SYNCFS_THRESHOLD = 32  # more dirty files than this: one syncfs() beats many fdatasync()


def fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    """fsync a file by its path (one that is not open here)."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


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
        self._fds: LRU[str, int] = LRU(max_open, self._evicted)
        self._dirty: set[str] = set()
        self._new_files = False

    def append(self, name: str, data) -> None:
        fd = self._fd(name)
        write_all(fd, data)
        self._dirty.add(name)

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            return fd
        path = self.directory / name
        if not path.exists():
            self._new_files = True
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fds.put(name, fd)
        return fd

    def _evicted(self, old: str, old_fd: int) -> None:
        """A descriptor pushed out of the cache: its appends are made durable first (sync()
        knows only the descriptors it holds)."""
        if old in self._dirty and self.fsync:
            os.fdatasync(old_fd)
        self._dirty.discard(old)
        os.close(old_fd)

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
                fd = self._fds.peek(name)
                if fd is not None:
                    os.fdatasync(fd)
            if self._new_files:
                fsync_dir(self.directory)
        self._dirty.clear()
        self._new_files = False

    def replaced(self, name: str) -> bool:
        """The file's path no longer names the file appended to: deleted (or replaced) by
        someone else.  A descriptor kept open would go on writing to a deleted inode."""
        try:
            st = os.stat(self.directory / name)
        except FileNotFoundError:
            return True
        fd = self._fds.peek(name)
        if fd is None:
            return False
        held = os.fstat(fd)
        return held.st_nlink == 0 or (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino)

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


BLOCK = 4096  # O_DIRECT alignment (file offsets, lengths and memory)
_BUF_SIZE = 4 << 20


class _Chunk:
    __slots__ = ("length", "flushed", "tail", "dirty")

    def __init__(self, length: int, flushed: int, tail: bytearray):
        self.length = length  # logical bytes appended
        self.flushed = flushed  # bytes written to the file as whole blocks (aligned)
        self.tail = tail  # bytes after `flushed`, held in memory until they fill a block
        self.dirty = False  # appended to since the last sync()


class ChunkFiles:
    """Append-only chunk files written in whole 4 KiB blocks, with O_DIRECT where the
    filesystem has it.

    Buffered writes plus fdatasync cost this kind of machine about 3 s of kernel
    CPU per GiB (page-cache writeback); O_DIRECT writes cost almost none and run
    at device speed (bench/RESULTS.md).  The last, partial block of each file is
    kept in memory and written zero-padded at each sync(), so a file on disk may
    be up to 4095 bytes longer than its logical length until `finish()` (or
    `close()`) truncates it.  Filesystems without O_DIRECT (ramfs, tmpfs before
    Linux 6.6, some FUSE and overlay setups) get exactly the same writes through
    the page cache: only the open flag differs, never the bookkeeping.

    A file's logical length is always the caller's (the journal's), never the
    size found on disk: after a crash or an abandoned batch a file may hold
    padding or uncommitted bytes past it, which later writes overwrite and
    `finish()` cuts off.  Zero padding can therefore never become data.

    A file's state (length, in-memory tail) lives apart from its descriptor:
    with many keys, more files are appended to than descriptors are kept open,
    and an evicted descriptor costs a close(), not a write and a sync.
    """

    def __init__(self, directory: Path, *, fsync: bool, max_open: int = 1024, direct: bool = True):
        self.directory = directory
        self.fsync = fsync
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._chunks: dict[str, _Chunk] = {}
        self._fds: LRU[str, int] = LRU(max_open, self._evicted)
        self._new_files = False  # a file was created since the last sync: its directory entry is not durable
        self._closed_dirty = False  # a file written since the last sync lost its descriptor
        self._buf = None

    # -- writing ---------------------------------------------------------------

    def append(self, name: str, data, at: int) -> None:
        """Append `data` to `name`, whose logical length before it is `at` (journaled plus
        this batch's appends)."""
        c = self._state(name, at)
        c.length += len(data)
        c.dirty = True
        if len(c.tail) + len(data) < BLOCK:
            c.tail += data
            return
        # whole blocks go straight to the file through one aligned buffer; the rest
        # (less than a block) stays in memory as the new tail
        fd = self._fd(name)
        view = memoryview(data)
        buf = self._aligned()
        fill = len(c.tail)
        buf[:fill] = c.tail
        pos = 0
        while True:
            take = min(_BUF_SIZE - fill, len(view) - pos)
            buf[fill:fill + take] = view[pos:pos + take]
            pos += take
            fill += take
            n = fill - fill % BLOCK
            if n:
                _pwrite_all(fd, memoryview(buf)[:n], c.flushed)
                c.flushed += n
            if pos == len(view):
                c.tail = bytearray(buf[n:fill])
                return
            rest = bytes(buf[n:fill])
            fill = len(rest)
            buf[:fill] = rest

    def content(self, name: str, length: int):
        """The first `length` logical bytes (disk part, then the in-memory tail)."""
        c = self._state(name, length)
        if c.flushed:
            with open(self.directory / name, "rb") as f:
                left = c.flushed
                while left > 0:
                    block = f.read(min(left, 1 << 20))
                    if not block:
                        break
                    left -= len(block)
                    yield block
        if c.tail:
            yield bytes(c.tail)

    def sync(self) -> None:
        """Every append so far, and every file created, survives a crash of the machine
        (with fsync)."""
        dirty = [name for name, c in self._chunks.items() if c.dirty]
        for name in dirty:
            self._write_tail(name)
        if self.fsync and (dirty or self._closed_dirty or self._new_files):
            if len(dirty) > _SYNCFS_THRESHOLD or self._closed_dirty:
                syncfs(self.directory)
            else:
                for name in dirty:
                    os.fdatasync(self._fd(name))
                if self._new_files:
                    fsync_dir(self.directory)
        for name in dirty:
            self._chunks[name].dirty = False
        self._new_files = False
        self._closed_dirty = False

    def finish(self, name: str, length: int) -> int:
        """Seal: the file becomes exactly its `length` logical bytes, durable (with fsync),
        and closed.  Its directory entry is made durable by the next sync()."""
        c = self._state(name, length)
        self._write_tail(name)
        fd = self._fd(name)
        os.ftruncate(fd, c.length)
        if self.fsync:
            os.fdatasync(fd)
        c.dirty = False
        self._close_fd(name)
        del self._chunks[name]
        return c.length

    def forget(self, name: str) -> None:
        self._close_fd(name)
        self._chunks.pop(name, None)

    def discard(self) -> None:
        """Close every file without writing anything more: what was appended since the last
        journaled batch is abandoned (the disk is full).  The next append or seal names the
        journaled length again (recovery truncates the files to it, when it can)."""
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._chunks.clear()
        self._new_files = False
        self._closed_dirty = False

    def close(self) -> None:
        """Sync and close everything, leaving each file exactly its logical length."""
        with contextlib.suppress(OSError):
            self.sync()
        for name, c in list(self._chunks.items()):
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd(name), c.length)
        for name in list(self._fds):
            with contextlib.suppress(OSError):
                self._close_fd(name)
        self._chunks.clear()

    # -- internals ---------------------------------------------------------------

    def _state(self, name: str, length: int) -> _Chunk:
        c = self._chunks.get(name)
        if c is not None:
            if c.length != length:
                raise RuntimeError(f"chunk file {self.directory / name}: {c.length} bytes written, "
                                   f"{length} expected")
            return c
        path = self.directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = None
            self._new_files = True
        if (size or 0) < length:
            raise OSError(errno.EIO, f"chunk file is {size or 0} bytes, shorter than its journaled {length}",
                          str(path))
        flushed = length - length % BLOCK
        tail = bytearray()
        if flushed < length:
            with open(path, "rb") as f:
                f.seek(flushed)
                tail = bytearray(f.read(length - flushed))
        c = self._chunks[name] = _Chunk(length, flushed, tail)
        if size is None:
            self._fd(name)  # create it now: the directory entry is synced with the batch
        return c

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            return fd
        fd = self._open_fd(self.directory / name)
        self._fds.put(name, fd)
        return fd

    def _close_fd(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            self._evicted(name, fd)

    def _evicted(self, name: str, fd: int) -> None:
        c = self._chunks.get(name)
        if c is not None and c.dirty:
            self._closed_dirty = True  # its writes are made durable by the next sync's syncfs
        os.close(fd)

    def _open_fd(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        if self.direct:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False  # no O_DIRECT on this filesystem: the same writes, through the page cache
        return os.open(path, flags, 0o600)

    def _write_tail(self, name: str) -> None:
        """The partial last block, zero-padded (it is rewritten when the next bytes come)."""
        c = self._chunks[name]
        if c.tail:
            buf = self._aligned()
            n = len(c.tail)
            buf[:n] = c.tail
            buf[n:BLOCK] = bytes(BLOCK - n)
            _pwrite_all(self._fd(name), memoryview(buf)[:BLOCK], c.flushed)

    def _aligned(self):
        if self._buf is None:
            import mmap

            self._buf = mmap.mmap(-1, _BUF_SIZE)  # page-aligned memory, as O_DIRECT wants
        return self._buf


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
