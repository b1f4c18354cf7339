"""Kill points: for each invariant of docs/DESIGN.md ("Delivery invariants"), spoolup
is SIGKILLed exactly between two steps of it (SPOOLUP_CRASH_AT, spoolup/crash.py),
restarted, and the bucket must then hold every spool byte exactly once: each key's
objects concatenated in index order equal the spool file, no duplicate or stray
object, no multipart upload left pending.

Objects of one chunk are a single conditional PutObject; objects bigger than
chunk-size (5 MiB) are real multipart uploads, so both paths are crashed.  Each
test runs with the state dir on the test run's filesystem and on a ramfs (no
O_DIRECT: the chunk files are written through the page cache).
"""

from __future__ import annotations

import pytest

from crashkit import (ask, assert_exact, chunk_files, chunks_in, consumed, crash_mark, drain_crashing, noisy_lines,
                      rows, split_records, write)
from faultproxy import PROBE_KEY
from helpers import STATE_FILESYSTEMS, list_keys, pending_uploads, syslog_lines, wait_for  # noqa: F401
from spoolup import ledger
from spoolup.journal import Journal

pytestmark = pytest.mark.s3_servers("moto", "rgw")

SMALL = {"a.log": syslog_lines(2000, host="a"), "b.log": syslog_lines(700, host="b"), "c.log": b"one record\n"}
BIG = syslog_lines(50_000, width=256)  # ~12.8 MiB: parts of 5 + 5 + 2.8 MiB
SHAPES = {
    # name: (config options, spool files, key suffix)
    "single": ({}, SMALL, ""),
    "multipart": ({}, {"big.log": BIG, "a.log": SMALL["a.log"]}, ""),
    "gzip": ({"compression": "gzip", "compresslevel": 1},
             {"big.log": noisy_lines(45_000), "a.log": SMALL["a.log"]}, ".gz"),  # ~6 MiB compressed
    # the fast mode: no fdatasync, WAL synchronous=NORMAL -- still exactly once when spoolup is killed
    "fsync-off": ({"fsync": False}, {"big.log": BIG, "a.log": SMALL["a.log"]}, ""),
}


def make(make_spoolup, shape: str, **options):
    opts, files, suffix = SHAPES[shape]
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, **opts, **options})
    return sp, files, suffix


def restart_and_check(sp, s3, files, suffix="", **kw):
    r = sp.drain(timeout=180)
    assert r.returncode == 0, f"drain after the crash failed: {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    return assert_exact(s3, sp.bucket, files, suffix=suffix, **kw)


# ---------------------------------------------------------------------------
# invariant 1: chunk bytes are written (and synced) before the batch that records
# them and the source offsets commits; on start chunk files are truncated to their
# journaled length and sources re-read from their journaled offset.


# ingest dies before any S3 request of its own: what it leaves is the same whatever the server (the
# S3-facing points below run on both); the state dir's filesystems are this test's point: every
# shape on the test run's filesystem (O_DIRECT chunk writes), and on a ramfs (no O_DIRECT: written
# through the page cache) the two chunk writers, plain (multipart: sealed parts and an open chunk)
# and compressed (gzip) -- single and fsync-off write as multipart does
INGEST_POINTS = ["after-chunk-write", "after-chunk-sync", "after-batch-commit"]


@pytest.mark.s3_servers("moto")
@pytest.mark.state_filesystems("disk")
@pytest.mark.parametrize("shape", ["single", "multipart", "gzip", "fsync-off"])
@pytest.mark.parametrize("point", INGEST_POINTS)
def test_invariant1_ingest_killed_between_chunk_write_and_commit(make_spoolup, s3, point, shape):
    ingest_killed_between_chunk_write_and_commit(make_spoolup, s3, point, shape)


@pytest.mark.s3_servers("moto")
@pytest.mark.state_filesystems("ramfs")
@pytest.mark.parametrize("shape", ["multipart", "gzip"])
@pytest.mark.parametrize("point", INGEST_POINTS)
def test_invariant1_ingest_killed_between_chunk_write_and_commit_without_o_direct(make_spoolup, s3, point, shape):
    ingest_killed_between_chunk_write_and_commit(make_spoolup, s3, point, shape)


def ingest_killed_between_chunk_write_and_commit(make_spoolup, s3, point: str, shape: str) -> None:
    sp, files, suffix = make(make_spoolup, shape)
    halves = {name: split_records(data, len(data) // 2) for name, data in files.items()}
    for name, (first, _) in halves.items():
        write(sp.spool / name, first)
    # the first halves are journaled into open objects (the service stops cleanly, objects stay open) ...
    p = sp.start()
    wait_for(lambda: consumed(sp) == sum(len(f) for f, _ in halves.values()), 60, what="the first halves journaled")
    assert sp.stop(p) == 0
    assert len(ask(sp, Journal.open_objects)) == len(files)
    # ... then the rest is appended, and the batch that takes it is killed at `point`
    for name, (_, rest) in halves.items():
        write(sp.spool / name, rest, "ab")
    drain_crashing(sp, point, scope="service")
    journaled = {f"{c['object_id']:012d}-{c['part']:05d}": c["length"] for c in chunks_in(sp, "open")}
    on_disk = chunk_files(sp)
    if point == "after-batch-commit":
        assert consumed(sp) == sum(len(d) for d in files.values())  # the second batch is journaled
    else:
        # the crash left written but uncommitted bytes: longer chunk files (or new ones)
        assert consumed(sp) == sum(len(f) for f, _ in halves.values())
        assert any(on_disk.get(name, 0) > length for name, length in journaled.items()) or \
            set(on_disk) - set(journaled) - {n + ".part" for n in journaled}, (journaled, on_disk)
    restart_and_check(sp, s3, files, suffix)


# ---------------------------------------------------------------------------
# invariants 2-4 and 6, the upload process: killed with the whole service
# ("service": main and upload process at the same instant), then a fresh drain.

UPLOAD_POINTS = [
    # (point, shape): invariant
    ("after-claim", "single"),  # 4/5: index journaled, nothing created yet
    ("after-claim", "multipart"),
    ("after-create-multipart", "multipart"),  # 4: upload created, id not journaled -> adopted, same index
    ("after-upload-part", "multipart"),  # 2: part in S3, ETag not journaled
    ("after-upload-part:2", "multipart"),
    ("after-record-part", "multipart"),  # 2: ETag journaled
    ("after-complete", "multipart"),  # 3: completed in S3, not journaled
    ("after-complete", "gzip"),
    ("after-ledger-segment", "single"),  # ledger: segment in the bucket, its records not journaled
    ("after-ledger-segment", "multipart"),
    ("after-ledger-recorded", "single"),  # ledger: records journaled, PutObject/Complete not sent
    ("after-ledger-recorded", "multipart"),
    ("after-put-object", "single"),  # 3: PutObject done, not journaled
    ("after-object-done", "single"),  # 3: done journaled, chunk files not yet deleted
    ("after-object-done", "multipart"),
]


# on a ramfs (no O_DIRECT) the upload side reads the same chunk files and journal: the points where
# the state dir's files change hands (upload id, part ETag, records, chunk files removed) run there too
RAMFS_UPLOAD_POINTS = [("after-create-multipart", "multipart"), ("after-record-part", "multipart"),
                       ("after-ledger-recorded", "single"), ("after-object-done", "multipart")]


# on RGW, the points where the bucket holds something the journal does not know when the service
# dies (a claim's index, an upload, a part, a completed object, a segment), read back on RGW's terms
RGW_UPLOAD_POINTS = [("after-claim", "single"), ("after-create-multipart", "multipart"),
                     ("after-upload-part", "multipart"), ("after-complete", "multipart"),
                     ("after-put-object", "single"), ("after-ledger-segment", "single"),
                     ("after-ledger-recorded", "multipart")]


@pytest.mark.s3_servers("moto")
@pytest.mark.state_filesystems("disk")
@pytest.mark.parametrize("point,shape", UPLOAD_POINTS, ids=[f"{p}-{s}" for p, s in UPLOAD_POINTS])
def test_upload_killed_with_the_service(make_spoolup, s3, point, shape):
    upload_killed_with_the_service(make_spoolup, s3, point, shape)


@pytest.mark.s3_servers("rgw")
@pytest.mark.state_filesystems("disk")
@pytest.mark.parametrize("point,shape", RGW_UPLOAD_POINTS, ids=[f"{p}-{s}" for p, s in RGW_UPLOAD_POINTS])
def test_upload_killed_with_the_service_on_rgw(make_spoolup, s3, point, shape):
    upload_killed_with_the_service(make_spoolup, s3, point, shape)


@pytest.mark.s3_servers("moto")
@pytest.mark.state_filesystems("ramfs")
@pytest.mark.parametrize("point,shape", RAMFS_UPLOAD_POINTS, ids=[f"{p}-{s}" for p, s in RAMFS_UPLOAD_POINTS])
def test_upload_killed_with_the_service_on_ramfs(make_spoolup, s3, point, shape):
    upload_killed_with_the_service(make_spoolup, s3, point, shape)


def upload_killed_with_the_service(make_spoolup, s3, point: str, shape: str) -> None:
    sp, files, suffix = make(make_spoolup, shape)
    for name, data in files.items():
        write(sp.spool / name, data)
    drain_crashing(sp, point, scope="service")
    name = point.split(":")[0]
    # (the capability probe runs beside the first uploads: the crash may leave its scratch
    # object, which reconcile removes -- not an object of the stream)
    before = {k: s3.head_object(Bucket=sp.bucket, Key=k)["ETag"] for k in list_keys(s3, sp.bucket)
              if PROBE_KEY not in k}
    if name in ("after-complete", "after-put-object"):
        assert before, "the object was in the bucket before the crash"
    if name == "after-create-multipart":
        assert pending_uploads(s3, sp.bucket), "the crash left the upload the journal does not know"
    # The service dies at once: whichever object reaches the point first, another object's
    # CreateMultipartUpload may be answered and its id not yet journaled (a.log's "after-object-done"
    # while big.log's upload is being created).  Such an upload holds no part and is at the key
    # the journal claimed for the object: the restarted process adopts it (issue 18 item 4), so
    # none is left behind and every object keeps its index.
    layout = restart_and_check(sp, s3, files, suffix)
    if name == "after-create-multipart":
        assert layout["big.log"] == ["big.log"], layout
    # an object completed before the crash is neither written again nor duplicated
    for key, etag in before.items():
        assert s3.head_object(Bucket=sp.bucket, Key=key)["ETag"] == etag, f"{key} was written again"
    assert all(len(keys) == 1 for keys in layout.values()), layout
    assert chunk_files(sp) == {}, "chunk files of completed objects are removed"
    segments = assert_recorded(sp, s3)
    if name == "after-ledger-segment":
        # the segment the crash left unjournaled is a gap: its number is never written again
        assert len(segments) >= 2 and len(set(segments)) == len(segments), segments


def assert_recorded(sp, s3) -> list[int]:
    """Every object the journal has done is in the bucket as its latest ledger record says
    (final key, size, ETag) and the record's spans hold exactly its bytes; returns the
    segment numbers in the bucket."""
    prefix = ledger.agent_prefix(sp.options["object-key"], sp_agent(sp))
    keys = list_keys(s3, sp.bucket, prefix, own=True)
    segments = [ledger.Segment.decode(s3.get_object(Bucket=sp.bucket, Key=k)["Body"].read()) for k in keys]
    latest = ledger.latest(r for seg in segments for r in seg.records)
    journal_id = ask(sp, lambda j: j.journal_id)
    done = rows(sp, "objects", "state = 'done'")
    assert done
    for o in done:
        record = latest.get(f"{journal_id}/{o['id']}")
        assert record is not None, f"object {o['id']} at {o['final_key']} has no ledger record"
        head = s3.head_object(Bucket=sp.bucket, Key=o["final_key"])
        assert record.final_key == o["final_key"] and record.matches(head["ContentLength"], head["ETag"]), \
            (record, head["ContentLength"], head["ETag"])
        assert record.records == o["records"] and record.raw == o["size"]
    return [seg.seq for seg in segments]


def sp_agent(sp) -> str:
    from spoolup.config import load

    return load(sp.config).agent


# the upload process alone is killed; `spoolup run` restarts it and the same drain finishes
PROCESS_POINTS = ["after-create-multipart", "after-upload-part", "after-complete", "after-claim",
                  "after-ledger-segment", "after-ledger-recorded"]


# (the upload points on ramfs above cover its files there; the bucket at each point is the service
# kills' above, on both servers: the restart by the service is spoolup's own, so moto only)
@pytest.mark.s3_servers("moto")
@pytest.mark.state_filesystems("disk")
@pytest.mark.parametrize("point", PROCESS_POINTS)
def test_upload_process_killed_and_restarted_by_the_service(make_spoolup, s3, point):
    sp, files, suffix = make(make_spoolup, "multipart")
    for name, data in files.items():
        write(sp.spool / name, data)
    r = drain_crashing(sp, point, scope="process")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "upload process exited; restarting it" in r.stderr
    layout = assert_exact(s3, sp.bucket, files, suffix=suffix)
    assert all(len(keys) == 1 for keys in layout.values()), layout
    assert layout["big.log"] == ["big.log"], layout


# ---------------------------------------------------------------------------
# invariant 5: never overwrite an object spoolup did not write


@pytest.mark.state_filesystems("disk")  # (the foreign object is S3's side: both servers)
@pytest.mark.parametrize("shape", ["single", "multipart"])
def test_invariant5_foreign_object_at_the_claimed_key(make_spoolup, s3, shape):
    sp, files, suffix = make(make_spoolup, shape)
    files = {"big.log": files["big.log"]} if shape == "multipart" else {"a.log": files["a.log"]}
    for name, data in files.items():
        write(sp.spool / name, data)
    drain_crashing(sp, "after-claim", scope="service")
    claimed = [o["final_key"] for o in rows(sp, "objects", "final_key IS NOT NULL", order_by="id")]
    assert claimed == list(files), claimed
    foreign = {}
    for key in claimed:
        foreign[key] = b"someone else's object, written while spoolup was down\n"
        s3.put_object(Bucket=sp.bucket, Key=key, Body=foreign[key])
    layout = restart_and_check(sp, s3, files, foreign=foreign)
    for name in files:
        assert layout[name] == [f"{name}-1"], layout
    r = sp.status()
    assert r["last_error"]["code"] == "KeyTaken"


# ---------------------------------------------------------------------------
# invariant 6: a spool file is deleted only when every byte is journaled consumed and
# in completed objects, and its writer closed it.  A crash around the deletion must not
# re-read (duplicate) it nor lose it.


@pytest.mark.s3_servers("moto")  # (reaping is the spool's and the journal's side: both filesystems)
@pytest.mark.parametrize("point", ["before-reap-unlink", "after-reap-unlink"])
def test_invariant6_killed_around_deleting_a_shipped_spool_file(make_spoolup, s3, point):
    import os
    import time

    sp, files, suffix = make(make_spoolup, "single", **{"spool-reap": "1s"})
    for name, data in files.items():
        write(sp.spool / name, data)
        old = time.time() - 3600
        os.utime(sp.spool / name, (old, old))
    drain_crashing(sp, point, scope="service")
    restart_and_check(sp, s3, files)
    sp.drain(check=True)  # and once more: still nothing duplicated, every file gone
    assert_exact(s3, sp.bucket, files)
    assert sorted(os.listdir(sp.spool)) == []
    assert crash_mark(sp).read_text().startswith(point)



def test_invariant6_a_writer_opening_the_file_during_the_reap_lease_does_not_kill_spoolup(tmp_path):
    """The reap takes a write lease (no one else has the file open); a writer that opens the
    file meanwhile makes the kernel send SIGIO, whose default action terminates the process.
    spoolup ignores it, and sees the broken lease."""
    import subprocess
    import sys

    path = tmp_path / "app.log"
    path.write_bytes(b"shipped\n")
    script = (
        "import fcntl, os, sys, time\n"
        "from spoolup.reaper import _take_lease\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "print('leased' if _take_lease(fd)[0] is True else 'no lease', flush=True)\n"
        "deadline = time.monotonic() + 20\n"
        "while fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('broken' if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK else 'kept', flush=True)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "leased"
    writer = subprocess.Popen(["sh", "-c", f"echo more >> '{path}'"])  # blocks until the lease is given up
    out, _ = holder.communicate(timeout=60)
    assert holder.returncode == 0, f"the lease holder died: exit {holder.returncode} (SIGIO is 29)"
    assert out.strip() == "broken"
    assert writer.wait(60) == 0
    assert path.read_bytes() == b"shipped\nmore\n"
