"""`spoolup recover [--dry-run]`: reconciling journal, chunk files, spool and bucket
after a crash.  Every state is made by really crashing spoolup (SPOOLUP_CRASH_AT)
and, where a test needs damage a crash cannot make (a chunk file cut short, an S3
that lost parts, a corrupt journal), by damaging the files or the bucket the way
a disk or an operator would.  `spoolup run` performs the same recovery at start.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from crashkit import (ask, assert_exact, chunk_files, chunks_in, copytruncate, drain_crashing, journal_db,
                      journal_path, journal_state, journal_write, journaled_upload, noisy_lines, rows, spoolup_cmd,
                      write)
from faultproxy import PROBE_KEY, WRITES
from helpers import list_keys, pending_uploads, syslog_lines
from spoolup.journal import Journal, migrations, schema_version

pytestmark = pytest.mark.s3_servers("moto", "rgw")

BIG = noisy_lines(40_000)  # ~10 MiB: parts of 5 + 5 + a little
SMALL = syslog_lines(1500, host="s")


def crashed(make_spoolup, point: str, files: dict[str, bytes], **options):
    """A spoolup whose drain was killed (with its upload process) at `point`."""
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, **options})
    for name, data in files.items():
        write(sp.spool / name, data)
    drain_crashing(sp, point, scope="service")
    return sp


def recover(sp, *extra: str):
    return spoolup_cmd(sp, "recover", *extra)


def drained(sp, s3, files, **kw):
    r = sp.drain(timeout=180)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-3000:]}"
    return assert_exact(s3, sp.bucket, files, **kw)


def open_chunk(sp) -> tuple[Path, int]:
    """An open chunk's file and its journaled length."""
    c = max(chunks_in(sp, "open"), key=lambda c: c["length"])
    oid, part, length = c["object_id"], c["part"], c["length"]
    return sp.state / "chunks" / f"{oid:012d}-{part:05d}", length


# ---------------------------------------------------------------------------
# chunk files


def test_chunk_file_longer_than_journaled_is_truncated(make_spoolup, s3):
    files = {"a.log": SMALL, "b.log": syslog_lines(300, host="b")}
    sp = crashed(make_spoolup, "after-batch-commit", files)
    path, length = open_chunk(sp)
    size = path.stat().st_size + 3400  # (a chunk file may end in padding to its last 4 KiB block)
    with open(path, "ab") as f:
        f.write(b"bytes written but never committed\n" * 100)
    r = recover(sp, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "chunk file(s) to their journaled lengths" in r.stdout, r.stdout
    assert f"{path.name} ({size} -> {length})" in r.stdout, r.stdout
    assert "would do" in r.stdout and path.stat().st_size == size
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{path.name} ({size} -> {length})" in r.stdout and "did" in r.stdout
    assert path.stat().st_size == length
    assert "Nothing to repair" in recover(sp).stdout
    drained(sp, s3, files)


@pytest.mark.s3_servers("moto")  # refused before any S3 request: the server plays no part
@pytest.mark.parametrize("command", ["recover", "recover --dry-run", "run", "drain"])
def test_chunk_file_shorter_than_journaled_is_refused_naming_the_file(make_spoolup, s3, command):
    files = {"a.log": SMALL}
    sp = crashed(make_spoolup, "after-batch-commit", files)
    path, length = open_chunk(sp)
    os.truncate(path, length - 10)
    before = journal_state(sp)
    r = spoolup_cmd(sp, *command.split(), timeout=60)
    assert r.returncode == 1, f"{command}: exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    out = r.stdout + r.stderr
    assert str(path) in out and f"journal says {length} bytes" in out, out[-2000:]
    assert path.stat().st_size == length - 10, "spoolup does not guess"
    assert list_keys(s3, sp.bucket) == [], "a damaged object is never uploaded"
    assert journal_state(sp) == before


# ---------------------------------------------------------------------------
# multipart uploads: ListParts


def test_parts_in_s3_but_not_journaled_are_journaled_not_uploaded_again(make_spoolup, s3, proxy):
    files = {"big.log": BIG}
    sp = crashed(make_spoolup, "after-upload-part", files)
    sp.write_config(url=proxy.url)
    sealed_before = ask(sp, Journal.sealed_pending)
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "was uploaded but its ETag not journaled; journaled now (not uploaded again)" in r.stdout, r.stdout
    assert proxy.count("ListParts") >= 1
    assert proxy.count(*WRITES) == 0, "recover itself uploads nothing"
    still_sealed = ask(sp, Journal.sealed_pending)
    assert still_sealed < sealed_before
    start = proxy.requests()[-1].at
    drained(sp, s3, files)
    assert proxy.count("UploadPart", since=start) == still_sealed, "only the parts S3 does not hold are sent"


def _crashed_after_record_part(make_spoolup):
    sp = crashed(make_spoolup, "after-record-part", {"big.log": BIG})
    key, upload_id = journaled_upload(sp)
    recorded = chunks_in(sp, "uploaded")
    assert recorded, "a part was journaled as uploaded before the crash"
    return sp, key, upload_id


def test_journaled_parts_missing_in_s3_are_uploaded_again_from_local_chunks(make_spoolup, s3, proxy):
    sp, key, upload_id = _crashed_after_record_part(make_spoolup)
    # a store that lost the parts: the journaled upload id now names an upload holding none
    s3.abort_multipart_upload(Bucket=sp.bucket, Key=key, UploadId=upload_id)
    empty = s3.create_multipart_upload(Bucket=sp.bucket, Key=key)["UploadId"]
    journal_write(sp, "UPDATE objects SET upload_id = ? WHERE upload_id = ?", (empty, upload_id))
    sp.write_config(url=proxy.url)
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is journaled but S3 does not hold it; uploading it again from the local chunk" in r.stdout, r.stdout
    assert proxy.count("ListParts") >= 1
    assert chunks_in(sp, "uploaded") == []
    drained(sp, s3, {"big.log": BIG})
    head = s3.head_object(Bucket=sp.bucket, Key="big.log")
    assert head["ETag"].strip('"').endswith(f"-{-(-len(BIG) // (5 << 20))}")


def test_vanished_upload_is_started_again_from_local_chunks(make_spoolup, s3):
    sp, key, upload_id = _crashed_after_record_part(make_spoolup)
    s3.abort_multipart_upload(Bucket=sp.bucket, Key=key, UploadId=upload_id)  # e.g. a lifecycle rule
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no longer exists; a new one is started" in r.stdout, r.stdout
    assert [o["upload_id"] for o in rows(sp, "objects", "final_key = ?", (key,))] == [None]
    drained(sp, s3, {"big.log": BIG})


@pytest.mark.parametrize("point,files", [("after-complete", {"big.log": BIG}),
                                         ("after-put-object", {"s.log": SMALL})], ids=["multipart", "single"])
def test_completed_in_s3_but_not_journaled_is_marked_done_not_uploaded_again(make_spoolup, s3, proxy, point, files):
    sp = crashed(make_spoolup, point, files)
    (key,) = files
    head = s3.head_object(Bucket=sp.bucket, Key=key)
    sp.write_config(url=proxy.url)
    r = recover(sp, "--dry-run")
    assert r.returncode == 0 and "had succeeded but was not journaled; marked done" in r.stdout, r.stdout
    assert [o["state"] for o in rows(sp, "objects")] == ["closed"]
    r = recover(sp)
    assert r.returncode == 0 and "had succeeded but was not journaled; marked done" in r.stdout, r.stdout
    assert [o["state"] for o in rows(sp, "objects")] == ["done"]
    assert chunk_files(sp) == {}
    drained(sp, s3, files)
    assert proxy.count(*WRITES) == 0, [(q.op, q.key) for q in proxy.requests(*WRITES)]
    again = s3.head_object(Bucket=sp.bucket, Key=key)
    assert (again["ETag"], again["LastModified"]) == (head["ETag"], head["LastModified"])


def test_upload_whose_id_was_never_journaled_is_adopted_and_a_foreign_one_left_alone(make_spoolup, s3):
    """A crash between CreateMultipartUpload and journaling its id leaves an upload holding no
    part at the key claimed for the object.  It used to be taken for another writer's: left
    pending for good and its index skipped.  It is this journal's own Create's (issue 18 item
    4): recover says so and leaves it to the upload process, which adopts it, so the object
    keeps its key; an upload elsewhere that the journal does not know is still left alone."""
    sp = crashed(make_spoolup, "after-create-multipart", {"big.log": BIG})

    def stream_uploads():  # (the crash may also cut short the capability probe: recover aborts its upload)
        return sorted(u for u in pending_uploads(s3, sp.bucket) if PROBE_KEY not in u[0])

    (orphan,) = stream_uploads()
    assert orphan[0] == "big.log"
    foreign = s3.create_multipart_upload(Bucket=sp.bucket, Key="other/thing.log")["UploadId"]
    for args in (("--dry-run",), ()):
        r = recover(sp, *args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"multipart upload {orphan[1][:16]}... of big.log: at the key this journal claimed" in r.stdout, r.stdout
        assert f"multipart upload {foreign[:16]}... of other/thing.log is not one this journal created" in r.stdout
        assert stream_uploads() == sorted([orphan, ("other/thing.log", foreign)])
    r = sp.drain(timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert pending_uploads(s3, sp.bucket) == [("other/thing.log", foreign)], \
        "the orphan is adopted; an upload this journal did not create is never aborted"
    assert list_keys(s3, sp.bucket) == ["big.log"], "the object keeps the index it claimed"
    s3.abort_multipart_upload(Bucket=sp.bucket, Key="other/thing.log", UploadId=foreign)
    assert_exact(s3, sp.bucket, {"big.log": BIG})


# ---------------------------------------------------------------------------
# spool files changed under a journaled offset


def test_spool_file_truncated_under_its_journaled_offset(make_spoolup, s3):
    files = {"t.log": SMALL, "ok.log": syslog_lines(100, host="ok")}
    sp = crashed(make_spoolup, "after-batch-commit", files)
    new = syslog_lines(10, host="new")  # truncated (copytruncate), then a few new records
    copytruncate(sp.spool / "t.log", new)
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"spool file {sp.spool / 't.log'} shrank to {len(new)} bytes, below the {len(SMALL)} bytes already " \
        "shipped: it was truncated or rewritten in place (copytruncate). Its content now is shipped from byte 0" \
        in r.stdout, r.stdout
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "spool file truncated; shipping its new content from byte 0" in r.stderr
    # nothing journaled is lost (it is in the chunk files, not re-read from the spool); the new content once
    assert_exact(s3, sp.bucket, {**files, "t.log": SMALL + new})
    assert sp.status()["counters"]["spool_truncations"] == 1


def test_spool_file_replaced_under_its_journaled_offset(make_spoolup, s3):
    files = {"r.log": SMALL}
    sp = crashed(make_spoolup, "after-batch-commit", files)
    replacement = syslog_lines(40, host="new")
    write(sp.spool / "r.log.tmp", replacement)
    os.replace(sp.spool / "r.log.tmp", sp.spool / "r.log")
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"spool file {sp.spool / 'r.log'} was replaced by another file" in r.stdout, r.stdout
    assert "Everything journaled from the old file is safe" in r.stdout
    # the old file's journaled bytes first, then the new file from its start (same key: same open object)
    drained(sp, s3, {"r.log": SMALL + replacement})


# ---------------------------------------------------------------------------
# the journal itself


# what each migration after the first added, undone (newest first)
UNDO = {2: ["DROP INDEX requests_open"], 3: ["ALTER TABLE objects DROP COLUMN key_suffix"],
        4: ["DROP TABLE quarantine"], 5: ["ALTER TABLE objects DROP COLUMN form"],
        6: ["ALTER TABLE sources DROP COLUMN tail", "ALTER TABLE sources DROP COLUMN btime"],
        7: ["ALTER TABLE objects DROP COLUMN claim_gen"],
        8: ["DROP TABLE object_ranges", "DROP TABLE skip_ranges", "ALTER TABLE objects DROP COLUMN ledger_seq",
            "ALTER TABLE objects DROP COLUMN checksum", "ALTER TABLE objects DROP COLUMN origin",
            "ALTER TABLE objects DROP COLUMN upload_checksum", "ALTER TABLE chunks DROP COLUMN checksum"],
        9: ["DROP TABLE cleanups"], 10: ["DROP INDEX objects_claimed"]}
LATEST = schema_version()
MIGRATED = (f"migrate the journal from schema version 1 to {LATEST} "
            f"({', '.join(name for n, name, _ in migrations() if n > 1)})")


def downgrade_to_v1(sp) -> None:
    """Make the journal exactly what spoolup with schema version 1 left behind."""
    conn = sqlite3.connect(journal_path(sp), isolation_level=None)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST == max(UNDO)
        for version in sorted(UNDO, reverse=True):
            for sql in UNDO[version]:
                conn.execute(sql)
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()


def test_journal_of_schema_version_1_is_migrated(make_spoolup, s3):
    files = {"big.log": BIG, "s.log": SMALL}
    sp = crashed(make_spoolup, "after-upload-part", files)
    downgrade_to_v1(sp)
    before = journal_path(sp).read_bytes()
    r = recover(sp, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    migrated = MIGRATED
    assert migrated in r.stdout, r.stdout
    assert journal_path(sp).read_bytes() == before
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert migrated in r.stdout, r.stdout
    assert ask(sp, Journal.user_version) == LATEST
    with journal_db(sp) as db:
        assert "requests_open" in {i.name for i in db["requests"].indexes}
    drained(sp, s3, files)


def corrupt(sp, how: str) -> None:
    path = journal_path(sp)
    for extra in ("-wal", "-shm"):  # what a clean stop leaves: the database file alone
        Path(f"{path}{extra}").unlink(missing_ok=True)
    data = path.read_bytes()
    if how == "garbage-header":
        path.write_bytes(b"\x00garbage\xff" * 10 + data[100:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "scribbled-pages":
        page = 4096
        path.write_bytes(data[: 2 * page] + os.urandom(len(data) - 3 * page) + data[-page:])
    elif how == "newer-schema":
        journal_write(sp, "PRAGMA user_version = 99")
    elif how == "deleted":
        path.unlink()


@pytest.mark.s3_servers("moto")  # refused before any S3 request: the server plays no part
@pytest.mark.parametrize("how", ["garbage-header", "truncated", "emptied", "scribbled-pages", "newer-schema",
                                 "deleted"])
def test_corrupt_journal_is_refused_never_started_fresh(make_spoolup, s3, how):
    sp = crashed(make_spoolup, "after-batch-commit", {"a.log": SMALL, "b.log": syslog_lines(9000, host="b")})
    conn = sqlite3.connect(journal_path(sp))  # checkpoint: the whole journal in one file
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    corrupt(sp, how)
    damaged = journal_path(sp).read_bytes() if journal_path(sp).exists() else None
    chunks = chunk_files(sp)
    assert chunks
    for command in (("recover",), ("recover", "--dry-run"), ("run",), ("drain",)):
        r = spoolup_cmd(sp, *command, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode == 1, f"{command}: exit {r.returncode}\n{out[-3000:]}"
        if how == "newer-schema":
            assert "newer than this spoolup" in out, out[-2000:]
        elif how == "deleted":
            assert "was used by spoolup before" in out and f"it holds {len(chunks)} chunk file(s)" in out, \
                out[-2000:]
            assert "will not start a new journal over it on its own" in out and "recover --from-bucket" in out
        else:
            assert f"the journal {journal_path(sp)} cannot be read" in out, out[-2000:]
            assert "move the state directory aside" in out
        now = journal_path(sp).read_bytes() if journal_path(sp).exists() else None
        assert now == damaged, f"{command} changed the damaged journal"
        assert chunk_files(sp) == chunks, f"{command} touched the chunk files"
    assert list_keys(s3, sp.bucket) == []


# ---------------------------------------------------------------------------
# --dry-run changes nothing anywhere; `spoolup run` does the same recovery at start


def messy_state(make_spoolup, s3):
    """One state with every kind of repair: an object completed in S3 but not journaled,
    a chunk file longer than journaled, a chunk file the journal does not know, an
    upload at a claimed key the journal does not know (reported, never aborted), and a
    schema-1 journal."""
    files = {"big.log": BIG, "s.log": SMALL}
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, "upload-threads": 1})
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-complete", scope="service")
    write(sp.spool / "s.log", SMALL)
    (key,) = [o["final_key"] for o in rows(sp, "objects", "state = ?", ("closed",))]
    with open(sp.state / "chunks" / f"{1:012d}-00001", "ab") as f:
        f.write(b"tail never committed\n")
    write(sp.state / "chunks" / "000000000777-00001", b"a chunk file of nothing\n")
    orphan = s3.create_multipart_upload(Bucket=sp.bucket, Key=key)["UploadId"]
    downgrade_to_v1(sp)
    return sp, files, key, orphan


def snapshot(sp, s3) -> dict:
    def digest(p: Path) -> str | None:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None

    j = journal_path(sp)
    return {
        # the -shm file is not compared: it is SQLite's shared-memory index, rebuilt from the WAL
        "journal": digest(j), "wal": digest(Path(f"{j}-wal")),
        "chunks": {e.name: digest(Path(e.path)) for e in os.scandir(sp.state / "chunks")},
        "objects": {k: s3.head_object(Bucket=sp.bucket, Key=k)["ETag"] for k in list_keys(s3, sp.bucket)},
        "uploads": sorted(pending_uploads(s3, sp.bucket)),
        "spool": {e.name: digest(Path(e.path)) for e in os.scandir(sp.spool)},
    }


def test_dry_run_changes_nothing_anywhere(make_spoolup, s3):
    sp, files, key, orphan = messy_state(make_spoolup, s3)
    before = snapshot(sp, s3)
    r = recover(sp, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    for expected in ("Recovery actions (would do)", "migrate the journal", f"{key}: CompleteMultipartUpload had "
                     "succeeded but was not journaled; marked done", "chunk file(s) to their journaled lengths",
                     "000000000001-00001 (",
                     "000000000777-00001", f"multipart upload {orphan[:16]}... of {key} is not one this journal "
                     "created", "dry run: nothing was changed"):
        assert expected in r.stdout, f"{expected!r} not in\n{r.stdout}"
    assert snapshot(sp, s3) == before
    r = recover(sp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Recovery actions (did)" in r.stdout
    assert "Nothing to repair" in recover(sp).stdout
    drained(sp, s3, files, empty_orphans=True)
    assert (key, orphan) in pending_uploads(s3, sp.bucket), "an upload this journal did not create is left alone"


def test_run_performs_the_same_recovery_at_start(make_spoolup, s3):
    sp, files, key, orphan = messy_state(make_spoolup, s3)
    etag = s3.head_object(Bucket=sp.bucket, Key=key)["ETag"]
    r = sp.drain(timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    for expected in ("chunk file(s) to their journaled lengths", "000000000001-00001 (", "000000000777-00001",
                     "CompleteMultipartUpload had succeeded but was not journaled", f"multipart upload "
                     f"{orphan[:16]}... of {key} is not one this journal created"):
        assert expected in r.stderr, f"{expected!r} not logged"
    assert ask(sp, Journal.user_version) == LATEST
    assert_exact(s3, sp.bucket, files, empty_orphans=True)
    assert (key, orphan) in pending_uploads(s3, sp.bucket), "an upload this journal did not create is left alone"
    assert s3.head_object(Bucket=sp.bucket, Key=key)["ETag"] == etag


# S3 is down: no server answers, so one is enough
@pytest.mark.s3_servers("moto")
def test_dry_run_with_s3_down_never_says_the_bucket_agrees(make_spoolup):
    """Issue 14, item 2: with S3 unreachable, recover --dry-run said "Nothing to repair:
    journal, chunk files and bucket agree." and then that it could not reach the bucket."""
    from helpers import free_port, wait_for

    # (ingested while S3 answers: since the ledger's start-up check, run reads nothing from the
    # spool before it has compared the journal with the bucket; then S3 goes away)
    sp = make_spoolup(**{"s3-timeout": 1, "flush-grace-period": "1h"})
    write(sp.spool / "a.log", SMALL)
    p = sp.start()
    try:
        wait_for(lambda: sp.status()["open_objects"], 60, what="the spool ingested")
    finally:
        assert sp.stop(p) == 0
    sp.write_config(url=f"http://127.0.0.1:{free_port()}")
    for extra in (("--dry-run",), ()):
        r = recover(sp, *extra)
        assert r.returncode == 1, r.stdout + r.stderr
        # (the ledger's comparison is recover's first S3 step now: it says S3 cannot be reached)
        assert "cannot compare the journal with the bucket's ledger" in r.stdout, r.stdout
        assert "Nothing is shipped before it is done" in r.stdout
        assert "bucket agree" not in r.stdout, r.stdout
        assert "Nothing to repair in what could be checked; see the problems below." in r.stdout
