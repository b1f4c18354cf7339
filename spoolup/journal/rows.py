"""The journal's rows: the typed rows of its tables, the batch of one ingest commit, and
the conversions between them and SQLite (paths as text or bytes, rows to dataclasses)."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Iterable


# The values of the state columns (and of objects.mode).  A StrEnum compares equal to the
# string SQLite stores, so rows read back hold plain strings and the schema is unchanged.


class SourceState(StrEnum):
    ACTIVE = "active"  # read by ingest
    ERROR = "error"  # (schema < 4; now quarantined entries)
    REFUSED = "refused"  # (schema < 4; now quarantined entries)
    REAPED = "reaped"  # shipped and deleted from the spool
    GONE = "gone"  # left the spool (deleted or moved away by someone else)


class ObjectState(StrEnum):
    OPEN = "open"  # taking records
    CLOSED = "closed"  # complete on spoolup's side, waiting for its upload
    DONE = "done"  # complete in the bucket


class ChunkState(StrEnum):
    OPEN = "open"  # being written
    SEALED = "sealed"  # a whole part, not uploaded yet
    UPLOADED = "uploaded"  # its UploadPart succeeded (or its object is done)


class UploadMode(StrEnum):
    MULTIPART = "multipart"
    SINGLE = "single"  # one PutObject


# the values as the journal's statements spell them: f"... WHERE state = '{DONE}'"
ACTIVE, REAPED = SourceState.ACTIVE, SourceState.REAPED
OPEN, CLOSED, DONE = ObjectState.OPEN, ObjectState.CLOSED, ObjectState.DONE
CHUNK_OPEN, SEALED, UPLOADED = ChunkState.OPEN, ChunkState.SEALED, ChunkState.UPLOADED
MULTIPART, SINGLE = UploadMode.MULTIPART, UploadMode.SINGLE

# The objects not done, as the per-turn queries of the upload process select them: through the
# index objects_state, so that their cost follows the objects in flight, not the journal's
# history of done objects (kept PRUNE_AFTER, a week: a scan of every row at every turn grew with it)
NOT_DONE_ROWS = "objects o INDEXED BY objects_state"
NOT_DONE = f"o.state IN ('{OPEN}', '{CLOSED}')"
# The claimed objects not done (migrations/0010): the queries of what to ship next, through the
# partial index objects_claimed, so that their cost follows the objects being shipped, not the
# unclaimed ones waiting behind them (a drain of 50,000 new keys has 50,000).  The WHERE of such
# a query must spell CLAIMED: SQLite uses a partial index only for the terms it was declared with.
CLAIMED_ROWS = "objects o INDEXED BY objects_claimed"
CLAIMED = f"{NOT_DONE} AND o.idx IS NOT NULL"

LIVE_SOURCE_STATES = (SourceState.ACTIVE, SourceState.ERROR, SourceState.REFUSED)
# the same, as the SQL list that the partial index sources_live is declared with (a query uses
# that index only when its WHERE spells the same list)
LIVE_SOURCE_STATES_SQL = "(" + ", ".join(f"'{s}'" for s in LIVE_SOURCE_STATES) + ")"



@dataclass
class SourceRow:
    id: int
    dev: int
    ino: int
    path: str
    key_path: str
    offset: int
    size: int
    mtime: float
    state: SourceState
    error: str | None
    tail: bytes | None = None  # digest of the consumed bytes just before offset (spoolup/identity.py)
    btime: int | None = None  # birth time (ns) where the filesystem records one

    def __post_init__(self):
        self.state = SourceState(self.state)  # read back from SQLite as the plain string


@dataclass
class ObjectRow:
    id: int
    key: str
    ts: str
    state: ObjectState
    idx: int | None
    final_key: str | None
    mode: UploadMode | None
    upload_id: str | None
    size: int
    records: int
    created: float
    last_write: float
    closed_at: float | None = None
    close_reason: str | None = None
    done_at: float | None = None
    etag: str | None = None
    key_suffix: str = ""  # object-key-suffix: after the index, before .gz/.zst
    form: str | None = None  # the options it was started with (JSON, spoolup/form.py)
    claim_gen: int = 0  # version of its claim: bumped by claim, unclaim, reset_upload (spoolup/work.py)
    ledger_seq: int | None = None  # the ledger segment recording it at final_key (spoolup/ledger.py); < 0: -seq of
    # the segment holding only its start intent (multipart: its Create may be sent, its Complete not yet)
    checksum: str | None = None  # "<algorithm>:<value>" of its stored bytes, as its ledger record says
    origin: str | None = None  # "<journal id>/<object id>" of a done object brought in from the ledger
    upload_checksum: str | None = None  # the flexible-checksum algorithm its multipart upload was created with

    def __post_init__(self):
        # (by a dict, not the enum's call: the upload process reads many rows a turn)
        self.state = _OBJECT_STATES.get(self.state) or ObjectState(self.state)
        self.mode = None if self.mode is None else _UPLOAD_MODES.get(self.mode) or UploadMode(self.mode)


_OBJECT_STATES = {s.value: s for s in ObjectState}
_UPLOAD_MODES = {m.value: m for m in UploadMode}
_OBJECT_FIELDS = tuple(ObjectRow.__dataclass_fields__)


@dataclass
class ChunkRow:
    object_id: int
    part: int
    length: int
    state: ChunkState
    part_size: int | None
    md5: str | None
    etag: str | None
    checksum: str | None = None  # "<algorithm>:<base64>" of the part as sent (spoolup/checksums.py)

    def __post_init__(self):
        self.state = ChunkState(self.state)


@dataclass
class Batch:
    """Everything one ingest batch changes, committed in one transaction.

    The chunk bytes it refers to are written (and with fsync, synced) before
    `Journal.commit_batch` is called: invariant 1."""

    # source id -> (offset, size, mtime, tail: the digest of the bytes before its offset)
    sources: dict[int, tuple[int, int, float, bytes | None]] = field(default_factory=dict)
    new_objects: list[ObjectRow] = field(default_factory=list)
    objects: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # id -> (size, records, last_write)
    closed: dict[int, tuple[str, float]] = field(default_factory=dict)  # id -> (reason, at)
    # (object id, part) -> (length, state, part_size)
    chunks: dict[tuple[int, int], tuple[int, ChunkState, int | None]] = field(default_factory=dict)
    source_objects: set[tuple[int, int]] = field(default_factory=set)
    dead_letters: dict[int, tuple[str, int, int, str]] = field(default_factory=dict)  # source -> (path, n, bytes, reason)
    counters: dict[str, int] = field(default_factory=dict)
    heads: dict[int, bytes | None] = field(default_factory=dict)  # source -> first bytes (fingerprint)
    # (object id, source id) -> the spans [start, end) of the source written into the object in
    # this batch, in order, adjacent ones merged (journal table object_ranges)
    ranges: dict[tuple[int, int], list[list[int]]] = field(default_factory=dict)
    # source id -> offset: its skip_ranges ending at or before it are passed (deleted with the batch)
    skips_passed: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.sources or self.new_objects or self.objects or self.closed or self.chunks or self.dead_letters
        )

    @property
    def seals(self) -> int:
        return sum(1 for (_l, state, _p) in self.chunks.values() if state == ChunkState.SEALED)


def db_path(path: str) -> str | bytes:
    """A spool path as the journal stores it: text, or (a name that is not UTF-8, which
    Python holds with surrogate escapes) its bytes as a BLOB."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def fs_path(value: str | bytes) -> str:
    """The journal's path back as Python's str for the filesystem (surrogate escapes)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _source(r: sqlite3.Row) -> SourceRow:
    return SourceRow(
        r["id"], r["dev"], r["ino"], fs_path(r["path"]), fs_path(r["key_path"]), r["offset"], r["size"], r["mtime"],
        r["state"], r["error"], r["tail"], r["btime"],
    )


def _object(r) -> ObjectRow:
    """An objects row (sqlite3.Row or dict with every column) as an ObjectRow."""
    return ObjectRow(*[r[k] for k in _OBJECT_FIELDS])


def _ids(ids: Iterable[int]) -> str:
    return json.dumps(sorted(ids))


