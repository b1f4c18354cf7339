"""Reading the ledger from the bucket: an agent's segment keys after a number (one LIST), a
segment's records (one GET each), and whether records' objects are in the bucket (a HEAD
each, or one listing per key when a key has many) -- for the start-up check and the
bring-forward (spoolup/catchup.py).  The format is spoolup/ledger.py.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from spoolup import ledger
from spoolup.ledger import Record, Segment
from spoolup.s3 import CLIENT_ERRORS, S3, restore_key, translate

LIST_PER_KEY = 8  # a key with at least this many records is listed (one page per 1000 objects) rather than HEADed


def _listing(s3: S3, prefix: str, start_after: str | None = None, max_keys: int | None = None
             ) -> Iterator[tuple[str, int, str]]:
    """(key, size, ETag without quotes) under `prefix`, in key order, after `start_after`."""
    args: dict[str, Any] = {"Bucket": s3.bucket, "Prefix": prefix, "EncodingType": "url"}
    if start_after:
        args["StartAfter"] = start_after
    if max_keys:
        args["MaxKeys"] = max_keys
    try:
        while True:
            page = s3.client.list_objects_v2(**args)
            contents = page.get("Contents", []) or []
            encoded = s3._encoded("ListObjectsV2", page, [o["Key"] for o in contents])
            for o in contents:
                yield restore_key(o["Key"], encoded), int(o.get("Size", 0)), str(o.get("ETag", "")).strip('"')
            if max_keys or not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]
            args.pop("StartAfter", None)
    except CLIENT_ERRORS as e:
        raise translate(e, "ListObjectsV2", prefix) from None


def after(s3: S3, object_key: str, agent: str, seq: int, *, first_only: bool = False) -> list[str]:
    """The agent's segment keys numbered above `seq`, in order.  first_only: one LIST request
    of one key (the start-up check: is there anything at all?)."""
    prefix = ledger.agent_prefix(object_key, agent)
    start = ledger.segment_key(object_key, agent, seq) if seq > 0 else None
    found = [k for k, _, _ in _listing(s3, prefix, start, 1 if first_only else None)
             if (ledger.seq_of(k) or 0) > seq]
    return found


def read(s3: S3, key: str) -> Segment:
    try:
        body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    except CLIENT_ERRORS as e:
        raise translate(e, "GetObject", key) from None
    return Segment.decode(body)


def in_bucket(s3: S3, records: Iterable[Record]) -> list[Record]:
    """The records whose object is at its final key with the size and ETag they give (an
    object that is not is an intention a crash cut short, or was deleted or overwritten
    since: not shipped by this record)."""
    by_key: dict[str, list[Record]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    out: list[Record] = []
    for key, group in by_key.items():
        if len(group) >= LIST_PER_KEY:
            listed = {k: (size, etag) for k, size, etag in _listing(s3, key)}
            out.extend(r for r in group if r.final_key in listed and r.matches(*listed[r.final_key]))
        else:
            for r in group:
                head = s3.head(r.final_key)
                # (a HEAD's size of 0 is no size, as for Protocol.is_ours: spoolup never writes an
                # empty object, and a proxy in between may answer a HEAD with Content-Length: 0;
                # the ETag, the MD5 of a non-empty body or the parts', still has to match)
                if head is not None and r.matches(head.get("size") or r.size, head.get("etag")):
                    out.append(r)
    return out
