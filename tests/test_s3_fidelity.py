"""Where spoolup reproduces syslog-ng's s3() (the 4.4-4.8.1 generation) exactly, and the
options from s3() 4.8.2+ and other shippers it adds: object-key-suffix, content-type,
user metadata and object tags.  Every test drives the real `spoolup` CLI against a real
S3 endpoint (moto server) and reads the objects back.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from crashkit import write
from helpers import get, list_keys, syslog_lines, toml


# ---------------------------------------------------------------------------
# object-key-suffix (s3() 4.8.2+): after the index, before .gz/.zst


def test_object_key_suffix_goes_after_the_index_and_skips_taken_indexes(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "object-key-suffix": ".log", "max-object-size": 1000})
    s3.create_bucket(Bucket=sp.bucket)
    s3.put_object(Bucket=sp.bucket, Key="app-1", Body=b"written by s3() 4.4-4.8.1\n")
    s3.put_object(Bucket=sp.bucket, Key="app-2.log.gz", Body=b"written by s3() 4.8.2+\n")
    data = syslog_lines(30, width=100)  # 3000 bytes: three objects of 1000
    write(sp.spool / "app", data)
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["app-1", "app-2.log.gz", "app-3.log", "app-4.log", "app.log"]
    assert get(s3, sp.bucket, "app.log") + get(s3, sp.bucket, "app-3.log") + get(s3, sp.bucket, "app-4.log") == data


def test_object_key_suffix_comes_before_the_compression_suffix(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "object-key-suffix": ".log", "compression": "gzip"})
    data = syslog_lines(500)
    write(sp.spool / "gz", data)
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["gz.log.gz"]
    assert gzip.decompress(get(s3, sp.bucket, "gz.log.gz")) == data


def test_envelope_records_carry_their_suffix(make_spoolup, s3):
    """The spoolup() block writes object-key-suffix() into each record ("suffix"); records
    without it (older spools) have none.  In spoolup.toml the option is refused for envelope."""
    sp = make_spoolup(format="envelope", **{"object-key": "{key}"})
    lines = [
        {"key": "e", "ts": "1", "suffix": ".log", "msg": "one"},
        {"key": "e", "ts": "1", "suffix": ".log", "msg": "two"},
        {"key": "e", "ts": "1", "msg": "no suffix field"},
        {"key": "e", "ts": "1", "suffix": "bad\u0001", "msg": "control character"},
    ]
    write(sp.spool / "e.jsonl", b"".join(json.dumps(d).encode() + b"\n" for d in lines))
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["e-1-1", "e-1.log"]
    assert get(s3, sp.bucket, "e-1.log") == b"one\ntwo\n"
    assert get(s3, sp.bucket, "e-1-1") == b"no suffix field\n"
    assert sp.status()["dead_letters"]["records"] == 1

    sp.write_config(**{"object-key-suffix": ".log"})
    r = sp.cmd("check-config", "--no-s3")
    assert r.returncode == 2 and "option 'object-key-suffix'" in r.stderr and "spoolup() block" in r.stderr


# ---------------------------------------------------------------------------
# object options: content-type, user metadata, tags -- on PutObject and multipart alike

MiB = 1024 * 1024
META = {"team": "web", "env": "prod-eu", "cost.center": "4711"}
TAGS = {"retention": "90d", "Data Class": "logs/syslog", "owner": "ops@example.com"}


def tags_of(s3, bucket, key) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


@pytest.mark.parametrize("compression,content_type", [
    ("none", "text/plain; charset=utf-8"), ("gzip", "application/gzip"), ("zstd", "application/zstd")])
def test_default_content_type_follows_compression_without_content_encoding(make_spoolup, s3, compression,
                                                                            content_type):
    sp = make_spoolup(**{"object-key": "{name}", "compression": compression})
    write(sp.spool / "d", syslog_lines(100))
    sp.drain(check=True)
    (key,) = list_keys(s3, sp.bucket)
    head = s3.head_object(Bucket=sp.bucket, Key=key)
    assert head["ContentType"] == content_type
    assert "ContentEncoding" not in head


def test_content_type_metadata_and_tags_reach_single_and_multipart_objects(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "content-type": "text/x-syslog; charset=utf-8",
                         "metadata": META, "tags": TAGS})
    small = syslog_lines(100)
    big = syslog_lines(50_000, width=256)  # ~12 MiB: a real multipart upload of three parts
    write(sp.spool / "small", small)
    write(sp.spool / "big", big)
    sp.drain(check=True)
    assert get(s3, sp.bucket, "small") == small and get(s3, sp.bucket, "big") == big
    for key, parts in (("small", None), ("big", 3)):
        head = s3.head_object(Bucket=sp.bucket, Key=key)
        if parts:
            assert head["ETag"].strip('"').endswith(f"-{parts}")
        else:
            assert "-" not in head["ETag"]
        assert head["ContentType"] == "text/x-syslog; charset=utf-8"
        ours = head["Metadata"].pop("spoolup-object")  # spoolup's own stays intact beside the user's
        assert ours.split("/")[1].isdigit()
        assert head["Metadata"] == META
        assert tags_of(s3, sp.bucket, key) == TAGS


@pytest.mark.parametrize("option,value,hint", [
    ("metadata", "team=web", "expected a TOML table"),
    ("metadata", {"Team": "web"}, "lowercase"),
    ("metadata", {"team web": "x"}, "lowercase"),
    ("metadata", {"spoolup-object": "x"}, "spoolup's own"),
    ("metadata", {"team": "wéb"}, "printable ASCII"),
    ("metadata", {"team": 5}, "must be a string"),
    ("metadata", {f"k{i}": "v" * 200 for i in range(10)}, "2 KB"),
    ("tags", {f"k{i}": "v" for i in range(11)}, "at most 10"),
    ("tags", {"aws:createdBy": "me"}, "reserved"),
    ("tags", {"k": "a&b"}, "up to 256"),
    ("tags", {"k" * 129: "v"}, "1 to 128"),
    ("tags", {"k": "v" * 257}, "up to 256"),
    ("content-type", "gzip", "media type"),
    ("content-type", "text/plain\nX-Evil: 1", "media type"),
])
def test_invalid_object_options_exit_2_naming_the_option(tmp_path, option, value, hint):
    path = tmp_path / "c.toml"
    path.write_text(f'bucket = "my-logs"\nspool-dir = "{tmp_path}/spool"\nstate-dir = "{tmp_path}/state"\n'
                    f"{option} = {toml(value)}\n")
    r = subprocess.run([sys.executable, "-m", "spoolup", "check-config", "--no-s3", "--config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"option '{option}'" in r.stderr and hint in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# timestamps compare as strings, as in s3(); check-config and the block recommend sortable ones


def test_timestamps_compare_as_strings_as_in_s3(make_spoolup, s3):
    """"Jan10" < "Jan9": the Jan10 record is taken as older and goes to a backfill object,
    and Jan9's object stays open for the next Jan9 record (s3()'s rule, kept)."""
    sp = make_spoolup(format="envelope", **{"object-key": "{key}"})
    lines = [{"key": "k", "ts": "Jan9", "msg": "r1"}, {"key": "k", "ts": "Jan10", "msg": "r2"},
             {"key": "k", "ts": "Jan9", "msg": "r3"}]
    write(sp.spool / "t.jsonl", b"".join(json.dumps(d).encode() + b"\n" for d in lines))
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["k-Jan10", "k-Jan9"]
    assert get(s3, sp.bucket, "k-Jan9") == b"r1\nr3\n"
    assert get(s3, sp.bucket, "k-Jan10") == b"r2\n"


@pytest.mark.parametrize("timestamp,warned", [
    ("%Y%m%d%H", False), ("%Y-%m-%dT%H:%M:%S", False), ("%Y%j", False),
    ("%b%d", True), ("%Y%m%e", False), ("%Y%-m%-d", True), ("%d%m%Y", True), ("%Y%m%d%I%p", True),
    ("%Y%m%d-%a", False), ("%a%Y%m%d", True),
])
def test_check_config_warns_about_timestamps_that_do_not_sort(make_spoolup, timestamp, warned):
    sp = make_spoolup(**{"object-key-timestamp": timestamp})
    r = sp.cmd("check-config", "--no-s3")
    assert r.returncode == 0, r.stderr
    assert ("# warning: object-key-timestamp:" in r.stdout) == warned, r.stdout
    if warned:
        assert "compare as strings" in r.stdout and "%Y%m%d%H" in r.stdout


def test_shipped_block_and_readme_recommend_a_sortable_timestamp():
    from sng import SHIPPED_CONF

    block = SHIPPED_CONF.read_text()
    readme = (SHIPPED_CONF.parent.parent.parent / "README.md").read_text()
    for text in (block, readme):
        assert '"Jan10"' in text and "${R_YEAR}${R_MONTH}${R_DAY}" in text


# ---------------------------------------------------------------------------
# stored size: with compression, max-object-size counts compressed bytes (as s3())


def s3_objects(records: list[bytes], limit: int, level: int = 9) -> list[list[bytes]]:
    """The objects s3() makes of `records` with compression(yes): its CompressableFileBuffer
    is a GzipFile over a file; after each write the object's size grows by the file's growth,
    and the object is completed once that size reaches max-object-size."""
    import io

    objs, cur, size = [], [], 0
    buf = io.BytesIO()
    gz = gzip.GzipFile(filename="", fileobj=buf, mode="wb", compresslevel=level)
    for rec in records:
        before = buf.tell()
        gz.write(rec)
        size += buf.tell() - before
        cur.append(rec)
        if size >= limit:
            objs.append(cur)
            cur, size = [], 0
            buf = io.BytesIO()
            gz = gzip.GzipFile(filename="", fileobj=buf, mode="wb", compresslevel=level)
    if cur:
        objs.append(cur)
    return objs


def test_compressed_objects_complete_on_their_stored_size_as_s3(make_spoolup, s3):
    limit = 64 * 1024
    sp = make_spoolup(**{"object-key": "{name}", "compression": "gzip", "max-object-size": limit})
    data = syslog_lines(40_000, width=120)
    write(sp.spool / "z", data)
    sp.drain(check=True)
    keys = ["z.gz"] + [f"z-{i}.gz" for i in range(1, len(list_keys(s3, sp.bucket)))]
    assert sorted(keys) == list_keys(s3, sp.bucket)
    stored = [get(s3, sp.bucket, k) for k in keys]
    got = [gzip.decompress(b).splitlines(keepends=True) for b in stored]
    expected = s3_objects(data.splitlines(keepends=True), limit)
    assert [len(o) for o in got] == [len(o) for o in expected]  # the same records in each object ...
    assert got == expected  # ... byte for byte
    for body in stored[:-1]:
        assert len(body) >= limit  # the stored size reached max-object-size


def test_an_object_keeps_the_object_options_it_was_started_with(make_spoolup, s3):
    """Object options are journaled with the object (spoolup/form.py): changed between two
    runs, an open object is still created with its own; new objects take the new ones."""
    from helpers import wait_for

    sp = make_spoolup(**{"object-key": "{name}", "compression": "gzip", "flush-grace-period": "1h",
                         "content-type": "text/x-old", "metadata": {"team": "old"}, "tags": {"gen": "old"}})
    proc = sp.start()
    try:
        write(sp.spool / "a", syslog_lines(50))
        wait_for(lambda: len(sp.status()["open_objects"]) == 1, 60, what="the object opened")
    finally:
        assert sp.stop(proc) == 0
    assert list_keys(s3, sp.bucket) == []  # still open: nothing sent to S3 yet
    sp.write_config(**{"compression": "none", "content-type": "", "metadata": {"team": "new"},
                       "tags": {"gen": "new"}})
    write(sp.spool / "b", syslog_lines(20))
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["a.gz", "b"]
    old, new = (s3.head_object(Bucket=sp.bucket, Key=k) for k in ("a.gz", "b"))
    assert old["ContentType"] == "text/x-old" and old["Metadata"]["team"] == "old"
    assert tags_of(s3, sp.bucket, "a.gz") == {"gen": "old"}
    assert new["ContentType"] == "text/plain; charset=utf-8" and new["Metadata"]["team"] == "new"
    assert tags_of(s3, sp.bucket, "b") == {"gen": "new"}
    assert gzip.decompress(get(s3, sp.bucket, "a.gz")) == syslog_lines(50)
    assert get(s3, sp.bucket, "b") == syslog_lines(20)
