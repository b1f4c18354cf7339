"""S3 fault injection: a loopback proxy (tests/faultproxy.py) between spoolup and
moto answers 500 and 503 SlowDown, resets connections mid-body, holds replies
beyond s3-timeout, loses replies of calls that took effect, and answers
NoSuchUpload.  Under each fault, for a window of several seconds:

* the service neither exits nor spins: both processes stay alive, and their CPU
  time over the window (from /proc/<pid>/stat) stays a small part of it;
* retries are bounded and backed off: the proxy counts the requests;
* `spoolup status --json` shows the last error;

and once the fault clears: every spool byte exactly once in completed objects,
no multipart upload left pending.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections import Counter

import pytest

from crashkit import ask, assert_exact, noisy_lines, rows, write
from faultproxy import WRITES
from helpers import get, list_keys, pending_uploads, syslog_lines, wait_for
from spoolup.journal import Journal

pytestmark = pytest.mark.s3_servers("moto", "rgw")

WINDOW = 5.0  # seconds a fault lasts
RETRY_MAX_DELAY = 2.0
S3_TIMEOUT = 1.5
FILES = {
    "big.log": noisy_lines(25_000, seed=5),  # ~6.2 MiB: a real multipart upload (5 MiB + the rest)
    "s1.log": syslog_lines(1500, host="s1"),
    "s2.log": syslog_lines(40, host="s2"),
}

FAULTS = {
    # name: (rules, error codes status may show)
    "500": ([dict(ops=WRITES, action="error", status=500, code="InternalError")], {"InternalError"}),
    "503-slowdown-everything": ([dict(ops=(), action="error", status=503, code="SlowDown")],
                                {"SlowDown", "503"}),  # (a HEAD answer has no body: botocore sees "503")
    "reset-mid-body": ([dict(ops=("UploadPart", "PutObject"), action="reset")], None),
    "reply-beyond-timeout": ([dict(ops=WRITES, action="delay", delay=S3_TIMEOUT + 2.5)], None),
    "reply-lost": ([dict(ops=("CreateMultipartUpload", "CompleteMultipartUpload", "PutObject"),
                         action="reset-after")], None),
    "nosuchupload": ([dict(ops=("UploadPart", "CompleteMultipartUpload"), action="error", status=404,
                           code="NoSuchUpload")], {"NoSuchUpload"}),
}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def upload_pid(main: int) -> int | None:
    """The upload process: the child of `spoolup run` that runs `spoolup _upload`, by its command
    line (not just any child: one that is not the upload process, gone a moment later, made the
    CPU reading fail; tests/test_processes.py keeps spoolup from starting any other program)."""
    r = subprocess.run(["pgrep", "-P", str(main), "-f", "spoolup _upload "], capture_output=True, text=True)
    pids = [int(p) for p in r.stdout.split()]
    return pids[0] if pids else None


def make(make_spoolup, proxy, **options):
    return make_spoolup(**{"object-key": "{name}", "url": proxy.url, "s3-timeout": S3_TIMEOUT,
                           "retry-max-delay": RETRY_MAX_DELAY, "shutdown-timeout": 5, "upload-threads": 4,
                           **options})


@pytest.mark.parametrize("fault", list(FAULTS))
def test_service_rides_out_the_fault(make_spoolup, s3, proxy, fault):
    rules, codes = FAULTS[fault]
    sp = make(make_spoolup, proxy, **{"flush-grace-period": "1s"})
    for rule in rules:  # FAULTS is shared by the moto and the rgw run: leave it as it is
        rule = dict(rule)
        proxy.add(*rule.pop("ops"), **rule)
    for name, data in FILES.items():
        write(sp.spool / name, data)
    p = sp.start()
    try:
        child = wait_for(lambda: upload_pid(p.pid), 30, what="the upload process")
        # the fault window starts once the upload process is up and failing
        wait_for(lambda: any(r.action != "forward" for r in proxy.requests()), 30, what="a fault injected")
        t0, cpu0 = time.monotonic(), (cpu_seconds(p.pid), cpu_seconds(child))
        start = time.time()
        time.sleep(WINDOW)
        elapsed = time.monotonic() - t0
        cpu1 = (cpu_seconds(p.pid), cpu_seconds(child))
        assert p.poll() is None, "the service exited under the fault"
        assert upload_pid(p.pid) == child, "the upload process died under the fault"
        # neither process spins: a busy loop would burn the whole window
        for who, before, after in zip(("main", "upload"), cpu0, cpu1):
            assert after - before < 0.35 * elapsed, f"{who} process used {after - before:.2f}s CPU in {elapsed:.1f}s"
        # bounded retries: per call (operation, key, part) a handful of attempts per window, never a flood
        window = proxy.requests(since=start)
        assert any(r.action != "forward" for r in window), "the fault was injected during the window"
        per_call = Counter((r.op, r.key, r.part) for r in window)
        worst = max(per_call.values())
        # a call is tried at most 4 times by botocore, then spoolup waits at least 0.25, 0.5, 1, 1, ...
        # seconds: within the window that is at most 7 calls (a spin would be hundreds)
        assert worst <= 4 * 7, (worst, per_call.most_common(5))
        assert len(window) <= 120, per_call.most_common(8)
        err = wait_for(lambda: sp.status()["last_error"], 30, what="the error in status")
        assert err["process"] == "upload", err
        if codes:
            assert err["code"] in codes, err
        assert "test-secret" not in str(err)
    finally:
        proxy.clear()
    try:
        r = sp.drain(timeout=120)  # asks the running service, which recovers by itself
        assert r.returncode == 0, r.stderr[-3000:]
        assert p.poll() is None
    finally:
        assert sp.stop(p) == 0
    # a CreateMultipartUpload whose reply is lost (and retried by botocore) leaves an upload
    # nobody knows the id of: holding no part, adopted or aborted (protocol.py, adopt)
    assert_exact(s3, sp.bucket, FILES)
    assert ask(sp, Journal.pending_objects) == 0


# the backoff is spoolup's own, the failures the proxy's: moto only
@pytest.mark.s3_servers("moto")
def test_backoff_spaces_out_the_attempts_of_one_call(make_spoolup, s3, proxy):
    """A part that keeps failing is retried forever, with growing delays up to retry-max-delay.
    Each failed call (botocore's own quick retries included) is one row in the journal's errors."""
    sp = make(make_spoolup, proxy)
    proxy.add("UploadPart", action="error", status=500, code="InternalError", key="big.log")
    write(sp.spool / "big.log", FILES["big.log"])  # one sealed part (5 MiB) uploading, the rest open
    p = sp.start()
    try:
        def failures():
            try:
                return [e["at"] for e in rows(sp, "errors", "op = ?", ("UploadPart",), select="at", order_by="id")]
            except sqlite3.OperationalError:
                return []  # no journal yet

        wait_for(lambda: len(failures()) >= 4, 90, what="four failed attempts")
        times = failures()
        gaps = [b - a for a, b in zip(times, times[1:])]
        for k, gap in enumerate(gaps, start=1):
            # spoolup waits min(retry-max-delay, 0.25 * 2**k) * U(0.5, 1) after the k-th failure
            assert gap >= 0.5 * min(RETRY_MAX_DELAY, 0.25 * 2 ** k) - 0.05, (k, gaps)
        # botocore's own retries ("standard" mode, max_attempts 3: up to 4 requests a call)
        assert proxy.count("UploadPart") <= 4 * (len(times) + 1), proxy.count("UploadPart")
        assert p.poll() is None
    finally:
        proxy.clear()
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sp.stop(p) == 0
    assert_exact(s3, sp.bucket, {"big.log": FILES["big.log"]})


# ---------------------------------------------------------------------------
# invariant 5 with conditional writes: a foreign writer takes the key between spoolup's
# HEAD and its write; If-None-Match: * makes S3 refuse, spoolup moves to the next index


@pytest.mark.parametrize("name,op", [("s1.log", "PutObject"), ("big.log", "CompleteMultipartUpload")])
@pytest.mark.xfail_rgw(reason="RGW ignores If-None-Match: * on CompleteMultipartUpload (200, overwrites): spoolup "
                              "detects it and HEADs right before each Complete, which cannot see a writer racing "
                              "within that instant (this test's hook); docs/operations.md, S3 implementations tested",
                       op="CompleteMultipartUpload")
def test_foreign_writer_racing_the_conditional_write_is_never_overwritten(make_spoolup, s3, proxy, name, op):
    sp = make(make_spoolup, proxy)
    foreign = b"written by someone else an instant before spoolup\n"

    def race(req):
        s3.put_object(Bucket=sp.bucket, Key=req.key, Body=foreign)

    proxy.add(op, action="hook", hook=race, key=name, times=1)
    write(sp.spool / name, FILES[name])
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    (raced,) = proxy.requests(op)[:1]
    assert raced.headers.get("if-none-match") == "*", "the write was conditional"
    layout = assert_exact(s3, sp.bucket, {name: FILES[name]}, foreign={name: foreign})
    assert layout[name] == [f"{name}-1"]
    assert get(s3, sp.bucket, name) == foreign
    assert "KeyTaken" in r.stderr or "already taken" in r.stderr
    assert pending_uploads(s3, sp.bucket) == []
    assert list_keys(s3, sp.bucket) == sorted([name, f"{name}-1"])


def test_lost_reply_of_create_leaves_no_upload_behind(make_spoolup, s3, proxy):
    """CreateMultipartUpload takes effect but its reply is lost; botocore retries and gets a
    second upload id.  The first upload, known to nobody, used to stay behind for good: it
    holds no part and is at the key claimed for the object after its Create was sent, so it
    is spoolup's own (docs/operations.md, "Uploads a lost Create reply leaves"): one of the
    two is kept, the other aborted, and the object is shipped exactly once at its key."""
    sp = make(make_spoolup, proxy)
    proxy.add("CreateMultipartUpload", action="reset-after", times=1)
    write(sp.spool / "big.log", FILES["big.log"])
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert proxy.count("CreateMultipartUpload") >= 2, "the lost reply was retried"
    assert proxy.count("AbortMultipartUpload") == 1, "the second upload of the Create is aborted"
    layout = assert_exact(s3, sp.bucket, {"big.log": FILES["big.log"]})
    assert layout["big.log"] == ["big.log"]
    assert pending_uploads(s3, sp.bucket) == []


def test_a_key_found_taken_by_a_pending_upload_is_never_claimed_again(make_spoolup, s3, proxy):
    """An upload appears at the claimed key after the claim's (cached) listing of pending
    uploads: a foreign writer, or the orphans of a Create whose replies were all lost.  The
    start step sees it (KeyTaken) and the object moves on -- once.  The claim that follows used
    to read the same cached listing, which did not hold the key, took it again, met it again:
    a claim/KeyTaken loop of a ListObjects and a ListMultipartUploads every few milliseconds
    until the cache expired (issue 18 item 5: 29-37 listings in 5 s once botocore retried a
    lost reply quickly)."""
    sp = make(make_spoolup, proxy)
    foreign = []

    def appear(req):  # the start step's per-key listing: an upload at the key, just before it
        if req.query.get("prefix") == ["big.log"] and not foreign:
            foreign.append(s3.create_multipart_upload(Bucket=sp.bucket, Key="big.log")["UploadId"])

    proxy.add("ListMultipartUploads", action="hook", hook=appear)
    write(sp.spool / "big.log", FILES["big.log"])
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert foreign, "the upload appeared at the claimed key"
    per_key = Counter(r.query.get("prefix", [""])[0] for r in proxy.requests("ListMultipartUploads"))
    assert per_key["big.log"] == 1, per_key
    assert len(rows(sp, "errors", "code = ?", ("KeyTaken",))) == 1
    assert pending_uploads(s3, sp.bucket) == [("big.log", foreign[0])], "the foreign upload is left alone"
    s3.abort_multipart_upload(Bucket=sp.bucket, Key="big.log", UploadId=foreign[0])
    layout = assert_exact(s3, sp.bucket, {"big.log": FILES["big.log"]})
    assert layout["big.log"] == ["big.log-1"]
