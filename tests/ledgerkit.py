"""Helpers of the ledger tests: every record exactly once in the bucket (spoolup's own
`.spoolup` keys aside), and every object recorded in the segments spoolup wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

from crashkit import describe_difference
from helpers import get, list_keys, objects_of, pending_uploads
from spoolup import ledger

OBJECT_KEY = "{name}"  # the object-key of the tests using assert_recorded()


def exactly_once(s3, bucket: str, expected: dict[str, bytes]) -> dict[str, list[str]]:
    """Each base key's objects, in index order, are exactly its spool bytes (every record
    once, in order); nothing else but spoolup's own `.spoolup` keys; no upload pending."""
    layout = {}
    for base, data in expected.items():
        keys = objects_of(s3, bucket, base)
        bodies = [get(s3, bucket, k) for k in keys]
        assert all(bodies), f"{base}: an empty object among {keys}"
        got = b"".join(bodies)
        assert got == data, f"{base}: {len(got)} bytes in {keys} for {len(data)}; {describe_difference(got, data)}"
        layout[base] = keys
    ours = {k for ks in layout.values() for k in ks}
    others = [k for k in list_keys(s3, bucket) if k not in ours and not k.startswith(".spoolup/")]
    assert others == [], f"unexpected objects: {others}"
    assert pending_uploads(s3, bucket) == [], "multipart uploads left pending"
    return layout


def assert_recorded(sp, s3) -> None:
    """Every log object in the bucket has its ledger record in the segments spoolup itself
    wrote (the coordinator's ledger stage, before the object became visible): a record at its
    key whose size and ETag are the object's.  The catch-up tests rely on these segments alone."""
    prefix = ledger.agent_prefix(OBJECT_KEY, ledger.default_agent_id(sp.spool))
    segs = [ledger.Segment.decode(get(s3, sp.bucket, k)) for k in list_keys(s3, sp.bucket, prefix, own=True)]
    by_key: dict[str, list[ledger.Record]] = {}
    for seg in segs:
        for r in seg.records:
            by_key.setdefault(r.final_key, []).append(r)
    for key in list_keys(s3, sp.bucket):
        head = s3.head_object(Bucket=sp.bucket, Key=key)
        assert any(r.matches(head["ContentLength"], head["ETag"]) for r in by_key.get(key, ())), \
            f"{key} ({head['ContentLength']} bytes, ETag {head['ETag']}) has no ledger record: {by_key.get(key)}"


def copy_state(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)  # as `cp -a` (the service is stopped)
