"""The processes spoolup runs: the service's only child is its upload process, and neither
runs any other program.  Every program either starts is recorded by an audit hook
(sys.addaudithook, installed in both by a sitecustomize module on PYTHONPATH): not a
sampling of /proc, which misses a short-lived child.

Why it matters: ctypes.util.find_library("c") ran /sbin/ldconfig -p (the C compiler
where there is no ldconfig) at the import of spoolup/files.py and spoolup/identity.py,
twice in each process.  A test that took "the child of `spoolup run`" for the upload
process (tests/test_faults.py, under load) took an ldconfig, gone a moment later.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crashkit import assert_exact, write
from helpers import syslog_lines

pytestmark = pytest.mark.s3_servers("moto")  # (what spoolup's processes start: server-independent)

HOOK = '''\
import os, sys

def _record(event, args):
    if event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork",
                 "os.forkpty"):
        what = args[1] if event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn") else args
        line = f"{os.getpid()}\\t{' '.join(sys.orig_argv)}\\t{event}\\t{' '.join(map(str, what or ()))}\\n"
        with open(os.environ["SPAWN_LOG"], "a") as f:
            f.write(line)

sys.addaudithook(_record)
'''


def test_the_service_starts_its_upload_process_and_no_other_program(make_spoolup, s3, tmp_path):
    sp = make_spoolup(**{"object-key": "{name}"})
    files = {"a.log": syslog_lines(200, host="a")}
    for name, data in files.items():
        write(sp.spool / name, data)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    spawns = tmp_path / "spawns.tsv"
    env = sp.env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
    env["SPAWN_LOG"] = str(spawns)
    r = subprocess.run(sp.argv("drain"), capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(s3, sp.bucket, files)
    started = [line.split("\t") for line in spawns.read_text().splitlines()] if spawns.exists() else []
    who = {"drain": "the drain's process", "_upload": "the upload process"}
    seen = [(next((v for k, v in who.items() if f" {k} " in argv), argv), event, what.split(" --config ")[0])
            for _pid, argv, event, what in started]
    # base: also ("the drain's process", "subprocess.Popen", "/sbin/ldconfig -p") twice before the
    # upload process, and twice from the upload process
    assert seen == [("the drain's process", "subprocess.Popen", f"{sys.executable} -m spoolup _upload")], started
