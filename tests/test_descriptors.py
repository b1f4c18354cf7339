"""Descriptors are bounded by configuration (issue 10.5), whatever the number of spool files
and keys: an LRU of spool-file, chunk-file and dead-letter descriptors (max-open-files,
kept clear of RLIMIT_NOFILE).  spoolup runs under a low RLIMIT_NOFILE (prlimit: soft and
hard, so it cannot raise it); EMFILE used to stop the service."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from helpers import get, list_keys
from spoolup.service import descriptor_budget


def test_budget_stays_clear_of_the_limit():
    for limit in (64, 256, 1024, 16384, 65536):
        b = descriptor_budget(1024, limit)
        assert sum(b.values()) <= min(1024, max(limit - 64, limit // 2))
        assert min(b.values()) >= 2
    assert sum(descriptor_budget(100_000, 65536).values()) <= 65536 - 64


def fetch_all(s3, bucket: str, keys: list[str]) -> dict[str, bytes]:
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(keys, pool.map(lambda k: get(s3, bucket, k), keys)))


def test_500_spool_files_under_a_limit_of_64(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "upload-threads": 4})
    sp.limit_files(64)
    files = {f"f{i:03d}.log": f"file {i} line 1\nfile {i} line 2\n".encode() for i in range(500)}
    for name, data in files.items():
        (sp.spool / name).write_bytes(data)
    r = sp.drain(timeout=600)  # base: EMFILE (Too many open files), exit 1
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Too many open files" not in r.stderr
    assert list_keys(s3, sp.bucket) == sorted(files)
    assert fetch_all(s3, sp.bucket, sorted(files)) == files


def test_one_envelope_file_with_1200_keys_under_a_limit_of_256(make_spoolup, s3):
    """More keys (open objects at once) than the processes may open descriptors, by more than
    4x: spoolup never needs a descriptor per open object (it used to: EMFILE)."""
    sp = make_spoolup(**{"format": "envelope", "upload-threads": 8})
    sp.limit_files(256)
    want: dict[str, bytes] = {}
    lines = []
    for rnd in range(2):
        for i in range(1200):
            key, msg = f"host{i:04d}/app", f"round {rnd} message for key {i}"
            lines.append(json.dumps({"key": key, "ts": "", "msg": msg}).encode() + b"\n")
            want[key] = want.get(key, b"") + msg.encode() + b"\n"
    (sp.spool / "all.json").write_bytes(b"".join(lines))
    r = sp.drain(timeout=900)  # base: EMFILE, exit 1
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Too many open files" not in r.stderr
    assert list_keys(s3, sp.bucket) == sorted(want)
    assert fetch_all(s3, sp.bucket, sorted(want)) == want


def test_20000_spool_files_under_a_limit_of_16384(make_spoolup, s3):
    """More spool files than the unit's LimitNOFILE-sized limit, all feeding one object: the
    object holds every file's lines exactly once, each file's in its order."""
    sp = make_spoolup(**{"object-key": "logs/all", "upload-threads": 4})
    sp.limit_files(16384)
    files = {f"d{i // 1000:02d}/f{i:05d}.log": f"file {i} line 1\nfile {i} line 2\n".encode()
             for i in range(20_000)}
    for name, data in files.items():
        path = sp.spool / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    r = sp.drain(timeout=900)  # base: EMFILE (Too many open files), exit 1
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Too many open files" not in r.stderr
    assert list_keys(s3, sp.bucket) == ["logs/all"]
    lines = get(s3, sp.bucket, "logs/all").splitlines(keepends=True)
    assert sorted(lines) == sorted(line for data in files.values() for line in data.splitlines(keepends=True))
    position = {line: n for n, line in enumerate(lines)}
    assert all(position[f"file {i} line 1\n".encode()] < position[f"file {i} line 2\n".encode()]
               for i in range(20_000))
