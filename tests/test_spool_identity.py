"""Which spool file is which: a file truncated in place (logrotate's copytruncate)
and an inode reused by a new file are told from a file that only grew, whatever
their size at the next look, and their content is shipped from byte 0 exactly once.

Real files, real filesystems (ext4 loop mounts with and without birth times),
real `spoolup run` and `drain` processes against the moto server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crashkit import assert_exact, copytruncate, drain_crashing, rows, write
from helpers import ext4_loop, syslog_lines, wait_for

HEADER = b"# spool file format 1; host web01; all records below are newline-terminated.\n"  # > 64 bytes


def lines(tag: str, n: int, width: int = 40) -> bytes:
    return b"".join(f"{tag}-{i:06d} ".encode().ljust(width - 1, b"y") + b"\n" for i in range(n))


def source_offsets(sp) -> dict[str, int]:
    if not (sp.state / "journal.sqlite").exists():
        return {}
    return {s["path"]: s["offset"] for s in rows(sp, "sources", "state = ?", ("active",))}


def test_copytruncate_on_a_held_descriptor_ships_the_new_content_from_byte_0(make_spoolup, s3):
    """The file spoolup holds open is truncated to 0 and refilled past the journaled offset
    before spoolup looks again: the new bytes are not taken as the continuation of the old."""
    sp = make_spoolup(**{"object-key": "{name}"})
    path = sp.spool / "app.log"
    old = lines("before", 1000)  # 40,000 bytes
    write(path, old)
    p = sp.start()
    wait_for(lambda: source_offsets(sp).get("app.log") == len(old), 60, 0.05, what="the old content ingested")
    new = lines("after", 1200)  # 48,000 bytes: grown past the journaled offset at the next look
    copytruncate(path, new)  # same inode, truncated, then the writer goes on
    wait_for(lambda: source_offsets(sp).get("app.log") == len(new), 60, 0.05, what="the new content ingested")
    assert sp.stop(p) == 0
    sp.drain(check=True)
    assert_exact(s3, sp.bucket, {"app.log": old + new})
    st = sp.status()
    assert st["counters"].get("spool_truncations") == 1
    assert st["last_error"]["operation"] == "spool-truncated" and "app.log" in st["last_error"]["message"]
    assert "spool file truncated; shipping its new content from byte 0" in sp.log_text()


def test_copytruncate_while_stopped_and_a_crash_after_it(make_spoolup, s3):
    """Truncated and refilled while spoolup is stopped; the first drain after it is killed
    after its chunk data was synced but before the batch that restarted the file committed."""
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5})
    path = sp.spool / "app.log"
    old = HEADER + lines("before", 500)
    write(path, old)
    sp.drain(check=True)
    ino = path.stat().st_ino
    new = HEADER + lines("after", 800)  # same first 64 bytes, larger than the journaled offset
    copytruncate(path, new)
    assert path.stat().st_ino == ino
    drain_crashing(sp, "after-chunk-sync:1")
    sp.drain(check=True)
    assert_exact(s3, sp.bucket, {"app.log": old + new})
    assert sp.status()["counters"].get("spool_truncations") == 1


def test_truncated_and_refilled_to_exactly_the_consumed_size_is_neither_deleted_nor_lost(make_spoolup, s3):
    """Same size as the journaled offset at the next look: a size check alone sees nothing;
    the reaper must not delete the file, and its content is shipped."""
    sp = make_spoolup(**{"object-key": "{name}"})
    path = sp.spool / "same.log"
    old = HEADER + lines("before", 300)
    write(path, old)
    sp.drain(check=True)
    sp.write_config(**{"spool-reap": "1s"})
    new = HEADER + lines("after!", 300)  # the same first 64 bytes too
    assert len(new) == len(old)
    copytruncate(path, new)
    past = os.stat(path).st_mtime - 3600
    os.utime(path, (past, past))
    sp.drain(check=True)
    assert_exact(s3, sp.bucket, {"same.log": old + new})
    assert not path.exists(), "shipped (now), idle: reaped"


# ---------------------------------------------------------------------------
# inode reuse: a real ext4 filesystem reuses a deleted file's inode for the next file


@pytest.fixture(params=["with-birth-time", "without-birth-time"])
def ext4_spool(request, tmp_path) -> Path:
    """An ext4 loop mount: with 256-byte inodes (birth times recorded) or 128-byte inodes
    (none: identity rests on the bytes consumed)."""
    with ext4_loop(tmp_path, birth_times=request.param == "with-birth-time") as mnt:
        yield mnt


def reuse_inode(old: Path, new: Path, data: bytes) -> None:
    """Delete `old` and write `data` to `new` on the same inode (ext4 hands out the freed one)."""
    ino = old.stat().st_ino
    old.unlink()
    write(new, data)
    assert new.stat().st_ino == ino, "ext4 did not reuse the inode"


@pytest.mark.parametrize("same_path", [True, False], ids=["same-path", "other-path"])
def test_inode_reused_by_a_new_file_with_the_same_first_bytes(make_spoolup, s3, ext4_spool, same_path):
    spool = ext4_spool / "spool"
    spool.mkdir()
    sp = make_spoolup(**{"object-key": "{name}", "spool-dir": str(spool)})
    sp.spool = spool
    first = HEADER + syslog_lines(30, host="old")
    write(spool / "a.log", first)
    sp.drain(check=True)
    second = HEADER + syslog_lines(80, host="new")  # the same first 64 bytes, longer than the old offset
    target = spool / ("a.log" if same_path else "b.log")
    reuse_inode(spool / "a.log", target, second)
    sp.drain(check=True)
    expected = {"a.log": first + second} if same_path else {"a.log": first, "b.log": second}
    assert_exact(s3, sp.bucket, expected)


# ---------------------------------------------------------------------------
# an idle file's unterminated tail


def wait_consumed(sp, path: str, size: int) -> None:
    wait_for(lambda: source_offsets(sp).get(path) == size, 60, 0.05, what=f"{path} ingested")


@pytest.mark.parametrize("fmt", ["lines", "envelope"])
def test_unterminated_tail_is_not_glued_to_the_next_record_of_its_object(make_spoolup, s3, fmt):
    """a.log's writer died mid-record; b.log feeds the same object afterwards: its first
    record stays a record of its own (the tail is terminated with a newline)."""
    if fmt == "lines":
        sp = make_spoolup(**{"object-key": "logs/{dir}", "spool-reap": "1s"})
        a, b = b"A-1\nTAILA", b"B-1\nB-2\n"
        want = [b"A-1\n", b"TAILA\n", b"B-1\n", b"B-2\n"]
    else:
        sp = make_spoolup(**{"format": "envelope", "spool-reap": "1s"})
        a = b'{"key":"logs/h","ts":"","msg":"A-1"}\n{"key":"logs/h","ts":"","msg":"TAILA"}'
        b = b'{"key":"logs/h","ts":"","msg":"B-1"}\n{"key":"logs/h","ts":"","msg":"B-2"}\n'
        want = [b"A-1\n", b"TAILA\n", b"B-1\n", b"B-2\n"]
    write(sp.spool / "h" / "a.log", a)
    past = os.stat(sp.spool / "h" / "a.log").st_mtime - 3600
    os.utime(sp.spool / "h" / "a.log", (past, past))
    p = sp.start()
    wait_consumed(sp, "h/a.log", len(a))
    write(sp.spool / "h" / "b.log", b)  # the same object, still open
    wait_consumed(sp, "h/b.log", len(b))
    assert sp.stop(p) == 0
    sp.drain(check=True)
    assert_exact(s3, sp.bucket, {"logs/h": b"".join(want)})
    assert sp.status()["counters"].get("unterminated_tails") == 1
    assert "taking the unterminated tail of an idle spool file as a final record" in sp.log_text()


# ---------------------------------------------------------------------------
# many files: discovery is linear and journals one scan's new files in one transaction


class _Log:
    """A log sink for the in-process spool (the service's logger writes JSON lines)."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((level, event))


def _discover(tmp_path, n: int) -> tuple[int, int, int]:
    """(transactions, lines executed in spoolup's spool and journal modules, sources) of the
    first scan of a spool holding n new files."""
    import sys

    from spoolup.journal import Journal
    from spoolup.spool import Spool

    base = tmp_path / f"n{n}"
    spool = base / "spool"
    for i in range(n):
        d = spool / f"h{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.log").write_bytes(b"x\n")
    (base / "state").mkdir()
    journal = Journal.open(base / "state" / "journal.sqlite")
    s = Spool(spool, journal, _Log(), object_key="{path}")
    s.load()
    statements: list[str] = []
    journal.trace(statements.append)
    lines = 0
    watched = {str(Path(m.__file__)) for name, m in sys.modules.items()
               if name == "spoolup.spool" or name == "spoolup.journal" or name.startswith("spoolup.journal.")}
    assert len(watched) > 2, watched  # the journal package's modules, not only its __init__

    def tracer(frame, event, arg):
        nonlocal lines
        if frame.f_code.co_filename not in watched:
            return None
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        new = s.rescan(time.time())
    finally:
        sys.settrace(None)
        journal.trace(None)
    journal.close()
    begins = sum(1 for st in statements if st.strip().upper().startswith("BEGIN"))
    return begins, lines, len(new)


def test_discovery_is_one_transaction_and_linear_in_the_number_of_files(tmp_path):
    small, large = 500, 2000
    begins_small, lines_small, n_small = _discover(tmp_path, small)
    begins_large, lines_large, n_large = _discover(tmp_path, large)
    assert (n_small, n_large) == (small, large)
    # linear: four times the files, at most about four times the work (quadratic: sixteen)
    assert lines_large <= 4.5 * lines_small, (lines_small, lines_large)
    assert begins_small == begins_large == 1, "one transaction (one sync) for all the files of a scan"


# ---------------------------------------------------------------------------
# a record longer than max-record-size, still growing


def _proc(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS, bytes) and rchar (bytes read by syscalls) of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            out["rchar"] = int(line.split()[1])
    return out


def test_a_200_mib_line_still_growing_keeps_memory_bounded_and_is_read_once(make_spoolup, s3):
    MiB = 1 << 20
    limit = 4 * MiB
    sp = make_spoolup(**{"object-key": "{name}", "max-record-size": "4MiB"})
    path = sp.spool / "big.log"
    before = syslog_lines(100)
    write(path, before)
    p = sp.start()
    wait_consumed(sp, "big.log", len(before))
    start = _proc(p.pid)

    def bounded() -> dict[str, int]:
        seen = _proc(p.pid)
        assert seen["VmHWM"] - start["VmRSS"] <= 8 * limit, (start, seen)  # by max-record-size, not 200 MiB
        return seen

    chunk = (b"0123456789abcdef" * (MiB // 16))
    with open(path, "ab") as f:
        for step in range(20):  # 200 MiB without a newline, growing while spoolup looks
            for _ in range(10):
                f.write(chunk)
            f.flush()
            time.sleep(0.3)
            bounded()
        f.write(b"\n")
        after = syslog_lines(50, host="after")
        f.write(after)
    size = path.stat().st_size
    wait_for(lambda: bounded() and source_offsets(sp).get("big.log") == size, 120, 0.1, what="big.log ingested")
    seen = bounded()
    assert sp.stop(p) == 0
    assert seen["rchar"] - start["rchar"] <= 2 * size + 64 * MiB, (start, seen)  # no byte searched again and again
    sp.drain(check=True)
    assert_exact(s3, sp.bucket, {"big.log": before + after})
    (dead,) = (sp.state / "dead-letter").glob("*big.log.bad*")  # (rotated after its commit: .bad.1)
    assert dead.stat().st_size == 200 * MiB + 1
    with open(dead, "rb") as f:
        assert f.read(16) == b"0123456789abcdef" and (f.seek(-1, 2), f.read())[1] == b"\n"
    st = sp.status()
    assert st["dead_letters"]["records"] == 1 and st["counters"]["oversize_records"] == 1
