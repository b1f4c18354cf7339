"""Every option may change between two runs while work is pending (issue 11, item 2).

Each case crashes a drain right after its first batch commit (the service and the
upload process killed together), so the state dir holds sealed chunks waiting for S3
and an open chunk; then the configuration changes, more records arrive, and a drain
with the new configuration must ship every spool byte exactly once: objects already
under way finish in the form they were started in (their compression, part size,
max-object-size), new ones take the new form.  The one change that cannot be honoured
(`format` while a spool file is partly read) is refused with exit 2 naming the option.
"""

from __future__ import annotations

import json

import pytest

from crashkit import completed, decode, drain_crashing, get, noisy_lines, objects_of_source, rows, spoolup_cmd, write
from helpers import list_keys, pending_uploads, syslog_lines

BIG = noisy_lines(58_000, seed=21)  # ~14.2 MiB: 8 MiB chunks -> 1 sealed + 6.2 MiB open; gzip ~7 MiB
MORE = noisy_lines(20_000, seed=22, start=58_000)  # ~5 MiB appended to a.log after the change
NEW = syslog_lines(300, host="new")

CASES = {
    "compression none->gzip": ({"compression": "none"}, {"compression": "gzip"}),
    "compression gzip->none": ({"compression": "gzip"}, {"compression": "none"}),
    "compression gzip->zstd": ({"compression": "gzip"}, {"compression": "zstd", "compresslevel": 3}),
    "compresslevel 1->9": ({"compression": "gzip", "compresslevel": 1}, {"compression": "gzip", "compresslevel": 9}),
    "chunk-size 8MiB->5MiB": ({"chunk-size": "8MiB"}, {"chunk-size": "5MiB"}),
    "chunk-size 5MiB->8MiB": ({"chunk-size": "5MiB"}, {"chunk-size": "8MiB"}),
    "max-object-size 12MiB->6MiB": ({"max-object-size": "12MiB"}, {"max-object-size": "6MiB"}),
    "object-key": ({"object-key": "{name}"}, {"object-key": "moved/{name}"}),
    "object-key-timestamp": ({"object-key-timestamp": "%Y%m%d%H"}, {"object-key-timestamp": "%Y%m%d%H%M"}),
    "upload-threads 1->8": ({"upload-threads": 1}, {"upload-threads": 8}),
}


def suffix_of(key: str) -> str:
    return next((s for s in (".gz", ".zst") if key.endswith(s)), "")


def shipped(sp, s3, path: str) -> bytes:
    """The bytes of spool file `path` in the bucket: its objects, in the order ingest
    created them, each decoded by its own key's compression suffix."""
    objs = objects_of_source(sp, path)
    assert objs and all(o["state"] == "done" for o in objs), objs
    return b"".join(decode(get(s3, sp.bucket, o["final_key"]), suffix_of(o["final_key"])) for o in objs)


def assert_bucket_is_journal(sp, s3) -> list[str]:
    keys = sorted(o["final_key"] for o in rows(sp, "objects"))
    assert list_keys(s3, sp.bucket) == keys, "objects in the bucket that the journal does not account for"
    assert pending_uploads(s3, sp.bucket) == []
    return keys


def objects(sp) -> list[dict]:
    return rows(sp, "objects", order_by="id")


def pending(make_spoolup, options: dict, files: dict[str, bytes]):
    """A spoolup killed right after its first batch commit: work pending everywhere."""
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, **options})
    for name, data in files.items():
        write(sp.spool / name, data)
    drain_crashing(sp, "after-batch-commit", scope="service")
    waiting = [c for c in rows(sp, "chunks") if c["state"] != "uploaded"]
    assert waiting and completed(sp) == 0
    return sp


@pytest.mark.parametrize("case", list(CASES))
def test_option_changed_with_work_pending(make_spoolup, s3, case):
    before, after = CASES[case]
    sp = pending(make_spoolup, before, {"a.log": BIG})
    forms_before = objects(sp)
    chunks_before = rows(sp, "chunks")
    sp.write_config(**after)
    write(sp.spool / "a.log", MORE, "ab")
    write(sp.spool / "b.log", NEW)
    r = sp.drain(timeout=240)
    assert r.returncode == 0, f"{case}: exit {r.returncode}\n{r.stderr[-4000:]}"
    assert shipped(sp, s3, "a.log") == BIG + MORE
    assert shipped(sp, s3, "b.log") == NEW
    keys = assert_bucket_is_journal(sp, s3)
    # objects under way finished in their own form; new ones took the new one
    now = {o["id"]: o for o in objects(sp)}
    for o in forms_before:
        assert o["form"] and now[o["id"]]["form"] == o["form"]
    parts = {(c["object_id"], c["part"]) for c in chunks_before}
    assert parts <= {(c["object_id"], c["part"]) for c in rows(sp, "chunks")}, \
        "a part journaled before the change was re-cut"
    new_form = objects_of_source(sp, "b.log")[0]["form"]
    for option, value in after.items():
        if option in ("compression", "compresslevel", "chunk-size", "max-object-size"):
            journaled = json.loads(new_form)[option.replace("-", "_")]
            assert journaled == (value if not isinstance(value, str) or option == "compression"
                                 else int(value[:-3]) << 20), (option, journaled)
    if "compression" in after:
        old_sfx = {"none": "", "gzip": ".gz", "zstd": ".zst"}[before["compression"]]
        new_sfx = {"none": "", "gzip": ".gz", "zstd": ".zst"}[after["compression"]]
        assert f"b.log{new_sfx}" in keys and any(k.startswith("a.log") and suffix_of(k) == old_sfx for k in keys)


def test_format_change_after_everything_was_read(make_spoolup, s3):
    sp = pending(make_spoolup, {}, {"a.log": BIG})
    sp.write_config(**{"format": "envelope", "object-key": "env/{key}"})
    envelopes = b"".join(json.dumps({"key": "x", "msg": f"m{i}"}).encode() + b"\n" for i in range(200))
    write(sp.spool / "e.log", envelopes)
    r = sp.drain(timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    assert shipped(sp, s3, "a.log") == BIG
    assert shipped(sp, s3, "e.log") == b"".join(f"m{i}\n".encode() for i in range(200))
    assert_bucket_is_journal(sp, s3)


def test_format_change_with_a_partly_read_file_is_refused_naming_the_option(make_spoolup, s3):
    sp = pending(make_spoolup, {}, {"a.log": BIG})
    write(sp.spool / "a.log", MORE, "ab")  # written as lines; a.log is now partly read
    sp.write_config(**{"format": "envelope", "object-key": "{key}"})
    for command in ("drain", "run"):
        r = spoolup_cmd(sp, command, timeout=60)
        assert r.returncode == 2, f"{command}: exit {r.returncode}\n{r.stderr[-3000:]}"
        assert "option 'format': changed from 'lines' to 'envelope' while 1 spool file(s) are partly read" \
            in r.stderr and "run `spoolup drain`" in r.stderr, r.stderr[-3000:]
    assert completed(sp) == 0
    sp.write_config(**{"format": "lines", "object-key": "{name}"})  # the way forward the message gives
    r = sp.drain(timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    assert shipped(sp, s3, "a.log") == BIG + MORE
    assert_bucket_is_journal(sp, s3)
