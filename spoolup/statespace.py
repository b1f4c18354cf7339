"""Space in the state dir: how much ingest may write before it starves the journal.

Chunk files are kept until their object is completed (docs/decisions/0001, 0002),
so with a backlog larger than the state dir spoolup's own files are what fills it.
Ingest therefore measures the free space before each read and writes at most what
leaves RESERVE free for the journal of both processes (the upload process needs
it to journal the parts that free space); below that it reads nothing (the backlog
waits in the spool) and completes open objects early, so that their chunk files
are uploaded and removed.  `spoolup status` and the metrics report the same
figures from the same functions.

Whose space it is is decided by counting spoolup's own files exactly (chunk files,
journal and its WAL, dead letters, its small files), not by a share of the used
bytes: the state dir may share its filesystem with anything (`/`), and in a small
one the journal and WAL alone may take half of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spoolup.config import Config
from spoolup.files import BLOCK

RESERVE = 2 << 20  # kept free for the journal (WAL growth of both processes) and metrics files
READ_SLACK = 1 << 20  # ingest reads whole blocks of this size: a pump may overshoot its budget by one
TAILS_COUNTED = 1024  # open chunks whose padded tail may take a new block in one pump (more keys: RESERVE covers it)
MINIMUM = RESERVE + READ_SLACK + (1 << 20)  # below this a state dir can hold nothing to ingest at all
# the journal's WAL keeps the size of its longest run between checkpoints; while the state dir is
# low, ingest truncates a WAL larger than this (RESERVE is the room it grows in)
WAL_KEPT = 256 << 10


@dataclass(frozen=True)
class Space:
    total: int  # bytes of the state dir's filesystem
    free: int  # bytes available to spoolup there
    chunks: int  # bytes spoolup's chunk files take (open, pending and not yet removed)
    own: int = 0  # bytes every file of spoolup's takes there: chunk files, journal and WAL, dead letters...
    need: int = RESERVE + READ_SLACK  # free bytes at or below which ingest reads nothing (room() is 0)
    record: int = 0  # a long record waiting for room (fits()), counted in `need`

    @property
    def foreign(self) -> int:
        """Bytes used on the filesystem that are not spoolup's (a filesystem's reserved blocks count too)."""
        return max(self.total - self.free - max(self.own, self.chunks), 0)


UNLIMITED = 1 << 62  # free space of a filesystem that reports none (ramfs: no size, no limit)


def free_bytes(cfg: Config) -> tuple[int, int]:
    """(total, free) bytes of the state dir's filesystem; both UNLIMITED for one that reports
    no size at all (ramfs, some FUSE filesystems), which spoolup cannot account for."""
    st = os.statvfs(cfg.state_dir)
    if st.f_blocks == 0:
        return UNLIMITED, UNLIMITED
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _dir_bytes(directory: Path) -> int:
    """Disk space the files directly in `directory` take (none: 0)."""
    total = 0
    try:
        with os.scandir(directory) as it:
            for e in it:
                try:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    pass
    except (FileNotFoundError, NotADirectoryError):
        pass
    return total


def chunk_bytes(cfg: Config) -> int:
    """Disk space the chunk files take."""
    return _dir_bytes(cfg.chunk_dir)


# spoolup's files directly in the state dir besides its directories: the journal with its WAL
# and shared-memory index, the locks (lock.py, upload.py), the state id (stateid.NAME)
OWN_FILES = ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm", "journal.sqlite-journal",
             "spoolup.lock", "upload.lock", "state-id")
OWN_DIRS = ("chunks", "dead-letter", "metrics")  # chunk files, dead letters (deadletter.py), metrics files


def own_bytes(cfg: Config) -> int:
    """Disk space spoolup's own files take in the state dir (chunk files included): counted file
    by file, so that anything else there, or elsewhere on the filesystem, is not."""
    total = 0
    for name in OWN_FILES:
        try:
            total += os.lstat(cfg.state_dir / name).st_blocks * 512
        except FileNotFoundError:
            pass
    return total + sum(_dir_bytes(cfg.state_dir / name) for name in OWN_DIRS)


def needed(open_chunks: int) -> int:
    """Free bytes at or below which room() is 0: ingest reads nothing."""
    return RESERVE + READ_SLACK + BLOCK * min(open_chunks, TAILS_COUNTED)


def measure(cfg: Config, open_chunks: int = 0, record: int = 0) -> Space:
    """The state dir's space; `record`: the length of a long record waiting for room (fits())."""
    total, free = free_bytes(cfg)
    need = needed(open_chunks) + max(record - READ_SLACK, 0)
    return Space(total, free, chunk_bytes(cfg), own_bytes(cfg), need, record)


def room(free: int, open_chunks: int, compressed: bool) -> int:
    """Spool bytes ingest may read now: the free space less the reserve, a block per open
    chunk (its zero-padded tail may start a new one) and a read's slack; halved when compressing (the raw chunk
    and its compressed output are both written)."""
    left = free - needed(open_chunks)
    return max(left // 2 if compressed else left, 0)


def fits(free: int, open_chunks: int, compressed: bool, n: int) -> bool:
    """Is there room for a record of n bytes?  A read may overshoot room() by READ_SLACK (a
    block), and so may a long record, which is taken whole: one longer than room() and the
    slack together would eat into the journal's reserve (the upload process could then not
    journal the uploads that free the space: a standstill), so it waits for room."""
    return room(free + READ_SLACK, open_chunks, compressed) >= n


def own_space(space: Space) -> bool:
    """Is it spoolup's own data that leaves too little room?  Yes when removing its chunk files
    (what completing objects does) would make room -- on a filesystem shared with anything else,
    spoolup's backlog is what took the last of it -- and when even without every foreign file
    there would be none (the journal, its WAL and the chunk files need more than the filesystem
    has).  No when only removing something else would make room: something else fills it."""
    return space.free + space.chunks > space.need or space.free + space.foreign <= space.need


def advice(cfg: Config, space: Space) -> tuple[str, str]:
    """(code, message) for a state dir too full to ingest: whose space it is, what spoolup
    does about it and what the operator can do."""
    mib = 1 << 20
    where = (f"the state dir {cfg.state_dir} has {space.free // mib} MiB free of {space.total // mib} MiB, "
             f"too little beyond the {RESERVE // mib} MiB spoolup keeps for its journal")
    if space.record:
        where += f" for the next record, of {_mib(space.record)} MiB"
    if space.total < MINIMUM:
        return "StateDirTooSmall", (
            f"{where}: its filesystem is smaller than the {MINIMUM // mib} MiB spoolup needs at the very least. "
            "Ingest pauses (the backlog waits in the spool, nothing is lost) and resumes by itself when there is "
            "room. Give the state dir more space: a few times chunk-size")
    if own_space(space):
        return "StateDirTooSmall", (
            f"{where}; spoolup's own chunk files (of open and pending objects, kept until each object is completed) "
            f"hold {_mib(space.chunks)} MiB of it, its journal, WAL and dead letters "
            f"{_mib(max(space.own - space.chunks, 0))} MiB ({_mib(space.foreign)} MiB is not spoolup's). Ingest "
            "pauses (the backlog waits in the spool, nothing is lost), completes the largest open object early "
            "(reason state-dir-space) and resumes by itself once its chunk files are uploaded and removed. The state "
            "dir is too small for this backlog: give the state dir more space (objects are otherwise completed "
            "smaller than max-object-size), or lower max-object-size or flush-grace-period")
    return "StateDirFull", (
        f"{where}; spoolup's own files hold only {_mib(space.own)} MiB of it (chunk files {_mib(space.chunks)} "
        f"MiB), {_mib(space.foreign)} MiB is not spoolup's: something else fills the filesystem. Ingest pauses (the "
        "backlog waits in the spool, nothing is lost). Free space there; spoolup resumes by itself")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def report(cfg: Config, open_chunks: int) -> dict | None:
    """The state dir's space for `spoolup status` (and the metrics); None before the state
    dir exists."""
    try:
        space = measure(cfg, open_chunks)
    except FileNotFoundError:
        return None
    low = room(space.free, open_chunks, cfg.compression != "none") <= 0
    code, text = advice(cfg, space) if low else (None, None)
    return {"total_bytes": space.total, "free_bytes": space.free, "chunk_bytes": space.chunks,
            "own_bytes": space.own, "reserve_bytes": RESERVE, "low": low, "code": code, "advice": text}
