"""The ledger's spans (issue 22): which bytes of which spool file each object holds, as the
journal's object_ranges say after ingest.  For every object, the bytes of its spans, read
from the spool files, must be exactly its records: in format = "lines" the object's content
itself, in format = "envelope" the lines whose msg fields it holds.  Each test runs the real
`spoolup drain` against a real S3 endpoint and compares with the bucket's bytes.
"""

from __future__ import annotations

import base64
import gzip
import json
import random

import pytest

from crashkit import rows, write
from helpers import get

pytestmark = pytest.mark.s3_servers("moto", "rgw")

KiB = 1024


def spans_by_object(sp) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """final key -> spool path (relative) -> the object's spans of it, in order."""
    paths = {s["id"]: s["path"] for s in rows(sp, "sources")}
    keys = {o["id"]: o["final_key"] for o in rows(sp, "objects")}
    out: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for r in rows(sp, "object_ranges", order_by="object_id, source_id, start"):
        out.setdefault(keys[r["object_id"]], {}).setdefault(paths[r["source_id"]], []).append((r["start"], r["end"]))
    return out


def held(files: dict[str, bytes], spans: dict[str, list[tuple[int, int]]]) -> dict[str, bytes]:
    return {path: b"".join(files[path][a:b] for a, b in s) for path, s in spans.items()}


def env(key: str, msg: str) -> bytes:
    return json.dumps({"key": key, "msg": msg}).encode() + b"\n"


def test_lines_one_span_per_object_and_file_across_rotation(make_spoolup, s3):
    """Two files of one key, written in several reads, split by max-object-size: each object
    holds one span of each file it has records of, and those bytes are its content."""
    sp = make_spoolup(**{"object-key": "logs/{name}", "max-object-size": 4 * KiB})
    a = b"".join(b"a record %05d of file a\n" % i for i in range(700))
    b = b"".join(b"b%05d\n" % i for i in range(300))
    write(sp.spool / "a.log", a)
    write(sp.spool / "b.log", b)
    sp.drain(check=True)
    files = {"a.log": a, "b.log": b}
    objs = spans_by_object(sp)
    assert len(objs) > 4  # split by max-object-size
    seen = {"a.log": [], "b.log": []}
    for key, spans in objs.items():
        assert all(len(s) == 1 for s in spans.values()), (key, spans)  # one span per (object, file)
        (path,) = spans  # {name}: one file per key
        assert b"".join(held(files, spans).values()) == get(s3, sp.bucket, key)
        seen[path] += spans[path]
    for path, data in files.items():  # every byte in exactly one object, in order
        covered = sorted(seen[path])
        assert covered[0][0] == 0 and covered[-1][1] == len(data)
        assert all(x[1] == y[0] for x, y in zip(covered, covered[1:]))


def test_lines_compressed_objects_spans_are_of_the_spool_bytes(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "logs/app", "compression": "gzip", "max-object-size": 2 * KiB})
    rnd = random.Random(7)  # (incompressible enough to fill several objects of 2 KiB stored)
    data = b"".join(b"line %06d %s\n" % (i, base64.b64encode(rnd.randbytes(60))) for i in range(500))
    write(sp.spool / "a.log", data)
    sp.drain(check=True)
    objs = spans_by_object(sp)
    assert len(objs) > 1
    for key, spans in objs.items():
        assert key.endswith(".gz")
        assert list(spans) == ["a.log"] and len(spans["a.log"]) == 1
        assert held({"a.log": data}, spans)["a.log"] == gzip.decompress(get(s3, sp.bucket, key))


def test_envelope_interleaved_keys_and_a_dead_lettered_line(make_spoolup, s3):
    """Records of two keys alternate in one file and a bad line sits between two records of
    key x: each object's spans are exactly its own lines (many spans: the keys interleave),
    the bad line is in no object, and adjacent lines of one key are one span."""
    sp = make_spoolup(format="envelope", **{"object-key": "logs/{key}"})
    lines = [env("x", "x1"), env("x", "x2"), env("y", "y1"), env("x", "x3"), b"not json at all\n",
             env("x", "x4"), env("y", "y2"), env("y", "y3")]
    data = b"".join(lines)
    write(sp.spool / "r.jsonl", data)
    sp.drain(check=True)
    objs = spans_by_object(sp)
    assert set(objs) == {"logs/x", "logs/y"}
    at, pos = [], 0
    for line in lines:
        at.append((pos, pos + len(line)))
        pos += len(line)
    assert objs["logs/x"] == {"r.jsonl": [(at[0][0], at[1][1]), at[3], at[5]]}
    assert objs["logs/y"] == {"r.jsonl": [at[2], (at[6][0], at[7][1])]}
    for key, spans in objs.items():
        msgs = [json.loads(line)["msg"] for line in held({"r.jsonl": data}, spans)["r.jsonl"].splitlines()]
        assert get(s3, sp.bucket, key) == b"".join(m.encode() + b"\n" for m in msgs)
    bad = (at[4][0], at[4][1])
    assert all(b <= bad[0] or a >= bad[1] for s in objs.values() for a, b in s["r.jsonl"])


def test_lines_an_oversize_record_between_two_records_is_in_no_span(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "logs/app", "max-record-size": 1024 * KiB})
    first, long, last = b"first\n", b"x" * (1100 * KiB) + b"\n", b"last\n"
    write(sp.spool / "a.log", first + long + last)
    sp.drain(check=True)
    assert spans_by_object(sp) == {"logs/app": {"a.log": [(0, len(first)), (len(first) + len(long),
                                                                           len(first) + len(long) + len(last))]}}
    assert get(s3, sp.bucket, "logs/app") == first + last
