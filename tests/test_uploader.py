"""In-process tests of the upload process's coordinator (spoolup/coordinator.py Uploader) and of
the object protocol's steps, against a real journal file and a real S3 server (moto, Ceph
RGW): no mocks.  The tests choose the order in which results are harvested, so the
interleavings of issue 18 (key races, stale results) are reproduced deterministically.
"""

from __future__ import annotations

import pytest

from spoolup import logs, protocol, status
from spoolup.chunks import part_file
from spoolup.work import Basis, Claimed, Done, KeyTaken, PartDone, PartsMismatch, Started, UploadGone
from helpers import get, pending_uploads
from uploadkit import NONE, HeldExecutor, Rig, drive, future_of, lines, settle

pytestmark = pytest.mark.s3_servers("moto", "rgw")

MiB = 1 << 20
KEY = "app/x.log"


# ---------------------------------------------------------------------------
# issue 18 item 1: KeyTaken with a later object of the key already started


def test_key_taken_while_a_later_object_has_an_upload_moves_both_in_order(make_spoolup, s3, bucket):
    """An object meets a foreign object at its claimed key while the next object of the key
    already has an upload id: both move on (in record order), the later one's upload is
    aborted, nothing else stops.  Before: `contextlib.suppress(S3Error)(abort)` raised
    TypeError inside harvest's transaction -- the process died, and again after every restart."""
    rig = Rig(make_spoolup)
    a_parts = [lines(5 * MiB, "a"), lines(3000, "a-tail")]
    b_parts = [lines(5 * MiB, "b"), lines(2000, "b-tail")]
    a = rig.add(KEY, a_parts)
    b = rig.add(KEY, b_parts)
    up = rig.uploader()
    j = rig.journal
    # claim a; start a + claim b; a's parts + start b
    drive(up, lambda: j.object(b).upload_id is not None
          and all(c.state == "uploaded" for c in j.chunks_of(a)), what="a's parts sent and b started")
    assert j.object(a).final_key == KEY and j.object(a).state == "closed"
    foreign = b"someone else's object\n"
    s3.put_object(Bucket=bucket, Key=KEY, Body=foreign)  # between a's claim and its Complete
    settle(up)  # a's Complete finds it: KeyTaken
    drive(up, lambda: j.object(b).state == "done", what="both objects done")
    assert get(s3, bucket, KEY) == foreign
    assert j.object(a).final_key == f"{KEY}-1" and j.object(b).final_key == f"{KEY}-2"
    assert get(s3, bucket, f"{KEY}-1") == b"".join(a_parts)
    assert get(s3, bucket, f"{KEY}-2") == b"".join(b_parts)
    assert pending_uploads(s3, bucket) == []
    up.close()


# ---------------------------------------------------------------------------
# issue 18 item 2: a result is journaled only if the state it was computed for still holds


def index_of(key: str) -> int:
    return int(key.rsplit("-", 1)[1]) if key != KEY else 0


def shipped(rig, s3, bucket, objects: dict[int, list[bytes]]) -> None:
    """Every object done, byte-exact at its journaled key, in record order (index order is
    object order), and no multipart upload left behind."""
    j = rig.journal
    final = {oid: j.object(oid).final_key for oid in objects}
    assert all(j.object(oid).state == "done" for oid in objects), final
    for oid, parts in objects.items():
        assert get(s3, bucket, final[oid]) == b"".join(parts), final[oid]
    order = sorted(objects)
    assert [index_of(final[o]) for o in order] == sorted(index_of(final[o]) for o in order), final
    assert len({final[o] for o in order}) == len(order), final
    assert pending_uploads(s3, bucket) == []


def test_claim_computed_before_a_key_taken_moved_the_earlier_object_is_dropped(make_spoolup, s3, bucket):
    """b's claim is computed while a holds index 0; then a meets a foreign object there and is
    moved.  Before, b's stale claim was journaled (index 1) and a re-claimed index 2: index
    order was no longer record order."""
    rig = Rig(make_spoolup)
    a_parts, b_parts = [lines(3000, "a")], [lines(2000, "b")]
    a = rig.add(KEY, a_parts, closed=False)  # open: multipart, started before it completes
    b = rig.add(KEY, b_parts)
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal
    settle(up)  # a claims index 0
    assert j.object(a).final_key == KEY
    up.schedule()  # a's start intent (a ledger segment, before its Create), claim b
    ex.compute(future_of(up, "claim", b))  # b: index 1, after a's 0 -- held
    ex.deliver(future_of(up, "ledger", 0))
    up.harvest()
    up.schedule()  # start a
    s3.put_object(Bucket=bucket, Key=KEY, Body=b"foreign\n")
    ex.deliver(future_of(up, "start", a))  # a: KeyTaken
    up.harvest()
    assert j.object(a).idx is None
    ex.deliver(future_of(up, "claim", b))
    up.harvest()
    assert j.object(b).idx is None, "a claim computed after a's old index was journaled"
    rig.close(a)
    drive(up, lambda: j.object(b).state == "done", what="both done")
    assert get(s3, bucket, KEY) == b"foreign\n"
    shipped(rig, s3, bucket, {a: a_parts, b: b_parts})


def _b_started_when_a_meets_a_foreign_object(make_spoolup, s3, bucket):
    """Two objects of KEY: a claims KEY and starts, b claims KEY-1 and its Create runs, its
    result held; then a foreign object takes KEY, a's Complete meets it (KeyTaken) and both
    objects give up their keys.  Returns the rig, the executor, the uploader and what shipped."""
    rig = Rig(make_spoolup)
    a_parts = [lines(5 * MiB, "a"), lines(3000, "a-tail")]
    b_parts = [lines(5 * MiB, "b"), lines(2000, "b-tail")]
    a = rig.add(KEY, a_parts)
    b = rig.add(KEY, b_parts)
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal
    settle(up)  # a claims index 0
    settle(up)  # a's start intent (before its Create), b claims index 1
    settle(up)  # a starts, b's start intent
    assert j.object(a).upload_id is not None and j.object(b).final_key == f"{KEY}-1"
    up.schedule()  # a's parts, b's start
    ex.compute(future_of(up, "start", b))  # b's upload created at KEY-1 -- its result held
    s3.put_object(Bucket=bucket, Key=KEY, Body=b"foreign\n")
    for part in (1, 2):
        ex.deliver(future_of(up, "part", a, part))
    up.harvest()
    up.schedule()  # a's ledger record: before its Complete (issue 22, record before visible)
    ex.deliver(future_of(up, "ledger", 0))
    up.harvest()
    up.schedule()  # a's Complete
    ex.deliver(future_of(up, "complete", a))  # KeyTaken: a and b unclaimed
    up.harvest()
    assert j.object(a).idx is None and j.object(b).idx is None
    return rig, ex, up, a, b, {a: a_parts, b: b_parts}


def test_started_harvested_after_its_object_moved_is_aborted(make_spoolup, s3, bucket):
    """b's CreateMultipartUpload succeeds at its claimed key; before its result is journaled,
    the earlier object a meets a foreign object and both move on.  Before, b's upload id was
    journaled anyway: b kept an upload of a key it no longer had (leaked for good on RGW; on
    moto the object landed at the old key while the journal said another)."""
    rig, ex, up, a, b, expected = _b_started_when_a_meets_a_foreign_object(make_spoolup, s3, bucket)
    j = rig.journal
    ex.deliver(future_of(up, "start", b))
    up.harvest()
    assert j.object(b).upload_id is None, "an upload id journaled for a key the object gave up"
    drive(up, lambda: j.object(b).state == "done", what="both done")
    assert get(s3, bucket, KEY) == b"foreign\n"
    shipped(rig, s3, bucket, expected)


def test_no_index_skipped_for_a_later_objects_stale_create(make_spoolup, s3, bucket):
    """The torture's unexplained index gap (seed 7001): b's Create at its claimed key KEY-1 is
    on the wire when a meets a foreign object and both give up their keys.  Before, a claimed
    again at once, found b's upload at KEY-1 (b's stale Create, ours, not yet aborted) and
    took it for someone else's: index 1 was skipped, then b's upload aborted, and the bucket
    held nothing at KEY-1 that explained the gap.  The key's objects now claim only once our
    own transient upload there is gone: a at KEY-1, b at KEY-2."""
    rig, ex, up, a, b, expected = _b_started_when_a_meets_a_foreign_object(make_spoolup, s3, bucket)
    j = rig.journal
    # whatever a is given to do meanwhile (claim, start) finishes before b's stale start does
    for _ in range(3):
        up.schedule()
        for task, future in list(up.inflight.items()):
            if (task.object_id == a and task.kind.value in ("claim", "start")) or task.kind.value == "ledger":
                ex.deliver(future)
        up.harvest()
    ex.deliver(future_of(up, "start", b))  # stale: b's upload at KEY-1 is aborted
    up.harvest()
    drive(up, lambda: j.object(b).state == "done", what="both done")
    assert get(s3, bucket, KEY) == b"foreign\n"
    assert (j.object(a).final_key, j.object(b).final_key) == (f"{KEY}-1", f"{KEY}-2")
    shipped(rig, s3, bucket, expected)


def test_part_of_a_vanished_upload_harvested_after_the_restart_is_dropped(make_spoolup, s3, bucket, monkeypatch):
    """Part 1 is uploaded to the object's upload; the upload vanishes (aborted outside
    spoolup) and part 2 finds it gone, which restarts the object.  Part 1's ETag, of the old
    upload, arrives after: it must not be journaled as a part of the new one."""
    # moto answers 500 to UploadPart of an aborted upload: ask S3 at once whether it exists
    monkeypatch.setattr(protocol, "CHECK_UPLOAD_AFTER", 0)
    rig = Rig(make_spoolup)
    parts = [lines(5 * MiB, "a"), lines(3000, "a-tail")]
    a = rig.add(KEY, parts)
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal
    settle(up)  # claim
    settle(up)  # start intent
    settle(up)  # start
    old = j.object(a).upload_id
    assert old is not None
    up.schedule()  # parts 1 and 2
    ex.compute(future_of(up, "part", a, 1))  # sent to the old upload -- held
    s3.abort_multipart_upload(Bucket=bucket, Key=KEY, UploadId=old)
    ex.deliver(future_of(up, "part", a, 2))  # NoSuchUpload: UploadGone
    up.harvest()
    assert j.object(a).upload_id is None
    ex.deliver(future_of(up, "part", a, 1))
    up.harvest()
    assert [c.state for c in j.chunks_of(a)] == ["sealed", "sealed"], "a part of a vanished upload journaled"
    up.failures.clear()  # (the restart's backoff: this test does not wait it out)
    drive(up, lambda: j.object(a).state == "done", what="a done")
    shipped(rig, s3, bucket, {a: parts})


def _stale(kind: str, j, oid: int):
    """A result of `kind` computed for the object's state, then a change of that state that
    makes it stale; returns (result, check of the journal after it was offered)."""
    j.claim(oid, 0, KEY, "multipart")
    j.set_upload_id(oid, "U1")
    basis = Basis.of(j.object(oid))
    if kind == "Claimed":
        j.unclaim(oid)
        unclaimed = Basis.of(j.object(oid))
        j.claim(oid, 1, f"{KEY}-1", "multipart")
        j.unclaim(oid)
        return (Claimed(unclaimed, 0, KEY, "multipart", None), lambda o: o.idx is None)
    if kind == "Started":
        j.unclaim(oid)
        return Started(Basis(oid, basis.claim_gen, KEY, None), "U2"), lambda o: o.upload_id is None
    if kind == "PartDone":
        j.reset_upload(oid)
        j.set_upload_id(oid, "U2")
        return (PartDone(basis, 1, '"e1"', "m"), lambda o: [c.state for c in j.chunks_of(oid)] == ["sealed"])
    if kind == "Done":
        j.unclaim(oid)
        return Done(basis, '"e"', "completed"), lambda o: o.state != "done"
    if kind == "KeyTaken":
        j.unclaim(oid)
        j.claim(oid, 1, f"{KEY}-1", "multipart")
        return KeyTaken(basis), lambda o: o.final_key == f"{KEY}-1"
    if kind == "UploadGone":
        j.reset_upload(oid)
        j.set_upload_id(oid, "U2")
        return UploadGone(basis), lambda o: o.upload_id == "U2"
    assert kind == "PartsMismatch"
    j.reset_upload(oid)
    j.set_upload_id(oid, "U2")
    j.record_parts([(oid, 1, '"e2"', "m")])
    return PartsMismatch(basis, (1,)), lambda o: [c.state for c in j.chunks_of(oid)] == ["uploaded"]


@pytest.mark.parametrize("kind", ["Claimed", "Started", "PartDone", "Done", "KeyTaken", "UploadGone",
                                  "PartsMismatch"])
def test_every_kind_of_stale_result_is_dropped(make_spoolup, kind):
    """Each result the workers return, offered after the object's claim or upload changed:
    the journal is left as it is, the result is counted as stale, and what the call created
    that is spoolup's own is cleaned up (a stale Started: its upload aborted; a stale Done:
    its copy at the key given up removed, if it is this object's)."""
    rig = Rig(make_spoolup)
    oid = rig.add(KEY, [lines(1000, "a")], closed=False)
    ex = HeldExecutor()
    up = rig.uploader(ex)
    j = rig.journal
    result, unchanged = _stale(kind, j, oid)
    before = j.object(oid)
    with j.transaction():
        actions = up._apply(result)
    assert j.object(oid) == before and unchanged(j.object(oid))
    assert up.stats["stale"] == 1
    for action in actions:
        action()
    cleanups = sorted(t.kind.value for t in up.inflight)
    assert cleanups == {"Started": ["abort"], "Done": ["discard"]}.get(kind, [])
    # owed in the journal from the result's own transaction: an upload process started after a
    # crash before the cleanup ran (or before S3 confirmed it) finds it, and carries it out
    assert sorted(c.kind for c in j.cleanups_owed()) == {"Started": ["upload"], "Done": ["discard"]}.get(kind, [])
    assert sorted(t.kind.value for t in rig.uploader(HeldExecutor()).cleanups) == cleanups


# ---------------------------------------------------------------------------
# issue 18 item 3: an unexpected exception quarantines one object, the rest ships


def test_unreadable_chunk_quarantines_its_object_and_the_others_ship(make_spoolup, s3, bucket, tmp_path):
    """One object's chunk file cannot be read (a directory stands in its place): an exception
    nothing expects.  That object is quarantined (status, metric, one error line with the
    traceback) and tried again slowly; the other object ships meanwhile, and the quarantined
    one ships once the cause is gone.  Before, it was retried as a transient S3 failure with
    the short backoff, forever, and never reported as quarantined."""
    # the in-process log to a file of this test's: logs.setup is process-wide, and an earlier test
    # in the worker may have pointed it at a stream that is no longer read
    log_file = tmp_path / "uploader.log"
    logs.setup(level="info", fmt="json", log_file=str(log_file))
    rig = Rig(make_spoolup)
    bad_parts, good_parts = [lines(4000, "bad")], [lines(3000, "good")]
    bad = rig.add("app/bad.log", bad_parts)
    good = rig.add("app/good.log", good_parts)
    path = part_file(rig.cfg.chunk_dir, bad, 1, NONE)
    path.unlink()
    path.mkdir()
    up = rig.uploader()
    j = rig.journal
    drive(up, lambda: j.object(good).state == "done", what="the good object done")
    assert get(s3, bucket, "app/good.log") == b"".join(good_parts)
    quarantined = status.collect(rig.cfg)["quarantined_objects"]
    assert [(q["object_id"], q["code"]) for q in quarantined] == [(bad, "IsADirectoryError")], quarantined
    out = log_file.read_text()
    logged = [line for line in out.splitlines() if "object quarantined" in line]
    assert len(logged) == 1 and "unexpected error" in logged[0], logged
    rest = out[out.index(logged[0]):]  # the line and what follows it (JSON: the traceback is in the line)
    assert "Traceback" in rest and "IsADirectoryError" in rest, out
    failure = next(f for t, f in up.failures.items() if t.object_id == bad)
    assert failure.attempts == 1  # not retried at once: it waits out the quarantine backoff
    settle(up)
    assert next(f for t, f in up.failures.items() if t.object_id == bad).attempts == 1
    # the cause is gone: at its next attempt it ships, and is no longer quarantined
    path.rmdir()
    path.write_bytes(b"".join(bad_parts))
    up.failures = {t: type(f)(f.attempts, 0.0) for t, f in up.failures.items()}
    drive(up, lambda: j.object(bad).state == "done", what="the quarantined object done")
    assert get(s3, bucket, "app/bad.log") == b"".join(bad_parts)
    assert status.collect(rig.cfg)["quarantined_objects"] == []
    assert pending_uploads(s3, bucket) == []
