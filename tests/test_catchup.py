"""The bucket decides what was shipped when the state dir cannot (issue 22 items 2, 3 and 5):
a restored backup, a copied state dir started late, a write-ahead log lost after kill -9,
a wiped state dir rebuilt with `recover --from-bucket`, and an object rebuilt by a journal
gone back in time that would close at a different record -- each ships every record
exactly once, in order, against moto and Ceph RGW.

The ledger segments are spoolup's own (the coordinator's ledger stage writes one before an
object becomes visible): `ledgerkit.assert_recorded()` checks that every object shipped
before the state dir goes back in time is recorded there, and the catch-up relies on them alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from crashkit import journal_path, rows, wait_done, write
from helpers import ext4_loop, list_keys, syslog_lines, wait_for
from ledgerkit import copy_state, assert_recorded, exactly_once

pytestmark = pytest.mark.s3_servers("moto", "rgw")

OPTIONS = {"object-key": "{name}", "flush-grace-period": "1s", "shutdown-timeout": 5}  # (ledgerkit.OBJECT_KEY)


def lines(n: int, start: int, host: str = "catch") -> bytes:
    return syslog_lines(n, host=host, start=start)


def drained(sp, timeout: float = 120) -> str:
    r = sp.drain(timeout=timeout)
    assert r.returncode == 0, f"drain exited {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


def test_restored_backup_ships_nothing_twice(make_spoolup, s3):
    sp = make_spoolup(**OPTIONS)
    first, second, third = lines(1000, 0), lines(1000, 1000), lines(1000, 2000)
    write(sp.spool / "a.log", first)
    drained(sp)
    assert_recorded(sp, s3)
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    write(sp.spool / "a.log", second, "ab")
    drained(sp)
    assert_recorded(sp, s3)
    copy_state(backup, sp.state)  # the backup restored, with its state-id
    write(sp.spool / "a.log", third, "ab")
    out = drained(sp)
    assert exactly_once(s3, sp.bucket, {"a.log": first + second + third})["a.log"] == ["a.log", "a.log-1", "a.log-2"]
    assert "bringing the journal forward" in out or "bring the journal forward" in out, out[-3000:]


def test_copied_state_dir_started_later_ships_nothing_twice(make_spoolup, s3):
    sp = make_spoolup(**OPTIONS)
    first, second, third = lines(700, 0), lines(800, 700), lines(900, 1500)
    write(sp.spool / "a.log", first)
    drained(sp)
    assert_recorded(sp, s3)
    copy = sp.base / "state-copy"
    copy_state(sp.state, copy)  # cp -a of the stopped state dir
    write(sp.spool / "a.log", second, "ab")
    drained(sp)  # the original ships on
    assert_recorded(sp, s3)
    sp.write_config(**{"state-dir": str(copy)})  # ... and later the old copy is started
    write(sp.spool / "a.log", third, "ab")
    drained(sp)
    exactly_once(s3, sp.bucket, {"a.log": first + second + third})


def kill_service(p) -> None:
    """SIGKILL spoolup run and its upload process at the same instant (neither closes the journal)."""
    import os

    children = [int(c) for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
    for pid in (*children, p.pid):
        os.kill(pid, signal.SIGSTOP)
    for pid in (p.pid, *children):
        os.kill(pid, signal.SIGKILL)
    p.wait(30)


def test_lost_wal_after_kill_ships_nothing_twice(make_spoolup, s3):
    sp = make_spoolup(**OPTIONS)
    data = lines(3000, 0)
    write(sp.spool / "a.log", data)
    p = sp.start()
    wait_for(lambda: "a.log" in list_keys(s3, sp.bucket), 60, what="a.log shipped")
    wait_done(sp, 60)
    kill_service(p)
    journal = journal_path(sp)
    assert Path(f"{journal}-wal").stat().st_size > 0, "the commits are in the write-ahead log"
    assert_recorded(sp, s3)
    for suffix in ("-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink()
    more = lines(500, 3000)
    write(sp.spool / "a.log", more, "ab")
    drained(sp)
    exactly_once(s3, sp.bucket, {"a.log": data + more})


def test_wiped_state_dir_recover_from_bucket(make_spoolup, s3):
    sp = make_spoolup(**OPTIONS)
    a = [lines(400, i * 400, host="a") for i in range(3)]
    b = [lines(300, i * 300, host="b") for i in range(3)]
    for part in range(2):  # part of two spool files, into several objects
        write(sp.spool / "a.log", a[part], "ab")
        write(sp.spool / "b.log", b[part], "ab")
        drained(sp)
        assert_recorded(sp, s3)
    shutil.rmtree(sp.state)
    write(sp.spool / "a.log", a[2], "ab")
    write(sp.spool / "b.log", b[2], "ab")
    before = list_keys(s3, sp.bucket)

    r = sp.cmd("recover", "--from-bucket", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "bring the journal forward from the bucket's ledger: 4 object(s)" in r.stdout, r.stdout
    assert "dry run: nothing was changed." in r.stdout
    assert not sp.state.exists() and list_keys(s3, sp.bucket) == before

    r = sp.cmd("recover", "--from-bucket")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "4 object(s) in the bucket that it did not know are journaled as done" in r.stdout, r.stdout
    assert list_keys(s3, sp.bucket) == before
    drained(sp)
    layout = exactly_once(s3, sp.bucket, {"a.log": b"".join(a), "b.log": b"".join(b)})
    assert layout == {"a.log": ["a.log", "a.log-1", "a.log-2"], "b.log": ["b.log", "b.log-1", "b.log-2"]}


@pytest.mark.parametrize("path", ["direct", "proxy-head-without-length"])
def test_wiped_state_dir_run_alone_ships_nothing_twice(make_spoolup, s3, proxy, path):
    """No recover at all: a new journal's start-up check finds the agent's ledger.

    proxy-head-without-length: S3 reached through a proxy that answers HEAD with
    Content-Length: 0 (the test's fault proxy does; the protocol's is-ours already reads a
    HEAD's size 0 as no size).  The bring-forward's HEAD of a recorded object took that 0 for
    the object's size: no object matched its record, nothing was brought forward, and all of
    it shipped again (600 records twice as a.log-1).  Now a size of 0 is no size, and the ETag
    alone decides."""
    sp = make_spoolup(**OPTIONS, **({"url": proxy.url} if path != "direct" else {}))
    first, second = lines(600, 0), lines(600, 600)
    write(sp.spool / "a.log", first)
    drained(sp)
    assert_recorded(sp, s3)
    shutil.rmtree(sp.state)
    write(sp.spool / "a.log", second, "ab")
    drained(sp)
    exactly_once(s3, sp.bucket, {"a.log": first + second})


def test_rebuilt_object_closing_at_another_record_is_not_taken_for_the_shipped_one(make_spoolup, s3):
    """A journal gone back in time holds object 1 open with records 0-499; the bucket holds
    object 1 closed at record 999 (shipped after the backup).  Rebuilt from the spool, object 1
    would close at another record: it must not be marked done by its id (records 1000-1199
    would be journaled as shipped and be in no object), nor ship records twice."""
    sp = make_spoolup(**{**OPTIONS, "flush-grace-period": "1h"})
    first, second, third = lines(500, 0), lines(500, 500), lines(200, 1000)
    write(sp.spool / "a.log", first)
    p = sp.start()
    wait_for(lambda: _open_records(sp) == 500, 60, what="object 1 open with 500 records")
    assert sp.stop(p) == 0
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    write(sp.spool / "a.log", second, "ab")
    drained(sp)  # object 1 closed at record 999, shipped
    assert_recorded(sp, s3)
    assert list_keys(s3, sp.bucket, "a.log") == ["a.log"]
    copy_state(backup, sp.state)
    write(sp.spool / "a.log", third, "ab")
    drained(sp)
    exactly_once(s3, sp.bucket, {"a.log": first + second + third})


def _open_records(sp) -> int:
    try:
        conn = sqlite3.connect(f"file:{journal_path(sp)}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT coalesce(sum(records), 0) FROM objects WHERE state = 'open'").fetchone()
            return int(row[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


# ---------------------------------------------------------------------------
# envelope: keys interleave in one spool file, so a journal gone back in time can be behind a
# shipped object of key B whose records come after key A's records it never shipped


def env(key: str, msg: str) -> bytes:
    return json.dumps({"key": key, "msg": msg}).encode() + b"\n"


def msgs(lines_: list[bytes]) -> bytes:
    return b"".join(json.loads(line)["msg"].encode() + b"\n" for line in lines_)


def _b_shipped_past_a(make_spoolup, s3):
    """The backup holds A's and B's first records in open objects; after it, B's object closes
    at max-object-size and ships (records of B past A's), A's stays open; the backup is put
    back.  Returns (sp, A's records, B's records, the spool file's bytes)."""
    sp = make_spoolup(format="envelope", **{**OPTIONS, "object-key": "{key}", "flush-grace-period": "1h",
                                            "max-object-size": "4KiB"})
    a0 = [env("A", f"a0 {i:03d}") for i in range(5)]
    b0 = [env("B", f"b0 {i:03d}") for i in range(5)]
    first = [line for pair in zip(a0, b0) for line in pair]
    write(sp.spool / "r.jsonl", b"".join(first))
    p = sp.start()
    wait_for(lambda: _open_records(sp) == len(first), 60, what="A and B open with their first records")
    assert sp.stop(p) == 0
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    b1 = [env("B", f"b1 {i:03d} " + "x" * 300) for i in range(20)]  # ~6.5 KiB: B's object closes by size
    write(sp.spool / "r.jsonl", b"".join(b1), "ab")
    p = sp.start()
    wait_for(lambda: "B" in list_keys(s3, sp.bucket), 60, what="B's first object shipped")
    assert sp.stop(p) == 0
    assert "A" not in list_keys(s3, sp.bucket), "A's object shipped (it must stay open)"
    assert_recorded(sp, s3)
    copy_state(backup, sp.state)
    return sp, a0, b0 + b1, b"".join(first + b1)


def test_envelope_records_of_a_key_shipped_past_another_keys_unshipped_ones_are_skipped(make_spoolup, s3):
    """The restored journal is rewound to A's first record (A's records must be read again),
    and B's shipped records interleaved with and after them become skip spans: ingest reads
    past exactly them.  Fails without the skip filter: B's first records twice."""
    sp, a, b, _data = _b_shipped_past_a(make_spoolup, s3)
    more = [env("A", "a2 000"), env("B", "b2 000")]
    write(sp.spool / "r.jsonl", b"".join(more), "ab")
    out = drained(sp)
    assert "bytes past it in the bucket already are read past, not shipped again" in out, out[-3000:]
    exactly_once(s3, sp.bucket, {"A": msgs(a + more[:1]), "B": msgs(b + more[1:])})


def test_bytes_to_read_again_gone_from_the_spool_exit_1_changing_nothing(make_spoolup, s3):
    """The same restored backup, but the spool file is gone: A's records (in no object of the
    bucket) cannot be read again.  Exit 1 naming the file and the bytes; the journal, the
    state dir and the bucket are as they were."""
    sp, a, _b, data = _b_shipped_past_a(make_spoolup, s3)
    (sp.spool / "r.jsonl").unlink()
    before = (list_keys(s3, sp.bucket, own=True), journal_path(sp).read_bytes(), sorted(p.name for p in sp.state.rglob("*")))
    r = sp.drain(timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "needs" in out and f"bytes of spool file {sp.spool / 'r.jsonl'} read again" in out, out[-3000:]
    first_a = data.index(a[0])
    assert f"(bytes {first_a}-" in out, out[-3000:]
    assert "the file is no longer in the spool" in out and "Nothing was changed" in out
    after = (list_keys(s3, sp.bucket, own=True), journal_path(sp).read_bytes(), sorted(p.name for p in sp.state.rglob("*")))
    assert after == before


# ---------------------------------------------------------------------------
# a spool file recreated on the inode of one the restored journal still reads


@pytest.fixture(params=["with-birth-time", "without-birth-time"])
def ext4_spool(request, tmp_path) -> Path:
    """An ext4 loop mount (it hands a deleted file's inode to the next file created): with
    256-byte inodes (birth times recorded) or 128-byte ones (none: identity by content)."""
    with ext4_loop(tmp_path, birth_times=request.param == "with-birth-time") as mnt:
        yield mnt


@pytest.mark.s3_servers("moto")  # (file identity on the spool's side; the ledger on RGW: the tests above)
def test_file_recreated_on_the_inode_of_a_restored_journals_file_ships_nothing_twice(make_spoolup, s3, ext4_spool):
    """The writer recreated a.log (the old file deleted, the new one on the same inode) and the
    new file was shipped; then a backup taken while the old file was live is restored.  The
    bring-forward finds the new file by the ledger's records of it (not the journal's row of
    the old one on that inode): it is read on from what the bucket holds, never from byte 0
    (before: the scan found another file on the row's inode, forgot the row and shipped the
    new file again from its start -- the torture's duplicated first multipart object)."""
    spool = ext4_spool / "spool"
    spool.mkdir()
    sp = make_spoolup(**OPTIONS, **{"spool-dir": str(spool)})
    sp.spool = spool
    old, new, more = lines(300, 0, host="old"), lines(400, 300, host="new"), lines(200, 700, host="new")
    write(spool / "a.log", old)
    drained(sp)
    assert (spool / "a.log").exists(), "the old file was reaped: the backup would not hold it live"
    assert_recorded(sp, s3)
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    ino = (spool / "a.log").stat().st_ino
    (spool / "a.log").unlink()
    write(spool / "a.log", new)  # the writer's new file
    assert (spool / "a.log").stat().st_ino == ino, "ext4 did not reuse the inode"
    drained(sp)
    assert_recorded(sp, s3)
    copy_state(backup, sp.state)  # the backup restored: its live row is the old file, on that inode
    write(spool / "a.log", more, "ab")
    out = drained(sp)
    assert "bring the journal forward" in out, out[-3000:]
    exactly_once(s3, sp.bucket, {"a.log": old + new + more})


# ---------------------------------------------------------------------------
# lines with object-key-timestamp: a region re-read after a restore keeps its place among the
# bucket's objects (objects of different timestamps have no completion order between them)


def _by_key_order(s3, bucket: str, base: str) -> list[str]:
    """The objects of `base` (base-TS, base-TS-N) in key order: by timestamp, then index."""
    import re

    found = []
    for k in list_keys(s3, bucket, base):
        m = re.fullmatch(re.escape(base) + r"-(\d{12})(?:-(\d+))?", k)
        assert m, f"unexpected key {k}"
        found.append((m.group(1), int(m.group(2) or 0), k))
    return [k for _ts, _i, k in sorted(found)]


def test_region_read_again_sorts_before_the_later_timestamps_shipped_object(make_spoolup, s3, proxy, tmp_path):
    """Minute 02:59's records ship; a backup is taken.  Minute 03:00's records go to an object
    that does not complete (S3 refuses its PUT), minute 03:01's later records ship.  The backup
    is restored and the drain (at 03:02) reads 03:00's records again: at the ingest time they
    would go to f.log-<0302>, after f.log-<0301> whose records follow them in the file (the
    torture's "records of ...0302-1 come before records of ...0301-5").  They must get the
    timestamp of the shipped object before them (02:59: a backfill after it in index order)."""
    from test_object_time import _clock, _ingested, _utc
    from test_reap_clock import set_shift, with_wall_clock

    shift = tmp_path / "wall-clock-shift"
    set_shift(shift, _utc(2026, 12, 2, 2, 59, 10) - __import__("time").time())
    sp = make_spoolup(**{**OPTIONS, "flush-grace-period": "30s", "key-timezone": "UTC",
                         "object-key-timestamp": "%Y%m%d%H%M"})
    with_wall_clock(sp, shift)
    early, region, later = lines(200, 0), lines(300, 200), lines(250, 500)
    write(sp.spool / "f.log", early)
    drained(sp)
    assert list_keys(s3, sp.bucket) == ["f.log-202612020259"]
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    direct = sp.options["url"]
    sp.write_config(url=proxy.url)  # the lost timeline: S3 refuses the 03:00 object
    proxy.add("PutObject", "CreateMultipartUpload", action="error", key="f.log-202612020300")
    p = sp.start()
    try:
        _clock(sp, shift, _utc(2026, 12, 2, 3, 0, 10))
        write(sp.spool / "f.log", region, "ab")
        _ingested(sp)
        _clock(sp, shift, _utc(2026, 12, 2, 3, 1, 10))
        write(sp.spool / "f.log", later, "ab")  # a newer timestamp: the 03:00 object closes (and fails)
        _ingested(sp)
        _clock(sp, shift, _utc(2026, 12, 2, 3, 1, 50))  # the 03:01 object's grace ran out: it ships
        wait_for(lambda: "f.log-202612020301" in list_keys(s3, sp.bucket) or None, 60, what="the 03:01 object")
        assert_recorded(sp, s3)
    finally:
        sp.stop(p)
    assert list_keys(s3, sp.bucket) == ["f.log-202612020259", "f.log-202612020301"]  # 03:00's never completed
    copy_state(backup, sp.state)
    sp.write_config(url=direct)  # (the proxy answers HEAD with Content-Length 0)
    set_shift(shift, _utc(2026, 12, 2, 3, 2, 30) - __import__("time").time())
    out = drained(sp)
    assert "bringing the journal forward" in out, out[-3000:]
    keys = _by_key_order(s3, sp.bucket, "f.log")
    body = b"".join(s3.get_object(Bucket=sp.bucket, Key=k)["Body"].read() for k in keys)
    assert body == early + region + later, f"{keys}: records out of order or not exactly once\n{out[-6000:]}"
    assert keys == ["f.log-202612020259", "f.log-202612020259-1", "f.log-202612020301"], keys


def test_restored_object_recorded_but_not_done_shipped_by_the_lost_future_ships_once(make_spoolup, s3, s3server,
                                                                                      proxy):
    """The backup holds a.log's small object O (a.log-1) recorded in a ledger segment but not done
    (its PutObject waits for the multipart object O0 before it, a.log, whose parts are held);
    the future it lost completed O0 (recorded in a later segment) and shipped O.  Restored, the
    bring-forward finds O0 shipped, discards the journal's O0 and, its spool file rewound to O0's
    start, O after it.  It read only the segments after the journal's number: O's record, at or
    below it, was not read, O was not known as shipped, and its records shipped again as
    a.log-2 (commit b835f39; torture --state-loss seed 9202).  Now the ledger is read from the
    lowest segment recording one of the journal's not-done objects."""
    sp = make_spoolup(**OPTIONS, url=proxy.url, **{"chunk-size": "5MiB", "max-object-size": "6MiB"})
    first = syslog_lines(26_000, width=256, host="big")  # ~6.3 MiB: O0 (5 + 1 MiB, multipart), O (the rest)
    write(sp.spool / "a.log", first)
    gate = threading.Event()

    def hold(_req):
        gate.wait(120)
        raise ConnectionAbortedError("dropped by the test: never forwarded")

    proxy.add("UploadPart", action="hook", hook=hold, key="a.log")  # O0 cannot finish: never recorded
    p = subprocess.Popen(sp.argv("drain"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sp.env(),
                         start_new_session=True)
    try:
        def recorded() -> list[dict] | None:
            try:
                objs = sorted((o for o in rows(sp, "objects") if o["key"] == "a.log"), key=lambda o: o["id"])
            except sqlite3.OperationalError:
                return None  # (no journal yet)
            return objs if len(objs) == 2 and (objs[1]["ledger_seq"] or 0) > 0 else None

        o0, o = wait_for(recorded, 120, what="a.log's second object recorded in a ledger segment")
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the whole service
        p.wait(30)
        proxy.clear()
        gate.set()
    assert o0["state"] != "done" and not (o0["ledger_seq"] or 0) > 0, o0
    assert o["state"] != "done" and o["mode"] == "single" and o["final_key"] == "a.log-1", o
    assert list_keys(s3, sp.bucket) == [], "nothing is visible yet"
    sp.write_config(url=s3server.url)  # (the proxy's part is over)
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    segments = set(list_keys(s3, sp.bucket, ".spoolup/", own=True))
    drained(sp)  # the future: O0 recorded in a later segment and completed, then O put
    assert list_keys(s3, sp.bucket) == ["a.log", "a.log-1"]
    assert set(list_keys(s3, sp.bucket, ".spoolup/", own=True)) - segments, "the future wrote no segment"
    assert_recorded(sp, s3)

    copy_state(backup, sp.state)  # O recorded, not done; O0 not recorded
    second = lines(500, 0, host="after")
    write(sp.spool / "a.log", second, "ab")
    out = drained(sp)
    assert "bring the journal forward" in out or "bringing the journal forward" in out, out[-3000:]
    assert exactly_once(s3, sp.bucket, {"a.log": first + second})["a.log"] == ["a.log", "a.log-1", "a.log-2"]


def test_done_object_past_a_rewound_one_is_read_past_not_shipped_again(make_spoolup, s3, s3server, proxy):
    """The backup holds key B's object (the spool file's later bytes) done and key A's (its
    earlier bytes) recorded but not done: objects of different keys (or timestamps) have no
    completion order.  The future it lost shipped A's object, and wrote a later segment.
    Restored, the bring-forward finds A's object shipped, discards the journal's (its id) and
    rewinds the file to its first byte; the offset moves past the shipped bytes that follow --
    A's -- and stopped at B's: B's object is the journal's own, done, in no record read and in
    no skip span, so its records were read again and shipped twice as B-1 (torture --state-loss
    --key-races seed 9303: 78,792 records twice, f3.log-...-59/-61/-65/-66).  The journal's
    done objects' spans count as shipped bytes in the rewind like the records read."""
    sp = make_spoolup(format="envelope", url=proxy.url, **{**OPTIONS, "object-key": "{key}"})
    a0 = [env("A", f"a0 {i:03d}") for i in range(5)]
    b0 = [env("B", f"b0 {i:03d}") for i in range(5)]
    write(sp.spool / "r.jsonl", b"".join(a0 + b0))

    def drop_a(req):
        if req.key == "A":
            raise ConnectionAbortedError("dropped by the test: never forwarded")

    proxy.add("PutObject", action="hook", hook=drop_a)  # A's object cannot become visible
    p = sp.start()
    try:
        def states() -> dict | None:
            try:
                objs = {o["key"]: o for o in rows(sp, "objects")}
            except sqlite3.OperationalError:
                return None
            ok = objs.get("B", {}).get("state") == "done" and (objs.get("A", {}).get("ledger_seq") or 0) > 0
            return objs if ok else None

        objs = wait_for(states, 60, what="B's object done, A's recorded")
    finally:
        sp.stop(p)
        proxy.clear()
    assert rows(sp, "objects", "key = 'A'")[0]["state"] != "done", objs
    assert list_keys(s3, sp.bucket) == ["B"]
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    sp.write_config(url=s3server.url)
    a1 = [env("A", f"a1 {i:03d}") for i in range(3)]
    write(sp.spool / "r.jsonl", b"".join(a1), "ab")
    drained(sp)  # the future: A's object put, a1 in A-1 (recorded in a later segment)
    assert list_keys(s3, sp.bucket) == ["A", "A-1", "B"]
    assert_recorded(sp, s3)

    copy_state(backup, sp.state)  # B done, A recorded and not done
    more = [env("A", "a2 000"), env("B", "b2 000")]
    write(sp.spool / "r.jsonl", b"".join(more), "ab")
    out = drained(sp)
    assert "bring the journal forward" in out or "bringing the journal forward" in out, out[-3000:]
    exactly_once(s3, sp.bucket, {"A": msgs(a0 + a1 + more[:1]), "B": msgs(b0 + more[1:])})
