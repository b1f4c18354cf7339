"""The whole final key fits S3's 1024 bytes (issue 18, item 6, second half).

The rendered path was checked at 960 bytes alone; "-timestamp", "-index", object-key-suffix
and .gz/.zst come on top, so a file could get a 1,029-byte key: KeyTooLongError, nothing of
it shipped, retried every 10 minutes, check-config silent.  Now the final key is checked with
the longest timestamp, index and suffixes its objects can get: a configuration in which no key
could fit exits 2 naming the option; a file whose own path makes the key too long is
quarantined (`invalid-key`, its bytes left in the spool) while the others ship; an envelope
record whose key cannot fit goes to the dead-letter file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import get, list_keys, syslog_lines, toml, wait_for
from spoolup import keys

SUFFIX = "." + "s" * 59  # a 60-byte object-key-suffix (at most 64)
LINES = {"object-key": "{path}", "object-key-timestamp": "%Y%m%d%H", "object-key-suffix": SUFFIX,
         "compression": "none", "flush-grace-period": "1s"}
ROOM = len("-2026120122") + len("-9999999999") + len(SUFFIX)  # 82: what the final key adds to the path


def long_path(spool, size: int, name: str) -> str:
    """A relative path of `size` bytes: directories of 200 bytes, then the file name."""
    n = max(0, (size - 100) // 201)
    rel = "/".join(["d" * 200] * n + [name + "n" * (size - n * 201 - len(name))])
    assert len(rel.encode()) == size and len(rel.rsplit("/", 1)[-1]) <= 255
    (spool / rel).parent.mkdir(parents=True, exist_ok=True)
    return rel


def _check(tmp_path, command: str, **options) -> subprocess.CompletedProcess:
    options = {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"),
               **options}
    path = tmp_path / "c.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in options.items()))
    args = ["check-config", "--no-s3"] if command == "check-config" else [command]
    return subprocess.run([sys.executable, "-m", "spoolup", *args, "--config", str(path)], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})


@pytest.mark.parametrize("options,named", [
    ({"object-key": "k" * 1012 + "/{name}"}, "object-key"),  # "k.../x": 1014 + "-index" 11
    ({"object-key": "k" * 1001 + "/{name}", "object-key-timestamp": "%Y%m%d%H"}, "object-key-timestamp"),
    ({"object-key": "k" * 941 + "/{name}", "object-key-timestamp": "%Y%m%d%H", "object-key-suffix": SUFFIX},
     "object-key-suffix"),
    ({"format": "envelope", "object-key": "k" * 1008 + "/{key}", "compression": "zstd"}, "object-key"),
], ids=["static", "timestamp", "suffix", "envelope"])
def test_configuration_where_no_key_fits_exits_2(tmp_path, options, named):
    for command in ("check-config", "run"):
        r = _check(tmp_path, command, **options)
        assert r.returncode == 2, (command, r.stdout + r.stderr)
        assert f"option '{named}'" in r.stderr and "no object key could fit" in r.stderr, r.stderr
    # one byte less of the template: accepted
    shorter = dict(options, **{"object-key": options["object-key"][1:]})
    r = _check(tmp_path, "check-config", **shorter)
    assert r.returncode == 0, r.stdout + r.stderr


def test_longest_timestamp_is_measured_over_a_year():
    assert keys.timestamp_bytes("%Y%m%d%H") == 10
    assert keys.timestamp_bytes("%B") == len("September")
    assert keys.timestamp_bytes("%A %B") == len("Wednesday September")
    assert keys.timestamp_bytes("") == 0


@pytest.mark.s3_servers("moto", "rgw")
def test_file_whose_path_makes_the_key_too_long_is_quarantined_others_ship(make_spoolup, s3):
    sp = make_spoolup(**LINES)
    fits = long_path(sp.spool, 1024 - ROOM, "fits")  # the longest path whose every key fits
    too_long = long_path(sp.spool, 1024 - ROOM + 1, "long")  # under the old 960-byte check: shipped, refused
    assert len(too_long.encode()) < 960
    data = {fits: syslog_lines(50, host="fits"), too_long: syslog_lines(20_000, host="long")}
    for rel, body in data.items():
        (sp.spool / rel).write_bytes(body)
    short = "short.log"
    (sp.spool / short).write_bytes(syslog_lines(30, host="short"))
    p = sp.start()
    try:
        def shipped():
            return len(list_keys(s3, sp.bucket)) == 2 and sp.status()

        st = wait_for(lambda: shipped() and (s := sp.status())["sources_needing_attention"] and s, 90,
                      what="two files shipped and one quarantined")
        (refused,) = st["sources_needing_attention"]
        assert refused["path"] == too_long and refused["quarantine"]["reason"] == "invalid-key"
        assert "the file stays in the spool" in refused["error"] and "1024" in refused["error"]
        assert (sp.spool / too_long).read_bytes() == data[too_long]  # its bytes untouched
        got = {k: get(s3, sp.bucket, k) for k in list_keys(s3, sp.bucket)}
        (key,) = [k for k in got if k.startswith(fits + "-")]
        assert got[key] == data[fits] and key.endswith(SUFFIX)
        assert len(key.encode()) == 1024 - len("-9999999999")  # timestamp and suffix: no index on the first object
        (key,) = [k for k in got if k.startswith(short + "-")]
        assert got[key] == (sp.spool / short).read_bytes()
        assert not any(json.loads(line).get("code") == "KeyTooLongError"
                       for line in sp.log_text().splitlines() if line.startswith("{"))
    finally:
        assert sp.stop(p) == 0


@pytest.mark.s3_servers("moto", "rgw")
def test_envelope_key_checked_with_index_and_compression_suffix(make_spoolup, s3):
    """An envelope record whose final key cannot fit goes to the dead-letter file (as before);
    one that fits ships (the old check refused any over 960 bytes before index and suffix)."""
    import zstandard

    sp = make_spoolup(format="envelope", compression="zstd", **{"flush-grace-period": "1s"})
    fits_key = "f/" + "k" * (1024 - len("-9999999999") - len(".zst") - len("-2026") - 2)  # + ts + .zst: 1013
    long_key = "g/" + "k" * (1024 - len("-9999999999") - len(".zst") - len("-2026") - 1)
    lines = [json.dumps({"key": fits_key, "ts": "2026", "msg": "fits"}).encode() + b"\n",
             json.dumps({"key": long_key, "ts": "2026", "msg": "too long"}).encode() + b"\n",
             json.dumps({"key": "ok", "msg": "short"}).encode() + b"\n"]
    (sp.spool / "a.jsonl").write_bytes(b"".join(lines))
    p = sp.start()
    try:
        wait_for(lambda: len(list_keys(s3, sp.bucket)) == 2, 90, what="two objects")
        keys_ = sorted(list_keys(s3, sp.bucket))
        assert keys_ == sorted([fits_key + "-2026.zst", "ok.zst"])
        assert len((fits_key + "-2026.zst").encode()) == 1024 - len("-9999999999")
        assert zstandard.ZstdDecompressor().decompressobj().decompress(get(s3, sp.bucket, fits_key + "-2026.zst")) \
            == b"fits\n"
        st = wait_for(lambda: (s := sp.status())["dead_letters"]["records"] == 1 and s, 60, what="one dead letter")
        (dead,) = (sp.state / "dead-letter").iterdir()
        assert dead.read_bytes() == lines[1]
        assert st["dead_letters"]["records"] == 1
    finally:
        assert sp.stop(p) == 0
