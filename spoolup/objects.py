"""The rotation policy: which object a record goes to, and when an object is complete.

Pure functions of (state, record, now), with no I/O, so that hypothesis can
check them exhaustively (tests/test_rotation.py).  They reproduce syslog-ng's
s3() destination:

* a record goes to the open object of its (key, timestamp);
* a timestamp newer than the key's newest (string comparison, as s3() does)
  completes the object of the newest timestamp and opens a new one;
* an older timestamp goes to a backfill object of its own (key, timestamp);
* an object is completed once its size reaches max-object-size: it may exceed
  it only by the record that crossed it, records are never split (a record
  larger than max-object-size fills an object of its own or completes the one
  it goes into);
* with compression, "size" is the stored size: the compressed bytes produced so
  far, as s3() counts them (see blind_bytes);
* an object is completed after flush-grace-period without a new record;
* with max-object-age (spoolup's addition, Fluent Bit's upload_timeout; off by default, as
  s3() has none), an object is completed that long after its first record, however busy:
  the next record goes to the next object (aged, due);
* an object has at most MAX_PARTS parts.

Indexes (-1, -2, ...) are not chosen here: a completed object is never
reopened, so the next object of the same (key, timestamp) takes the next free
index, resolved against the bucket when the upload process claims it
(protocol.Protocol.claim, scheduled by coordinator.Uploader).
"""

from __future__ import annotations

import os

from dataclasses import dataclass
from typing import AbstractSet, Iterable, Protocol

MAX_PARTS = 10_000  # S3's limit on parts of one multipart upload
# The most a compressor emits beyond the bytes it is fed: what it held back from earlier
# input.  zlib emits a deflate block of at most 16,384 symbols (< 100 KiB), zstd a block of
# at most 128 KiB + 3; the overhead of stored/raw blocks is well under 1/256.
STORED_SLACK = 256 << 10
MAX_PART_SIZE = 5 << 30  # S3's limit on the size of one part (and of one PutObject)


@dataclass(frozen=True)
class Route:
    """Where a record for some key goes."""

    close: tuple[str, ...]  # timestamps of this key whose open objects are completed first
    reuse: bool  # True: append to the open object of (key, ts); False: open a new one
    newest: str  # the key's newest timestamp once this record is routed


def route(newest_ts: str | None, open_ts: AbstractSet[str], ts: str) -> Route:
    """Route a record with timestamp `ts` of a key whose newest timestamp is
    `newest_ts` (None: never seen) and whose open objects have timestamps `open_ts`."""
    if newest_ts is not None and ts > newest_ts:
        return Route(close=(newest_ts,) if newest_ts in open_ts else (), reuse=False, newest=ts)
    newest = ts if newest_ts is None else newest_ts
    return Route(close=(), reuse=ts in open_ts, newest=newest)


def take(obj_size: int, max_object_size: int, data: bytes, start: int, end: int) -> tuple[int, bool]:
    """How much of data[start:end] (whole newline-terminated records) an object
    holding `obj_size` bytes takes.  Returns (stop, full): data[start:stop] goes
    into the object; `full` says the object reached max-object-size with the
    record ending at `stop` and must be completed."""
    room = max_object_size - obj_size
    if end - start < room:
        return end, False
    # the record that crosses max-object-size is the one holding byte start + room - 1
    nl = data.find(b"\n", start + max(room, 1) - 1, end)
    if nl < 0:  # no newline left: a final record taken verbatim (idle tail)
        return end, True
    return nl + 1, True


def blind_bytes(stored: int, max_object_size: int, slack: int = STORED_SLACK) -> int:
    """How many raw bytes may be compressed into an object holding `stored` compressed
    bytes before its stored size is looked at again.  Fewer than this cannot bring it to
    max-object-size (a compressor emits at most input * (1 + 1/256) + slack), so no record
    among them can be the one that crosses it; 0 means: look after every record.  Writing
    records in runs of up to blind_bytes thus completes objects after exactly the records
    that writing and checking them one by one (as s3() does) would."""
    room = max_object_size - stored - slack
    return max(0, room - room // 256 - 1)


def cut(data: bytes, start: int, end: int, blind: int) -> int:
    """Where a run of whole newline-terminated records of data[start:end] written without
    looking ends: after the last record that ends within `blind` bytes, or after the first
    record when none does (a tail without newline: `end`)."""
    if end - start <= blind:
        return end
    if blind > 0:
        nl = data.rfind(b"\n", start, start + blind)
        if nl >= 0:
            return nl + 1
    nl = data.find(b"\n", start, end)
    return end if nl < 0 else nl + 1


class Timed(Protocol):
    last_write: float
    created: float


def expired(objects: Iterable[Timed], now: float, grace_seconds: float) -> list:
    """Open objects without a new record for flush-grace-period (s3(): modified_at + grace <= now)."""
    return [o for o in objects if o.last_write + grace_seconds <= now]


def aged(created: float, now: float, max_age_seconds: float | None) -> bool:
    """An object opened (its first record) at `created` is complete by max-object-age at `now`
    (None: max-object-age off).  Checked both when a record is routed (it then goes to the next
    object) and by the periodic expiry (an object completes in time even when no record comes):
    a record arriving at or after created + max_age never lands in the object, so every object's
    records arrived within max_age of its first one."""
    return max_age_seconds is not None and created + max_age_seconds <= now


def due(objects: Iterable[Timed], now: float, grace_seconds: float,
        max_age_seconds: float | None = None) -> list[tuple[Timed, str]]:
    """The open objects to complete at `now`, each with its reason: "flush-grace-period"
    (expired) or else "max-object-age" (aged)."""
    out: list[tuple[Timed, str]] = []
    for o in objects:
        if o.last_write + grace_seconds <= now:
            out.append((o, "flush-grace-period"))
        elif aged(o.created, now, max_age_seconds):
            out.append((o, "max-object-age"))
    return out


def full_by_parts(sealed_parts: int) -> bool:
    """An object whose parts reached S3's limit must be completed."""
    return sealed_parts >= MAX_PARTS


def max_part_size() -> int:
    """MAX_PART_SIZE; the tests lower it (SPOOLUP_TEST_MAX_PART_SIZE) to check the seal rule
    against it without writing 5 GiB parts, as crash.py's points are set from the environment."""
    override = os.environ.get("SPOOLUP_TEST_MAX_PART_SIZE")
    return int(override) if override else MAX_PART_SIZE
