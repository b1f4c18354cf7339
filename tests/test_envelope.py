"""The `envelope` spool format: JSON lines {"key", "ts", "msg"} written by syslog-ng's
$(format-json ...) (contrib/syslog-ng/spoolup.conf), with s3()'s key and rotation rules.

Every test drives the real `spoolup` CLI against a real S3 endpoint (moto server)
and compares the bucket's bytes with what the records say the objects must hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import pytest

from crashkit import rows, write
from helpers import get, list_keys, log_events, start_running, wait_for

KiB = 1024


def env(key, msg, ts=None, **extra) -> bytes:
    """One envelope line as format-json writes it (UTF-8, not ASCII-escaped)."""
    doc = {"key": key, "msg": msg, **extra}
    if ts is not None:
        doc["ts"] = ts
    return json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n"


def body(*msgs: str) -> bytes:
    return b"".join(m.encode("utf-8") + b"\n" for m in msgs)


@contextlib.contextmanager
def running_past_a_dead_letter(sp):
    """A running service that has dead-lettered the bad line of x.jsonl (after one good
    record for "k"); yields the spool file's path and stops the service on exit."""
    path = sp.spool / "x.jsonl"
    write(path, env("k", "one") + b"bad one\n")
    proc = start_running(sp)
    try:
        wait_for(lambda: sp.status()["dead_letters"]["records"] == 1, 60, what="the first dead letter")
        yield path
    finally:
        assert sp.stop(proc) == 0


def journal_objects(sp) -> dict[str, tuple[str, int]]:
    """final key -> (close reason, records), read from the journal (read-only)."""
    return {o["final_key"]: (o["close_reason"], o["records"]) for o in rows(sp, "objects")}


# ---------------------------------------------------------------------------
# fields and keys


def test_key_ts_msg_become_objects_byte_exact(make_spoolup, s3):
    sp = make_spoolup(format="envelope", **{"object-key": "logs/{key}"})
    tricky = [
        "plain ascii",
        'quotes " and \\ backslashes \t tabs',
        "ünïcödé ✓ 日本語 🚀",
        "",  # an empty message is an empty line in the object
        "a message\nthat spans\nthree lines",
        "trailing spaces   ",
    ]
    data = b"".join(env("web01/nginx", m) for m in tricky)
    data += b'{"key": "web01/nginx", "ts": null, "msg": "ts given as null is no timestamp"}\n'
    data += env("db01/postgres", "with a timestamp", ts="2026112512")
    data += env("db01/postgres", "empty ts is no timestamp", ts="")
    data += env("web01/nginx", "extra fields are ignored", extra="field", n=3)
    write(sp.spool / "relay.jsonl", data)
    r = sp.drain(check=True)
    assert "nothing pending" in r.stdout
    assert list_keys(s3, sp.bucket) == ["logs/db01/postgres", "logs/db01/postgres-2026112512", "logs/web01/nginx"]
    assert get(s3, sp.bucket, "logs/web01/nginx") == body(
        *tricky, "ts given as null is no timestamp", "extra fields are ignored")
    assert get(s3, sp.bucket, "logs/db01/postgres-2026112512") == body("with a timestamp")
    # "" sorts before "2026112512": as in s3(), an older timestamp gets an object of its own
    assert get(s3, sp.bucket, "logs/db01/postgres") == body("empty ts is no timestamp")
    assert sp.status()["dead_letters"]["records"] == 0


def test_default_object_key_is_the_envelope_key(make_spoolup, s3):
    sp = make_spoolup(format="envelope")
    write(sp.spool / "a" / "b.jsonl", env("x/y/z.log", "one") + env("x/y/z.log", "two"))
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["x/y/z.log"]
    assert get(s3, sp.bucket, "x/y/z.log") == body("one", "two")


def test_records_of_one_key_from_several_spool_files_keep_each_files_order(make_spoolup, s3):
    sp = make_spoolup(format="envelope", **{"object-key": "{key}"})
    a = [f"a-{i}" for i in range(3000)]
    b = [f"b-{i}" for i in range(3000)]
    write(sp.spool / "1.jsonl", b"".join(env("shared", m) for m in a))
    write(sp.spool / "2.jsonl", b"".join(env("shared", m) for m in b))
    sp.drain(check=True)
    got = get(s3, sp.bucket, "shared").decode().splitlines()
    assert sorted(got) == sorted(a + b)
    assert [m for m in got if m.startswith("a-")] == a
    assert [m for m in got if m.startswith("b-")] == b


# ---------------------------------------------------------------------------
# rotation, exactly as s3()


def test_newer_timestamp_completes_older_goes_to_backfill(make_spoolup, s3):
    sp = make_spoolup(format="envelope", **{"object-key": "logs/{key}"})
    seq = [  # (ts, msg) of one key, in arrival order
        ("10", "r1"), ("10", "r2"),
        ("11", "r3"),  # newer: completes k-10, opens k-11
        ("11", "r4"),
        ("10", "r5"),  # older: k-10 is complete and never reopened -> backfill k-10-1
        ("11", "r6"),  # k-11 is still open
        ("10", "r7"),  # the open backfill object of (k, 10) takes it
        ("09", "r8"),  # older, never seen: a backfill object of its own, index 0
        ("12", "r9"),  # newer: completes k-11 (backfills stay open)
        ("11", "r10"),  # older than 12 -> k-11-1
    ]
    write(sp.spool / "s.jsonl", b"".join(env("k", m, ts=t) for t, m in seq) + env("other", "o1", ts="05"))
    sp.drain(check=True)
    expected = {
        "logs/k-10": body("r1", "r2"),
        "logs/k-10-1": body("r5", "r7"),
        "logs/k-11": body("r3", "r4", "r6"),
        "logs/k-09": body("r8"),
        "logs/k-12": body("r9"),
        "logs/k-11-1": body("r10"),
        "logs/other-05": body("o1"),
    }
    assert list_keys(s3, sp.bucket) == sorted(expected)
    for key, content in expected.items():
        assert get(s3, sp.bucket, key) == content, key
    reasons = {k: r for k, (r, _n) in journal_objects(sp).items()}
    assert reasons["logs/k-10"] == reasons["logs/k-11"] == "newer-timestamp"
    assert reasons["logs/k-10-1"] == reasons["logs/k-12"] == reasons["logs/k-11-1"] == "drain"

    # completed objects are never reopened: the same timestamps later take the next free index
    write(sp.spool / "s.jsonl", env("k", "r11", ts="12") + env("k", "r12", ts="10") + env("k", "r13", ts="13"),
          "ab")
    sp.drain(check=True)
    assert get(s3, sp.bucket, "logs/k-12-1") == body("r11")
    assert get(s3, sp.bucket, "logs/k-10-2") == body("r12")
    assert get(s3, sp.bucket, "logs/k-13") == body("r13")
    for key, content in expected.items():
        assert get(s3, sp.bucket, key) == content, key


def test_max_object_size_splits_never_splitting_records(make_spoolup, s3):
    limit = 1000
    sp = make_spoolup(format="envelope", **{"object-key": "{key}", "max-object-size": limit})
    msgs = [f"record {i:04d} " + "x" * (i % 90) for i in range(400)]
    write(sp.spool / "big.jsonl", b"".join(env("app", m, ts="2026") for m in msgs))
    sp.drain(check=True)
    keys = list_keys(s3, sp.bucket)
    n = len(keys)
    assert n > 10
    assert sorted(keys) == sorted(["app-2026"] + [f"app-2026-{i}" for i in range(1, n)])
    bodies = [get(s3, sp.bucket, "app-2026" if i == 0 else f"app-2026-{i}") for i in range(n)]
    assert b"".join(bodies) == body(*msgs)
    longest = max(len(m) + 1 for m in msgs)
    for b in bodies[:-1]:
        last = b[b.rstrip(b"\n").rfind(b"\n") + 1:]
        assert limit <= len(b) < limit + longest  # reached the limit, exceeded only by the crossing record
        assert len(b) - len(last) < limit
    assert 0 < len(bodies[-1]) <= limit + longest


def test_record_larger_than_max_object_size_completes_its_object_as_s3_does(make_spoolup, s3):
    """s3() writes a record larger than max-object-size into the open object, which then
    completes; the next record starts the next index.  Nothing is dead-lettered."""
    limit = 1000
    sp = make_spoolup(format="envelope", **{"object-key": "{key}", "max-object-size": limit})
    big = "B" * 5000
    write(sp.spool / "o.jsonl", env("o", "small one", ts="1") + env("o", big, ts="1") + env("o", "after", ts="1") +
          env("o", big, ts="1"))
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == ["o-1", "o-1-1"]
    assert get(s3, sp.bucket, "o-1") == body("small one", big)
    assert get(s3, sp.bucket, "o-1-1") == body("after", big)
    assert not (sp.state / "dead-letter").exists() or not any((sp.state / "dead-letter").iterdir())
    assert sp.status()["dead_letters"]["records"] == 0


def test_flush_grace_period_completes_and_next_record_takes_next_index(make_spoolup, s3):
    sp = make_spoolup(format="envelope", **{"object-key": "{key}", "flush-grace-period": "1s"})
    proc = sp.start()
    try:
        write(sp.spool / "g.jsonl", env("g", "first", ts="A") + env("g", "second", ts="A"))
        wait_for(lambda: "g-A" in list_keys(s3, sp.bucket), 60, what="first object")
        assert get(s3, sp.bucket, "g-A") == body("first", "second")
        write(sp.spool / "g.jsonl", env("g", "third", ts="A"), "ab")
        wait_for(lambda: "g-A-1" in list_keys(s3, sp.bucket), 60, what="second object")
        assert get(s3, sp.bucket, "g-A-1") == body("third")
        assert get(s3, sp.bucket, "g-A") == body("first", "second")
    finally:
        assert sp.stop(proc) == 0
    reasons = {k: r for k, (r, _n) in journal_objects(sp).items()}
    assert reasons == {"g-A": "flush-grace-period", "g-A-1": "flush-grace-period"}


@pytest.mark.parametrize("compression,suffix", [(True, ".gz"), ("zstd", ".zst")])
def test_final_key_is_key_ts_index_suffix(make_spoolup, s3, compression, suffix):
    import gzip

    import zstandard

    sp = make_spoolup(format="envelope", compression=compression, **{"object-key": "p/{key}"})
    write(sp.spool / "c.jsonl", env("k", "new", ts="2") + env("k", "old", ts="1") + env("k", "plain") +
          env("k", "newer", ts="3") + env("k", "again", ts="2"))
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == sorted(
        f"p/{k}{suffix}" for k in ("k-2", "k-1", "k", "k-3", "k-2-1"))

    def decompress(data: bytes) -> bytes:
        if suffix == ".gz":
            return gzip.decompress(data)
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)

    assert decompress(get(s3, sp.bucket, f"p/k-2{suffix}")) == body("new")
    assert decompress(get(s3, sp.bucket, f"p/k-2-1{suffix}")) == body("again")
    assert decompress(get(s3, sp.bucket, f"p/k{suffix}")) == body("plain")


# ---------------------------------------------------------------------------
# bad records: dead-letter file, counted, logged once a minute, never a stall


BAD_LINES = [
    b"this is not json",
    b"",  # an empty line
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"key": "k", "msg": "truncated',
    b'{"ts": "1", "msg": "no key"}',
    b'{"key": 5, "msg": "key is a number"}',
    b'{"key": ["k"], "msg": "key is a list"}',
    b'{"key": "k", "ts": 2026, "msg": "ts is a number"}',
    b'{"key": "k"}',
    b'{"key": "k", "msg": null}',
    b'{"key": "k", "msg": {"nested": true}}',
    b'{"key": "", "msg": "empty key"}',
    b'{"key": "/etc/passwd", "msg": "leading slash"}',
    b'{"key": "a/../b", "msg": "dot-dot segment"}',
    b'{"key": "..", "msg": "dot-dot key"}',
    b'{"key": "a/./b", "msg": "dot segment"}',
    b'{"key": "k", "ts": "x/../y", "msg": "dot-dot through the timestamp"}',
    b'{"key": "a\\u0001b", "msg": "control character"}',
    b'{"key": "a\\nb", "msg": "newline in key"}',
    b'{"key": "a\\u007fb", "msg": "DEL in key"}',
    b'{"key": "k", "msg": "lone surrogate \\ud800"}',
    b'{"key": "k", "msg": "invalid utf-8 \xff\xfe"}',
    b"z" * (1536 * KiB),  # a garbage line longer than ingest's read block
]


def test_bad_lines_go_verbatim_to_dead_letter_and_never_stall(make_spoolup, s3):
    sp = make_spoolup(format="envelope", **{"object-key": "{key}", "max-object-size": "4KiB"})
    good_a, good_b, spool_a, spool_b, bad_b = [], [], b"", b"", []
    for i, bad in enumerate(BAD_LINES):
        good_a.append(f"a-{i}")
        spool_a += env("ka", f"a-{i}") + bad + b"\n"
    for i in range(300):  # file b: mostly good, a few bad lines
        good_b.append(f"b-{i}")
        spool_b += env("kb", f"b-{i}", ts="7")
        if i % 100 == 50:
            bad_b.append(b"bad line %d" % i)
            spool_b += bad_b[-1] + b"\n"
    spool_a += env("ka", "last good")
    write(sp.spool / "a.jsonl", spool_a)
    write(sp.spool / "sub" / "b.jsonl", spool_b)

    proc = start_running(sp)
    try:
        r = sp.drain(check=True)  # asks the running service to drain
        assert "drained by the running service" in r.stdout
        assert get(s3, sp.bucket, "ka") == body(*good_a, "last good")
        assert get(s3, sp.bucket, "kb-7") == body(*good_b)

        dead = sorted(p.name for p in (sp.state / "dead-letter").iterdir())
        assert len(dead) == 2, dead  # one dead-letter file per spool file
        dead_a = next(p for p in (sp.state / "dead-letter").iterdir() if p.name.endswith("-a.jsonl.bad"))
        dead_b = next(p for p in (sp.state / "dead-letter").iterdir() if p.name.endswith("b.jsonl.bad"))
        assert dead_a.read_bytes() == b"".join(bad + b"\n" for bad in BAD_LINES)
        assert dead_b.read_bytes() == b"".join(bad + b"\n" for bad in bad_b)

        st = sp.status()
        assert st["dead_letters"]["records"] == len(BAD_LINES) + len(bad_b)
        assert st["dead_letters"]["bytes"] == len(dead_a.read_bytes()) + len(dead_b.read_bytes())
        per_file = {f["path"]: f["records"] for f in st["dead_letters"]["files"]}
        assert per_file == {"a.jsonl": len(BAD_LINES), "sub/b.jsonl": len(bad_b)}
        assert st["sources_needing_attention"] == []
        assert f"dead letters: {len(BAD_LINES) + len(bad_b)} records" in sp.cmd("status").stdout

        # the pipeline goes on: more good and bad lines in the same file
        write(sp.spool / "a.jsonl", b"{oops\n" + env("ka", "after") + b"[]\n", "ab")
        sp.drain(check=True)
        assert get(s3, sp.bucket, "ka-1") == body("after")
        assert dead_a.read_bytes() == b"".join(bad + b"\n" for bad in BAD_LINES) + b"{oops\n[]\n"
        assert sp.status()["dead_letters"]["records"] == len(BAD_LINES) + len(bad_b) + 2
    finally:
        assert sp.stop(proc) == 0
    # logged at most once per file per minute (this test takes far less than a minute)
    warned = log_events(sp.log_text(), "bad record written to the dead-letter file")
    assert sorted(w["path"] for w in warned) == ["a.jsonl", "sub/b.jsonl"], warned
    assert all(w["reason"] for w in warned)


def test_dead_letter_files_rotate_and_keep_every_line(tmp_path):
    """Rotation of one spool file's dead-letter file: .1, .2, ... in order, nothing deleted.
    (Ingest writes, syncs, commits its batch, then calls committed(): one line per batch here.)"""
    from spoolup import logs
    from spoolup.deadletter import DeadLetters

    logs.setup(fmt="json", level="error")
    dead = DeadLetters(tmp_path / "dl", fsync=True, log=logs.get(), rotate_bytes=1000)
    lines = [b"bad record %04d " % i + b"#" * (i % 50) for i in range(300)]
    for line in lines:
        dead.write(3, "host/app.jsonl", line, "not valid JSON")
        dead.sync()
        dead.committed()
    dead.close()
    names = sorted(p.name for p in (tmp_path / "dl").iterdir())
    base = "3-host_app.jsonl.bad"
    rotated = sorted((n for n in names if n != base), key=lambda n: int(n.rsplit(".", 1)[1]))
    assert len(rotated) >= 5
    current = [base] if base in names else []  # absent when the last line filled it up
    assert rotated == [f"{base}.{i}" for i in range(1, len(rotated) + 1)]
    for n in rotated:
        size = (tmp_path / "dl" / n).stat().st_size
        assert 1000 <= size < 1000 + 80
    everything = b"".join((tmp_path / "dl" / n).read_bytes() for n in rotated + current)
    assert everything == b"".join(line + b"\n" for line in lines)
    # a new DeadLetters (a restart) appends to the current file and rotates on from there
    dead = DeadLetters(tmp_path / "dl", fsync=True, log=logs.get(), rotate_bytes=1000)
    total = sum(len(line) + 1 for line in lines)
    assert dead.reconcile({3: total}) == []  # everything written was committed
    for line in lines[:40]:
        dead.write(3, "host/app.jsonl", line, "again")
        dead.sync()
        dead.committed()
    dead.write(3, "host/app.jsonl", b"never committed", "crash")  # a batch that dies before its commit
    dead.sync()
    dead.close()
    total += sum(len(line) + 1 for line in lines[:40])
    dead = DeadLetters(tmp_path / "dl", fsync=True, log=logs.get(), rotate_bytes=1000)
    assert len(dead.reconcile({3: total})) == 1  # cut back to what the journal counts
    dead.close()
    names2 = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert len(names2) > len(names)
    rotated2 = sorted((n for n in names2 if n != base), key=lambda n: int(n.rsplit(".", 1)[1]))
    everything = b"".join((tmp_path / "dl" / n).read_bytes() for n in rotated2 + [base])
    assert everything == b"".join(line + b"\n" for line in lines + lines[:40])


@pytest.mark.parametrize("crash_at", ["after-chunk-sync", "after-batch-commit"])
def test_dead_letters_are_exactly_once_across_a_crash(make_spoolup, s3, crash_at):
    sp = make_spoolup(format="envelope", **{"object-key": "{key}"})
    with running_past_a_dead_letter(sp) as path:
        pass
    # the next batch writes (and syncs) its dead letters; the process dies before or right
    # after the commit; the restart must neither lose nor repeat a line
    write(path, b"bad two\n" + env("k", "two") + b"bad three\n", "ab")
    proc = sp.start(crash_at=crash_at)
    assert proc.wait(60) == -9, sp.log_text()[-3000:]
    sp.drain(check=True)
    dead = list((sp.state / "dead-letter").iterdir())
    assert [p.read_bytes() for p in dead] == [b"bad one\nbad two\nbad three\n"]
    st = sp.status()
    assert st["dead_letters"]["records"] == 3 and st["dead_letters"]["bytes"] == len(dead[0].read_bytes())
    assert get(s3, sp.bucket, "k") == body("one", "two")


def test_bad_lines_only_file_is_reaped_once_dead_lettered(make_spoolup, s3):
    """A spool file holding nothing but bad lines is still consumed, and reaped when idle."""
    sp = make_spoolup(format="envelope", **{"spool-reap": "1s"})
    path = sp.spool / "junk.jsonl"
    write(path, b"junk 1\njunk 2\n")
    old = time.time() - 3600
    os.utime(path, (old, old))
    sp.drain(check=True)
    assert not path.exists()
    assert list_keys(s3, sp.bucket) == []
    st = sp.status()
    assert st["dead_letters"]["records"] == 2 and st["backlog_bytes"] == 0
