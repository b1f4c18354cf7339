"""Compression (`compression = true | "gzip" | "zstd"`, `compresslevel`).

Each part is one complete gzip member / zstd frame, so an object is a valid
stream of concatenated members even across a crash and resume; chunk-size is
measured on the compressed bytes; keys end in .gz / .zst.  Everything runs the
real CLI against real S3 endpoints (moto server and Ceph RGW).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import zlib

import pytest
import zstandard

from crashkit import write
from helpers import etag, get, list_keys, multipart_etag, syslog_lines, wait_for

pytestmark = pytest.mark.s3_servers("moto", "rgw")

MiB = 1024 * 1024
PART = 5 * MiB


def noisy_lines(seed: int, size: int) -> bytes:
    """Newline-terminated records of random base64: they compress to about 3/4, so
    a few MiB of them make compressed parts larger than the 5 MiB minimum."""
    rnd = random.Random(seed)
    out, total, i = [], 0, 0
    while total < size:
        n = rnd.randint(20, 400)
        line = b"seq=%08d %d " % (i, seed) + base64.b64encode(rnd.randbytes(n)) + b"\n"
        out.append(line)
        total += len(line)
        i += 1
    return b"".join(out)


def decompress(codec: str, data: bytes) -> bytes:
    """The whole stream: every gzip member / zstd frame, in order."""
    if codec == "gzip":
        return gzip.decompress(data)
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as r:
        return r.read()


def single_unit(codec: str, data: bytes) -> bytes:
    """`data` must be exactly one complete gzip member / zstd frame: returns its content."""
    if codec == "gzip":
        d = zlib.decompressobj(31)
        out = d.decompress(data)
        assert d.eof and d.unused_data == b"", "not exactly one complete gzip member"
        return out
    d = zstandard.ZstdDecompressor().decompressobj()
    out = d.decompress(data)
    assert d.eof and d.unused_data == b"", "not exactly one complete zstd frame"
    return out


SUFFIX = {"gzip": ".gz", "zstd": ".zst"}


def units_of(codec: str, whole: bytes) -> list[bytes]:
    """`whole` cut into its gzip members / zstd frames, in order."""
    out, rest = [], whole
    while rest:
        d = zlib.decompressobj(31) if codec == "gzip" else zstandard.ZstdDecompressor().decompressobj()
        d.decompress(rest)
        assert d.eof, "a truncated gzip member / zstd frame"
        out.append(rest[: len(rest) - len(d.unused_data)])
        rest = d.unused_data
    return out


def parts_of(s3, bucket: str, key: str, codec: str, whole: bytes) -> list[bytes]:
    """The object's parts, when each is one complete gzip member / zstd frame: the
    members, checked against the object's multipart ETag (the MD5 of the parts' MD5s),
    so that a part boundary anywhere else fails (any server: RGW ignores PartNumber)."""
    units = units_of(codec, whole)
    assert etag(s3, bucket, key) == multipart_etag(units), "parts are not exactly the members/frames"
    return units


@pytest.mark.parametrize("compression,codec,level", [(True, "gzip", 9), ("gzip", "gzip", 0), ("zstd", "zstd", 3),
                                                      ("zstd", "zstd", 19)])
def test_objects_decompress_to_exactly_the_records(make_spoolup, s3, compression, codec, level):
    sp = make_spoolup(compression=compression, compresslevel=level, **{"object-key": "{path}"})
    files = {"web01/app.log": syslog_lines(4000, host="web01"), "db01/pg.log": syslog_lines(10, host="db01"),
             "one.log": b"a single record\n"}
    for rel, data in files.items():
        write(sp.spool / rel, data)
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == sorted(rel + SUFFIX[codec] for rel in files)
    for rel, data in files.items():
        obj = s3.get_object(Bucket=sp.bucket, Key=rel + SUFFIX[codec])
        raw = obj["Body"].read()
        assert decompress(codec, raw) == data, rel
        assert obj["ContentType"] == {"gzip": "application/gzip", "zstd": "application/zstd"}[codec]
        if level in (9, 19) and len(data) > 10_000:
            assert len(raw) < len(data) / 3  # really compressed


@pytest.mark.parametrize("codec,level", [("gzip", 1), ("zstd", 3)])
def test_parts_are_measured_on_compressed_bytes_and_each_is_a_whole_member(make_spoolup, s3, codec, level):
    data = noisy_lines(1, 16 * MiB)
    sp = make_spoolup(compression=codec, compresslevel=level, **{"object-key": "{name}"})
    write(sp.spool / "n.log", data)
    sp.drain(check=True)
    key = "n.log" + SUFFIX[codec]
    assert list_keys(s3, sp.bucket) == [key]
    whole = get(s3, sp.bucket, key)
    assert decompress(codec, whole) == data
    parts = parts_of(s3, sp.bucket, key, codec, whole)
    assert len(parts) >= 3
    contents = []
    for n, part in enumerate(parts, 1):
        content = single_unit(codec, part)  # each part is a complete member/frame on its own
        assert content.endswith(b"\n")  # whole records: a part never splits one
        if n < len(parts):
            # sealed once the *compressed* bytes reached chunk-size; measured on raw bytes,
            # the part would be 5 MiB of records compressing to far less
            assert PART <= len(part) < PART + 2 * MiB, (n, len(part))
            assert len(content) > len(part)
        contents.append(content)
    assert b"".join(contents) == data


def test_envelope_records_compressed_multipart(make_spoolup, s3):
    """The envelope format compresses the same way (its records are written per run)."""
    rnd = random.Random(5)
    msgs = [base64.b64encode(rnd.randbytes(rnd.randint(50, 600))).decode() for _ in range(40_000)]
    spool = b"".join(json.dumps({"key": "e", "ts": "1", "msg": m}).encode() + b"\n" for m in msgs)
    sp = make_spoolup(format="envelope", compression="gzip", compresslevel=1)
    write(sp.spool / "e.jsonl", spool)
    sp.drain(check=True)
    whole = get(s3, sp.bucket, "e-1.gz")
    assert gzip.decompress(whole) == b"".join(m.encode() + b"\n" for m in msgs)
    parts = parts_of(s3, sp.bucket, "e-1.gz", "gzip", whole)
    assert len(parts) >= 2
    for part in parts[:-1]:
        assert len(part) >= PART and single_unit("gzip", part).endswith(b"\n")


# the live compressors are spoolup's own, whatever the server: moto only
@pytest.mark.s3_servers("moto")
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_more_open_objects_than_live_compressors(make_spoolup, s3, codec):
    """150 keys written in turn: more open compressed chunks than the compressors kept in
    memory.  An evicted chunk's member is finished and the next write starts a new one, so
    the objects are streams of several complete members -- still exactly the records."""
    from spoolup.chunks import _MAX_COMPRESSORS

    keys = [f"host{i:03d}" for i in range(150)]
    assert len(keys) > _MAX_COMPRESSORS
    rnd = random.Random(9)
    expected: dict[str, list[bytes]] = {k: [] for k in keys}
    lines = []
    for i in range(60_000):
        key = keys[i % len(keys)]
        msg = f"seq={i} {key} " + base64.b64encode(rnd.randbytes(20)).decode()
        expected[key].append(msg.encode() + b"\n")
        lines.append(json.dumps({"key": key, "msg": msg}).encode() + b"\n")
    sp = make_spoolup(format="envelope", compression=codec, compresslevel=3)
    write(sp.spool / "many.jsonl", b"".join(lines))
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == sorted(k + SUFFIX[codec] for k in keys)
    several = 0
    for key in keys:
        data = get(s3, sp.bucket, key + SUFFIX[codec])
        assert decompress(codec, data) == b"".join(expected[key]), key
        several += len(units_of(codec, data)) > 1
    assert several > 0  # the eviction path really ran


# ---------------------------------------------------------------------------
# crash and resume in the middle of a compressed object


@pytest.mark.s3_servers("moto")  # ingest is killed: what the codec resumes is the same whatever the server
@pytest.mark.parametrize(
    "codec,crash_at,first_mib",
    [
        ("gzip", "after-chunk-sync", 5),  # part 1 is sealed in the crashed batch: its .part is thrown away
        ("zstd", "after-chunk-sync", 8),  # part 1 sealed and uploaded before; part 2's raw tail is truncated
        ("gzip", "after-batch-commit", 8),
        ("zstd", "after-batch-commit", 5),  # the crash falls between the seal's journal entry and raw cleanup
    ],
)
def test_crash_mid_object_resumes_into_one_valid_stream(make_spoolup, s3, codec, crash_at, first_mib):
    sp = make_spoolup(compression=codec, compresslevel=1 if codec == "gzip" else 3, **{"object-key": "{name}"})
    first = noisy_lines(2, first_mib * MiB)
    second = noisy_lines(3, 3 * MiB)
    path = sp.spool / "c.log"
    write(path, first)

    # run 1 ingests the first half; the object stays open (no grace period, no drain)
    proc = sp.start()
    try:
        wait_for(lambda: (st := sp.status())["backlog_bytes"] == 0 and st["open_objects"]
                 and st["open_objects"][0]["bytes"] == len(first), 60, what="first half ingested")
    finally:
        assert sp.stop(proc) == 0
    assert sp.status()["open_objects"][0]["bytes"] == len(first)

    # run 2 is killed at its first batch: the second half's chunk bytes are written (and
    # synced), and -- with after-batch-commit -- journaled, but the process dies there
    write(path, second, "ab")
    proc = sp.start(crash_at=crash_at)
    assert proc.wait(60) == -9, sp.log_text()[-3000:]

    r = sp.drain(check=True)
    assert "nothing pending" in r.stdout
    key = "c.log" + SUFFIX[codec]
    assert list_keys(s3, sp.bucket) == [key]
    whole = get(s3, sp.bucket, key)
    assert decompress(codec, whole) == first + second  # every record exactly once, in order
    parts = parts_of(s3, sp.bucket, key, codec, whole)
    assert len(parts) == 2 and len(parts[0]) >= PART
    assert b"".join(single_unit(codec, part) for part in parts) == first + second
    assert sp.status()["open_objects"] == [] and not any((sp.state / "chunks").iterdir())
