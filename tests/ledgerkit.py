"""Helpers of the ledger tests: every record exactly once in the bucket (spoolup's own
`.spoolup` keys aside), and the ledger segment of objects a spoolup without the ledger
stage shipped (so that the catch-up can be tested on its own)."""

from __future__ import annotations

from pathlib import Path

from crashkit import describe_difference, journal_path
from helpers import get, list_keys, objects_of, pending_uploads
from spoolup import identity, ledger
from spoolup.journal import Journal

OBJECT_KEY = "{name}"  # the object-key of the tests using recorded()


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


def _journal_rows(path: Path) -> tuple[str, list[dict]]:
    j, _before, _applied = Journal.copy_in_memory(path)  # (with its -wal: never touches the files)
    try:
        rows = [vars(o) for o in j.claimed_unfinished()]
        done = [o for o in (j.object(i) for i in range(1, j.max_object_id() + 1)) if o is not None]
        return j.journal_id, [vars(o) for o in done if o.state == "done"] + rows
    finally:
        j.close()


def recorded(sp, s3) -> None:
    """Every object in the bucket has a ledger record: the segments spoolup wrote, or, for
    objects a spoolup without the ledger stage shipped, one segment written here as that
    stage writes it (the journal's row, the bucket's size and ETag, the spool bytes it holds)."""
    agent = ledger.default_agent_id(sp.spool)
    prefix = ledger.agent_prefix(OBJECT_KEY, agent)
    segs = [ledger.Segment.decode(get(s3, sp.bucket, k)) for k in list_keys(s3, sp.bucket, prefix)]
    have = {r.final_key for seg in segs for r in seg.records}
    jid, rows = _journal_rows(journal_path(sp))
    records = []
    for o in rows:
        key = o["final_key"]
        if o["state"] != "done" or key in have or key not in list_keys(s3, sp.bucket, key):
            continue
        head = s3.head_object(Bucket=sp.bucket, Key=key)
        body = get(s3, sp.bucket, key)
        path = sp.spool / o["key"]
        data = path.read_bytes()
        at = data.find(body)
        assert at >= 0 and data.find(body, at + 1) < 0, f"{key}: its bytes once in {path}"
        st = path.stat()
        head_bytes = data[:identity.HEAD_BYTES]
        spans = ledger.SourceSpans(st.st_dev, st.st_ino, identity.birth_time(path=path), len(head_bytes),
                                   ledger.head_digest(head_bytes), o["key"], ((at, at + len(body)),))
        records.append(ledger.Record(jid, o["id"], o["key"], o["ts"], o["idx"], key, o["mode"], o["records"],
                                     o["size"], head["ContentLength"], head["ETag"].strip('"'), None, (spans,)))
    if records:
        seq = max([s.seq for s in segs], default=0) + 1
        seg = ledger.Segment(agent, jid, seq, 0.0, tuple(records))
        s3.put_object(Bucket=sp.bucket, Key=ledger.segment_key(OBJECT_KEY, agent, seq), Body=seg.encode())


