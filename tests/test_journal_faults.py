"""A journal that cannot be opened is reported as what it is (issue 11, item 4).

Locked by another process, on a full filesystem, or damaged: each is a different
problem with different advice, and only damage justifies moving the state dir
aside (which ships everything in the spool again).  Every case is made for real:
another process holding SQLite's write lock, a tiny tmpfs filled to the last
block, a scribbled journal file.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from pathlib import Path

from crashkit import (assert_exact, fill_filesystem, journal_path, mount_tmpfs, spoolup_cmd, umount, wait_done,
                      write)
from helpers import list_keys, syslog_lines, wait_for

SMALL = syslog_lines(400, host="j")
MORE = syslog_lines(300, host="k")


def shipped(make_spoolup, s3, **options):
    """A spoolup that shipped a.log completely (a journal with history) and was stopped
    cleanly (SIGTERM), which leaves the journal file alone, without -wal and -shm."""
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, "flush-grace-period": "1s", **options})
    sp.state = Path(sp.options["state-dir"])
    write(sp.spool / "a.log", SMALL)
    p = sp.start()
    wait_for(lambda: list_keys(s3, sp.bucket) == ["a.log"], 60, what="a.log shipped")
    wait_done(sp)
    assert sp.stop(p) == 0, sp.log_text()[-3000:]
    assert not Path(f"{journal_path(sp)}-shm").exists()
    return sp


def test_locked_journal_names_the_process_holding_it(make_spoolup, s3):
    sp = shipped(make_spoolup, s3)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(journal_path(sp))!r}, isolation_level=None)\n"
         "c.execute('BEGIN IMMEDIATE')\n"
         "print('held', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = journal_path(sp).read_bytes()
        write(sp.spool / "b.log", MORE)
        for cmd in ("run", "recover"):  # (each waits for SQLite's busy timeout first: 30 s, here 2 s)
            r = spoolup_cmd(sp, cmd, timeout=120, env={**sp.env(), "SPOOLUP_TEST_BUSY_TIMEOUT": "2"})
            text = r.stdout + r.stderr
            assert r.returncode == 1, f"{cmd}: exit {r.returncode}\n{text[-3000:]}"
            assert f"is locked by another process: pid {holder.pid}" in text, f"{cmd}:\n{text[-3000:]}"
            assert "cannot be read" not in text and "move the state directory aside" not in text, text[-3000:]
        assert journal_path(sp).read_bytes() == before
    finally:
        holder.stdin.close()
        holder.wait(30)
    r = sp.drain(timeout=120)  # the holder is gone: everything ships, nothing twice
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(s3, sp.bucket, {"a.log": SMALL, "b.log": MORE})


@pytest.fixture
def tiny_state(tmp_path):
    mnt = tmp_path / "tiny-state"
    mount_tmpfs(mnt, "8m")  # room to ship a little (statespace.MINIMUM), then filled to the last block
    yield mnt
    umount(mnt)


def test_full_filesystem_at_journal_open_is_reported_as_no_space(make_spoolup, s3, tiny_state):
    sp = shipped(make_spoolup, s3, **{"state-dir": str(tiny_state)})
    write(sp.spool / "b.log", MORE)
    filler = fill_filesystem(tiny_state)  # (the lock file keeps its page: rewritten in place)
    try:
        for command in (("run",), ("drain",), ("recover",)):
            r = spoolup_cmd(sp, *command, timeout=60)
            out = r.stdout + r.stderr
            assert r.returncode == 1, f"{command}: exit {r.returncode}\n{out[-3000:]}"
            assert f"no space left on the filesystem of the state dir {tiny_state}" in out, out[-3000:]
            assert "cannot be read" not in out and "move the state directory aside" not in out, out[-3000:]
    finally:
        filler.unlink()
    r = sp.drain(timeout=120)  # space is back: the intact journal carries on
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(s3, sp.bucket, {"a.log": SMALL, "b.log": MORE})


def test_damaged_journal_is_called_damaged(make_spoolup, s3):
    sp = shipped(make_spoolup, s3)
    path = journal_path(sp)
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\x5a" * (len(data) - 100))
    r = spoolup_cmd(sp, "run", timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert f"the journal {path} cannot be read" in out and "it is damaged" in out, out[-3000:]
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("PRAGMA quick_check").fetchall()
