"""`spoolup status`: read while the service runs, validated against docs/status.schema.json,
and never in the writer's way."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import jsonschema

from helpers import free_port, list_keys, syslog_lines, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())
MiB = 1024 * 1024


def validate(doc: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


def envelope(key: str, msg: str) -> bytes:
    return json.dumps({"key": key, "msg": msg}).encode() + b"\n"


def test_schema_rejects_what_it_should():
    """The schema is strict enough to catch a changed or undocumented field."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert not validator.is_valid({})
    assert not validator.is_valid({"schema_version": 2})


def test_live_status_matches_the_schema_and_the_facts(make_spoolup):
    dead = f"http://127.0.0.1:{free_port()}"  # uploads fail: parts stay pending, the error is journaled
    sp = make_spoolup(**{"format": "envelope", "url": dead, "s3-timeout": 1, "max-pending-uploads": 2,
                         "object-key": "logs/{key}"})
    big_msg = "x" * 1000
    spool = b"".join(envelope("web01/app", big_msg) for _ in range(7000))  # ~7 MiB of records: one sealed part
    spool += envelope("db01/pg", "checkpoint complete") + b"this line is not an envelope\n"
    (sp.spool / "in.jsonl").write_bytes(spool)
    p = sp.start()
    try:
        st = wait_for(lambda: (s := sp.status())["last_error"] and s["pending_parts"]["count"] == 1
                      and s["service"]["processes"].get("upload", {}).get("alive") and s, 60,
                      what="a pending part, the S3 error and the upload heartbeat")
        validate(st)
        assert st["service"]["running"] is True
        assert st["service"]["processes"]["ingest"]["alive"] is True
        opened = {o["key"]: o for o in st["open_objects"]}
        assert set(opened) == {"logs/web01/app", "logs/db01/pg"}
        assert opened["logs/db01/pg"]["bytes"] == len("checkpoint complete\n")
        assert opened["logs/db01/pg"]["records"] == 1
        assert opened["logs/web01/app"]["records"] == 7000
        assert all(o["index"] is None and o["age_seconds"] >= 0 for o in opened.values())  # not claimed: S3 is down
        assert st["pending_parts"] == {"count": 1, "bytes": 5 * MiB, "cap": 2}
        assert st["backlog_bytes"] == 0
        assert st["oldest_pending_age_seconds"] > 0
        assert st["dead_letters"]["records"] == 1
        assert st["dead_letters"]["files"][0]["path"] == "in.jsonl"
        assert st["dead_letters"]["files"][0]["last_reason"] == "not valid JSON"
        err = st["last_error"]
        assert err["process"] == "upload" and err["code"] == "EndpointConnectionError" and err["time"] <= st["time"]
        assert dead in err["message"]
        assert not err["message"].startswith(err["operation"])  # S3's words, not "op: code: op: code: ..."
        health = st["s3_health"]  # alive, and S3 failing: two facts
        assert health["state"] == "failing" and health["failures"] >= 1
        assert health["failing_since"] <= health["last_failure"]["time"] <= st["time"]
        assert health["last_failure"]["code"] == "EndpointConnectionError"

        table = sp.cmd("status", check=True).stdout
        assert "service running" in table and "upload pid" in table and "NOT RUNNING" not in table
        assert "pending parts: 1/2 (5.0MiB)" in table
        assert "logs/web01/app" in table and "logs/db01/pg" in table
        assert "dead letters: 1 records" in table
        assert "EndpointConnectionError" in table
        assert "S3: FAILING since " in table
    finally:
        assert sp.stop(p) == 0
    st = sp.status()  # and after the service stopped (cleanly: "stopped at", not "NOT RUNNING")
    validate(st)
    assert st["service"]["running"] is False
    assert st["service"]["processes"]["upload"]["alive"] is False
    assert {n: p["state"] for n, p in st["service"]["processes"].items()} == {"ingest": "stopped", "upload": "stopped"}
    assert all(p["stopped_at"] <= st["time"] for p in st["service"]["processes"].values())
    assert st["s3_health"]["state"] == "unknown"
    table = sp.cmd("status", check=True).stdout
    assert "NOT RUNNING" not in table
    assert "ingest pid" in table and table.count(" stopped at ") == 2


def test_status_before_the_first_run_matches_the_schema(make_spoolup):
    sp = make_spoolup()
    st = sp.status()
    validate(st)
    assert st["open_objects"] == [] and st["last_error"] is None and st["service"]["running"] is False
    assert not sp.state.exists() or not (sp.state / "journal.sqlite").exists()  # status creates nothing


def test_readers_never_block_the_service(make_spoolup, s3):
    """A reader holding a snapshot open (as status does while it reads) does not stop
    ingest or upload from committing; and status itself never writes the journal."""
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s"})
    (sp.spool / "first.log").write_bytes(syslog_lines(100))
    p = sp.start()
    try:
        wait_for(lambda: "first.log" in list_keys(s3, sp.bucket), 60, what="the first object")
        # in the bucket before it is journaled done: wait for the journal too
        wait_for(lambda: sp.status()["completed_objects"]["count"] == 1, 30, what="the first object journaled done")
        reader = sqlite3.connect(f"file:{sp.state / 'journal.sqlite'}?mode=ro", uri=True, isolation_level=None)
        reader.execute("BEGIN")
        before = reader.execute("SELECT count(*) FROM objects WHERE state = 'done'").fetchone()[0]
        (sp.spool / "second.log").write_bytes(syslog_lines(100, start=100))
        wait_for(lambda: "second.log" in list_keys(s3, sp.bucket), 60, what="progress while a reader holds a snapshot")
        st = sp.status()
        validate(st)
        assert st["completed_objects"]["count"] == before + 1
        assert reader.execute("SELECT count(*) FROM objects WHERE state = 'done'").fetchone()[0] == before
        reader.execute("COMMIT")
        reader.close()
    finally:
        assert sp.stop(p) == 0
    journal = sp.state / "journal.sqlite"
    image = journal.read_bytes()
    for args in (("status",), ("status", "--json")):
        sp.cmd(*args, check=True)
    assert journal.read_bytes() == image


def test_status_on_an_unreadable_journal_is_a_clear_error(make_spoolup):
    sp = make_spoolup()
    sp.state.mkdir(mode=0o700)
    (sp.state / "journal.sqlite").write_bytes(b"this is not a database" * 100)
    r = sp.cmd("status", "--json")
    assert r.returncode == 1
    assert "cannot be read" in r.stderr and r.stdout == ""


def test_status_after_a_crash_reports_the_processes_dead(make_spoolup):
    sp = make_spoolup()
    (sp.spool / "a.log").write_bytes(syslog_lines(100))
    p = sp.start()
    st = wait_for(lambda: (s := sp.status())["service"]["processes"].get("upload", {}).get("alive") and s, 60,
                  what="both processes")
    os.kill(st["service"]["processes"]["upload"]["pid"], signal.SIGKILL)
    p.kill()  # kill -9 of both: stale heartbeats and lock file remain
    p.wait(30)
    st = sp.status()
    validate(st)
    assert st["service"]["running"] is False
    assert {n: s["alive"] for n, s in st["service"]["processes"].items()} == {"ingest": False, "upload": False}
    assert [o["key"] for o in st["open_objects"]] == ["a.log"]
    assert "NOT RUNNING" in sp.cmd("status", check=True).stdout


def test_open_objects_say_what_they_will_be_and_when_they_complete(make_spoolup, s3):
    """Issue 14, item 4: with the README's minimal config (flush-grace-period 60 minutes, as
    s3()), the bucket stays empty for an hour; status says so, per object."""
    import time

    sp = make_spoolup(**{"object-key": "logs/{path}", "object-key-timestamp": "%Y%m%d%H"})
    big = syslog_lines(60_000, width=200)  # ~12 MiB: two 5 MiB parts are uploaded while it stays open
    (sp.spool / "big.log").write_bytes(big)
    (sp.spool / "small.log").write_bytes(syslog_lines(10))
    p = sp.start()
    try:
        st = wait_for(lambda: (s := sp.status()) and len(s["open_objects"]) == 2
                      and {o["key"]: o for o in s["open_objects"]}["logs/big.log"]["parts_uploaded"] == 2 and s,
                      90, what="two parts of the open object uploaded")
        validate(st)
        objs = {o["key"]: o for o in st["open_objects"]}
        big_obj, small_obj = objs["logs/big.log"], objs["logs/small.log"]
        ts = big_obj["timestamp"]
        assert len(ts) == 10 and ts == time.strftime("%Y%m%d%H", time.localtime(st["time"] - big_obj["age_seconds"]))
        assert big_obj["expected_key"] == f"logs/big.log-{ts}"  # claimed: its final key
        assert big_obj["final_key"] == big_obj["expected_key"]
        assert small_obj["final_key"] is None
        assert small_obj["expected_key"] == f"logs/small.log-{small_obj['timestamp']}"
        assert big_obj["bytes"] == len(big) and big_obj["bytes_uploaded"] == 2 * 5 * MiB
        assert small_obj["parts_uploaded"] == 0 and small_obj["bytes_uploaded"] == 0
        for o in (big_obj, small_obj):
            c = o["completes"]
            last_record = st["time"] - o["idle_seconds"]
            assert abs(c["grace_at"] - (last_record + 3600)) < 0.01  # flush-grace-period: 60 minutes
            assert c["size_remaining_bytes"] == 5 * 1024 ** 4 - o["bytes"]
            assert c["on_newer_timestamp"] is True
        assert list_keys(s3, sp.bucket) == []  # nothing in the bucket yet, as status says

        table = sp.cmd("status", check=True).stdout
        grace_at = big_obj["completes"]["grace_at"]
        same_day = time.strftime("%Y%m%d", time.localtime(grace_at)) == time.strftime("%Y%m%d")
        # the table shows the time alone today, with the date when it falls on another day (near midnight)
        at = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(grace_at))
        assert (f"  logs/big.log-{ts}: {len(big) / MiB:.1f}MiB, 60000 records, 2 parts (10.0MiB) uploaded") in table
        assert f"completes at {at} (flush-grace-period after the last record), at 5.0TiB (max-object-size) " \
               "or on a newer timestamp" in table
        assert f"  logs/small.log-{ts} (index claimed at upload): " in table
    finally:
        assert sp.stop(p) == 0


def test_human_status_lists_spool_files_with_backlog_and_needing_attention(make_spoolup):
    """Issue 14, item 6: path, bytes, reason, since when."""
    import time

    dead = f"http://127.0.0.1:{free_port()}"  # uploads fail: at the cap, the backlog stays in the spool
    sp = make_spoolup(**{"url": dead, "s3-timeout": 1, "max-pending-uploads": 1})
    backlog = syslog_lines(100_000, width=200)  # ~20 MiB
    (sp.spool / "backlog.log").write_bytes(backlog)
    (sp.spool / "bad\x01name.log").write_bytes(syslog_lines(5))  # no valid key: refused
    p = sp.start()
    try:
        st = wait_for(lambda: (s := sp.status())["pending_parts"]["count"] == 1
                      and any(x["quarantine"]["reason"] == "invalid-key" for x in s["sources_needing_attention"])
                      and s, 60, what="the cap reached and the refused file")
        validate(st)
        (waiting,) = st["sources_with_backlog"]
        assert waiting["path"] == "backlog.log"
        assert 0 < waiting["backlog_bytes"] == len(backlog) - waiting["offset"]
        (refused,) = st["sources_needing_attention"]  # quarantined (issue 10): the key is the fault
        assert refused["path"] == "bad\x01name.log" and "the file stays in the spool" in refused["error"]
        assert refused["state"] == "quarantined" and refused["quarantine"]["reason"] == "invalid-key"
        assert refused["since"] == refused["quarantine"]["since"] <= st["time"]
        table = sp.cmd("status", check=True).stdout
        assert "spool files with a backlog (1):" in table
        assert "  backlog.log: " in table and f"not read yet (of {len(backlog) / MiB:.1f}MiB)" in table
        since = time.strftime("%H:%M:%S", time.localtime(refused["since"]))
        assert "spool entries needing attention (1;" in table
        assert f"  bad\x01name.log: invalid-key since {since}, {len(syslog_lines(5))}B" in table
        assert refused["quarantine"]["what_to_do"] in table
    finally:
        assert sp.stop(p) == 0


def test_expected_key_and_size_limit_are_the_objects_own_after_a_config_change(make_spoolup):
    """An object finishes in the form it was opened in (compression, max-object-size): status
    says the key and the size it will really have, not what today's configuration would give."""
    sp = make_spoolup(**{"object-key": "{name}", "url": f"http://127.0.0.1:{free_port()}", "s3-timeout": 1})
    (sp.spool / "a.log").write_bytes(syslog_lines(100))
    p = sp.start()
    try:
        wait_for(lambda: sp.status()["open_objects"], 60, what="the open object")
    finally:
        assert sp.stop(p) == 0
    sp.write_config(compression="gzip", **{"max-object-size": "1GiB"})
    st = sp.status()
    validate(st)
    [obj] = st["open_objects"]
    assert obj["expected_key"] == "a.log"  # not a.log.gz: it is uncompressed
    c = obj["completes"]
    assert (c["max_object_size"], c["size_counts"]) == (5 * 1024 ** 4, "records")  # opened under 5TiB, plain
    assert c["size_remaining_bytes"] == 5 * 1024 ** 4 - obj["bytes"]
    assert "at 5.0TiB (max-object-size)" in sp.cmd("status", check=True).stdout


def test_a_compressed_objects_size_limit_counts_stored_bytes(make_spoolup):
    """With compression max-object-size counts the stored (compressed) size, as s3() does."""
    sp = make_spoolup(**{"object-key": "{name}", "url": f"http://127.0.0.1:{free_port()}", "s3-timeout": 1,
                         "compression": "gzip", "max-object-size": "1GiB"})
    (sp.spool / "a.log").write_bytes(syslog_lines(100))
    p = sp.start()
    try:
        st = wait_for(lambda: (s := sp.status())["open_objects"] and s, 60, what="the open object")
    finally:
        assert sp.stop(p) == 0
    validate(st)
    [obj] = st["open_objects"]
    assert obj["expected_key"] == "a.log.gz"
    assert obj["completes"] == {**obj["completes"], "max_object_size": 1024 ** 3, "size_counts": "stored",
                                "size_remaining_bytes": 1024 ** 3}  # no part sealed yet
    assert "at 1.0GiB stored (max-object-size)" in sp.cmd("status", check=True).stdout
