"""Objects that appear in time, and time in the key (issue 21 items 1 and 2), with the real
service against a real S3 server; time is controlled by stepping the processes' wall clock
(tests/wallclock), each step confirmed by a heartbeat the service journals on the new clock
before any record is written: no sleep decides an outcome.

* max-object-age: a busy spool file (a record every 150 s of its clock, never idle for
  flush-grace-period) gets one object per max-object-age, each completed after it -- with no
  new record, by the periodic expiry -- in lines and envelope format;
* strftime fields in a lines object-key: the records of each hour go to that hour's key in
  key-timezone; the old key's object completes after flush-grace-period, not when the key
  changes; a file name holding "%" is never strftime input.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path

import pytest

from crashkit import write
from helpers import get, list_keys, objects_of, syslog_lines, wait_for
from test_ops_status import validate
from test_reap_clock import set_shift, with_wall_clock

AGE = 600  # max-object-age, seconds ("10min")
# A phase of the clock: a step of the test's clock lands a few real seconds after its target
# (the time until the service reads the record), so phases are a minute longer than
# max-object-age and records within one come at most 450 s after its first
PHASE = AGE + 60


def _clock(sp, shift_file: Path, target: float) -> None:
    """Step the wall clock of sp's processes to `target` (plus the real seconds that pass), and
    return once the service's loop runs on it: its heartbeat, journaled after the loop's
    ingest and expiry, carries a time on the new clock.  Records written after that are read by
    a later turn of the loop, whose `now` is on the new clock too."""
    set_shift(shift_file, target - time.time())

    def on_new_clock():
        st = sp.status()
        ingest = st["service"]["processes"].get("ingest")
        return bool(ingest and ingest["state"] == "alive" and st["time"] - ingest["last_seen_seconds"] >= target - 1)

    wait_for(on_new_clock, 60, what=f"the service's clock at {target}")


def _ingested(sp) -> dict:
    return wait_for(lambda: (lambda st: st if st["backlog_bytes"] == 0 else None)(sp.status()), 60,
                    what="the spool read")


def _envelopes(key: str, body: bytes) -> bytes:
    return b"".join(json.dumps({"key": key, "msg": line.decode()}).encode() + b"\n" for line in body.splitlines())


@pytest.mark.s3_servers("moto")  # the rotation policy's: the server plays no part (uploads: everywhere else)
@pytest.mark.parametrize("fmt", ["lines", "envelope"])
def test_busy_file_gets_an_object_per_max_object_age(make_spoolup, s3, tmp_path, fmt):
    shift = tmp_path / "wall-clock-shift"
    set_shift(shift, 0.0)
    sp = make_spoolup(**{"format": fmt, "object-key": "{name}" if fmt == "lines" else "{key}",
                         "max-object-age": "10min", "flush-grace-period": "2h"})
    with_wall_clock(sp, shift)
    base = "app.log" if fmt == "lines" else "app"
    start = time.time()
    p = sp.start()
    phases: list[bytes] = []
    try:
        seq = 0
        for k in range(3):  # each phase: max-object-age of the file's clock, records every 150 s
            phase = b""
            for j, offset in enumerate((0, 150, 300, 450)):
                _clock(sp, shift, start + k * PHASE + offset)
                body = syslog_lines(20, host=f"phase{k}", start=seq)
                seq += 20
                write(sp.spool / "app.log", body if fmt == "lines" else _envelopes("app", body), "ab")
                phase += body
                st = _ingested(sp)
                # the object of this phase is open, whatever came before it: never idle for
                # flush-grace-period, it completes by its age alone
                [obj] = st["open_objects"]
                assert obj["records"] == 20 * (j + 1), obj
                assert offset - 60 < obj["age_seconds"] < AGE, obj
                assert abs(obj["completes"]["age_at"] - (st["time"] - obj["age_seconds"] + AGE)) < 0.01, obj
                validate(st)
            # the earlier phases' objects are complete in the bucket (uploaded while this one filled)
            done = ([base] + [f"{base}-{i}" for i in range(1, k)])[:k]
            wait_for(lambda: objects_of(s3, sp.bucket, base) == done or None, 60, what=f"objects {done}")
            human = sp.cmd("status", check=True).stdout
            assert "(max-object-age after the first record)" in human, human
            assert re.search(r"80 records, .*, age [78]m, idle ", human), human
            phases.append(phase)
            # the next phase's first record comes max-object-age after this one's first: the
            # periodic expiry or, if it comes first, the routing of that record completes this one
        _clock(sp, shift, start + 3 * PHASE)  # no new record: the expiry completes the last one
        expected = [base, f"{base}-1", f"{base}-2"]
        wait_for(lambda: objects_of(s3, sp.bucket, base) == expected or None, 60, what="three objects")
        wait_for(lambda: not sp.status()["open_objects"] or None, 60, what="no open object")
    finally:
        code = sp.stop(p)
    assert code == 0, sp.log_text()[-3000:]
    assert [get(s3, sp.bucket, key) for key in expected] == phases  # each object: exactly its age's records
    assert list_keys(s3, sp.bucket) == sorted(expected)


def _utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)))


@pytest.mark.s3_servers("moto")  # (the keys' rendering: the server plays no part)
def test_strftime_fields_in_object_key_rotate_keys_by_ingest_time(make_spoolup, s3, tmp_path):
    shift = tmp_path / "wall-clock-shift"
    set_shift(shift, 0.0)
    sp = make_spoolup(**{"object-key": "logs/dt=%Y-%m-%d/hour=%H/{name}", "key-timezone": "UTC",
                         "flush-grace-period": "10min"})
    with_wall_clock(sp, shift)
    p = sp.start()
    h22, h23, d26 = "logs/dt=2026-11-25/hour=22/", "logs/dt=2026-11-25/hour=23/", "logs/dt=2026-11-26/hour=00/"
    try:
        _clock(sp, shift, _utc(2026, 11, 25, 22, 55, 0))
        a1, w1 = syslog_lines(30, host="a1"), syslog_lines(5, host="w1")
        write(sp.spool / "app.log", a1)
        write(sp.spool / "web%H.log", w1)  # a name holding "%": text, never a strftime field
        _ingested(sp)
        _clock(sp, shift, _utc(2026, 11, 25, 23, 1, 0))  # a new hour, within flush-grace-period
        a2 = syslog_lines(30, host="a2", start=30)
        write(sp.spool / "app.log", a2, "ab")
        st = _ingested(sp)
        # the new key starts an object of its own; the old one stays open for its grace period
        assert sorted(o["key"] for o in st["open_objects"]) == [h22 + "app.log", h22 + "web%H.log", h23 + "app.log"]
        assert list_keys(s3, sp.bucket) == []
        _clock(sp, shift, _utc(2026, 11, 25, 23, 6, 0))  # 22:55 + 10 min passed: the hour-22 objects complete
        wait_for(lambda: list_keys(s3, sp.bucket) == [h22 + "app.log", h22 + "web%H.log"] or None, 60,
                 what="the hour-22 objects")
        assert [o["key"] for o in sp.status()["open_objects"]] == [h23 + "app.log"]
        _clock(sp, shift, _utc(2026, 11, 26, 0, 0, 30))  # the next day; the hour-23 object's grace ran out
        a3 = syslog_lines(30, host="a3", start=60)
        write(sp.spool / "app.log", a3, "ab")
        _ingested(sp)
        wait_for(lambda: h23 + "app.log" in list_keys(s3, sp.bucket) or None, 60, what="the hour-23 object")
        assert sp.drain().returncode == 0
    finally:
        code = sp.stop(p)
    assert code == 0, sp.log_text()[-3000:]
    assert list_keys(s3, sp.bucket) == [h22 + "app.log", h22 + "web%H.log", h23 + "app.log", d26 + "app.log"]
    assert get(s3, sp.bucket, h22 + "app.log") == a1
    assert get(s3, sp.bucket, h22 + "web%H.log") == w1
    assert get(s3, sp.bucket, h23 + "app.log") == a2
    assert get(s3, sp.bucket, d26 + "app.log") == a3
