"""Uploads and scratch objects a crash or a lost reply leaves behind (issue 18 items 4 and 9).

* A crash between CreateMultipartUpload and the journaling of its id, or a Create whose
  replies are lost, leaves an empty upload at the claimed key.  spoolup adopts it (or aborts
  the extra ones): the object lands at the key s3() would give it, no upload is left behind,
  and a foreign upload is still never touched (docs/operations.md, "Uploads a lost Create
  reply leaves").
* A check-config killed during its capability probe leaves the probe's scratch object and
  upload: reconcile and the next check-config remove probe scratch older than a probe can
  take, whatever journal made it, and nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from crashkit import (assert_exact, crash_env, crash_mark, drain_crashing, noisy_lines, probe_complete_held, rows,
                      spoolup_cmd, write)
from faultproxy import PROBE_KEY, Rule
from helpers import get, list_keys, pending_uploads, wait_for
from spoolup import config as config_mod
from spoolup import logs
from spoolup.coordinator import Uploader
from spoolup.journal import Journal
from spoolup.s3 import S3
from spoolup.work import Failure, Kind, Task
from uploadkit import HeldExecutor, Rig, drive, future_of, lines, settle

MiB = 1024 * 1024

pytestmark = pytest.mark.s3_servers("moto", "rgw")

BIG = noisy_lines(30_000, seed=21)  # ~7.4 MiB: a multipart upload of 5 MiB + the rest
SMALL = noisy_lines(300, seed=22, tag="s")


def spoolup_at(make_spoolup, **options):
    return make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, **options})


def drained(sp, timeout: float = 180):
    r = sp.drain(timeout=timeout)
    assert r.returncode == 0, f"drain exited {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    return r


def stream_uploads(s3, bucket):
    """Pending uploads of the stream (the crash may also cut short the capability probe)."""
    return sorted(u for u in pending_uploads(s3, bucket) if PROBE_KEY not in u[0])


# ---------------------------------------------------------------------------
# item 4: the orphan of a Create


def test_crash_after_create_multipart_the_object_lands_at_the_bare_key(make_spoolup, s3):
    """SIGKILL right after CreateMultipartUpload took effect, before its id is journaled.  The
    empty upload used to count as someone else's: left pending for good, and the object moved
    to big.log-1 (the bare key never appeared)."""
    sp = spoolup_at(make_spoolup)
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-create-multipart", scope="service")
    assert [k for k, _ in stream_uploads(s3, sp.bucket)] == ["big.log"], "the crash left the unjournaled upload"
    r = drained(sp)
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG})
    assert layout["big.log"] == ["big.log"]
    assert pending_uploads(s3, sp.bucket) == []
    assert "adopted the empty upload" in r.stderr, r.stderr[-3000:]
    assert rows(sp, "errors", "code = ?", ("KeyTaken",)) == []


def test_lost_create_replies_leave_no_upload_and_end(make_spoolup, s3, proxy):
    """Every CreateMultipartUpload takes effect and its reply is lost (botocore sends each
    call up to 4 times), for six requests.  The object used to walk to the next index at each attempt
    (KeyTaken on its own orphans, counted as a success: no backoff), leaving every orphan
    behind.  Now the second attempt adopts one orphan and aborts the others: no Create more."""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"retry-max-delay": 1.0, "s3-timeout": 1.5})
    proxy.add("CreateMultipartUpload", action="reset-after", times=6)
    write(sp.spool / "big.log", BIG)
    drained(sp)
    creates = proxy.count("CreateMultipartUpload")
    # one call (botocore sends it at most 4 times): the next attempt adopts what it left
    assert 2 <= creates <= 4, f"{creates} CreateMultipartUpload: the orphans of the first call are adopted"
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG})
    assert layout["big.log"] == ["big.log"]
    assert pending_uploads(s3, sp.bucket) == []
    assert rows(sp, "errors", "code = ?", ("KeyTaken",)) == []


def test_a_create_retried_by_botocore_leaves_no_second_upload(make_spoolup, s3, proxy):
    """One Create reply is lost; botocore sends the call again and gets a second upload id.
    The first upload used to stay pending for good."""
    sp = spoolup_at(make_spoolup, url=proxy.url)
    proxy.add("CreateMultipartUpload", action="reset-after", times=1)
    write(sp.spool / "big.log", BIG)
    drained(sp)
    assert proxy.count("CreateMultipartUpload") == 2, "the lost reply was retried by botocore"
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG})
    assert layout["big.log"] == ["big.log"]
    assert pending_uploads(s3, sp.bucket) == []


def test_a_foreign_empty_upload_before_the_claim_is_left_alone(make_spoolup, s3):
    """An empty upload someone else started at the key before spoolup claimed it is not an
    orphan of spoolup's: never adopted nor aborted, its index skipped -- also when a crash
    after a Create of spoolup's makes the restarted process look for orphans."""
    sp = spoolup_at(make_spoolup)
    s3.create_bucket(Bucket=sp.bucket)
    theirs = s3.create_multipart_upload(Bucket=sp.bucket, Key="big.log")["UploadId"]
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-create-multipart", scope="service")
    assert [r["final_key"] for r in rows(sp, "objects")] == ["big.log-1"]
    drained(sp)
    assert pending_uploads(s3, sp.bucket) == [("big.log", theirs)], "their upload is alive"
    s3.abort_multipart_upload(Bucket=sp.bucket, Key="big.log", UploadId=theirs)
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG})
    assert layout["big.log"] == ["big.log-1"]


def test_a_foreign_upload_holding_a_part_is_never_adopted(make_spoolup, s3):
    """After a crash between Create and its journal entry, the claimed key holds the orphan and
    an upload of someone else's with a part: the orphan is aborted (ours), theirs left alone,
    the object takes the next index."""
    sp = spoolup_at(make_spoolup)
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-create-multipart", scope="service")
    (orphan,) = stream_uploads(s3, sp.bucket)
    theirs = s3.create_multipart_upload(Bucket=sp.bucket, Key="big.log")["UploadId"]
    s3.upload_part(Bucket=sp.bucket, Key="big.log", UploadId=theirs, PartNumber=1, Body=b"theirs\n")
    drained(sp)
    assert pending_uploads(s3, sp.bucket) == [("big.log", theirs)], "only their upload is left"
    s3.abort_multipart_upload(Bucket=sp.bucket, Key="big.log", UploadId=theirs)
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG})
    assert layout["big.log"] == ["big.log-1"]


def test_a_key_taken_after_failed_starts_keeps_the_backoff(make_spoolup, s3, bucket, proxy):
    """The object's Create replies are lost (its start fails), then the key turns out taken by
    someone else's upload holding a part.  That KeyTaken used to count as a success: the
    failures were forgotten and the next claim ran at once, so under lost replies the object
    walked from index to index without any backoff.  Now its next claim waits as the next
    attempt would (attempts carried over), and its own orphans are aborted, theirs left."""
    rig = Rig(make_spoolup, url=proxy.url, **{"s3-timeout": 1.5})
    parts = [lines(5 * MiB, "a"), lines(3000, "a-tail")]
    a = rig.add("big.log", parts)
    up = rig.uploader(HeldExecutor())
    j = rig.journal
    settle(up)  # claim
    assert j.object(a).final_key == "big.log"
    settle(up)  # its start intent (a ledger segment, before its Create)
    proxy.add("CreateMultipartUpload", action="reset-after")
    settle(up)  # start: every reply of the Create lost
    start = Task(Kind.START, a)
    assert up.failures[start].attempts == 1
    proxy.clear()
    assert pending_uploads(s3, bucket), "the lost Creates took effect"
    theirs = s3.create_multipart_upload(Bucket=bucket, Key="big.log")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="big.log", UploadId=theirs, PartNumber=1, Body=b"theirs\n")
    up.failures[start] = Failure(1, 0.0)  # (its backoff over: the test does not wait it out)
    settle(up)  # start again: KeyTaken
    assert j.object(a).idx is None, "the object gave up the key"
    claim = up.failures.get(Task(Kind.CLAIM, a))
    assert claim is not None and claim.attempts == 2, "a KeyTaken after a failed start reset the backoff"
    assert pending_uploads(s3, bucket) == [("big.log", theirs)], "our orphans aborted, theirs left alone"
    up.failures[Task(Kind.CLAIM, a)] = Failure(2, 0.0)
    drive(up, lambda: j.object(a).state == "done", what="done")
    assert j.object(a).final_key == "big.log-1"
    assert get(s3, bucket, "big.log-1") == b"".join(parts)
    assert pending_uploads(s3, bucket) == [("big.log", theirs)]


# ---------------------------------------------------------------------------
# the orphan of a Create at a key the object gives up (issue 22's state-loss torture, seed 9301)

TWO = noisy_lines(48_000, seed=23)  # ~11.8 MiB: with max-object-size 6 MiB, two multipart objects


class AtKey(Rule):
    """A fault rule for one key exactly (Rule.key is a substring: big.log would match big.log-1)."""

    def matches(self, op: str, key: str) -> bool:
        return key == self.key and super().matches(op, key)


def at_key(proxy, op: str, key: str, **kw) -> Rule:
    rule = AtKey((op,), "error", key=key, **kw)
    with proxy.lock:
        proxy.rules.append(rule)
    return rule


def test_an_orphan_at_a_key_its_object_gives_up_is_aborted(make_spoolup, s3, proxy):
    """Objects A (big.log) and B (big.log-1) are claimed; B's Create takes effect and the whole
    service is SIGKILLed before its id is journaled (A's Create is refused meanwhile).  Someone
    else then writes objects at both keys.  On restart B's start fails (a 500) and A's start
    finds their object: A gives up big.log and B, a later object of the key, gives up big.log-1
    with it.  B's orphan there used to be forgotten: no journal knew it any more, and every
    later start reported it as someone else's upload and skipped its index, for good (the
    torture's "upload left behind at torture/f2.log-202612020530-6").  Now giving up a claim
    a Create may have been sent for aborts the empty upload at its key, as the start would have
    adopted it."""
    sp = spoolup_at(make_spoolup, url=proxy.url, compression="none", **{"max-object-size": "6MiB"})
    write(sp.spool / "big.log", TWO)
    at_key(proxy, "CreateMultipartUpload", "big.log")  # A never starts: B's Create is the one killed
    drain_crashing(sp, "after-create-multipart", scope="service")
    proxy.clear()
    (a, b) = [(o["id"], o["final_key"], o["upload_id"]) for o in rows(sp, "objects", order_by="id")][:2]
    assert [a[1:], b[1:]] == [("big.log", None), ("big.log-1", None)], "A and B claimed, no upload id journaled"
    assert [k for k, _ in stream_uploads(s3, sp.bucket)] == ["big.log-1"], "the kill left B's orphan"
    theirs = {"big.log": b"their object at big.log\n", "big.log-1": b"their object at big.log-1\n"}
    for key, body in theirs.items():
        s3.put_object(Bucket=sp.bucket, Key=key, Body=body)

    # the restarted upload process, its worker results in the order the torture met them
    cfg = config_mod.load(sp.config)
    j = Journal.open(cfg.journal_path)
    up = Uploader(cfg, j, S3(cfg), logs.get("spoolup.upload"), executor=HeldExecutor())
    try:
        up.schedule()
        failing = at_key(proxy, "ListParts", "big.log-1")  # B's start lists the orphan's parts: 500
        up.pool.deliver(future_of(up, "start", b[0]))
        up.harvest()
        assert Task(Kind.START, b[0]) in up.failures and failing.hits, "B's start failed"
        proxy.clear()
        up.pool.deliver(future_of(up, "start", a[0]))  # their object at big.log: KeyTaken
        up.harvest()
        assert j.object(a[0]).idx is None and j.object(b[0]).idx is None, "A and B gave up their keys"
        drive(up, lambda: not up.cleanups, what="the cleanups done")
    finally:
        up.close()
        j.close()
    drained(sp)
    layout = assert_exact(s3, sp.bucket, {"big.log": TWO}, foreign=theirs)
    assert len(layout["big.log"]) == 2 and "big.log-1" not in layout["big.log"]


def test_orphans_of_a_start_in_flight_when_its_key_is_given_up_are_aborted(make_spoolup, s3, bucket, proxy):
    """B's start is in flight when A's KeyTaken moves B off big.log-1; then its Creates take
    effect and every reply is lost (the start fails).  The uploads they made used to stay pending
    for good: B's claim was gone, and a failed start has no upload id to abort.  Now the cleanup
    of the key B gave up waits for that start's result, then aborts the empty uploads there."""
    rig = Rig(make_spoolup, url=proxy.url, **{"s3-timeout": 1.5})
    a = rig.add("big.log", [lines(5 * MiB, "a"), lines(3000, "a-tail")])
    b = rig.add("big.log", [lines(5 * MiB, "b"), lines(3000, "b-tail")])
    theirs = b"their object\n"
    s3.put_object(Bucket=bucket, Key="big.log", Body=theirs)  # (index 0 is decided by the write at the key)
    up = rig.uploader(HeldExecutor())
    j = rig.journal
    for _ in range(20):  # claims and start intents; the starts are held in flight
        if {Task(Kind.START, a), Task(Kind.START, b)} <= set(up.inflight):
            break
        up.schedule()
        for task, future in list(up.inflight.items()):
            if task.kind is not Kind.START and future in up.pool.calls:
                up.pool.deliver(future)
        up.harvest()
    assert (j.object(a).final_key, j.object(b).final_key) == ("big.log", "big.log-1")
    up.pool.deliver(future_of(up, "start", a))  # their object at big.log: KeyTaken
    up.harvest()
    assert j.object(b).idx is None, "B gave up big.log-1 while its start was in flight"
    assert not up.cleanups, "the cleanup of big.log-1 waits for B's start"
    at_key(proxy, "CreateMultipartUpload", "big.log-1").action = "reset-after"
    up.pool.deliver(future_of(up, "start", b))  # its Creates take effect, every reply lost
    up.harvest()
    assert Task(Kind.START, b) in up.failures, "B's start failed"
    proxy.clear()
    assert [k for k, _ in pending_uploads(s3, bucket)] and {k for k, _ in pending_uploads(s3, bucket)} == {"big.log-1"}
    drive(up, lambda: not up.cleanups, what="the cleanup of big.log-1 done")
    assert pending_uploads(s3, bucket) == [], "the orphans of B's lost Creates are aborted"
    up.failures.clear()  # (the backoffs: this test does not wait them out)
    drive(up, lambda: j.object(b).state == "done", what="done")
    assert get(s3, bucket, "big.log") == theirs
    assert [j.object(o).final_key for o in (a, b)] == ["big.log-1", "big.log-2"]
    assert pending_uploads(s3, bucket) == []


def test_an_orphan_at_a_key_someone_elses_object_took_gets_no_part(make_spoolup, s3, proxy):
    """The kill after a Create of spoolup's, then someone else's object at the key: the orphan
    used to be adopted, every part sent to it, and only the Complete (412) found the key taken.
    Now the start sees their object first: the orphan is aborted, no part is sent to it, and
    the object takes the next index."""
    sp = spoolup_at(make_spoolup, url=proxy.url)
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-create-multipart", scope="service")
    assert [k for k, _ in stream_uploads(s3, sp.bucket)] == ["big.log"]
    theirs = {"big.log": b"their object\n"}
    s3.put_object(Bucket=sp.bucket, Key="big.log", Body=theirs["big.log"])
    since = time.time()
    r = drained(sp)
    assert [q.key for q in proxy.requests("UploadPart", since=since)
            if q.key == "big.log"] == [], "parts were sent to the orphan at a key someone else's object holds"
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG}, foreign=theirs)
    assert layout["big.log"] == ["big.log-1"]
    assert "aborted the empty upload" in r.stderr, r.stderr[-3000:]


# ---------------------------------------------------------------------------
# a kill between an unclaim's commit and its cleanup (issue 22's state-loss torture, seed 9304:
# uploads left pending, "not one this journal created", parts sent to an upload whose object gave
# up its key)


def held_head(proxy, key: str, gate: threading.Event) -> Rule:
    """Every HeadObject at exactly `key` waits for `gate` (then goes on to S3)."""
    rule = AtKey(("HeadObject",), "hook", key=key, hook=lambda _req: gate.wait(120))
    with proxy.lock:
        proxy.rules.append(rule)
    return rule


def journal_rows(sp, table: str) -> list[dict]:
    try:
        return rows(sp, table)
    except sqlite3.OperationalError:
        return []  # (no journal yet)


@pytest.mark.parametrize("left", ["upload", "orphan"])
def test_a_kill_right_after_an_unclaim_leaves_no_upload(make_spoolup, s3, proxy, left):
    """Objects A (big.log) and B (big.log-1); someone else's object is at big.log.  A's start is
    held at its HEAD until B has an upload: its id journaled and a part sent to it ("upload"), or
    its Create taken effect with the reply still on the wire ("orphan": B's start in flight).
    A's start then finds their object: A gives up big.log and B, a later object of the key,
    big.log-1 with it -- and the whole service is SIGKILLed right after that unclaim commits,
    before the cleanup of B's upload is sent.  The abort was an in-memory task: after the
    restart nothing knew the upload at big.log-1 was ours, it stayed pending for good (a part of
    B's own in it), its index skipped.  Now the cleanup is journaled in the unclaim's own
    transaction and the restarted upload process carries it out."""
    sp = spoolup_at(make_spoolup, url=proxy.url, compression="none",
                    **{"max-object-size": "6MiB", "retry-max-delay": 1.0})
    s3.create_bucket(Bucket=sp.bucket)
    theirs = {"big.log": b"their object at big.log\n"}
    s3.put_object(Bucket=sp.bucket, Key="big.log", Body=theirs["big.log"])
    write(sp.spool / "big.log", TWO)
    gate = threading.Event()
    held_head(proxy, "big.log", gate)  # A's start: the HEAD beside its listing of the key
    if left == "orphan":  # B's Create takes effect; its reply is held back (its start stays in flight)
        at_key(proxy, "CreateMultipartUpload", "big.log-1", delay=60).action = "delay"
    mark = crash_mark(sp)
    mark.unlink(missing_ok=True)
    log = open(sp.base / "killed-drain.log", "wb")
    p = subprocess.Popen(sp.argv("drain"), stdout=log, stderr=log,
                         env=crash_env(sp, "after-unclaim", scope="service", mark=mark), start_new_session=True)
    log.close()
    try:
        def b_has_an_upload() -> bool:
            objs = [o for o in journal_rows(sp, "objects") if o["final_key"] == "big.log-1"]
            if left == "orphan":
                return bool(objs) and [k for k, _ in stream_uploads(s3, sp.bucket)] == ["big.log-1"]
            return bool(objs) and objs[0]["upload_id"] is not None and any(
                c["object_id"] == objs[0]["id"] and c["state"] == "uploaded" for c in journal_rows(sp, "chunks"))

        try:
            wait_for(b_has_an_upload, 120, what="B's upload at big.log-1")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{(sp.base / 'killed-drain.log').read_text()[-6000:]}") from None
        gate.set()  # A's start goes on: their object at big.log -- KeyTaken, A and B unclaimed, killed
        p.wait(120)
    finally:
        gate.set()
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
        proxy.clear()
    assert mark.exists() and p.returncode == -9, f"not killed after the unclaim: exit {p.returncode}"
    assert all(o["idx"] is None for o in rows(sp, "objects")), "A and B gave up their keys"
    held = stream_uploads(s3, sp.bucket)
    assert held and {k for k, _ in held} == {"big.log-1"}, f"the kill left B's upload: {held}"
    parts = [s3.list_parts(Bucket=sp.bucket, Key=k, UploadId=u).get("Parts", []) for k, u in held]
    assert all(bool(p) == (left == "upload") for p in parts), parts

    drained(sp)
    layout = assert_exact(s3, sp.bucket, {"big.log": TWO}, foreign=theirs)
    assert layout["big.log"] == ["big.log-1", "big.log-2"], "an index skipped for a leftover upload of ours"
    assert rows(sp, "cleanups") == [], "a cleanup still owed once S3 confirmed it"


# ---------------------------------------------------------------------------
# item 9: a check-config killed during its probe


def killed_check_config(sp, proxy):
    """`spoolup check-config` SIGKILLed while its probe's Complete is held by the proxy."""
    with probe_complete_held(proxy) as held:
        p = subprocess.Popen(sp.argv("check-config"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=sp.env())
        try:
            assert held.wait(60), "the probe reached its Complete"
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)


def probe_scratch(s3, bucket):
    return ([k for k in list_keys(s3, bucket, own=True) if PROBE_KEY in k and not k.endswith("notes.txt")],
            [k for k, _ in pending_uploads(s3, bucket) if PROBE_KEY in k])


# the three commands that clean up on moto; on RGW (its listings of uploads and their Initiated)
# the drain's reconcile, which all three share
@pytest.mark.s3_servers("moto")
@pytest.mark.parametrize("cleaner", ["recover", "check-config", "drain"])
def test_a_killed_check_config_leaves_nothing_once_stale(make_spoolup, s3, proxy, cleaner):
    killed_check_config_leaves_nothing_once_stale(make_spoolup, s3, proxy, cleaner)


@pytest.mark.s3_servers("rgw")
def test_a_killed_check_config_leaves_nothing_once_stale_on_rgw(make_spoolup, s3, proxy):
    killed_check_config_leaves_nothing_once_stale(make_spoolup, s3, proxy, "drain")


def killed_check_config_leaves_nothing_once_stale(make_spoolup, s3, proxy, cleaner: str) -> None:
    sp = spoolup_at(make_spoolup, url=proxy.url)
    not_a_probe = ".spoolup-probe-check-notes.txt"  # named like one, but not a probe's scratch key
    s3.create_bucket(Bucket=sp.bucket)
    s3.put_object(Bucket=sp.bucket, Key=not_a_probe, Body=b"an operator's\n")
    killed_check_config(sp, proxy)
    keys, uploads = probe_scratch(s3, sp.bucket)
    assert [k for k in keys if ".spoolup-probe-check-" in k] and uploads, "the kill left the probe's scratch"
    assert all(".spoolup-probe-check-" in k for k in keys + uploads), (keys, uploads)
    # younger than a probe can take (1 h): a probe that may still run is left alone
    write(sp.spool / "a.log", SMALL)
    drained(sp)
    assert probe_scratch(s3, sp.bucket) == (keys, uploads)
    env = {**sp.env(), "SPOOLUP_TEST_PROBE_MAX_AGE": "0"}
    if cleaner == "drain":
        write(sp.spool / "b.log", SMALL)
        r = spoolup_cmd(sp, "drain", env=env, timeout=180)
    else:
        r = spoolup_cmd(sp, cleaner, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    said = r.stdout + r.stderr
    assert "abort the upload of an interrupted capability probe" in said, said[-3000:]
    assert "remove the scratch object of an interrupted capability probe" in said, said[-3000:]
    assert probe_scratch(s3, sp.bucket) == ([], [])
    assert pending_uploads(s3, sp.bucket) == []
    shipped = ["a.log", "b.log"] if cleaner == "drain" else ["a.log"]
    assert sorted(list_keys(s3, sp.bucket)) == sorted([not_a_probe, *shipped])
    assert s3.get_object(Bucket=sp.bucket, Key=not_a_probe)["Body"].read() == b"an operator's\n"


def test_a_deleted_journals_killed_probe_leaves_nothing_once_stale(make_spoolup, s3, proxy):
    """A service killed during its capability probe, then its state dir deleted (issue 22's
    torture --state-loss): the probe's scratch is named for a journal that no longer exists, so
    no reconcile takes it for its own.  It is removed as any journal's (or a check-config's)
    probe scratch is: once older than a probe can take (1 hour; lowered here), by the next
    reconcile -- and left alone while younger (a probe of another spoolup may still run)."""
    sp = spoolup_at(make_spoolup, url=proxy.url)
    write(sp.spool / "a.log", SMALL)
    with probe_complete_held(proxy) as held:
        p = subprocess.Popen(sp.argv("drain"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sp.env(),
                             start_new_session=True)
        try:
            assert held.wait(60), "the probe reached its Complete"
            os.killpg(p.pid, signal.SIGKILL)  # the whole service: main and upload process
        finally:
            p.wait(30)
    keys, uploads = probe_scratch(s3, sp.bucket)
    assert keys and uploads, "the kill left the probe's scratch"
    assert not any(".spoolup-probe-check-" in k for k in keys + uploads), (keys, uploads)  # a journal's probe
    shutil.rmtree(sp.state)
    more = noisy_lines(200, seed=23, tag="t")
    write(sp.spool / "a.log", more, "ab")
    drained(sp)  # a new journal: the scratch is not its own, and young
    assert probe_scratch(s3, sp.bucket) == (keys, uploads)
    write(sp.spool / "b.log", SMALL)
    r = spoolup_cmd(sp, "drain", env={**sp.env(), "SPOOLUP_TEST_PROBE_MAX_AGE": "0"}, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    said = r.stdout + r.stderr
    assert "abort the upload of an interrupted capability probe" in said, said[-3000:]
    assert probe_scratch(s3, sp.bucket) == ([], [])
    assert_exact(s3, sp.bucket, {"a.log": SMALL + more, "b.log": SMALL})


# ---------------------------------------------------------------------------
# a probe's CreateMultipartUpload sent twice: its reply lost, or later than s3-timeout (RGW's
# first writes to a new bucket: test_faults' rgw-500 run left the capability probe's upload)

LATE_REPLY = {"reply-lost": dict(action="reset-after"), "reply-after-timeout": dict(action="delay", delay=3.0)}


@pytest.mark.parametrize("command", ["drain", "check-config"])
@pytest.mark.parametrize("late", list(LATE_REPLY))
def test_a_capability_probe_create_sent_twice_leaves_no_upload(make_spoolup, s3, proxy, command, late):
    """The probe's Create takes effect but its reply never reaches spoolup; botocore sends it
    again and the probe goes on with the second upload's id.  Its cleanup aborted only the
    upload ids it knew: the first upload stayed pending for good (no reconcile aborts a
    check-config's, nor a running service's own until its next start)."""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"s3-timeout": 1.5})
    proxy.add("CreateMultipartUpload", key=PROBE_KEY, times=1, **LATE_REPLY[late])
    if command == "drain":
        write(sp.spool / "a.log", SMALL)
        drained(sp)
    else:
        s3.create_bucket(Bucket=sp.bucket)
        r = spoolup_cmd(sp, "check-config")
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    creates = [r.action for r in proxy.requests("CreateMultipartUpload", probe=True) if PROBE_KEY in r.key]
    assert creates == [LATE_REPLY[late]["action"], "forward"], f"botocore sent the probe's Create again: {creates}"
    assert probe_scratch(s3, sp.bucket) == ([], [])
    assert pending_uploads(s3, sp.bucket) == []
    if command == "drain":
        assert_exact(s3, sp.bucket, {"a.log": SMALL})


@pytest.mark.parametrize("late", list(LATE_REPLY))
def test_a_listing_encoding_probe_create_sent_twice_leaves_no_upload(make_spoolup, s3, proxy, late):
    """The same for the probe of whether the server url-encodes the keys of a listing of
    uploads (spoolup/s3.py), which a key holding a '+' among the pending uploads sets off:
    it aborted only the upload whose id it got back.  (conditional-writes = "off": the
    capability probe makes no Create here.)"""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"s3-timeout": 1.5, "conditional-writes": "off"})
    s3.create_bucket(Bucket=sp.bucket)
    theirs = s3.create_multipart_upload(Bucket=sp.bucket, Key="their+upload.log")["UploadId"]
    proxy.add("CreateMultipartUpload", key=PROBE_KEY, times=1, **LATE_REPLY[late])
    write(sp.spool / "a.log", SMALL)
    drained(sp)
    creates = [(r.key, r.action) for r in proxy.requests("CreateMultipartUpload", probe=True) if PROBE_KEY in r.key]
    assert len(creates) == 2 and creates[0][0].endswith("-a b") and creates[0][1] == LATE_REPLY[late]["action"], \
        f"botocore sent the listing-encoding probe's Create again: {creates}"
    assert probe_scratch(s3, sp.bucket) == ([], [])
    assert pending_uploads(s3, sp.bucket) == [("their+upload.log", theirs)], "their upload is left alone"
    s3.abort_multipart_upload(Bucket=sp.bucket, Key="their+upload.log", UploadId=theirs)
    assert_exact(s3, sp.bucket, {"a.log": SMALL})
