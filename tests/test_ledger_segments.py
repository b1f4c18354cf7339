"""The ledger's segments (issue 22, rules 1 and 2): every object's record is in the bucket
before the PutObject / CompleteMultipartUpload that makes the object visible, one segment
serves every object ready at once, and a segment number another writer holds is never
overwritten.  Real S3 endpoints (moto, Ceph RGW), a real journal; the order of results is
chosen with a held worker pool (tests/uploadkit.py), never by sleeping.
"""

from __future__ import annotations

import pytest

from crashkit import write
from helpers import get, list_keys
from spoolup import config, keys, ledger, protocol
from uploadkit import HeldExecutor, Rig, drive, future_of, lines, settle

pytestmark = pytest.mark.s3_servers("moto", "rgw")

MiB = 1024 * 1024


@pytest.fixture
def cached_pending(monkeypatch):
    """One listing of the pending uploads serves the claims for the whole test: which claims the
    journal's thread makes itself (the caches tell their index) and which go to a worker (a
    listing is needed) does not depend on how fast the test runs."""
    monkeypatch.setattr(protocol, "PENDING_TTL", 3600.0)


def segments(s3, bucket: str, cfg) -> list[ledger.Segment]:
    keys = list_keys(s3, bucket, ledger.agent_prefix(cfg.object_key, cfg.agent), own=True)
    return [ledger.Segment.decode(get(s3, bucket, k)) for k in keys]


def test_one_segment_records_a_burst_before_any_object_is_visible(make_spoolup, s3, bucket, cached_pending):
    rig = Rig(make_spoolup)
    big = [lines(5 * MiB, "big"), lines(4000, "big-tail")]
    ids = {"app/big.log": rig.add("app/big.log", big, closed=False)}
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal
    drive(up, lambda: all(c.state == "uploaded" for c in j.chunks_of(ids["app/big.log"])), what="big's parts uploaded")
    # an open object has its start intent (written before its Create), not its record
    assert (j.object(ids["app/big.log"]).ledger_seq or 0) < 0, "an open object recorded"
    bodies = {f"app/{n}.log": lines(3000 + n, f"k{n}") for n in range(5)}
    ids.update({key: rig.add(key, [data]) for key, data in bodies.items()})
    rig.close(ids["app/big.log"])
    up.schedule()  # the small ones claim (in the journal's thread: no request), then the segment
    assert all(j.object(o).idx is not None for o in ids.values())
    kinds = sorted(t.kind.value for t in up.inflight)
    assert kinds.count("ledger") == 1 and "start" not in kinds and "complete" not in kinds, kinds
    assert list_keys(s3, bucket) == [], "an object visible before its record"
    ex.deliver(future_of(up, "ledger", 0))
    up.harvest()
    seqs = {j.object(o).ledger_seq for o in ids.values()}
    assert len(seqs) == 1 and None not in seqs, seqs
    drive(up, lambda: all(j.object(o).state == "done" for o in ids.values()), what="every object done")
    intent, segment = segments(s3, bucket, rig.cfg)
    assert [(r.object, r.final_key, r.started) for r in intent.records] == [(ids["app/big.log"], "app/big.log", True)]
    assert segment.seq == seqs.pop() and segment.journal == j.journal_id
    by_key = {r.final_key: r for r in segment.records}
    assert set(by_key) == set(ids)
    for key, oid in ids.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        record = by_key[key]
        assert (record.object, record.mode) == (oid, "multipart" if key == "app/big.log" else "single")
        assert record.matches(head["ContentLength"], head["ETag"]), (record, head)
    assert get(s3, bucket, "app/big.log") == b"".join(big)


def test_a_segment_waits_for_the_claims_of_its_wave_only(make_spoolup, s3, bucket, cached_pending):
    """Rule 2 with listing-free claims: a's claim lands while b1's is in flight (b2 follows b1,
    its key's next object): the segment waits for them, not for d, which arrived meanwhile --
    one segment for a, b1, b2 (and d0, d's key's first object, claimed in the journal's thread
    meanwhile: no request).  d, whose claim needs a listing (index 1: its window), is then
    recorded alone in the turn its claim lands.  Before: a was recorded alone the moment its
    claim landed, b1 and b2 one segment each.  (The claims of a and b1 are made on workers:
    the uploader has no listing of pending uploads yet -- no reconcile seeded it.)"""
    rig = Rig(make_spoolup)
    j = rig.journal
    bodies = {"a": lines(2000, "a"), "b1": lines(2000, "b1"), "b2": lines(2000, "b2"), "d0": lines(2000, "d0"),
              "d": lines(2000, "d")}
    ids = {n: rig.add(f"app/{n.rstrip('012')}.log", [bodies[n]]) for n in ("a", "b1", "b2")}
    ex = HeldExecutor()
    up = rig.uploader(ex)

    def ledger_inflight() -> bool:
        return any(t.kind.value == "ledger" for t in up.inflight)

    up.schedule()
    ex.deliver(future_of(up, "claim", ids["a"]))
    up.harvest()
    up.schedule()
    assert j.object(ids["a"]).idx is not None and not ledger_inflight(), "a recorded while b1's claim was in flight"
    ids["d0"] = rig.add("app/d.log", [bodies["d0"]])
    ids["d"] = rig.add("app/d.log", [bodies["d"]])
    ex.deliver(future_of(up, "claim", ids["b1"]))
    up.harvest()
    up.schedule()
    assert not ledger_inflight(), "recorded while b2 (b1's key's next object) could claim"
    assert j.object(ids["d0"]).idx == 0, "d0's claim (no request) was not made in the journal's thread"
    ex.deliver(future_of(up, "claim", ids["b2"]))
    up.harvest()
    up.schedule()
    assert ledger_inflight(), "the wave is claimed: its segment waits for nothing (d came after it)"
    future_of(up, "claim", ids["d"])  # (still in flight)
    ex.deliver(future_of(up, "ledger", 0))
    up.harvest()
    seqs = {n: j.object(o).ledger_seq for n, o in ids.items()}
    assert seqs["a"] is not None and seqs["a"] == seqs["b1"] == seqs["b2"] == seqs["d0"] and seqs["d"] is None, seqs
    ex.deliver(future_of(up, "claim", ids["d"]))
    up.harvest()
    up.schedule()
    assert ledger_inflight(), "a lone object's record waited"
    drive(up, lambda: all(j.object(o).state == "done" for o in ids.values()), what="every object done")
    assert [len(seg.records) for seg in segments(s3, bucket, rig.cfg)] == [4, 1]
    for n, o in ids.items():
        assert get(s3, bucket, j.object(o).final_key) == bodies[n]
    assert j.object(ids["b2"]).final_key == "app/b.log-1"
    up.close()


def test_a_multipart_upload_is_created_only_after_its_start_intent_is_in_the_bucket(make_spoolup, s3, bucket):
    """A claimed multipart object's CreateMultipartUpload waits for the segment holding its start
    intent (what lets a journal that lost the upload's id abort it: tests/test_start_intents.py)."""
    rig = Rig(make_spoolup)
    big = rig.add("app/big.log", [lines(5 * MiB, "big"), lines(4000, "big-tail")], closed=False)
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal
    drive(up, lambda: j.object(big).idx is not None, what="big claimed")
    up.schedule()
    kinds = sorted(t.kind.value for t in up.inflight)
    assert kinds == ["ledger"], kinds
    ex.compute(future_of(up, "ledger", 0))  # the segment is in the bucket; its result held
    (intent,) = segments(s3, bucket, rig.cfg)
    assert [(r.object, r.final_key, r.started, r.matches(0, "")) for r in intent.records] == \
        [(big, "app/big.log", True, False)]
    up.schedule()
    assert "start" not in {t.kind.value for t in up.inflight}, "Create sent before its intent was journaled"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    ex.deliver(future_of(up, "ledger", 0))
    up.harvest()
    assert j.object(big).ledger_seq == -intent.seq
    up.schedule()
    assert "start" in {t.kind.value for t in up.inflight}
    drive(up, lambda: all(c.state == "uploaded" for c in j.chunks_of(big)), what="big's parts uploaded")
    assert j.object(big).ledger_seq == -intent.seq and j.object(big).upload_id


def test_a_record_whose_claim_moved_is_dropped_and_written_again(make_spoolup, s3, bucket):
    """a's record is on the wire when a foreign object takes a's key and a's claim moves to
    the next index: the record (an intention at the old key) is not journaled, and a is
    recorded again at its new key before it is written there."""
    rig = Rig(make_spoolup)
    data = lines(3000, "a")
    a = rig.add("app/a.log", [data])
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal
    drive(up, lambda: j.object(a).idx is not None, what="a claimed")
    gen = j.object(a).claim_gen
    up.schedule()
    held = future_of(up, "ledger", 0)
    ex.compute(held)  # the segment is written; its result held
    s3.put_object(Bucket=bucket, Key="app/a.log", Body=b"foreign\n")
    # what a KeyTaken of a's PutObject does: the claims' cache learns the key is taken (claims
    # make no listing: the write at the key is the check), the journal gives up the claim
    up.work.indexes.taken(keys.key_prefix("app/a.log", ""), 0, "app/a.log")
    j.unclaim_if(a, gen)
    ex.deliver(held)
    up.harvest()
    assert j.object(a).ledger_seq is None, "a record of a claim the object gave up was journaled"
    drive(up, lambda: j.object(a).state == "done", what="a done")
    assert j.object(a).final_key == "app/a.log-1" and get(s3, bucket, "app/a.log-1") == data
    records = ledger.latest(r for seg in segments(s3, bucket, rig.cfg) for r in seg.records)
    (record,) = records.values()
    assert record.final_key == "app/a.log-1"
    assert [[r.final_key for r in seg.records] for seg in segments(s3, bucket, rig.cfg)] == [["app/a.log"],
                                                                                             ["app/a.log-1"]]


def test_a_segment_number_another_writer_holds_is_not_overwritten(make_spoolup, s3, bucket):
    """Another spoolup (a copied configuration) writes segment 1 under this agent id after this
    one's start-up check read the bucket: ours gets 412, says so naming the agent id, and goes
    on after the highest number in the bucket."""
    rig = Rig(make_spoolup, **{"agent-id": "shared-agent"})
    j = rig.journal
    theirs = ledger.Segment("shared-agent", "someone-else", 1, 0.0).encode()
    first = ledger.segment_key(rig.cfg.object_key, "shared-agent", 1)
    s3.put_object(Bucket=bucket, Key=first, Body=theirs)
    data = lines(3000, "a")
    a = rig.add("app/a.log", [data])
    up = rig.uploader()
    drive(up, lambda: j.object(a).state == "done", what="a done")
    assert get(s3, bucket, "app/a.log") == data
    assert get(s3, bucket, first) == theirs
    segs = segments(s3, bucket, rig.cfg)
    assert segs[0].encode() == theirs and [s.seq for s in segs][1:] and all(s.seq > 1 for s in segs[1:])
    (record,) = [rec for s in segs for rec in s.records]
    assert record.final_key == "app/a.log" and j.object(a).ledger_seq > 1
    error = j.last_error()
    assert error["code"] == "PreconditionFailed" and error["key"] == first, error
    assert "'shared-agent'" in error["message"] and "another spoolup" in error["message"]
    up.close()


def test_a_segment_in_the_bucket_at_start_is_read_not_overwritten(make_spoolup, s3):
    """A segment under this agent id that is in the bucket when drain starts is found by the
    start-up check (LEDGER rule 3): it is left alone and ours are numbered after it."""
    sp = make_spoolup(**{"object-key": "logs/{name}", "agent-id": "shared-agent"})
    cfg = config.load(sp.config)
    s3.create_bucket(Bucket=sp.bucket)
    theirs = ledger.Segment("shared-agent", "someone-else", 1, 0.0).encode()
    s3.put_object(Bucket=sp.bucket, Key=ledger.segment_key(cfg.object_key, "shared-agent", 1), Body=theirs)
    data = b"".join(b"record %d\n" % i for i in range(100))
    write(sp.spool / "a.log", data)
    sp.drain(check=True)
    assert get(s3, sp.bucket, "logs/a.log") == data
    segs = segments(s3, sp.bucket, cfg)
    assert segs[0].encode() == theirs and get(s3, sp.bucket, ledger.segment_key(cfg.object_key, "shared-agent", 1)) == theirs
    assert [s.seq for s in segs][1:] and all(s.seq > 1 for s in segs[1:])
    (record,) = [rec for s in segs for rec in s.records]
    assert record.final_key == "logs/a.log"
    st = sp.status()
    assert st["ledger"]["agent_id"] == "shared-agent" and st["ledger"]["seq"] >= 2
    assert st["ledger"]["objects_waiting_for_record"] == 0


def test_agent_id_is_checked(make_spoolup):
    sp = make_spoolup(**{"agent-id": "web-01.eu_1"})
    assert config.load(sp.config).agent == "web-01.eu_1"
    sp.write_config(**{"agent-id": None})
    assert config.load(sp.config).agent == ledger.default_agent_id(sp.spool)
    sp.write_config(**{"agent-id": "no/slashes"})
    with pytest.raises(config.ConfigError) as e:
        config.load(sp.config)
    assert "agent-id" in str(e.value) and "letters, digits" in str(e.value)


# ---------------------------------------------------------------------------
# is-ours by content (issue 22 item 5, rule 6)


@pytest.mark.parametrize("mode", ["single", "multipart"])
def test_our_id_with_other_content_at_the_key_is_someone_elses(make_spoolup, s3, bucket, mode):
    """The object at a's claimed key carries a's metadata id but other bytes (what a journal
    that went back in time meets: its rebuilt object a closes at another record).  Before, the
    id alone made it "found completed": a was journaled done and its records were in no object.
    Now it is someone else's object: a moves to the next index, the other object is left alone."""
    rig = Rig(make_spoolup)
    parts = [lines(3000, "a")] if mode == "single" else [lines(5 * MiB, "a"), lines(3000, "a-tail")]
    a = rig.add("app/a.log", parts)
    up = rig.uploader(HeldExecutor())
    j = rig.journal
    drive(up, lambda: j.object(a).idx is not None, what="a claimed")
    if mode == "multipart":
        drive(up, lambda: all(c.state == "uploaded" for c in j.chunks_of(a)), what="a's parts uploaded")
    other = parts[0][: len(parts[0]) // 2]  # a's first records, closing at another record
    s3.put_object(Bucket=bucket, Key="app/a.log", Body=other, Metadata={"spoolup-object": f"{j.journal_id}/{a}"})
    drive(up, lambda: j.object(a).state == "done", what="a done")
    assert j.object(a).final_key == "app/a.log-1"
    assert get(s3, bucket, "app/a.log-1") == b"".join(parts)
    assert get(s3, bucket, "app/a.log") == other


def test_claims_run_no_further_ahead_of_the_uploads_than_two_segments(make_spoolup, s3, bucket, cached_pending,
                                                                      monkeypatch):
    """Claims that need no request are made in the journal's thread, as many as are claimable:
    a drain of 50,000 new keys claimed all of them long before their PutObjects, and every
    per-turn query of the claimed objects then read all 50,000 (bench/scale.py: spoolup's CPU
    per object x1.4 from 2,000 to 20,000 keys).  Now at most CLAIMS_AHEAD (two segments' worth)
    claimed objects are not done; the rest are claimed as those ship, and a segment does not
    wait for claims that cannot come (rule 2).  Here with segments of 3 and 6 claims ahead:
    10 objects, never more than 6 claimed and not done, every byte shipped once."""
    from spoolup import coordinator
    monkeypatch.setattr(coordinator, "MAX_RECORDS", 3)
    monkeypatch.setattr(coordinator, "CLAIMS_AHEAD", 6, raising=False)
    rig = Rig(make_spoolup)
    bodies = {f"app/{n}.log": lines(1000 + n, f"k{n}") for n in range(10)}
    ids = {key: rig.add(key, [data]) for key, data in bodies.items()}
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal

    def claimed_not_done() -> int:
        return sum(1 for o in ids.values() if j.object(o).idx is not None and j.object(o).state != "done")

    drive(up, lambda: claimed_not_done() > 0, what="the first claims")  # (the first lists the pending uploads)
    up.schedule()  # the claims the caches now tell: in the journal's thread, up to CLAIMS_AHEAD
    assert claimed_not_done() == 6, "claims ran ahead of the uploads"
    assert "ledger" in [t.kind.value for t in up.inflight], "the segment waited for claims that cannot come"
    peak = 6
    for _ in range(40):
        if all(j.object(o).state == "done" for o in ids.values()):
            break
        settle(up)
        peak = max(peak, claimed_not_done())
    assert peak == 6
    assert all(j.object(o).state == "done" for o in ids.values())
    assert list_keys(s3, bucket) == sorted(bodies)
    for key, data in bodies.items():
        assert get(s3, bucket, key) == data
    records = [r.final_key for seg in segments(s3, bucket, rig.cfg) for r in seg.records]
    assert sorted(records) == sorted(bodies)  # each recorded once
