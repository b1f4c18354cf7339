"""Start intents (issue 22, "record before visible" for uploads): a multipart upload that a
lost journal had started -- the state dir restored from a backup taken before the object was
started, or wiped and rebuilt with `recover --from-bucket` -- is aborted, not left in the
bucket forever, and every record still ships exactly once.  Real spoolup processes, SIGKILL
of the whole service after an UploadPart, moto and Ceph RGW.
"""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from crashkit import assert_exact, drain_crashing, query, rows, write
from helpers import list_keys, pending_uploads, syslog_lines
from ledgerkit import copy_state, exactly_once
from spoolup import ledger

pytestmark = pytest.mark.s3_servers("moto", "rgw")

OPTIONS = {"object-key": "{name}", "flush-grace-period": "1s", "shutdown-timeout": 5}
BIG = syslog_lines(50_000, width=256, host="big")  # ~12.8 MiB: parts of 5 + 5 + 2.8 MiB


def lines(n: int, start: int) -> bytes:
    return syslog_lines(n, host="a", start=start)


def drained(sp, timeout: float = 180) -> str:
    r = sp.drain(timeout=timeout)
    assert r.returncode == 0, f"drain exited {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


def uploads_with_parts(s3, bucket: str) -> list[tuple[str, int]]:
    out = []
    for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        parts = s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
        out.append((u["Key"], len(parts)))
    return out


def upload_ids(s3, bucket: str) -> list[tuple[str, str]]:
    """(key, upload id) of every upload.  (Not their parts: with several upload threads, parts sent
    before the kill may still be landing on RGW after it -- a CI run counted 1, then 3.)"""
    return sorted((u["Key"], u["UploadId"]) for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@pytest.mark.parametrize("loss", ["restored-backup", "wiped-recover-from-bucket"])
def test_an_upload_the_lost_journal_started_is_aborted(make_spoolup, s3, loss):
    sp = make_spoolup(**OPTIONS)
    first, second = lines(500, 0), lines(300, 500)
    write(sp.spool / "a.log", first)
    drained(sp)
    backup = sp.base / "backup"
    copy_state(sp.state, backup)  # taken before big.log's object was started
    write(sp.spool / "a.log", second, "ab")
    write(sp.spool / "big.log", BIG)
    # killed (main and upload process at once) right after an UploadPart: an upload with a part
    drain_crashing(sp, "after-upload-part", scope="service", timeout=180)
    held = uploads_with_parts(s3, sp.bucket)
    assert [key for key, parts in held if parts] == ["big.log"], held
    ids = upload_ids(s3, sp.bucket)

    if loss == "restored-backup":
        copy_state(backup, sp.state)  # the backup knows neither big.log nor its upload
    else:
        shutil.rmtree(sp.state)
        r = sp.cmd("recover", "--from-bucket", "--dry-run")
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        assert "abort multipart upload" in r.stdout and "at big.log" in r.stdout, r.stdout
        assert set(ids) <= set(upload_ids(s3, sp.bucket)), "--dry-run aborted an upload"
        r = sp.cmd("recover", "--from-bucket")
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        assert "abort multipart upload" in r.stdout and "at big.log" in r.stdout, r.stdout
        assert pending_uploads(s3, sp.bucket) == [], "recover --from-bucket left the lost journal's upload"
    out = drained(sp)
    assert s3.list_multipart_uploads(Bucket=sp.bucket).get("Uploads", []) == [], "an upload left in the bucket"
    layout = exactly_once(s3, sp.bucket, {"a.log": first + second, "big.log": BIG})
    assert layout["big.log"] == ["big.log"], layout  # its index is not skipped for a leftover upload
    if loss == "restored-backup":  # (the start-up check found the ledger ahead and said what it did)
        assert "abort multipart upload" in out and "at big.log" in out, out[-4000:]


def test_an_upload_of_the_restored_journals_own_intent_is_aborted(make_spoolup, s3):
    """The backup holds big.log's start intent (journaled) but not its upload id; the future it
    lost created the upload and sent a part, and wrote no ledger segment after the backup's
    number -- so the start-up check finds the journal level with the bucket and no bring-forward
    runs.  The upload at the claimed key holds a part: it used to be taken for someone else's,
    left in the bucket for good and its index skipped.  Its part holds the object's own first
    chunk (by content: the part's ETag is the chunk's MD5), so it is the agent's own leftover:
    aborted, logged, and the object keeps its key."""
    sp = make_spoolup(**OPTIONS, **{"upload-threads": 1})  # (one part at a time: part 1 first)
    first = lines(500, 0)
    write(sp.spool / "a.log", first)
    drained(sp)
    write(sp.spool / "big.log", BIG)
    # killed right after a ledger segment is journaled: big.log's start intent, its Create not sent
    drain_crashing(sp, "after-ledger-recorded", scope="service", timeout=180)
    (big,) = [o for o in rows(sp, "objects") if o["key"] == "big.log"]
    assert big["ledger_seq"] is not None and big["ledger_seq"] < 0 and big["upload_id"] is None, big
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    segments = list_keys(s3, sp.bucket, ".spoolup/", own=True)
    # the future: its Create, then killed right after its first UploadPart (id journaled, ETag not)
    drain_crashing(sp, "after-upload-part", scope="service", timeout=180)
    held = uploads_with_parts(s3, sp.bucket)
    assert [key for key, parts in held if parts] == ["big.log"], held
    assert list_keys(s3, sp.bucket, ".spoolup/", own=True) == segments, "the future wrote a segment"

    copy_state(backup, sp.state)  # knows the intent, not the upload
    out = drained(sp)
    assert s3.list_multipart_uploads(Bucket=sp.bucket).get("Uploads", []) == [], "an upload left in the bucket"
    layout = exactly_once(s3, sp.bucket, {"a.log": first, "big.log": BIG})
    assert layout["big.log"] == ["big.log"], layout  # its index is not skipped for its own leftover upload
    assert "holds this object's own chunks" in out, out[-4000:]


# ---------------------------------------------------------------------------
# the bring-forward's unclaims: the upload of an object whose key the lost future's object holds


def lost_future_object_at(s3, sp, key: str, body: bytes, seq: int) -> None:
    """What a lost future of this agent left: its object at `key` and the ledger segment `seq`
    recording it -- written here as spoolup writes them (spoolup/ledger.py).  It was another
    journal's (a state dir wiped in between), holding a spool file that is gone since, so the
    bring-forward keeps the restored journal's object (its bytes are not the shipped ones) and
    only moves it off the key."""
    s3.put_object(Bucket=sp.bucket, Key=key, Body=body, Metadata={"spoolup-object": f"{'f' * 32}/1"})
    spans = ledger.SourceSpans(dev=0, ino=1, btime=None, head_len=len(body), head=ledger.head_digest(body),
                               path=f"old/{key}", spans=((0, len(body)),))
    record = ledger.Record("f" * 32, 1, key, "", 0, key, "single", body.count(b"\n"), len(body), len(body),
                           hashlib.md5(body).hexdigest(), None, (spans,))
    agent = ledger.default_agent_id(sp.spool)
    segment = ledger.Segment(agent, "f" * 32, seq, time.time(), (record,))
    s3.put_object(Bucket=sp.bucket, Key=ledger.segment_key(OPTIONS["object-key"], agent, seq), Body=segment.encode())


@pytest.mark.parametrize("kill", [False, True], ids=["", "killed-after-bring-forward"])
def test_the_upload_of_an_object_moved_off_a_key_the_lost_future_shipped_is_aborted(make_spoolup, s3, kill):
    """The restored journal holds big.log's object O at big.log with its upload (a part in it);
    the bucket's ledger says big.log holds the lost future's object.  The bring-forward moves O
    off the key (it claims the next free index) -- and used to forget O's upload, journaled
    nowhere any more: pending for good, at a key whose object is someone's.  Now the upload is
    owed in the bring-forward's own transaction and aborted after it (killed in between: by the
    upload process of the next start)."""
    sp = make_spoolup(**OPTIONS, **{"upload-threads": 1})
    write(sp.spool / "big.log", BIG)
    drain_crashing(sp, "after-upload-part", scope="service", timeout=180)
    (o,) = rows(sp, "objects")
    assert o["final_key"] == "big.log" and o["upload_id"] is not None, o
    assert [key for key, parts in uploads_with_parts(s3, sp.bucket) if parts] == ["big.log"]
    backup = sp.base / "backup"
    copy_state(sp.state, backup)
    (seq,) = [r[0] for r in query(sp, "SELECT value FROM meta WHERE name = 'ledger_seq'")]
    theirs = {"big.log": syslog_lines(40, host="future")}
    lost_future_object_at(s3, sp, "big.log", theirs["big.log"], int(seq) + 1)
    copy_state(backup, sp.state)

    if kill:
        drain_crashing(sp, "after-bring-forward", scope="service", timeout=180)
        assert rows(sp, "objects", "id = ?", (o["id"],))[0]["final_key"] is None, "O moved off big.log"
        assert [key for key, _ in pending_uploads(s3, sp.bucket)] == ["big.log"], "the kill left O's upload"
    out = drained(sp)
    assert s3.list_multipart_uploads(Bucket=sp.bucket).get("Uploads", []) == [], "an upload left in the bucket"
    layout = assert_exact(s3, sp.bucket, {"big.log": BIG}, foreign=theirs)
    assert layout["big.log"] == ["big.log-1"], layout
    assert rows(sp, "cleanups") == [], "a cleanup still owed once S3 confirmed it"
    if not kill:
        assert "abort multipart upload" in out and "at big.log" in out, out[-4000:]
