"""`spoolup verify` (issue 22 item 4): audits what was shipped against the bucket and the
ledger, with real `spoolup drain` / `run` processes against real S3 endpoints.

Clean after a drain (both spool formats); an object deleted and another overwritten behind
spoolup's back are named with their kinds; bytes two shipped objects claim (two segments
written here with ledger.Segment) are reported as overlapping; the running service exports
the last verify's result as gauges.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest

from crashkit import drain_crashing, rows, write
from helpers import free_port, get, list_keys, syslog_lines, wait_for
from spoolup import ledger
from spoolup.journal import Journal
from test_envelope import env
from test_ops_metrics import scrape

pytestmark = pytest.mark.s3_servers("moto", "rgw")

FILES = {"a.log": syslog_lines(400, host="a"), "b.log": syslog_lines(300, host="b"), "c.log": syslog_lines(200, host="c")}


def verify(sp, *args: str) -> tuple[int, str, dict | None]:
    r = sp.cmd("verify", *args, timeout=120)
    doc = json.loads(r.stdout) if "--json" in args and r.stdout.strip().startswith("{") else None
    return r.returncode, r.stdout + r.stderr, doc


def segments(s3, bucket: str) -> list[str]:
    """The ledger segments in the bucket (list_keys leaves them out)."""
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", []) if ".spoolup/ledger/" in o["Key"]]


def drained(make_spoolup, s3, files: dict[str, bytes], **options):
    sp = make_spoolup(**{"object-key": "{name}", **options})
    for name, data in files.items():
        write(sp.spool / name, data)
    sp.drain(check=True)
    assert segments(s3, sp.bucket), "the drain wrote ledger segments"
    return sp


def kinds(doc: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in doc["problems"]:
        out.setdefault(p["kind"], set()).add(p["key"])
    return out


# ---------------------------------------------------------------------------
# clean


def test_verify_clean_after_drain_lines(make_spoolup, s3):
    sp = drained(make_spoolup, s3, FILES)
    code, out, _ = verify(sp)
    assert code == 0, out
    assert out.startswith("verified: every shipped object is in the bucket"), out
    code, out, doc = verify(sp, "--json")
    assert code == 0, out
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["objects"] == {"listed": 3, "done_in_journal": 3}
    assert doc["ledger"]["shipped"] == 3 and doc["ledger"]["records"] == 3
    assert doc["sources"]["checked"] == 3
    assert doc["sources"]["bytes_checked"] == sum(len(d) for d in FILES.values())
    # cheap: the listing pages and one GET per segment, nothing per object
    assert doc["requests"]["get"] == doc["ledger"]["segments"] == len(segments(s3, sp.bucket))
    assert doc["requests"]["list"] == 1
    assert doc["requests"]["total"] == doc["requests"]["list"] + doc["requests"]["get"]
    assert doc["stored"] is True
    assert sp.status()["last_verify"] == {"ok": True, "time": doc["time"], "problems": 0}


def test_verify_clean_after_drain_envelope_with_a_dead_letter(make_spoolup, s3):
    """Envelope records of one spool file interleave across keys (many spans per object);
    the dead-lettered line is in no object and is not a gap."""
    data = b"".join(env(f"k{i % 3}", f"message {i}") for i in range(300))
    data += b"not json at all\n" + b"".join(env(f"k{i % 2}", f"later {i}") for i in range(100))
    sp = drained(make_spoolup, s3, {"relay.jsonl": data}, format="envelope", **{"object-key": "{key}"})
    assert sp.status()["dead_letters"]["records"] == 1
    code, out, doc = verify(sp, "--json")
    assert code == 0, out
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["objects"]["listed"] == 3 and doc["ledger"]["shipped"] == 3
    assert doc["sources"] == {"checked": 1, "bytes_checked": len(data)}


# ---------------------------------------------------------------------------
# behind spoolup's back


def test_verify_names_a_deleted_and_an_overwritten_object(make_spoolup, s3):
    sp = drained(make_spoolup, s3, FILES)
    s3.delete_object(Bucket=sp.bucket, Key="a.log")
    s3.put_object(Bucket=sp.bucket, Key="b.log", Body=b"not what spoolup shipped\n")
    code, out, _ = verify(sp)
    assert code == 1, out
    lines = out.splitlines()
    assert any(line.startswith("missing: a.log: not in the bucket") for line in lines), out
    assert any(line.startswith("overwritten: b.log: holds 25 bytes") for line in lines), out
    assert "c.log" not in out
    assert lines[-1].startswith("verify: 2 problems"), out

    code, out, doc = verify(sp, "--json")
    assert code == 1 and doc["ok"] is False
    assert kinds(doc) == {"missing": {"a.log"}, "overwritten": {"b.log"}}, doc["problems"]
    by_key = {p["key"]: p for p in doc["problems"]}
    a, b = by_key["a.log"], by_key["b.log"]
    assert a["expected_size"] == len(FILES["a.log"])
    assert a["expected_etag"] == hashlib.md5(FILES["a.log"]).hexdigest()
    assert a["found_size"] is None and a["found_etag"] is None
    assert b["expected_size"] == len(FILES["b.log"])
    assert b["expected_etag"] == hashlib.md5(FILES["b.log"]).hexdigest()
    assert b["found_size"] == 25 and b["found_etag"] == hashlib.md5(b"not what spoolup shipped\n").hexdigest()
    journal_id = rows(sp, "meta", "name = 'journal_id'")[0]["value"]
    assert a["origin"].startswith(f"{journal_id}/") and b["origin"].startswith(f"{journal_id}/")
    # every field of every problem is there (null where it does not apply): a stable report
    fields = {"kind", "message", "key", "other_key", "origin", "segment", "path", "start", "end", "bytes",
              "expected_size", "expected_etag", "found_size", "found_etag"}
    assert all(set(p) == fields for p in doc["problems"])
    assert sp.status()["last_verify"] == {"ok": False, "time": doc["time"], "problems": 2}
    assert get(s3, sp.bucket, "c.log") == FILES["c.log"]  # verify changes nothing in the bucket


def test_verify_reports_bytes_in_two_shipped_objects(make_spoolup, s3):
    """Two segments (written here with ledger.Segment) claim bytes 100-300 of one spool file for
    two objects that are both in the bucket as their records say."""
    sp = drained(make_spoolup, s3, {"a.log": FILES["a.log"]})
    agent = ledger.default_agent_id(sp.spool)
    journal = "f" * 32
    bodies = {"x.log": b"x" * 300, "x.log-1": b"y" * 400, "x.log-2": b"z" * 100}
    spans = {"x.log": ((0, 300),), "x.log-1": ((100, 500),), "x.log-2": ((500, 600),)}
    for n, key in enumerate(bodies, start=1):
        s3.put_object(Bucket=sp.bucket, Key=key, Body=bodies[key])
        source = ledger.SourceSpans(dev=1, ino=2, btime=None, head_len=4, head=ledger.head_digest(b"xxxx"),
                                    path="x.log", spans=spans[key])
        record = ledger.Record(journal, n, "x.log", "", n - 1, key, "single", 3, len(bodies[key]),
                               len(bodies[key]), hashlib.md5(bodies[key]).hexdigest(), None, (source,))
        segment = ledger.Segment(agent, journal, 900_000 + n, time.time(), (record,))
        s3.put_object(Bucket=sp.bucket, Key=ledger.segment_key("{name}", agent, segment.seq), Body=segment.encode())
    code, out, doc = verify(sp, "--json")
    assert code == 1, out
    assert [p["kind"] for p in doc["problems"]] == ["overlapping"], doc["problems"]
    (p,) = doc["problems"]
    assert {p["key"], p["other_key"]} == {"x.log", "x.log-1"}
    assert (p["path"], p["start"], p["end"], p["bytes"]) == ("x.log", 100, 300, 200)
    code, out, _ = verify(sp)
    assert "overlapping: x.log: bytes 100-300 (200 bytes) are in both" in out, out


def test_verify_clean_when_a_lost_journals_record_names_the_object_shipped_since(make_spoolup, s3):
    """A journal recorded a.log's object at its key and was killed before the PutObject (its
    record an intention that did not happen); then its state dir was wiped.  The next journal
    read a.log again and cut the same object -- the same records, at the same key, byte for
    byte -- under its own origin, and shipped it.  Two records match the one object at the key:
    one object, shipped once, not bytes in two objects (torture --state-loss seed 9202: verify
    exit 1, "overlapping" twice, where every record was in the bucket once; a restored backup
    that cuts the object again under another object id does the same)."""
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "shutdown-timeout": 5})
    write(sp.spool / "a.log", FILES["a.log"])
    drain_crashing(sp, "after-ledger-recorded", scope="service")
    assert list_keys(s3, sp.bucket, "a.log") == [], "the PutObject was not sent"
    shutil.rmtree(sp.state)
    sp.drain(check=True)
    assert get(s3, sp.bucket, "a.log") == FILES["a.log"]
    records = [r for k in segments(s3, sp.bucket) for r in ledger.Segment.decode(get(s3, sp.bucket, k)).records
               if r.final_key == "a.log" and not r.started]
    assert len({r.origin for r in records}) == 2 and len({(r.size, r.etag) for r in records}) == 1, records
    code, out, doc = verify(sp, "--json")
    assert code == 0, doc["problems"] if doc else out
    assert doc["ledger"]["records"] == 2 and doc["ledger"]["shipped"] == 1, doc["ledger"]
    # an object that matches neither record any more is still named
    s3.put_object(Bucket=sp.bucket, Key="a.log", Body=b"someone else's\n")
    code, out, doc = verify(sp, "--json")
    assert code == 1 and kinds(doc) == {"overwritten": {"a.log"}}, doc["problems"]


def test_verify_names_the_record_of_an_object_the_journal_forgot(make_spoolup, s3):
    """The journal forgets done objects after a week (prune_done); their ledger records stay.
    An object deleted after that is named from its record: its bytes were consumed (the
    journaled offset is past them) and no other object holds them."""
    data = syslog_lines(400, host="a", width=100)
    sp = drained(make_spoolup, s3, {"a.log": data}, **{"max-object-size": "8KiB"})
    keys = sorted(list_keys(s3, sp.bucket, "a.log"), key=lambda k: int(k.rsplit("-", 1)[1]) if "-" in k else 0)
    assert len(keys) >= 3, keys
    j = Journal.open(sp.state / "journal.sqlite", fsync=False, create=False, migrate=False)
    try:
        assert j.prune_done(time.time() + 1) == len(keys) - 1  # the key's last object stays
    finally:
        j.close()
    s3.delete_object(Bucket=sp.bucket, Key=keys[1])
    code, out, doc = verify(sp, "--json")
    assert code == 1, out
    assert kinds(doc) == {"record_without_object": {keys[1]}}, doc["problems"]
    (p,) = doc["problems"]
    bodies_before = sum(len(get(s3, sp.bucket, k)) for k in keys[:1])
    assert p["path"] == "a.log" and p["start"] == bodies_before
    assert p["end"] - p["start"] == p["bytes"] == p["expected_size"]
    assert p["found_size"] is None and p["segment"] and ".spoolup/ledger/" in p["segment"]
    assert data[p["start"]:p["end"]].startswith(b"Nov") and data[p["start"] - 1:p["start"]] == b"\n"


# ---------------------------------------------------------------------------
# the gauges


def test_verify_result_as_gauges_of_the_running_service(make_spoolup, s3):
    port = free_port()
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "metrics-listen": f"127.0.0.1:{port}"})
    write(sp.spool / "a.log", FILES["a.log"])
    p = sp.start()
    try:
        wait_for(lambda: list_keys(s3, sp.bucket, "a.log") == ["a.log"], 60, what="a.log shipped")
        wait_for(lambda: sp.status()["completed_objects"]["count"] == 1, 60, what="a.log journaled done")
        m = wait_for(lambda: scrape(port), 30, what="metrics")
        assert m["spoolup_verify_timestamp_seconds"] == 0 and "spoolup_verify_ok" not in m
        code, out, doc = verify(sp, "--json")  # while `spoolup run` holds the state dir
        assert code == 0 and doc["stored"] is True, out
        m = scrape(port)
        assert m["spoolup_verify_ok"] == 1 and m["spoolup_verify_problems"] == 0
        assert m["spoolup_verify_timestamp_seconds"] == doc["time"]
        s3.delete_object(Bucket=sp.bucket, Key="a.log")
        code, out, doc = verify(sp, "--json")
        assert code == 1 and kinds(doc) == {"missing": {"a.log"}}, out
        m = scrape(port)
        assert m["spoolup_verify_ok"] == 0 and m["spoolup_verify_problems"] == 1
        assert m["spoolup_verify_timestamp_seconds"] == doc["time"]
    finally:
        assert sp.stop(p) == 0
