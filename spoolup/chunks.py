"""Chunk files: the staged bytes of each object, one file per part.

A chunk file holds the raw record bytes of one part, appended by ingest and
journaled by length.  Without compression the chunk file *is* the part.  With
compression each part is one complete gzip member (or zstd frame): records are
fed to a compressor as they arrive, its output goes to a `.tmp` file, and
sealing finishes the member and renames it to `.part`.  The raw chunk file
stays the durable truth until the seal is journaled, so a crash mid-chunk
rebuilds the compressor from it and the object remains one valid stream.
With more open compressed chunks than _MAX_COMPRESSORS (many keys), the least
recently written one's member is finished and the next write starts a new one:
such a part is several complete members, still one valid stream.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import zstandard

from spoolup.files import ChunkFiles, fsync_dir, fsync_path, write_all
from spoolup.lru import LRU

_MAX_COMPRESSORS = 64  # live compressors kept in memory at most ...
_COMPRESSOR_BUDGET = 64 << 20  # ... and at most this much memory for them (zstd's grow with the level)
_GZIP_STATE = 288 << 10  # zlib's deflate state at memLevel 8 (window 32 KiB x 2 + hash tables)


def chunk_name(object_id: int, part: int) -> str:
    return f"{object_id:012d}-{part:05d}"


@dataclass(frozen=True)
class Codec:
    name: str  # "none", "gzip", "zstd"
    level: int

    @property
    def compressed(self) -> bool:
        return self.name != "none"

    def max_live(self) -> int:
        """How many compressors may be alive at once within the memory budget."""
        if self.name == "zstd":
            size = zstandard.ZstdCompressionParameters.from_level(self.level).estimated_compression_context_size()
        else:
            size = _GZIP_STATE
        return max(2, min(_MAX_COMPRESSORS, _COMPRESSOR_BUDGET // size))

    def bound(self, n: int) -> int:
        """The most bytes one member (frame) can take for n raw bytes, finished: zlib's
        deflateBound for its default memLevel and window (plus the gzip wrapper), zstd's
        ZSTD_COMPRESSBOUND (plus its frame header and checksum), each with a margin."""
        if self.name == "gzip":
            return n + (n >> 12) + (n >> 14) + (n >> 25) + 7 + 18 + 64
        if self.name == "zstd":
            return n + (n >> 8) + ((128 << 10) - n >> 11 if n < 128 << 10 else 0) + 18 + 64
        return n

    def compressor(self):
        if self.name == "gzip":
            return zlib.compressobj(self.level, zlib.DEFLATED, 31)  # wbits 31: a gzip member
        if self.name == "zstd":
            return zstandard.ZstdCompressor(level=self.level).compressobj()
        raise ValueError(f"no compressor for {self.name}")


def part_file(directory: Path, object_id: int, part: int, codec: Codec) -> Path:
    """The file the upload process sends as part `part`."""
    name = chunk_name(object_id, part)
    return directory / (name + ".part" if codec.compressed else name)


def raw_file(directory: Path, object_id: int, part: int) -> Path:
    return directory / chunk_name(object_id, part)


class _Live:
    __slots__ = ("comp", "fd", "out_len", "base", "raw")

    def __init__(self, comp, fd: int, out_len: int = 0):
        self.comp = comp
        self.fd = fd
        self.out_len = out_len
        self.base = out_len  # bytes of the members finished before this compressor's
        self.raw = 0  # raw bytes fed to this compressor's member


class ChunkStore:
    """Ingest's side of the chunk files.  `codec` is the configured one; each object may
    have its own (the one it was started with, spoolup/form.py), given with each call."""

    def __init__(self, directory: Path, codec: Codec, *, fsync: bool, max_open: int = 1024):
        self.directory = directory
        self.codec = codec
        self.fsync = fsync
        self.files = ChunkFiles(directory, fsync=fsync, max_open=max_open)
        self._live: LRU[tuple[int, int], _Live] = LRU(codec.max_live() if codec.compressed else _MAX_COMPRESSORS,
                                                      self._park)
        self._parked: dict[tuple[int, int], int] = {}  # evicted compressors: .tmp length, members finished
        self._renamed = False

    # -- writing -------------------------------------------------------------

    def append(self, object_id: int, part: int, data, at: int, codec: Codec | None = None) -> None:
        """Append to a chunk whose raw length before this is `at` (the journal's, plus the
        batch's appends so far): the file's own size is never taken for it."""
        codec = codec or self.codec
        if codec.compressed:
            live = self._compressor(object_id, part, at, codec)  # before the raw append: a rebuild reads the raw file
            self.files.append(chunk_name(object_id, part), data, at)
            live.raw += len(data)
            out = live.comp.compress(bytes(data))
            if out:
                write_all(live.fd, out)
                live.out_len += len(out)
        else:
            self.files.append(chunk_name(object_id, part), data, at)

    def stored_len(self, object_id: int, part: int, raw_len: int, codec: Codec | None = None) -> int:
        """Compressed bytes produced so far for an open chunk (chunk-size is measured on these)."""
        parked = self._parked.get((object_id, part))
        if parked is not None:
            return parked
        return self._compressor(object_id, part, raw_len, codec or self.codec).out_len

    def part_bound(self, object_id: int, part: int, more: int, raw_len: int, codec: Codec | None = None) -> int:
        """The most bytes a compressed part can have once sealed if `more` raw bytes are
        appended to its `raw_len` first: the members finished so far plus the bound of the
        current one."""
        codec = codec or self.codec
        parked = self._parked.get((object_id, part))
        if parked is not None:
            return parked + codec.bound(more)
        live = self._compressor(object_id, part, raw_len, codec)
        return live.base + codec.bound(live.raw + more)

    def seal(self, object_id: int, part: int, raw_len: int, codec: Codec | None = None) -> int:
        """Finish the chunk; returns the part's size.  Durable after the next sync()."""
        codec = codec or self.codec
        name = chunk_name(object_id, part)
        if not codec.compressed:
            return self.files.finish(name, raw_len)  # the chunk file is the part: exact and durable now
        parked = self._parked.pop((object_id, part), None)
        if parked is not None:  # its last member is finished already
            if self.fsync:
                fsync_path(self.directory / (name + ".tmp"))
            out_len = parked
        else:
            live = self._compressor(object_id, part, raw_len, codec)
            tail = live.comp.flush()
            write_all(live.fd, tail)
            live.out_len += len(tail)
            if self.fsync:
                os.fsync(live.fd)
            os.close(live.fd)
            self._live.pop((object_id, part))
            out_len = live.out_len
        os.replace(self.directory / (name + ".tmp"), self.directory / (name + ".part"))
        self._renamed = True
        return out_len

    def sync(self) -> None:
        self.files.sync()
        if self._renamed:
            if self.fsync:
                fsync_dir(self.directory)
            self._renamed = False

    def sealed_committed(self, object_id: int, part: int, codec: Codec | None = None) -> None:
        """The seal is journaled: the raw bytes of a compressed part are no longer needed."""
        name = chunk_name(object_id, part)
        self.files.forget(name)
        if (codec or self.codec).compressed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)

    def discard(self) -> None:
        """Abandon everything since the last journaled batch (it could not be made durable:
        the disk is full): files closed without writing, compressors dropped.  The caller
        then truncates the chunk files to their journaled lengths (recover.reconcile_chunks)."""
        self.files.discard()
        for live in self._live.values():
            with contextlib.suppress(OSError):
                os.close(live.fd)
        self._live.clear()
        self._parked.clear()
        self._renamed = False

    def close(self) -> None:
        self.files.close()
        for live in self._live.values():
            with contextlib.suppress(OSError):
                os.close(live.fd)
        self._live.clear()

    # -- compressors -----------------------------------------------------------

    def _compressor(self, object_id: int, part: int, raw_len: int, codec: Codec) -> _Live:
        k = (object_id, part)
        live = self._live.get(k)
        if live is not None:
            return live
        parked = self._parked.pop(k, None)
        if parked is None:
            live = self._rebuild(object_id, part, raw_len, codec)
        else:  # evicted before: its members so far stay, the next one starts here
            fd = os.open(self.directory / (chunk_name(object_id, part) + ".tmp"), os.O_WRONLY | os.O_APPEND)
            live = _Live(codec.compressor(), fd, parked)
        if codec != self.codec:  # an object of an earlier configuration: its compressors count too
            self._live.capacity = min(self._live.capacity, codec.max_live())
        self._live.put(k, live)  # (the least recently used beyond the capacity are parked)
        return live

    def _park(self, k: tuple[int, int], live: _Live) -> None:
        """Evict a compressor: finish its member, so the .tmp file is a stream of complete
        members.  Writing to the chunk again starts a new member after it -- instead of
        compressing the whole raw chunk again, which with many keys (more open objects than
        _MAX_COMPRESSORS) would cost time quadratic in the chunk size."""
        tail = live.comp.flush()
        write_all(live.fd, tail)
        os.close(live.fd)
        self._parked[k] = live.out_len + len(tail)

    def _rebuild(self, object_id: int, part: int, raw_len: int, codec: Codec) -> _Live:
        """A compressor fed with the chunk's `raw_len` raw bytes so far (after a restart: one member)."""
        name = chunk_name(object_id, part)
        fd = os.open(self.directory / (name + ".tmp"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        live = _Live(codec.compressor(), fd)
        if raw_len:
            for block in self.files.content(name, raw_len):
                live.raw += len(block)
                out = live.comp.compress(block)
                write_all(fd, out)
                live.out_len += len(out)
        return live


def remove_chunk_files(chunk_dir: Path, object_id: int, parts: int | None = None, compressed: bool = True) -> None:
    """Delete a completed object's chunk files (every name a chunk of it can have).
    With `parts` known, by name; otherwise by scanning the directory (recovery only).
    compressed=False: the object's codec writes no .tmp/.part files (its chunk file is its
    part), so only that name is deleted (a stray of another name is removed at start)."""
    names: list[str] = []
    if parts is None:
        prefix = f"{object_id:012d}-"
        with contextlib.suppress(FileNotFoundError):
            names = [e.name for e in os.scandir(chunk_dir) if e.name.startswith(prefix)]
    else:
        suffixes = ("", ".tmp", ".part") if compressed else ("",)
        names = [chunk_name(object_id, p) + sfx for p in range(1, parts + 1) for sfx in suffixes]
    directory = os.fspath(chunk_dir)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
