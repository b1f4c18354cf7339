"""The core pipeline end to end: spool -> journal -> upload process -> completed objects.

Every test drives the real `spoolup` CLI against a real S3 endpoint (moto
server and Ceph RGW) and compares the bucket's bytes with the spool's.  Each
runs three times: against moto with the state dir on the test run's own
filesystem and on a ramfs (no O_DIRECT), and against RGW on the former.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from crashkit import consumed, write
from helpers import (STATE_FILESYSTEMS, content_of, etag, get, list_keys, multipart_etag, objects_of,  # noqa: F401
                     pending_uploads, syslog_lines, wait_for)

pytestmark = pytest.mark.s3_servers("moto", "rgw")

MiB = 1024 * 1024


def random_lines(rnd: random.Random, total: int, max_len: int = 2000) -> bytes:
    out, size = [], 0
    while size < total:
        n = rnd.randint(1, max_len)
        line = bytes(rnd.randrange(32, 127) for _ in range(min(n, 64))) * (n // 64 + 1)
        line = line[: n - 1] + b"\n"
        out.append(line)
        size += len(line)
    return b"".join(out)


def test_byte_exact_for_several_files_and_keys(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "logs/{path}"})
    files = {
        "web01/nginx.log": syslog_lines(5000, host="web01"),
        "web02/nginx.log": syslog_lines(3000, host="web02"),
        "db01/postgres.log": syslog_lines(100, host="db01"),
        "top.log": b"one record\n",
    }
    for rel, data in files.items():
        write(sp.spool / rel, data)
    r = sp.drain(check=True)
    assert "nothing pending" in r.stdout
    for rel, data in files.items():
        assert content_of(s3, sp.bucket, f"logs/{rel}") == data, rel
    assert sorted(list_keys(s3, sp.bucket)) == sorted(f"logs/{rel}" for rel in files)
    assert pending_uploads(s3, sp.bucket) == []


def test_records_arriving_in_small_batches_while_running(make_spoolup, s3):
    """Many small commits into one open chunk: each leaves a partial last block (held in
    memory, written padded at the sync) that the next batch extends."""
    sp = make_spoolup(**{"object-key": "{name}"})
    path = sp.spool / "trickle.log"
    write(path, b"")
    proc = sp.start()
    sent = b""
    try:
        for i in range(12):
            batch = syslog_lines(7 + i, start=len(sent))
            write(path, batch, "ab")
            sent += batch
            wait_for(lambda: consumed(sp) == len(sent), 60, 0.05, what=f"batch {i} journaled")
    finally:
        assert sp.stop(proc) == 0
    sp.drain(check=True)
    assert get(s3, sp.bucket, "trickle.log") == sent


def test_several_files_into_one_key_keep_each_files_order(make_spoolup, s3):
    """object-key = {dir}: both files of a directory share one object; each file's records stay in order."""
    sp = make_spoolup(**{"object-key": "hosts/{dir}"})
    a = syslog_lines(2000, host="a")
    b = syslog_lines(2000, host="b", start=10_000)
    write(sp.spool / "h1" / "a.log", a)
    write(sp.spool / "h1" / "b.log", b)
    sp.drain(check=True)
    got = content_of(s3, sp.bucket, "hosts/h1")
    assert sorted(got.splitlines(keepends=True)) == sorted((a + b).splitlines(keepends=True))
    assert [ln for ln in got.splitlines(keepends=True) if b" a app" in ln] == a.splitlines(keepends=True)
    assert [ln for ln in got.splitlines(keepends=True) if b" b app" in ln] == b.splitlines(keepends=True)


def test_max_object_size_splits_into_indexed_objects_never_splitting_records(make_spoolup, s3):
    rnd = random.Random(7)
    data = random_lines(rnd, 3 * MiB + 12345)
    limit = 700_000
    sp = make_spoolup(**{"object-key": "{name}", "max-object-size": limit})
    write(sp.spool / "big.log", data)
    sp.drain(check=True)
    keys = objects_of(s3, sp.bucket, "big.log")
    assert keys[0] == "big.log" and keys[1:] == [f"big.log-{i}" for i in range(1, len(keys))]
    bodies = [get(s3, sp.bucket, k) for k in keys]
    assert b"".join(bodies) == data
    longest = max(len(line) for line in data.splitlines(keepends=True))
    for body in bodies[:-1]:
        assert body.endswith(b"\n")
        # reached the limit, exceeded only by the record that crossed it
        assert limit <= len(body) < limit + longest
        last = body[body.rstrip(b"\n").rfind(b"\n") + 1:]
        assert len(body) - len(last) < limit
    assert len(bodies[-1]) <= limit + longest


def test_object_larger_than_chunk_size_is_a_real_multipart_upload(make_spoolup, s3):
    data = syslog_lines(60_000, width=256)  # ~15 MiB: three 5 MiB parts and a tail
    sp = make_spoolup(**{"object-key": "{name}"})
    write(sp.spool / "app.log", data)
    sp.drain(check=True)
    assert get(s3, sp.bucket, "app.log") == data
    # parts of exactly chunk-size, then the tail: the ETag is made of the parts' MD5s
    parts = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    assert len(parts) == 3
    assert etag(s3, sp.bucket, "app.log") == multipart_etag(parts)


def test_grace_period_closes_and_later_bytes_go_to_the_next_index(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s"})
    first = syslog_lines(100)
    write(sp.spool / "g.log", first)
    proc = sp.start()
    try:
        wait_for(lambda: "g.log" in list_keys(s3, sp.bucket), 60, what="first object")
        assert get(s3, sp.bucket, "g.log") == first
        second = syslog_lines(50, start=100)
        write(sp.spool / "g.log", second, "ab")
        wait_for(lambda: "g.log-1" in list_keys(s3, sp.bucket), 60, what="second object")
        assert get(s3, sp.bucket, "g.log-1") == second
        assert get(s3, sp.bucket, "g.log") == first  # never reopened or overwritten
    finally:
        assert sp.stop(proc) == 0


def test_two_drains_in_a_row_duplicate_nothing(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}"})
    data = syslog_lines(3000)
    write(sp.spool / "d.log", data)
    sp.drain(check=True)
    keys_once = list_keys(s3, sp.bucket)
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == keys_once == ["d.log"]
    assert get(s3, sp.bucket, "d.log") == data
    more = syslog_lines(10, start=3000)
    write(sp.spool / "d.log", more, "ab")
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["d.log", "d.log-1"]
    assert get(s3, sp.bucket, "d.log-1") == more


def test_existing_object_is_never_overwritten(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}"})
    s3.create_bucket(Bucket=sp.bucket)
    s3.put_object(Bucket=sp.bucket, Key="x.log", Body=b"not spoolup's\n")
    s3.put_object(Bucket=sp.bucket, Key="x.log-1.gz", Body=b"a compressed one, also taken\n")
    data = syslog_lines(500)
    write(sp.spool / "x.log", data)
    sp.drain(check=True)
    assert get(s3, sp.bucket, "x.log") == b"not spoolup's\n"
    assert get(s3, sp.bucket, "x.log-1.gz") == b"a compressed one, also taken\n"
    assert get(s3, sp.bucket, "x.log-2") == data


def test_pending_foreign_multipart_upload_index_is_skipped(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}"})
    s3.create_bucket(Bucket=sp.bucket)
    s3.create_multipart_upload(Bucket=sp.bucket, Key="y.log")
    data = syslog_lines(10)
    write(sp.spool / "y.log", data)
    sp.drain(check=True)
    assert get(s3, sp.bucket, "y.log-1") == data


def test_partial_record_waits_for_its_newline(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}"})
    write(sp.spool / "p.log", b"complete one\ncomplete two\nhalf a rec")
    sp.drain(check=True)
    assert get(s3, sp.bucket, "p.log") == b"complete one\ncomplete two\n"
    write(sp.spool / "p.log", b"ord\nthree\n", "ab")
    sp.drain(check=True)
    assert get(s3, sp.bucket, "p.log-1") == b"half a record\nthree\n"


def test_idle_unterminated_tail_is_taken_as_a_record(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "spool-reap": "1s"})
    write(sp.spool / "dead.log", b"ok\nwriter died mid-rec")
    old = time.time() - 60
    os.utime(sp.spool / "dead.log", (old, old))
    sp.drain(check=True)
    assert get(s3, sp.bucket, "dead.log") == b"ok\nwriter died mid-rec\n"  # terminated (test_spool_identity)


def test_object_key_timestamp_is_appended(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{dir}/{name}", "object-key-timestamp": "%Y"})
    data = syslog_lines(20)
    write(sp.spool / "h" / "t.log", data)
    before = time.strftime("%Y")
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) in (["h/t.log-" + before], ["h/t.log-" + time.strftime("%Y")])
    assert content_of(s3, sp.bucket, list_keys(s3, sp.bucket)[0]) == data


def test_spool_file_is_deleted_only_after_shipping_and_idle(make_spoolup, s3):
    # busy.log must stay "written within spool-reap" for the whole drain, however slow it is
    sp = make_spoolup(**{"object-key": "{name}", "spool-reap": "30min"})
    idle, busy = sp.spool / "idle.log", sp.spool / "busy.log"
    write(idle, syslog_lines(100))
    write(busy, syslog_lines(100, host="b"))
    old = time.time() - 3600
    os.utime(idle, (old, old))
    sp.drain(check=True)
    assert not idle.exists(), "an idle, fully shipped file is reaped"
    assert busy.exists(), "a file written within spool-reap stays"
    assert get(s3, sp.bucket, "idle.log") == syslog_lines(100)
    assert get(s3, sp.bucket, "busy.log") == syslog_lines(100, host="b")


# max-pending-uploads is spoolup's own bound, whatever the server or the state dir's filesystem
@pytest.mark.s3_servers("moto")
@pytest.mark.state_filesystems("disk")
def test_back_pressure_stops_ingest_at_max_pending_uploads(make_spoolup, s3, s3server):
    from helpers import free_port

    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: every upload fails and is retried
    sp = make_spoolup(**{"object-key": "{name}", "url": dead_url, "max-pending-uploads": 2, "s3-timeout": 1})
    data = syslog_lines(100_000, width=200)  # ~19 MiB: would be 3 sealed chunks and more
    write(sp.spool / "bp.log", data)
    proc = sp.start()
    try:
        st = wait_for(lambda: (s := sp.status())["pending_parts"]["count"] >= 2 and s, 60, what="cap reached")
        time.sleep(1.5)
        st = sp.status()
        assert st["pending_parts"]["count"] == 2
        assert st["backlog_bytes"] > 5 * MiB  # the rest waits in the spool, not copied
        err = wait_for(lambda: sp.status()["last_error"], 30, what="the S3 error in status")
        assert err["process"] == "upload" and err["code"]
        assert len(list((sp.state / "chunks").iterdir())) <= 3
    finally:
        assert sp.stop(proc) == 0
    # S3 comes back (the real endpoint): everything arrives, once
    sp.write_config(url=s3server.url)
    sp.drain(check=True)
    assert content_of(s3, sp.bucket, "bp.log") == data


@pytest.mark.parametrize("compression,suffix", [("gzip", ".gz")])
def test_key_suffix_follows_compression(make_spoolup, s3, compression, suffix):
    import gzip

    sp = make_spoolup(**{"object-key": "{name}", "compression": compression})
    data = syslog_lines(1000)
    write(sp.spool / "c.log", data)
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["c.log" + suffix]
    assert gzip.decompress(get(s3, sp.bucket, "c.log" + suffix)) == data
