"""What makes a spool file the journaled one: its inode, its birth time, and the
bytes spoolup consumed from it.

(device, inode) alone is not an identity: an inode number is reused by the next
file created after a file is deleted, and a file truncated in place
(logrotate's copytruncate) keeps its inode while its content starts again.  So a
journaled source also keeps:

- the file's birth time (statx STATX_BTIME, where the filesystem records it):
  another file on a reused inode has another birth time;
- its first bytes (`head`, HEAD_BYTES);
- a digest of the last consumed bytes (`tail`: the SAMPLE bytes just before the
  journaled offset).  Every read from the offset reads those bytes again in the
  same pread and compares them, so a file truncated and refilled past the offset
  between two looks, even on a descriptor spoolup holds, is noticed before any
  of its new bytes are taken for the continuation of the old ones.

See docs/DESIGN.md ("Spool file identity").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct

HEAD_BYTES = 64  # first bytes kept per source
SAMPLE = 4096  # consumed bytes just before the offset that are re-read and compared at each read

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_STATX_BTIME = 0x800
_BTIME_OFFSET = 80  # struct statx: stx_btime (tv_sec s64, tv_nsec u32) at byte 80

try:
    _libc = ctypes.CDLL(None, use_errno=True)  # (no find_library: it runs ldconfig; see spoolup/files.py)
    _statx = _libc.statx
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
except (OSError, AttributeError):  # no statx (old libc, not Linux): identity by content alone
    _statx = None


def birth_time(*, fd: int | None = None, path: str | os.PathLike | None = None) -> int | None:
    """The file's birth time in nanoseconds, or None where the filesystem does not
    record one (ext4 with 128-byte inodes, NFS, ...) or statx is not available."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(256)
    if fd is not None:
        rc = _statx(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, buf)
    else:
        rc = _statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf)
    if rc != 0:
        return None
    mask = struct.unpack_from("I", buf, 0)[0]
    if not mask & _STATX_BTIME:
        return None
    sec, nsec = struct.unpack_from("qI", buf, _BTIME_OFFSET)
    if sec == 0 and nsec == 0:  # recorded as zero (files older than the filesystem's btime support)
        return None
    return sec * 1_000_000_000 + nsec


def sample_start(offset: int) -> int:
    """Where the compared sample before `offset` starts."""
    return max(0, offset - SAMPLE)


def digest(data) -> bytes:
    """The journaled form of a sample (16 bytes whatever its length)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def other_file(journaled_btime: int | None, btime: int | None) -> bool:
    """True when birth times prove that the inode now holds another file."""
    return journaled_btime is not None and btime is not None and journaled_btime != btime
