"""Typed records the upload coordinator and its workers hand each other: tasks, the claim
each was computed for, and results.

Every result carries the Basis it was computed for (the object, its final key, its upload
id and the version of its claim, `claim_gen`).  The coordinator journals a result only if
its basis still holds (a compare-and-set in the journal), else drops it: the scheduler keeps
claim, start, part and complete calls of one key in flight together, and a KeyTaken or a
vanished upload can change an object's claim while another call for it is on the wire
(issue 18).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spoolup.journal import ObjectRow


class Kind(enum.Enum):
    CLAIM = "claim"
    START = "start"
    PART = "part"
    COMPLETE = "complete"
    ABORT = "abort"  # an upload of this journal's own left unused (cleanup)
    DISCARD = "discard"  # an object of this journal's own written at a key it gave up (cleanup)
    LEDGER = "ledger"  # a ledger segment (spoolup/ledgerstage.py): one in flight, object_id 0


@dataclass(frozen=True, slots=True)
class Task:
    """What one worker call is about: at most one in flight per task."""
    kind: Kind
    object_id: int
    part: int = 0  # PART: the part number
    upload_id: str = ""  # ABORT: the upload
    key: str = ""  # ABORT of the orphans a lost Create left at a key a claim gave up (Protocol.abort_orphans)
    cleanup: int = 0  # ABORT/DISCARD: its row in the journal's cleanups (deleted once S3 confirms it)


@dataclass(frozen=True, slots=True)
class Failure:
    """A task's failures in a row, and when it may be tried again (time.monotonic())."""
    attempts: int
    not_before: float


@dataclass(frozen=True, slots=True)
class Basis:
    """The state of the object a task was computed for."""
    object_id: int
    claim_gen: int
    final_key: str | None = None
    upload_id: str | None = None

    @classmethod
    def of(cls, obj: ObjectRow) -> "Basis":
        return cls(obj.id, obj.claim_gen, obj.final_key, obj.upload_id)


# ---------------------------------------------------------------------------
# results


@dataclass(frozen=True, slots=True)
class Claimed:
    basis: Basis
    idx: int
    final_key: str
    mode: str
    prev_idx: int | None  # the index of the previous object of the key it was computed after


@dataclass(frozen=True, slots=True)
class Started:
    basis: Basis
    upload_id: str  # created (or adopted) by this worker: spoolup's own
    how: str = "created"  # or "adopted": the orphan of a Create whose reply or journal entry was lost
    checksum_algorithm: str | None = None  # the flexible checksum its parts carry (spoolup/checksums.py)
    # uploads at the key aborted before: a lost journal state's own, by content (Protocol.adopt)
    aborted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PartDone:
    basis: Basis
    part: int
    etag: str
    md5: str
    checksum: str | None = None  # "<algorithm>:<base64>" of the part as sent


@dataclass(frozen=True, slots=True)
class Done:
    basis: Basis
    etag: str
    how: str


@dataclass(frozen=True, slots=True)
class KeyTaken:
    """The claimed key holds (or is being written with) someone else's object: claim the next free index."""
    basis: Basis
    aborted: tuple[str, ...] = ()  # as for Started
    # empty uploads at the key aborted: this journal's own, the orphans of a Create whose id it never
    # journaled, which the start would have adopted were the key not someone else's (Protocol.adopt)
    orphans: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UploadGone:
    """The multipart upload no longer exists and the object is not in the bucket: start again."""
    basis: Basis


@dataclass(frozen=True, slots=True)
class PartsMismatch:
    basis: Basis
    parts: tuple[int, ...]  # part numbers to upload again


@dataclass(frozen=True, slots=True)
class CleanedUp:
    """An ABORT or DISCARD task finished."""
    what: str


@dataclass(frozen=True, slots=True)
class Recorded:
    """Ledger segment `seq` (at `key`) is in the bucket, recording each entry's object as of its
    basis: (basis, a single-part object's body MD5, checksum).  `damaged`: (object id, error) of
    objects left out because their chunk file cannot be read as journaled.  `started`: the
    multipart objects whose start intent (at the basis's claim) the segment holds."""
    seq: int
    key: str
    entries: tuple[tuple[Basis, str | None, str | None], ...]
    damaged: tuple[tuple[int, Exception], ...] = ()
    started: tuple[Basis, ...] = ()


@dataclass(frozen=True, slots=True)
class LedgerClash:
    """Segment `seq` exists already (someone else writes with this agent id): the highest
    segment number the bucket holds for the agent is `seen`."""
    seq: int
    key: str
    seen: int


Result = Claimed | Started | PartDone | Done | KeyTaken | UploadGone | PartsMismatch | CleanedUp | Recorded | LedgerClash
