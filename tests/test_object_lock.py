"""Object Lock (WORM) and content-md5 (issue 21 item 6): every object spoolup writes, single
PutObject or multipart, carries the configured retention (counted from its completion) and
legal hold, byte-exact; every body carries Content-MD5 over plain http where asked (what
Object Lock buckets require); a bucket without Object Lock is refused by check-config and
at the start of run and drain (exit 2 naming the option); bad values exit 2 naming the option.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest

from crashkit import assert_exact, noisy_lines, write
from helpers import get, list_keys, syslog_lines, toml
from spoolup import config, ledger

FILES = {
    "small.log": syslog_lines(300, host="s1"),  # one PutObject
    "big.log": noisy_lines(25_000, seed=7),  # ~6.2 MiB: a multipart upload (5 MiB + the rest)
}
RETAIN = "2d"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.s3_servers("moto", "rgw")
@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_every_object_is_locked_from_its_completion(make_spoolup, s3, bucket, proxy, mode):
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    sp = make_spoolup(**{"object-key": "{name}", "url": proxy.url, "object-lock-mode": mode.lower(),
                         "object-lock-retain": RETAIN, "object-lock-legal-hold": True})
    for name, data in FILES.items():
        write(sp.spool / name, data)
    check = sp.cmd("check-config")
    assert check.returncode == 0, check.stderr
    assert f"# bucket {bucket}: Object Lock enabled" in check.stdout
    before = _now()
    r = sp.drain(timeout=180)
    after = _now()
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(s3, bucket, FILES)
    assert list_keys(s3, bucket) == ["big.log", "small.log"]
    for key in ("big.log", "small.log"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("ObjectLockMode") == mode, (key, head)
        until = head["ObjectLockRetainUntilDate"]
        # from completion: not before the drain began (+ retain), not after it ended (server clocks: 1 s)
        assert before + datetime.timedelta(days=2, seconds=-1) <= until <= after + datetime.timedelta(days=2, seconds=1)
        assert head.get("ObjectLockLegalHoldStatus") == "ON", (key, head)
        assert s3.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"]["Status"] == "ON"
    # Object Lock buckets require Content-MD5 on every body: over plain http too
    # (the proxy names PUT ?retention and ?legal-hold "PutObject": botocore gives them a flexible checksum)
    locks = [r for r in proxy.requests("PutObject") if {"retention", "legal-hold"} & set(r.query)]
    assert sorted(next(iter({"retention", "legal-hold"} & set(r.query))) for r in locks) == ["legal-hold", "retention"]
    assert all(r.key == "big.log" for r in locks), "a multipart object is locked again at its completion"
    assert all(r.headers.get("content-md5") or any(h.startswith("x-amz-checksum-") for h in r.headers) for r in locks)
    writes = [r for r in proxy.requests("PutObject", "UploadPart", "CompleteMultipartUpload") if r not in locks]
    bodies = [r for r in writes if not ledger.is_ledger_key("{name}", r.key)]
    assert sorted((r.op, r.key) for r in bodies) == [("CompleteMultipartUpload", "big.log"), ("PutObject", "small.log"),
                                                     ("UploadPart", "big.log"), ("UploadPart", "big.log")]
    assert all(r.headers.get("content-md5") for r in bodies if r.op != "CompleteMultipartUpload"), \
        [(r.op, r.key) for r in bodies]
    # the ledger's segments (rule 1: each object's record is in the bucket before the request
    # that makes the object visible) are bodies too: with Content-MD5, as the bucket requires
    segments = [r for r in writes if ledger.is_ledger_key("{name}", r.key)]
    assert segments and all(r.op == "PutObject" and r.headers.get("content-md5") for r in segments), \
        [(r.op, r.key, sorted(r.headers)) for r in segments]
    for key, op in (("small.log", "PutObject"), ("big.log", "CompleteMultipartUpload")):
        (visible,) = [i for i, r in enumerate(writes) if (r.op, r.key) == (op, key)]
        recorded = [i for i, r in enumerate(writes) if r in segments
                    and key in {rec.final_key for rec in ledger.Segment.decode(get(s3, bucket, r.key)).records}]
        assert recorded and recorded[0] < visible, (key, [(r.op, r.key) for r in writes])
    creates = proxy.requests("CreateMultipartUpload")
    assert creates and all(r.headers.get("x-amz-object-lock-mode") == mode for r in creates)


@pytest.mark.parametrize("value,md5_on_parts", [("auto", False), ("always", True)])
def test_content_md5_always_puts_it_on_parts_over_http(make_spoolup, s3, proxy, value, md5_on_parts):
    sp = make_spoolup(**{"object-key": "{name}", "url": proxy.url, "content-md5": value})
    write(sp.spool / "big.log", FILES["big.log"])
    r = sp.drain(timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(s3, sp.bucket, {"big.log": FILES["big.log"]})
    parts = proxy.requests("UploadPart")
    assert len(parts) == 2
    assert [bool(p.headers.get("content-md5")) for p in parts] == [md5_on_parts] * 2


@pytest.mark.s3_servers("moto", "rgw")
@pytest.mark.parametrize("option,value", [("object-lock-mode", "GOVERNANCE"), ("object-lock-legal-hold", True)])
def test_bucket_without_object_lock_is_refused(make_spoolup, s3, bucket, option, value):
    s3.create_bucket(Bucket=bucket)
    options = {option: value, **({"object-lock-retain": "1d"} if option == "object-lock-mode" else {})}
    sp = make_spoolup(**{"object-key": "{name}", **options})
    write(sp.spool / "small.log", FILES["small.log"])
    check = sp.cmd("check-config")
    assert check.returncode == 2, (check.stdout, check.stderr)
    assert f"option '{option}'" in check.stderr and "does not have Object Lock enabled" in check.stderr
    for command in ("run", "drain"):
        r = sp.cmd(command, timeout=60)
        assert r.returncode == 2, (command, r.stderr[-2000:])
        assert f"option '{option}'" in r.stderr
    assert list_keys(s3, bucket) == []


def test_missing_bucket_is_created_with_object_lock(make_spoolup, s3, bucket):
    sp = make_spoolup(**{"object-key": "{name}", "object-lock-mode": "GOVERNANCE", "object-lock-retain": "1h"})
    write(sp.spool / "small.log", FILES["small.log"])
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    assert_exact(s3, bucket, {"small.log": FILES["small.log"]})
    assert s3.head_object(Bucket=bucket, Key="small.log")["ObjectLockMode"] == "GOVERNANCE"


BAD = [
    ({"max-bandwidth": -1}, "max-bandwidth"),
    ({"max-bandwidth": "-10MiB"}, "max-bandwidth"),
    ({"max-bandwidth": "1kB"}, "max-bandwidth"),  # below 64KiB/s
    ({"max-bandwidth": "ten"}, "max-bandwidth"),
    ({"object-lock-mode": "FOREVER", "object-lock-retain": "1d"}, "object-lock-mode"),
    ({"object-lock-retain": "1d"}, "object-lock-retain"),  # without a mode
    ({"object-lock-mode": "GOVERNANCE"}, "object-lock-mode"),  # without retain
    ({"object-lock-mode": "GOVERNANCE", "object-lock-retain": "-1d"}, "object-lock-retain"),
    ({"object-lock-legal-hold": "maybe"}, "object-lock-legal-hold"),
    ({"content-md5": "never"}, "content-md5"),
]


@pytest.mark.parametrize("options,option", BAD)
def test_bad_values_exit_2_naming_the_option(tmp_path, options, option):
    path = tmp_path / "c.toml"
    values = {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"),
              **options}
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    r = subprocess.run([sys.executable, "-m", "spoolup", "check-config", "--no-s3", "--config", str(path)],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"option '{option}'" in r.stderr and "unknown option" not in r.stderr, r.stderr


def test_good_values_parse(tmp_path):
    base = {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state")}
    cfg = config.from_mapping(base)
    assert (cfg.max_bandwidth, cfg.object_lock_mode, cfg.object_lock_retain, cfg.object_lock_legal_hold,
            cfg.content_md5, cfg.object_lock) == (0, "", 0.0, False, "auto", False)
    cfg = config.from_mapping({**base, "max-bandwidth": "10MiB/s", "object-lock-mode": "compliance",
                               "object-lock-retain": "365d", "object-lock-legal-hold": True, "content-md5": "always"})
    assert (cfg.max_bandwidth, cfg.object_lock_mode, cfg.object_lock_retain, cfg.object_lock_legal_hold,
            cfg.content_md5, cfg.object_lock) == (10 << 20, "COMPLIANCE", 365 * 1440.0, True, "always", True)
