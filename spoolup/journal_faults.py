"""What went wrong when the journal could not be opened, said as what it is.

SQLite reports every failure at open as an OperationalError or DatabaseError;
only some of them mean the journal is damaged.  A journal that is locked by
another process, on a full filesystem or on a failing disk is intact, and the
advice for a corrupt journal (move the state dir aside) would ship everything
in the spool again.  So each failure is classified by SQLite's primary result
code and explained with the advice that fits it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
from pathlib import Path

LOCKED = "locked"
FULL = "full"
IOERR = "ioerr"
READONLY = "readonly"
CORRUPT = "corrupt"

_KINDS = {
    sqlite3.SQLITE_BUSY: LOCKED,
    sqlite3.SQLITE_LOCKED: LOCKED,
    sqlite3.SQLITE_FULL: FULL,
    sqlite3.SQLITE_IOERR: IOERR,
    sqlite3.SQLITE_READONLY: READONLY,
    sqlite3.SQLITE_CANTOPEN: READONLY,
    sqlite3.SQLITE_PERM: READONLY,
    sqlite3.SQLITE_CORRUPT: CORRUPT,
    sqlite3.SQLITE_NOTADB: CORRUPT,
}

# SQLite's POSIX locks (os_unix.c): in WAL mode the writer holds byte 120 of the -shm
# file (WAL_WRITE_LOCK) and readers hold bytes 123..127; in rollback mode the locks
# are on the database file from PENDING_BYTE (0x40000000) on.
_SHM_LOCKS = (120, 128)  # byte range [120, 128)
_DB_LOCKS = (0x40000000, 512 + 2)


LOW_SPACE = 256 << 10  # free bytes under which an I/O error is taken for a full filesystem


def kind(err: BaseException, path: Path | None = None) -> str:
    """LOCKED, FULL, IOERR, READONLY or CORRUPT.  Errors spoolup raises itself (schema
    version 0, a failed integrity check) carry no SQLite code: they are CORRUPT.
    An I/O error on a filesystem without free space is FULL: SQLite reports a full disk
    while it grows the -shm file as SQLITE_IOERR_SHMSIZE, not as SQLITE_FULL."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is None:
        text = str(err).lower()
        if "database is locked" in text:
            return LOCKED
        if "disk is full" in text:
            return FULL
        return CORRUPT
    found = _KINDS.get(code & 0xFF, CORRUPT)
    if found == IOERR and path is not None and free_bytes(Path(path).parent) < LOW_SPACE:
        return FULL
    return found


def free_bytes(directory: Path) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return LOW_SPACE  # cannot tell: not taken for full
    return st.f_bavail * st.f_frsize


def lock_holders(path: Path) -> list[int]:
    """Pids of other processes holding a SQLite lock on the journal (F_GETLK on the
    -shm's and the database file's lock bytes), else of processes that have it open."""
    pids: list[int] = []
    for file, ranges in ((Path(f"{path}-shm"), [(b, 1) for b in range(*_SHM_LOCKS)]), (path, [_DB_LOCKS])):
        try:
            fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for start, length in ranges:
                req = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
                typ, _w, _s, _l, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, req))
                if typ != fcntl.F_UNLCK and pid > 0 and pid not in pids:
                    pids.append(pid)
        except OSError:
            pass
        finally:
            os.close(fd)
    if pids:
        return pids
    return [pid for pid in _openers(path) if pid != os.getpid()]


def _openers(path: Path) -> list[int]:
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in names:
                    out.append(int(entry.name))
                    break
        except OSError:
            continue
    return out


def describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"pid {pid} ({cmd[:120]})" if cmd else f"pid {pid}"


def message(path: Path, err: BaseException) -> str:
    """The journal could not be opened (or created, or migrated): what it is and what to do."""
    path = Path(path)
    k = kind(err, path)
    if k == LOCKED:
        holders = lock_holders(path)
        who = ", ".join(describe_pid(p) for p in holders) if holders else "a process that could not be identified"
        return (f"the journal {path} is locked by another process: {who} ({err}). The journal is intact; "
                "nothing was changed. Stop that process (a second spoolup with the same state-dir, an sqlite3 "
                "shell or a backup tool holding a transaction open) and start spoolup again")
    if k == FULL:
        return (f"no space left on the filesystem of the state dir {path.parent} for the journal {path} ({err}). "
                "The journal is intact and nothing was lost; the change that needed the space (a schema "
                "migration, a transaction) was rolled back. Free space there (`df "
                f"{path.parent}`) and start spoolup again")
    if k == IOERR:
        return (f"I/O error on the journal {path} ({err}): the disk or filesystem under the state dir is failing "
                "(see `dmesg`). Do not move the state dir aside or delete the journal: that would ship again "
                "everything still in the spool. Stop spoolup, fix or replace the device (copy the whole state "
                "dir with `cp -a` to a healthy filesystem and point state-dir there), then start spoolup again")
    if k == READONLY:
        return (f"the journal {path} cannot be written ({err}): the state dir is on a read-only filesystem, or "
                "its files are not writable by this user. The journal is intact. Remount it read-write, or fix "
                "ownership (`chown -R spoolup: STATE-DIR`, mode 0700), and start spoolup again")
    return corrupt_message(path, err)


def corrupt_message(path: Path, err: BaseException) -> str:
    return (
        f"the journal {path} cannot be read ({err}): it is damaged (SQLite reports a corrupt or foreign file). "
        f"spoolup will not start from an unreadable journal, because starting fresh would re-ship or lose "
        f"records. To continue: restore the state dir from a backup if you have one; otherwise stop spoolup, "
        f"move the state directory aside (e.g. `mv {path.parent} {path.parent}.broken`), check the bucket for "
        f"objects already written, and start again; spoolup then re-reads every file still in the spool from "
        f"the beginning."
    )
