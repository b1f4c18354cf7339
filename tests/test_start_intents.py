"""Start intents (issue 22, "record before visible" for uploads): a multipart upload that a
lost journal had started -- the state dir restored from a backup taken before the object was
started, or wiped and rebuilt with `recover --from-bucket` -- is aborted, not left in the
bucket forever, and every record still ships exactly once.  Real spoolup processes, SIGKILL
of the whole service after an UploadPart, moto and Ceph RGW.
"""

from __future__ import annotations

import shutil

import pytest

from crashkit import drain_crashing, rows, write
from helpers import list_keys, pending_uploads, syslog_lines
from ledgerkit import copy_state, exactly_once

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
