"""What a claim and a small object cost in S3 requests (issue 20), counted at the fault proxy
in front of a real S3 server (moto, Ceph RGW): the conditional PutObject is the claim, and
listings are cached per window of indexes (spoolup/claims.py), flat in the key's history.
Counts, not timings."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from spoolup import ledger
from spoolup.capabilities import HONOURED, ensure_capabilities
from helpers import get, pending_uploads
from uploadkit import Rig, drive, lines

pytestmark = pytest.mark.s3_servers("moto", "rgw")

KEY = "app/x.log"


def rig_with_caps(make_spoolup, proxy) -> Rig:
    """A rig behind the proxy whose protocol knows what the server honours (the probe made,
    as a running upload process has after its first seconds)."""
    rig = Rig(make_spoolup, url=proxy.url)
    caps = ensure_capabilities(rig.cfg, rig.client, rig.journal)
    if caps.put_if_none_match != HONOURED:
        pytest.skip(f"the server does not honour If-None-Match on PutObject ({caps.put_if_none_match})")
    return rig


def add_history(rig: Rig, key: str, n: int) -> None:
    """Objects key, key-1, ..., key-(n-1) in the bucket, and the last one in the journal as
    this journal's previous object of the key (done): the key's history."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: rig.client.client.put_object(Bucket=rig.cfg.bucket, Key=key + (f"-{i}" if i else ""),
                                                             Body=b"old\n"), range(n)))
    oid = rig.add(key, [b"last of the history\n"])
    rig.journal.claim(oid, n - 1, f"{key}-{n - 1}", "single")
    rig.journal.complete_if(oid, rig.journal.object(oid).claim_gen, '"x"')


def segment_puts(proxy, rig: Rig, since: float) -> int:
    """PutObjects of the ledger's segments (<static prefix>.spoolup/ledger/...)."""
    return sum(ledger.is_ledger_key(rig.cfg.object_key, r.key) for r in proxy.requests("PutObject", since=since))


def test_a_small_object_costs_one_put_once_conditional_writes_are_known(make_spoolup, proxy, bucket):
    """30 single-part objects of one key, and 30 of 30 other keys: one conditional PutObject
    each; no HEAD, and the listings do not grow with the objects (one window of the key's
    indexes 1-99, pending uploads at most once per two seconds); the ledger's segments
    record the burst in few PUTs: at most 1.1 requests per object in all.  Before: a
    ListObjectsV2 of the key's prefix per object (its pages growing with the key's history);
    then a segment per one or two objects (the key's run claims one object per turn)."""
    rig = rig_with_caps(make_spoolup, proxy)
    up = rig.uploader()
    up.work.caps = ensure_capabilities(rig.cfg, rig.client, rig.journal)
    j = rig.journal
    bodies = {rig.add(KEY, [lines(300, f"a{i}")]): lines(300, f"a{i}") for i in range(30)}
    objects = {o: KEY for o in bodies}
    for i in range(30):
        o = rig.add(f"other/{i}.log", [lines(300, f"b{i}")])
        bodies[o], objects[o] = lines(300, f"b{i}"), f"other/{i}.log"
    since = time.time()
    started = time.monotonic()
    drive(up, lambda: all(j.object(o).state == "done" for o in objects), rounds=400, what="all shipped")
    seconds = time.monotonic() - started
    ops = {op: proxy.count(op, since=since) for op in ("PutObject", "HeadObject", "ListObjects",
                                                       "ListMultipartUploads")}
    segments = segment_puts(proxy, rig, since)
    assert ops["PutObject"] - segments == 60, (ops, segments)
    # the ledger's segments (a record of every object before it is visible) come per wave of
    # ready objects, not per object: requests per small object, segments included, <= 1.1
    assert segments >= 1
    assert ops["HeadObject"] == 0, ops
    assert ops["ListObjects"] == 1, ops  # app/x.log- (indexes 1-99); the other keys have index 0 only
    assert ops["ListMultipartUploads"] <= 1 + seconds / 2, (ops, seconds)
    total = len(proxy.requests(since=since))
    assert total == sum(ops.values()), [r.op for r in proxy.requests(since=since)]
    assert total / 60 <= 1.1, (ops, segments)
    finals = [j.object(o).final_key for o in objects if objects[o] == KEY]
    assert finals == [KEY] + [f"{KEY}-{i}" for i in range(1, 30)]
    for o, body in bodies.items():
        assert get(rig.client.client, rig.cfg.bucket, j.object(o).final_key) == body
    up.close()


def test_a_claim_after_a_long_history_lists_one_window(make_spoolup, proxy, bucket):
    """After 1,100 objects of a key (two pages of a listing of its prefix), the next claim
    lists one window of about a hundred indexes (one request), and the claims after it none.
    Before: every claim listed all 1,100 keys (two ListObjectsV2 pages), each time."""
    rig = rig_with_caps(make_spoolup, proxy)
    add_history(rig, KEY, 1100)
    new = [rig.add(KEY, [lines(200, f"n{i}")]) for i in range(3)]
    up = rig.uploader()
    up.work.caps = ensure_capabilities(rig.cfg, rig.client, rig.journal)
    j = rig.journal
    since = time.time()
    drive(up, lambda: all(j.object(o).state == "done" for o in new), rounds=100, what="shipped")
    assert [j.object(o).final_key for o in new] == [f"{KEY}-1100", f"{KEY}-1101", f"{KEY}-1102"]
    listings = [r.query.get("prefix", [""])[0] for r in proxy.requests("ListObjects", since=since)]
    assert listings == [f"{KEY}-11"], listings
    assert proxy.count("PutObject", since=since) == 3 + segment_puts(proxy, rig, since)
    assert segment_puts(proxy, rig, since) == 1  # the three are ready in one wave: one segment records them
    assert proxy.count("HeadObject", since=since) == 0
    for i, o in enumerate(new):
        assert get(rig.client.client, rig.cfg.bucket, j.object(o).final_key) == lines(200, f"n{i}")
    up.close()


def test_a_key_found_taken_lists_its_window_again(make_spoolup, proxy, bucket):
    """The window of a key's indexes is listed once; another writer then puts an object at the
    next index and a compressed one at the index after.  The conditional PutObject finds the
    first (412): the window is listed again and shows the second, so the object takes the
    index after both (s3()'s rule), and the foreign objects keep their bytes."""
    rig = rig_with_caps(make_spoolup, proxy)
    up = rig.uploader()
    up.work.caps = ensure_capabilities(rig.cfg, rig.client, rig.journal)
    j = rig.journal
    first = [rig.add(KEY, [lines(200, f"f{i}")]) for i in range(2)]
    drive(up, lambda: all(j.object(o).state == "done" for o in first), rounds=100, what="first two")
    assert [j.object(o).final_key for o in first] == [KEY, f"{KEY}-1"]
    raw = rig.client.client
    raw.put_object(Bucket=rig.cfg.bucket, Key=f"{KEY}-2", Body=b"theirs\n")
    raw.put_object(Bucket=rig.cfg.bucket, Key=f"{KEY}-3.gz", Body=b"theirs, compressed\n")
    since = time.time()
    third = rig.add(KEY, [lines(200, "t")])
    drive(up, lambda: j.object(third).state == "done", rounds=100, what="third")
    assert j.object(third).final_key == f"{KEY}-4"
    assert [r.query.get("prefix", [""])[0] for r in proxy.requests("ListObjects", since=since)] == [f"{KEY}-"]
    assert get(raw, rig.cfg.bucket, f"{KEY}-2") == b"theirs\n"
    assert get(raw, rig.cfg.bucket, f"{KEY}-3.gz") == b"theirs, compressed\n"
    assert get(raw, rig.cfg.bucket, f"{KEY}-4") == lines(200, "t")
    assert pending_uploads(raw, rig.cfg.bucket) == []
    up.close()


def test_a_small_body_is_sent_at_once_a_part_after_100_continue(make_spoolup, proxy, bucket):
    """botocore sends every PutObject and UploadPart with `Expect: 100-continue`, and waits for
    the server's interim answer before the body: a round trip more per small object on a remote
    S3 (two per PutObject where one would do).  A body spoolup holds in memory (a small object,
    a ledger segment) is now sent at once, as the AWS SDK for Go v2 does below 2 MiB; a part,
    streamed from its chunk file, still waits for the server's go-ahead.  The objects are in
    the bucket byte for byte either way."""
    rig = Rig(make_spoolup, url=proxy.url)
    up = rig.uploader()
    j = rig.journal
    small, big = lines(3000, "small"), [lines(5 * 1024 * 1024, "big"), lines(2000, "tail")]
    objects = {rig.add("app/small.log", [small]): small, rig.add("app/big.log", big): b"".join(big)}
    since = time.time()
    drive(up, lambda: all(j.object(o).state == "done" for o in objects), rounds=200, what="both shipped")
    puts = [r for r in proxy.requests("PutObject", since=since) if r.status == 200]
    parts = [r for r in proxy.requests("UploadPart", since=since) if r.status == 200]
    assert {r.key for r in puts} >= {"app/small.log"} and len(parts) == 2, ([r.key for r in puts], len(parts))
    assert [r.key for r in puts if "expect" in r.headers] == [], "a small body waited for 100-continue"
    assert [r.headers.get("expect") for r in parts] == ["100-continue"] * 2
    for o, body in objects.items():
        assert get(rig.client.client, rig.cfg.bucket, j.object(o).final_key) == body
    up.close()


def test_a_part_over_http_is_read_once_only_to_be_sent(make_spoolup, s3server, bucket):
    """Over plain http botocore signs every part's body with SHA-256, so spoolup sends no
    Content-MD5 and (without a flexible checksum) hashes nothing: the part file is read once,
    by the request.  It was read a second time beforehand, only to count its bytes -- a tenth
    of the upload process's CPU in the CPU-per-byte figure.  Counted as opens of the part
    files (an audit hook), with the object byte-exact in the bucket."""
    rig = Rig(make_spoolup, url=s3server.url)
    up = rig.uploader()
    j = rig.journal
    big = [lines(5 * 1024 * 1024, "big"), lines(2000, "tail")]
    oid = rig.add("app/big.log", big)
    opened: list[str] = []
    chunk_dir = str(rig.cfg.chunk_dir)

    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(chunk_dir) and "r" in str(args[1]):
            opened.append(args[0])

    sys.addaudithook(hook)
    drive(up, lambda: j.object(oid).state == "done", rounds=200, what="shipped")
    assert len(opened) == 2 and len(set(opened)) == 2, opened  # each part once: its UploadPart
    assert get(rig.client.client, rig.cfg.bucket, "app/big.log") == b"".join(big)
    opened.clear()
    chunk_dir = "\0"  # (audit hooks cannot be removed: this one records nothing from here on)
    up.close()
