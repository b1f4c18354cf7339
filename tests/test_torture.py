"""kill -9 torture in CI: bench/torture.py with 20+ cycles against the session's moto
server.  A writer appends sequence-numbered records to several spool files while
`spoolup run` is SIGKILLed at random moments (main process, upload process, both)
and restarted; at the end every record must be in completed objects exactly once,
in order per key, byte for byte, with no multipart upload pending.  Run with the
state dir on the test run's filesystem and on a ramfs (no O_DIRECT).
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
