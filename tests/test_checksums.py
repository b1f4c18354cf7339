"""End-to-end integrity (issue 22 item 6, checksum-algorithm): each object's checksum is
computed from the chunk bytes spoolup wrote, sent as an S3 flexible checksum where the server
takes it, and kept in the object's ledger record -- single PutObject and multipart (S3's
composite of the parts' checksums).  Real drains against moto and Ceph RGW, byte-exact objects.

What the servers here do (the capability probe finds it out): moto keeps a flexible checksum
and returns it, without checking it; Ceph RGW 16.2 ignores it (neither checks nor keeps it),
so "auto" sends none there and records none, and an explicit algorithm is refused (exit 2).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

import pytest

from crashkit import assert_exact, noisy_lines, write
from helpers import get, list_keys, syslog_lines, toml
from spoolup import checksums, ledger
from spoolup import config as config_mod

pytestmark = pytest.mark.s3_servers("moto", "rgw")

FILES = {
    "small.log": syslog_lines(300, host="s1"),  # one PutObject
    "big.log": noisy_lines(25_000, seed=7),  # ~6.2 MiB: a multipart upload (5 MiB + the rest)
}


def records(s3, bucket, sp) -> dict[str, ledger.Record]:
    cfg = config_mod.load(sp.config)
    keys = list_keys(s3, bucket, ledger.agent_prefix(cfg.object_key, cfg.agent), own=True)
    found = [r for k in keys for r in ledger.Segment.decode(get(s3, bucket, k)).records]
    return {r.final_key: r for r in ledger.latest(found).values()}


def s3_checksum(s3, bucket, key) -> str | None:
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return next((f"{a}:{head[f'Checksum{a.upper()}']}" for a in checksums.ALGORITHMS if head.get(f"Checksum{a.upper()}")),
                None)


def sha256_of(data: bytes) -> str:
    return "sha256:" + base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_the_ledger_record_holds_the_checksum_s3_holds(s3server, make_spoolup, s3, bucket):
    s3.create_bucket(Bucket=bucket)
    sp = make_spoolup(**{"object-key": "{name}", "checksum-algorithm": "sha256"})
    check = sp.cmd("check-config")
    if s3server.name == "rgw":  # the server ignores flexible checksums: an explicit one is refused
        assert check.returncode == 2, (check.stdout, check.stderr)
        assert "checksum-algorithm" in check.stderr and "ignores" in check.stderr, check.stderr
        return
    assert check.returncode == 0, check.stderr
    assert "flexible checksums: sha256 sent and kept by the server" in check.stdout, check.stdout
    for name, data in FILES.items():
        write(sp.spool / name, data)
    r = sp.drain(timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(s3, bucket, FILES)
    rec = records(s3, bucket, sp)
    assert rec["small.log"].mode == "single" and rec["big.log"].mode == "multipart"
    # single: the checksum of exactly the object's bytes, as S3 holds it
    assert rec["small.log"].checksum == sha256_of(FILES["small.log"])
    assert s3_checksum(s3, bucket, "small.log") == rec["small.log"].checksum
    # multipart: the composite of the parts' checksums ("-2"); moto returns it without the count
    assert rec["big.log"].checksum is not None and rec["big.log"].checksum.endswith("-2"), rec["big.log"]
    assert s3_checksum(s3, bucket, "big.log") == rec["big.log"].checksum[: -len("-2")]
    big = get(s3, bucket, "big.log")
    parts = [big[: 5 << 20], big[5 << 20:]]
    assert checksums.composite("sha256", [sha256_of(p) for p in parts]) == rec["big.log"].checksum


def test_auto_takes_what_the_server_takes(s3server, make_spoolup, s3, bucket):
    """auto: sha256 without awscrt (the strongest available here) where the server keeps it;
    none where it ignores flexible checksums (RGW 16.2): the ETag (MD5) still guards, and the
    record says so (checksum None) rather than claim a checksum S3 never saw."""
    sp = make_spoolup(**{"object-key": "{name}"})
    first = syslog_lines(10, host="f")
    write(sp.spool / "first.log", first)
    assert sp.drain(timeout=120).returncode == 0  # (the probe of a fresh journal runs beside the first uploads)
    write(sp.spool / "small.log", FILES["small.log"])
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(s3, bucket, {"first.log": first, "small.log": FILES["small.log"]})
    rec = records(s3, bucket, sp)["small.log"]
    want = checksums.preferred("auto")
    if s3server.name == "rgw":
        assert rec.checksum is None and s3_checksum(s3, bucket, "small.log") is None
    else:
        assert rec.checksum is not None and rec.checksum.startswith(want + ":")
        assert s3_checksum(s3, bucket, "small.log") == rec.checksum


BAD = [("md5", "expected one of"), ("crc16", "expected one of")] + \
    [(a, "awscrt") for a in sorted(checksums.NEED_CRT) if not checksums.available(a)]


@pytest.mark.parametrize("value,says", BAD)
def test_bad_values_exit_2_naming_the_option(tmp_path, value, says):
    path = tmp_path / "c.toml"
    values = {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"),
              "checksum-algorithm": value}
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    r = subprocess.run([sys.executable, "-m", "spoolup", "check-config", "--no-s3", "--config", str(path)],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "option 'checksum-algorithm'" in r.stderr and says in r.stderr, r.stderr
