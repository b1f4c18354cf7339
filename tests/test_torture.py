"""kill -9 torture in CI: bench/torture.py with 20+ cycles against the session's moto
server.  A writer appends sequence-numbered records to several spool files while
`spoolup run` is SIGKILLed at random moments (main process, upload process, both)
and restarted; at the end every record must be in completed objects exactly once,
in order per key, byte for byte, with no multipart upload pending.  Run with the
state dir on the test run's filesystem and on a ramfs (no O_DIRECT); and with key races
(--key-races): a second writer puts objects and starts uploads at the keys spoolup is
about to claim, and nothing of it may be overwritten, taken away or left unexplained.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from helpers import STATE_FILESYSTEMS, mounted  # noqa: F401 - STATE_FILESYSTEMS: runs once per filesystem

ROOT = Path(__file__).resolve().parent.parent
CYCLES = int(os.environ.get("SPOOLUP_TORTURE_CYCLES", "20"))
KEY_RACE_CYCLES = int(os.environ.get("SPOOLUP_TORTURE_KEY_RACE_CYCLES", "12"))


def test_kill9_torture(moto, tmp_path, state_fs):
    run_torture(moto, tmp_path / "torture", state_fs, tmp_path)


def test_kill9_torture_as_an_unprivileged_user(moto, tmp_path, test_user):
    """The same, with spoolup running as a user without capabilities (as the shipped unit)."""
    workdir = test_user.workdir(tmp_path.name)
    try:
        run_torture(moto, workdir, "disk", tmp_path, "--user", test_user.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_torture(moto, workdir: Path, state_fs: str, tmp_path: Path, *extra: str) -> None:
    seed = int(time.time())
    cmd = [sys.executable, str(ROOT / "bench" / "torture.py"), "--cycles", str(CYCLES), "--seed", str(seed),
           "--s3-url", moto.url, "--dir", str(workdir), "--json", *extra]
    with contextlib.ExitStack() as stack:
        if state_fs != "disk":
            cmd += ["--state-dir", str(stack.enter_context(mounted(state_fs, tmp_path / "state")))]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.stdout.strip(), f"torture printed nothing (exit {r.returncode})\n{r.stderr[-4000:]}"
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"torture: {figures}")
    summary = (f"{state_fs} seed {seed}: cycles {figures['cycles']}, records {figures['records']}, lost {figures['lost']}, "
               f"duplicated {figures['duplicated']}, out of order {figures['out_of_order']}, byte mismatches "
               f"{figures['byte_mismatches']}, pending uploads {figures['pending_uploads']}, unexpected exits "
               f"{figures['unexpected_exits']}, stuck upload processes {figures['stuck_upload_processes']}, final drain exit {figures['drain_exit']}\n{r.stderr[-4000:]}")
    assert figures["cycles"] == CYCLES >= 20
    assert figures["records"] > 0 and figures["kills_main"] + figures["kills_both"] == CYCLES
    assert figures["drain_exit"] == 0, summary
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["out_of_order"] == 0, summary
    assert figures["byte_mismatches"] == 0 and figures["empty_objects"] == 0, summary
    assert figures["pending_uploads"] == 0 and figures["stray_objects"] == 0, summary
    assert figures["unexpected_exits"] == 0, summary
    assert figures["stuck_upload_processes"] == 0, summary
    assert r.returncode == 0, summary


def test_kill9_torture_with_key_races(moto, tmp_path):
    """The torture with a foreign writer racing spoolup for its next keys (bench/torture.py
    --key-races): PUTs and multipart uploads (completed, pending, empty) at the next indexes,
    at keys whose upload spoolup has in progress, and at the next minute's bare key.  Every
    record exactly once and in index order, every foreign object still holding its bytes, no
    foreign upload with parts taken away, no upload left but the foreign writer's own, and
    every index spoolup skipped explained by the bucket."""
    seed = int(time.time())
    cmd = [sys.executable, str(ROOT / "bench" / "torture.py"), "--cycles", str(KEY_RACE_CYCLES), "--seed", str(seed),
           "--s3-url", moto.url, "--dir", str(tmp_path / "torture"), "--json", "--key-races", "--drain-timeout", "180"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.stdout.strip(), f"torture printed nothing (exit {r.returncode})\n{r.stderr[-4000:]}"
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"torture: {figures}")
    summary = f"seed {seed}: {figures}\n{r.stderr[-4000:]}"
    assert figures["cycles"] == KEY_RACE_CYCLES and figures["records"] > 0, summary
    assert figures["key_races"] and figures["foreign_objects"] + figures["foreign_uploads"] > 0, summary
    assert figures["foreign_conditional"]["put"], summary  # moto refuses If-None-Match: * PUTs at a taken key
    for name in ("lost", "duplicated", "out_of_order", "byte_mismatches", "empty_objects", "stray_objects",
                 "pending_uploads", "leftover_uploads", "index_gaps", "foreign_overwritten", "foreign_uploads_vanished",
                 "unexpected_exits", "stuck_upload_processes", "drain_exit"):
        assert figures[name] == 0, f"{name}: {figures[name]}; {summary}"
    assert r.returncode == 0, summary


def test_kill9_torture_with_state_loss(moto, tmp_path):
    """The torture with the state dir deleted, or put back from a copy taken at an earlier
    cycle, between runs (bench/torture.py --state-loss, issue 22): spoolup brings its journal
    forward from the bucket's ledger, and every record is still there exactly once, in order."""
    seed = int(time.time())
    cmd = [sys.executable, str(ROOT / "bench" / "torture.py"), "--cycles", str(CYCLES), "--seed", str(seed),
           "--s3-url", moto.url, "--dir", str(tmp_path / "torture"), "--json", "--state-loss"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.stdout.strip(), f"torture printed nothing (exit {r.returncode})\n{r.stderr[-4000:]}"
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"torture: {figures}")
    summary = f"seed {seed}: {figures}\n{r.stderr[-4000:]}"
    assert figures["cycles"] == CYCLES and figures["records"] > 0, summary
    assert figures["state_backups"] >= 1 and figures["state_restored"] >= 1 and figures["state_deleted"] >= 1, summary
    assert figures["verify_exit"] == 0 and figures["verify_problems"] == {}, summary  # spoolup verify agrees
    for name in ("lost", "duplicated", "out_of_order", "byte_mismatches", "empty_objects", "stray_objects",
                 "pending_uploads", "leftover_uploads", "unexpected_exits", "stuck_upload_processes", "drain_exit"):
        assert figures[name] == 0, f"{name}: {figures[name]}; {summary}"
    assert r.returncode == 0, summary
