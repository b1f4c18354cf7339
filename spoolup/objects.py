"""The rotation policy: which object a record goes to, and when an object is complete.

Pure functions of (state, record, now), with no I/O, so that hypothesis can
check them exhaustively (tests/test_rotation.py).  They reproduce syslog-ng's
s3() destination:

* a record goes to the open object of its (key, timestamp);
* a timestamp newer than the key's newest (string comparison, as s3() does)
  completes the object of the newest timestamp and opens a new one;
* an older timestamp goes to a backfill object of its own (key, timestamp);
* an object is completed once its size reaches max-object-size: it may exceed
  it only by the record that crossed it, records are never split;
* an object is completed after flush-grace-period without a new record;
* an object has at most MAX_PARTS parts.

Indexes (-1, -2, ...) are not chosen here: a completed object is never
reopened, so the next object of the same (key, timestamp) takes the next free
index, resolved against the bucket by the upload process (see upload.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Iterable, Protocol

MAX_PARTS = 10_000  # S3's limit on parts of one multipart upload


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


class Timed(Protocol):
    last_write: float


def expired(objects: Iterable[Timed], now: float, grace_seconds: float) -> list:
    """Open objects without a new record for flush-grace-period (s3(): modified_at + grace <= now)."""
    return [o for o in objects if o.last_write + grace_seconds <= now]


def full_by_parts(sealed_parts: int) -> bool:
    """An object whose parts reached S3's limit must be completed."""
    return sealed_parts >= MAX_PARTS
