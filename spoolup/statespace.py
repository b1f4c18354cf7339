"""Space in the state dir: how much ingest may write before it starves the journal.

Chunk files are kept until their object is completed (docs/decisions/0001, 0002),
so with a backlog larger than the state dir spoolup's own files are what fills it.
Ingest therefore measures the free space before each read and writes at most what
leaves RESERVE free for the journal of both processes (the upload process needs
it to journal the parts that free space); below that it reads nothing (the backlog
waits in the spool) and completes open objects early, so that their chunk files
are uploaded and removed.  `spoolup status` and the metrics report the same
figures from the same functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from spoolup.config import Config
from spoolup.files import BLOCK

RESERVE = 2 << 20  # kept free for the journal (WAL growth of both processes) and metrics files
READ_SLACK = 1 << 20  # ingest reads whole blocks of this size: a pump may overshoot its budget by one
TAILS_COUNTED = 1024  # open chunks whose padded tail may take a new block in one pump (more keys: RESERVE covers it)
MINIMUM = RESERVE + READ_SLACK + (1 << 20)  # below this a state dir can hold nothing to ingest at all


@dataclass(frozen=True)
class Space:
    total: int  # bytes of the state dir's filesystem
    free: int  # bytes available to spoolup there
    chunks: int  # bytes spoolup's chunk files take (open, pending and not yet removed)


UNLIMITED = 1 << 62  # free space of a filesystem that reports none (ramfs: no size, no limit)


def free_bytes(cfg: Config) -> tuple[int, int]:
    """(total, free) bytes of the state dir's filesystem; both UNLIMITED for one that reports
    no size at all (ramfs, some FUSE filesystems), which spoolup cannot account for."""
    st = os.statvfs(cfg.state_dir)
    if st.f_blocks == 0:
        return UNLIMITED, UNLIMITED
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def chunk_bytes(cfg: Config) -> int:
    """Disk space the chunk files take."""
    total = 0
    try:
        with os.scandir(cfg.chunk_dir) as it:
            for e in it:
                try:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        pass
    return total


def measure(cfg: Config) -> Space:
    total, free = free_bytes(cfg)
    return Space(total, free, chunk_bytes(cfg))


def room(free: int, open_chunks: int, compressed: bool) -> int:
    """Spool bytes ingest may read now: the free space less the reserve, a block per open
    chunk (its zero-padded tail may start a new one) and a read's slack; halved when compressing (the raw chunk
    and its compressed output are both written)."""
    left = free - RESERVE - READ_SLACK - BLOCK * min(open_chunks, TAILS_COUNTED)
    return max(left // 2 if compressed else left, 0)


def own_space(space: Space) -> bool:
    """Is most of what is used in the state dir's filesystem spoolup's own chunk files?"""
    used = space.total - space.free
    return space.chunks > 0 and space.chunks * 2 >= used


def advice(cfg: Config, space: Space) -> tuple[str, str]:
    """(code, message) for a state dir too full to ingest: whose space it is, what spoolup
    does about it and what the operator can do."""
    mib = 1 << 20
    where = (f"the state dir {cfg.state_dir} has {space.free // mib} MiB free of {space.total // mib} MiB, "
             f"too little beyond the {RESERVE // mib} MiB spoolup keeps for its journal")
    if space.total < MINIMUM:
        return "StateDirTooSmall", (
            f"{where}: its filesystem is smaller than the {MINIMUM // mib} MiB spoolup needs at the very least. "
            "Ingest pauses (the backlog waits in the spool, nothing is lost) and resumes by itself when there is "
            "room. Give the state dir more space: a few times chunk-size")
    if own_space(space):
        return "StateDirTooSmall", (
            f"{where}; spoolup's own chunk files (of open and pending objects, kept until each object is "
            f"completed) hold {space.chunks // mib} MiB of it. Ingest pauses (the backlog waits in the spool, nothing "
            "is lost), completes the largest open object early (reason state-dir-space) and resumes by itself once "
            "its chunk files are uploaded and removed. The state dir is too small for this backlog: give the state "
            "dir more space (objects are otherwise completed smaller than max-object-size), or lower "
            "max-object-size or flush-grace-period")
    return "StateDirFull", (
        f"{where}, and spoolup's own chunk files hold only {space.chunks // mib} MiB of it: something else fills "
        "the filesystem. Ingest pauses (the backlog waits in the spool, nothing is lost). Free space there; "
        "spoolup resumes by itself")


def report(cfg: Config, open_chunks: int) -> dict | None:
    """The state dir's space for `spoolup status` (and the metrics); None before the state
    dir exists."""
    try:
        space = measure(cfg)
    except FileNotFoundError:
        return None
    low = room(space.free, open_chunks, cfg.compression != "none") <= 0
    return {"total_bytes": space.total, "free_bytes": space.free, "chunk_bytes": space.chunks,
            "reserve_bytes": RESERVE, "low": low, "advice": advice(cfg, space)[1] if low else None}
