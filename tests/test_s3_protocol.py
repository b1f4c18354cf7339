"""The S3 object protocol (spoolup/protocol.py) where S3 servers differ from AWS.

Each test reproduces one failure of issue 12 against a real server (moto, and Ceph
RGW where the fixtures provide it): what RGW answers differently (ListParts ->
NoSuchKey, Complete of an aborted upload -> 500, If-None-Match ignored on Complete),
other writers at the same key, keys XML 1.0 cannot carry, head-of-line blocking
and S3's part-size limit.  Real processes, SIGKILLed at named points; byte-exact
contents.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections import Counter

import pytest

from crashkit import (assert_exact, drain_crashing, journaled_upload, noisy_lines, probe_complete_held, rows,
                      spoolup_cmd, wait_upload_process_gone, write)
from faultproxy import PROBE_KEY
from helpers import get, list_keys, objects_of, pending_uploads, wait_for

pytestmark = pytest.mark.s3_servers("moto", "rgw")

MiB = 1 << 20
BIG = noisy_lines(30_000, seed=12)  # ~7.4 MiB: 5 MiB + the rest
SMALL = noisy_lines(300, seed=17, tag="s")


def spoolup_at(make_spoolup, **options):
    return make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, **options})


def journal_rows(sp, table: str, where: str | None = None, args: tuple = ()) -> list[dict]:
    """Rows of a journal table, none while the journal does not exist yet."""
    try:
        return rows(sp, table, where, args)
    except sqlite3.OperationalError:
        return []


def drained(sp, timeout: float = 180):
    r = sp.drain(timeout=timeout)
    assert r.returncode == 0, f"drain exited {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    return r


# ---------------------------------------------------------------------------
# 1. reconcile by outcome, never by error code; never stall


def test_crash_between_complete_and_its_journal_entry_is_recovered(make_spoolup, s3):
    """RGW answers ListParts of a completed upload with NoSuchKey: recover exited 1 and the
    service retried "cannot reconcile" forever, shipping nothing."""
    sp = spoolup_at(make_spoolup)
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-complete")
    etag = s3.head_object(Bucket=sp.bucket, Key="big.log")["ETag"]
    r = spoolup_cmd(sp, "recover")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "CompleteMultipartUpload had succeeded but was not journaled; marked done" in r.stdout, r.stdout
    write(sp.spool / "more.log", SMALL)
    drained(sp)
    assert_exact(s3, sp.bucket, {"big.log": BIG, "more.log": SMALL})
    assert s3.head_object(Bucket=sp.bucket, Key="big.log")["ETag"] == etag, "not written again"


def test_upload_aborted_while_spoolup_was_down_is_started_again(make_spoolup, s3):
    sp = spoolup_at(make_spoolup)
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-record-part")
    key, upload_id = journaled_upload(sp)
    s3.abort_multipart_upload(Bucket=sp.bucket, Key=key, UploadId=upload_id)  # a lifecycle rule, an operator
    write(sp.spool / "other.log", SMALL)
    drained(sp)  # (base code on RGW: "cannot reconcile with S3 yet; retrying" forever)
    assert_exact(s3, sp.bucket, {"big.log": BIG, "other.log": SMALL})


def test_complete_of_an_upload_aborted_meanwhile_is_classified_by_its_outcome(make_spoolup, s3, proxy):
    """The upload is aborted just before spoolup's Complete reaches the server: AWS says
    NoSuchUpload, moto and RGW say 500 InternalError -- which was retried forever."""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"retry-max-delay": 0.5})

    def abort_first(req):
        s3.abort_multipart_upload(Bucket=sp.bucket, Key=req.key, UploadId=req.query["uploadId"][0])

    proxy.add("CompleteMultipartUpload", action="hook", hook=abort_first, key="big.log", times=1)
    write(sp.spool / "big.log", BIG)
    r = drained(sp, timeout=120)
    assert "multipart upload vanished; starting it again from the local chunks" in r.stderr, r.stderr[-3000:]
    completes = Counter(req.query["uploadId"][0] for req in proxy.requests("CompleteMultipartUpload"))
    assert len(completes) == 2 and sorted(completes.values())[0] == 1, completes
    assert max(completes.values()) <= 4, f"the failed Complete is not retried on and on (botocore: 4): {completes}"
    assert_exact(s3, sp.bucket, {"big.log": BIG})


# ---------------------------------------------------------------------------
# 2. conditional writes: detected per call, acted upon, reported


def capabilities(sp) -> dict:
    r = sp.cmd("check-config")
    assert r.returncode in (0, 2), r.stdout + r.stderr
    found = dict(re.findall(r"#   (PutObject|CompleteMultipartUpload): If-None-Match: \* (\S+)", r.stdout))
    assert set(found) == {"PutObject", "CompleteMultipartUpload"}, r.stdout
    return found


def test_check_config_and_status_report_what_the_server_honours(make_spoolup, s3):
    sp = spoolup_at(make_spoolup)
    write(sp.spool / "a.log", b"one record\n")
    drained(sp)
    found = capabilities(sp)
    st = sp.status()
    caps = st["s3_capabilities"]
    assert caps["put_if_none_match"] == found["PutObject"]
    assert caps["complete_if_none_match"] == found["CompleteMultipartUpload"]
    human = sp.cmd("status", check=True).stdout
    assert f"on PutObject {found['PutObject']}, on CompleteMultipartUpload {found['CompleteMultipartUpload']}" \
        in human, human
    assert list_keys(s3, sp.bucket) == ["a.log"], "the probe's scratch object is removed"
    assert pending_uploads(s3, sp.bucket) == []
    assert_exact(s3, sp.bucket, {"a.log": b"one record\n"})


def test_foreign_object_written_while_down_is_never_overwritten_by_complete(make_spoolup, s3):
    """RGW ignores If-None-Match: * on CompleteMultipartUpload (200, overwrites): spoolup
    must find that out and look (HEAD) right before such a Complete."""
    sp = spoolup_at(make_spoolup)
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-upload-part")
    foreign = b"someone else's object, written while spoolup was down\n"
    s3.put_object(Bucket=sp.bucket, Key="big.log", Body=foreign)
    r = drained(sp)
    assert "already taken by someone else" in r.stderr
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG}, foreign={"big.log": foreign})
    assert layout["big.log"] == ["big.log-1"]


def test_conditional_writes_on_refuses_a_server_that_does_not_honour_it(make_spoolup, s3):
    sp = spoolup_at(make_spoolup, **{"conditional-writes": "on"})
    s3.create_bucket(Bucket=sp.bucket)
    found = capabilities(sp)
    honoured = set(found.values()) == {"honoured"}
    r = sp.cmd("check-config")
    if honoured:
        assert r.returncode == 0, r.stderr
        write(sp.spool / "a.log", b"one record\n")
        drained(sp)
        assert_exact(s3, sp.bucket, {"a.log": b"one record\n"})
        return
    assert r.returncode == 2 and "conditional-writes" in r.stderr, r.stderr
    write(sp.spool / "a.log", b"one record\n")
    p = sp.start()
    try:
        wait_for(lambda: (sp.status()["last_error"] or {}).get("code") == "ConditionalWritesUnsupported", 60,
                 what="the refusal in status")
        assert "conditional-writes = \"on\"" in sp.status()["last_error"]["message"]
        assert list_keys(s3, sp.bucket) == [], "nothing is written where an object could be overwritten"
    finally:
        sp.stop(p)


def test_a_slow_capability_probe_never_holds_up_shipping(make_spoolup, s3, proxy):
    """The probe of what the server honours runs beside the first uploads, not before them
    (it cost a fresh state dir ~16 requests before its first part).  With every probe request
    held, the spool ships meanwhile, each write guarded as on a server that honours nothing
    (a HEAD right before the Complete); the probe's finding is journaled once it ends."""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"flush-grace-period": "1s"})
    gate = threading.Event()
    proxy.add(action="hook", hook=lambda req: gate.wait(120), key=PROBE_KEY)
    write(sp.spool / "big.log", BIG)
    write(sp.spool / "small.log", SMALL)
    p = sp.start()
    try:
        wait_for(lambda: {"big.log", "small.log"} <= set(list_keys(s3, sp.bucket)), 60,
                 what="the spool shipped while the probe is held")
        assert proxy.count(probe=True) > proxy.count(), "the probe is under way"
        assert sp.status()["s3_capabilities"] is None, "nothing is known (or journaled) yet"
        log = [r for r in proxy.requests() if r.key == "big.log"]
        complete = max(i for i, r in enumerate(log) if r.op == "CompleteMultipartUpload")
        last_part = max(i for i, r in enumerate(log) if r.op == "UploadPart")
        assert any(r.op == "HeadObject" for r in log[last_part:complete]), \
            "while unknown, a HEAD right before the Complete"
        gate.set()
        caps = wait_for(lambda: sp.status()["s3_capabilities"], 60, what="the probe's finding journaled")
        assert caps["put_if_none_match"] in ("honoured", "ignored", "not-implemented"), caps
    finally:
        gate.set()
        assert sp.stop(p) == 0
    assert_exact(s3, sp.bucket, {"big.log": BIG, "small.log": SMALL})
    assert pending_uploads(s3, sp.bucket) == []


def test_a_failing_capability_probe_is_retried_while_the_spool_ships(make_spoolup, s3, proxy):
    """S3 fails the probe's first requests (500, through botocore's own retries): it is logged,
    retried with backoff, and nothing waits for it meanwhile."""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"flush-grace-period": "1s", "retry-max-delay": 0.5})
    proxy.add("PutObject", action="error", status=500, code="InternalError", key=PROBE_KEY, times=6)
    write(sp.spool / "small.log", SMALL)
    p = sp.start()
    try:
        wait_for(lambda: "small.log" in list_keys(s3, sp.bucket), 60, what="small.log shipped")
        caps = wait_for(lambda: sp.status()["s3_capabilities"], 60, what="the probe's finding journaled")
        assert caps["put_if_none_match"] in ("honoured", "ignored", "not-implemented"), caps
    finally:
        assert sp.stop(p) == 0
    assert "cannot probe what S3 honours yet; every write is checked with a HEAD meanwhile" in sp.log_text(), \
        sp.log_text()[-3000:]
    assert_exact(s3, sp.bucket, {"small.log": SMALL})
    assert pending_uploads(s3, sp.bucket) == []


def test_a_probe_a_crash_cut_short_leaves_nothing_after_recover(make_spoolup, s3, proxy):
    """The service is SIGKILLed while the probe's Complete is under way: its scratch object and
    its upload stay in the bucket.  `recover` (and the next start's reconcile) removes both:
    they are this journal's own (the probe key carries the journal id)."""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"flush-grace-period": "1s"})
    write(sp.spool / "a.log", SMALL)
    with probe_complete_held(proxy) as held:
        p = sp.start()
        assert held.wait(60), "the probe reached its Complete"
        p.kill()
        p.wait(30)
        wait_upload_process_gone(sp)
    left = [k for k in list_keys(s3, sp.bucket, own=True) if PROBE_KEY in k]
    assert left and [k for k, _ in pending_uploads(s3, sp.bucket) if PROBE_KEY in k], \
        "the crash left the probe's scratch object and upload"
    r = spoolup_cmd(sp, "recover")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "remove the scratch object of an interrupted capability probe" in r.stdout, r.stdout
    assert "abort the upload of an interrupted capability probe" in r.stdout, r.stdout
    assert [k for k in list_keys(s3, sp.bucket) if PROBE_KEY in k] == []
    assert [k for k, _ in pending_uploads(s3, sp.bucket) if PROBE_KEY in k] == []
    drained(sp)
    assert_exact(s3, sp.bucket, {"a.log": SMALL})
    assert pending_uploads(s3, sp.bucket) == []


def test_ordinary_keys_are_listed_without_probing_the_listing_encoding(make_spoolup, s3, proxy):
    """moto does not say (nor do) whether it url-encoded a listing's keys: spoolup listed a
    scratch key of its own to find out, 6 requests per start.  Decoding a key without '%' or
    '+' changes nothing, so for such keys no probe is needed."""
    sp = spoolup_at(make_spoolup, url=proxy.url)
    write(sp.spool / "big.log", BIG)
    write(sp.spool / "small.log", SMALL)
    drained(sp)
    assert proxy.count("ListObjects", "ListMultipartUploads") > 0, "listings were made"
    scratch = sorted({r.key for r in proxy.requests(probe=True) if r.key.endswith(("-a b", "-a%20b"))})
    assert scratch == [], f"no listing-encoding probe for ordinary keys: {scratch}"
    assert_exact(s3, sp.bucket, {"big.log": BIG, "small.log": SMALL})


# ---------------------------------------------------------------------------
# 3. abort only upload ids this journal created


def test_another_writers_upload_at_the_claimed_key_is_never_aborted(make_spoolup, s3):
    """Another agent (or syslog-ng's s3()) starts an upload at the key spoolup claimed, after
    spoolup's claim listing: spoolup used to abort every upload at the key."""
    sp = spoolup_at(make_spoolup)
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-claim")
    theirs = s3.create_multipart_upload(Bucket=sp.bucket, Key="big.log")["UploadId"]
    part = s3.upload_part(Bucket=sp.bucket, Key="big.log", UploadId=theirs, PartNumber=1, Body=b"theirs\n")["ETag"]
    drained(sp)
    assert pending_uploads(s3, sp.bucket) == [("big.log", theirs)], "their upload is alive"
    s3.complete_multipart_upload(Bucket=sp.bucket, Key="big.log", UploadId=theirs,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part}]})
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG}, foreign={"big.log": b"theirs\n"})
    assert layout["big.log"] == ["big.log-1"]


def test_two_agents_at_one_key_both_ship_without_aborting_each_other(make_spoolup, s3, proxy):
    a = spoolup_at(make_spoolup, url=proxy.url)
    b = spoolup_at(make_spoolup, url=proxy.url)
    data_a, data_b = BIG, noisy_lines(30_000, seed=13, tag="b")
    write(a.spool / "big.log", data_a)
    write(b.spool / "big.log", data_b)
    pa, pb = a.start(), b.start()
    try:
        for sp in (a, b):
            wait_for(lambda: journal_rows(sp, "objects") != [], 60,
                     what="the agent ingesting")
        for sp in (a, b):
            r = sp.cmd("drain", timeout=180)
            assert r.returncode == 0, r.stderr[-3000:]
    finally:
        a.stop(pa)
        b.stop(pb)
    for sp in (a, b):  # an agent whose upload the other aborted would have seen it vanish
        assert "multipart upload vanished" not in sp.log_text(), "an agent aborted the other's upload"
    bodies = sorted(get(s3, a.bucket, k) for k in objects_of(s3, a.bucket, "big.log"))
    assert bodies == sorted([data_a, data_b])
    assert pending_uploads(s3, a.bucket) == []


# ---------------------------------------------------------------------------
# 4. index order is record order, also after a key race


def test_index_order_is_record_order_after_a_key_race(make_spoolup, s3):
    """A foreign object takes the key of the first object while its upload is resumed; the
    tail (the key's next object) must not end up before it."""
    data = noisy_lines(52_000, seed=14)  # ~12.9 MiB
    sp = spoolup_at(make_spoolup, **{"max-object-size": "12MiB"})
    write(sp.spool / "big.log", data)
    drain_crashing(sp, "after-upload-part")
    foreign = b"someone else's object at the key\n"
    s3.put_object(Bucket=sp.bucket, Key="big.log", Body=foreign)
    drained(sp)
    layout = assert_exact(s3, sp.bucket, {"big.log": data}, foreign={"big.log": foreign})
    assert layout["big.log"] == ["big.log-1", "big.log-2"], layout
    assert len(get(s3, sp.bucket, "big.log-1")) >= 12 * MiB


# ---------------------------------------------------------------------------
# 5. no head-of-line blocking


# the scheduler's window is spoolup's own (the faults are the proxy's): moto only
@pytest.mark.s3_servers("moto")
def test_one_failing_object_never_delays_the_others(make_spoolup, s3, proxy):
    """With one upload thread the scheduler's window is 4 parts: an object with more sealed
    parts than that, all failing, kept every other object from being looked at."""
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"upload-threads": 1, "flush-grace-period": "1s",
                                                    "retry-max-delay": 2.0})
    proxy.add("UploadPart", action="error", status=500, code="InternalError", key="bad.log")
    bad = noisy_lines(105_000, seed=15)  # ~26 MiB: 5 sealed parts
    good = noisy_lines(30_000, seed=16, tag="g")
    write(sp.spool / "bad.log", bad)
    p = sp.start()
    try:
        wait_for(lambda: len(journal_rows(sp, "chunks", "state = ?", ("sealed",)))
                 >= 5, 60, what="bad.log's parts sealed")
        wait_for(lambda: proxy.count("UploadPart") >= 5, 60, what="bad.log's parts failing")
        write(sp.spool / "good.log", good)
        wait_for(lambda: "good.log" in list_keys(s3, sp.bucket), 90, what="good.log shipped while bad.log fails")
        assert get(s3, sp.bucket, "good.log") == good
        proxy.clear()
        wait_for(lambda: "bad.log" in list_keys(s3, sp.bucket), 120, what="bad.log once the fault is gone")
    finally:
        assert sp.stop(p) == 0
    assert_exact(s3, sp.bucket, {"bad.log": bad, "good.log": good})


# ---------------------------------------------------------------------------
# 6. keys XML 1.0 cannot carry, and keys S3 treats specially


# (XML 1.0 cannot carry U+FFFF nor U+FFFE: one key holds both, inside and at its end)
SPECIAL_KEYS = ["weird\uffffkey/app\ufffe", "sp ace+plus%25pct&amp;<lt>\"q'/é-ü"]


@pytest.mark.parametrize("key", SPECIAL_KEYS, ids=["U+FFFF-U+FFFE", "specials"])
def test_envelope_key_xml_cannot_carry_multipart_open_across_a_restart(make_spoolup, s3, key):
    sp = make_spoolup(format="envelope", **{"object-key": "{key}", "flush-grace-period": "1h"})
    msgs = [f"record {i} " + "x" * 200 for i in range(30_000)]  # ~6.3 MiB: a sealed part and an open chunk

    def envelope(batch):
        return "".join(json.dumps({"key": key, "msg": m}) + "\n" for m in batch).encode()

    write(sp.spool / "a.json", envelope(msgs[:25_000]))
    p = sp.start()
    wait_for(lambda: len(journal_rows(sp, "chunks", "state = ?", ("uploaded",)))
             >= 1, 90, what="the first part uploaded")
    assert sp.stop(p) == 0  # the object stays open across the restart
    write(sp.spool / "a.json", envelope(msgs[25_000:]), mode="ab")
    drained(sp)
    expected = "".join(m + "\n" for m in msgs).encode()
    keys = list_keys(s3, sp.bucket)
    assert keys == [key], keys
    assert get(s3, sp.bucket, key) == expected
    assert pending_uploads(s3, sp.bucket) == [], "no orphan uploads"


# ---------------------------------------------------------------------------
# 7. parts within S3's limits


def test_compressed_parts_never_exceed_the_maximum_part_size(make_spoolup, s3):
    """chunk-size is measured after compression and was passed by the last write plus the
    gzip tail: with chunk-size near 5 GiB a part exceeded S3's maximum.  The maximum is
    lowered for the test (SPOOLUP_TEST_MAX_PART_SIZE) to just above chunk-size, and the data
    does not compress: the rule that keeps parts under it is the real one."""
    limit = 5 * MiB + 256 * 1024
    sp = spoolup_at(make_spoolup, compression="gzip", compresslevel=1)
    data = b"".join(os.urandom(200).replace(b"\n", b" ") + b"\n" for _ in range(120_000))  # ~24 MiB
    write(sp.spool / "r.log", data)
    env = sp.env()
    env["SPOOLUP_TEST_MAX_PART_SIZE"] = str(limit)
    r = spoolup_cmd(sp, "drain", env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    sizes = [c["part_size"] for c in rows(sp, "chunks", order_by="object_id, part")]
    assert len(sizes) >= 4, sizes
    assert max(sizes) <= limit, f"part sizes {sizes} exceed {limit}"
    assert min(sizes[:-1]) >= 5 * MiB, f"parts below S3's minimum: {sizes}"
    assert_exact(s3, sp.bucket, {"r.log": data}, suffix=".gz")


def test_a_part_s3_refuses_for_good_is_quarantined_and_the_rest_ships(make_spoolup, s3, proxy):
    sp = spoolup_at(make_spoolup, url=proxy.url, **{"flush-grace-period": "1s"})
    proxy.add("UploadPart", action="error", status=400, code="EntityTooLarge", key="huge.log")
    write(sp.spool / "huge.log", BIG)
    p = sp.start()
    try:
        wait_for(lambda: sp.status()["quarantined_objects"], 60, what="huge.log quarantined")
        (q,) = sp.status()["quarantined_objects"]
        assert q["key"] == "huge.log" and q["code"] == "EntityTooLarge", q
        human = sp.cmd("status", check=True).stdout
        assert "objects S3 refuses (quarantined" in human and "huge.log" in human, human
        write(sp.spool / "fine.log", b"a fine record\n")
        wait_for(lambda: "fine.log" in list_keys(s3, sp.bucket), 60, what="fine.log shipped meanwhile")
        tries = Counter(r.part for r in proxy.requests("UploadPart"))
        assert set(tries.values()) == {1}, f"a refused part is not sent again at once: {tries}"
        assert "S3 refuses this object's request; object quarantined" in sp.log_text()
    finally:
        assert sp.stop(p) == 0
    assert get(s3, sp.bucket, "fine.log") == b"a fine record\n"
