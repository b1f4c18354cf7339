"""Reaping as the shipped unit runs spoolup (issue 10.9): an unprivileged user, whose write
leases (F_SETLEASE) need CAP_LEASE, and a wall clock that can step.

* the idle-time rule is pure (spoolup/idle.py takes both clocks): a forward wall-clock
  step larger than spool-reap never makes a busy file idle, within a run or across a
  restart; checked deterministically;
* a real run as a user without capabilities: the lease is refused (EACCES), the log says
  so once and `status` reports it; with CAP_LEASE (as the unit gives) leases work;
* a real run whose wall clock steps backwards (tests/wallclock): the service's timers
  (scan, flush-grace expiry, reaping, pruning) run on the monotonic clock, so the step
  stalls none of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import pytest

from crashkit import assert_exact, write
from helpers import content_of, syslog_lines, wait_for
from spoolup import idle
from test_ops_status import validate

REAP = 600.0  # spool-reap, seconds


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, event, **kw):
        self.lines.append((event, kw))


def test_forward_step_larger_than_spool_reap_never_makes_a_file_idle():
    log = Log()
    wall, mono = 1_800_000_000.0, 5_000.0
    clock = idle.Clock(wall - mono)
    mtime = wall  # syslog-ng writes now
    assert clock.idle(mtime, wall + 1, mono + 1) == 1
    # NTP steps the clock forward by an hour (or the machine resumes: the monotonic clock
    # does not advance during a suspend)
    wall2, mono2 = wall + 1 + 3600, mono + 1.5
    clock.tick(wall2, mono2, log)
    assert [e for e, _ in log.lines] == ["wall clock stepped; idle times of spool files count again from now"]
    assert wall2 - mtime > REAP  # what the wall clock alone would say: idle, delete it
    assert clock.idle(mtime, wall2, mono2) == 0 < REAP
    assert clock.idle(mtime, wall2 + 10, mono2 + 10) == 10 < REAP
    # once spool-reap has really passed without a write, it is idle again
    assert clock.idle(mtime, wall2 + REAP + 1, mono2 + REAP + 1) > REAP
    # a file written after the step is measured by its own mtime
    assert clock.idle(wall2 + 5, wall2 + 20, mono2 + 20) == 15


def test_backward_step_and_slewing():
    log = Log()
    clock = idle.Clock(1_800_000_000.0 - 100.0)
    clock.tick(1_800_000_000.0 + 10.4, 110.0, log)  # 0.4 s of drift: slewing, not a step
    assert log.lines == [] and clock.step_mono is None
    clock.tick(1_800_000_000.0 - 3600, 111.0, log)  # backwards: idle times only get shorter
    assert clock.step_mono == 111.0
    assert clock.idle(1_800_000_000.0 - 7200, 1_800_000_000.0 - 3590, 121.0) == 10


def test_start_after_a_step_or_a_reboot_counts_as_a_step():
    boot = "b1"
    assert idle.start_is_step(None, boot, 100.0) is None  # first start: nothing journaled yet
    assert idle.start_is_step({"boot_id": boot, "offset": 100.2}, boot, 100.0) is None
    assert "stepped by +3600.0 s" in idle.start_is_step({"boot_id": boot, "offset": 100.0}, boot, 3700.0)
    assert "rebooted" in idle.start_is_step({"boot_id": "b0", "offset": 100.0}, boot, 100.0)
    log = Log()
    clock = idle.Clock.start({"boot_id": "another boot", "offset": 0.0}, 1_800_000_000.0, 50.0, log)
    assert clock.step_mono == 50.0 and len(log.lines) == 1
    assert clock.idle(1_700_000_000.0, 1_800_000_000.0 + 30, 80.0) == 30  # an old mtime counts from the start


@given(steps=st.lists(st.tuples(st.floats(0.01, 5000), st.floats(-1e6, 1e6)), max_size=20))
def test_idle_never_exceeds_the_monotonic_time_since_the_last_step(steps):
    log = Log()
    wall, mono = 1_800_000_000.0, 1000.0
    clock = idle.Clock(wall - mono)
    last_step = None
    for dt, jump in steps:
        mono += dt
        wall += dt + jump
        clock.tick(wall, mono, log)
        if abs(jump) > idle.STEP_TOLERANCE:
            last_step = mono
        for mtime in (wall - 1e7, wall - 10, wall):
            got = clock.idle(mtime, wall, mono)
            assert got <= wall - mtime
            if last_step is not None:
                assert got <= mono - last_step


def test_the_test_user_has_no_capabilities(test_user):
    r = subprocess.run([*test_user.prefix(), sys.executable, "-c",
                        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])"],
                       capture_output=True, text=True, check=True)
    assert int(r.stdout, 16) == 0  # no CAP_DAC_OVERRIDE: permissions apply to it
    r = subprocess.run([*test_user.prefix(("lease",)), sys.executable, "-c",
                        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])"],
                       capture_output=True, text=True, check=True)
    assert int(r.stdout, 16) == 1 << 28  # CAP_LEASE only


def _reap_run(make_user_spoolup, s3, caps):
    sp = make_user_spoolup(**{"object-key": "{name}", "spool-reap": "1s", "flush-grace-period": "1s"}, caps=caps)
    data = syslog_lines(30)
    path = sp.spool / "old.log"
    path.write_bytes(data)  # root's file, as syslog-ng's would be: spoolup is not its owner
    past = time.time() - 3600
    os.utime(path, (past, past))
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert content_of(s3, sp.bucket, "old.log") == data
    assert not path.exists(), "shipped and idle: deleted"
    st = sp.status()
    validate(st)
    return st, r.stderr, sp


def test_lease_refused_to_an_unprivileged_user_is_reported(make_user_spoolup, s3):
    st, log, sp = _reap_run(make_user_spoolup, s3, ())
    leases = st["leases"]
    assert leases["state"] == "unavailable" and "CAP_LEASE" in leases["reason"], leases
    assert leases["since"] <= st["time"]
    assert log.count("write leases unavailable") == 1, log[-3000:]
    human = sp.cmd("status", check=True).stdout
    assert "write leases UNAVAILABLE" in human and "CAP_LEASE" in human


def test_lease_taken_with_cap_lease_as_the_unit_gives(make_user_spoolup, s3):
    st, log, _ = _reap_run(make_user_spoolup, s3, ("lease",))
    assert st["leases"]["state"] == "ok", st["leases"]
    assert "write leases unavailable" not in log


WALLCLOCK = Path(__file__).resolve().parent / "wallclock"  # its sitecustomize shifts time.time()


def with_wall_clock(sp, shift_file: Path) -> None:
    """Every process of `sp` (run, its upload process, status) sees the wall clock shifted by
    the seconds in shift_file (tests/wallclock/sitecustomize.py)."""
    env = sp.env

    def shifted(crash_at=None):
        e = env(crash_at)
        e["PYTHONPATH"] = os.pathsep.join(filter(None, (str(WALLCLOCK), e.get("PYTHONPATH"))))
        e["WALLCLOCK_SHIFT_FILE"] = str(shift_file)
        return e

    sp.env = shifted


def set_shift(shift_file: Path, seconds: float) -> None:
    tmp = shift_file.with_suffix(".tmp")
    tmp.write_text(str(seconds))
    os.replace(tmp, shift_file)  # (read whole or not at all)


@pytest.mark.s3_servers("moto", "rgw")
def test_backward_wall_clock_step_stalls_neither_expiry_nor_reaping(make_spoolup, s3, tmp_path):
    """The machine's clock runs an hour ahead; NTP steps it back while spoolup runs (issue 19
    item 5).  Service.run kept its scan, expire, reap and prune timers on wall time: after the
    step, flush-grace expiry and reaping waited for the hour to pass again."""
    shift = tmp_path / "wall-clock-shift"
    set_shift(shift, 3600.0)  # an hour ahead (S3 refuses or accepts its requests: nothing to ship yet)
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "spool-reap": "1s",
                         "retry-max-delay": 1})
    with_wall_clock(sp, shift)
    p = sp.start()
    try:
        # one turn of the loop ran (the heartbeat follows expiry and reaping): the timers are set
        wait_for(lambda: "ingest" in sp.status()["service"]["processes"] or None, 60, what="the service's loop")
        set_shift(shift, 0.0)  # NTP steps the wall clock back to the right time
        wait_for(lambda: "wall clock stepped" in sp.log_text() or None, 30, what="the step seen by the service")
        data = syslog_lines(50, host="after-the-step")
        write(sp.spool / "a.log", data)
        # flush-grace-period (1 s) expires it: completed in the bucket, not an hour later
        wait_for(lambda: content_of(s3, sp.bucket, "a.log") == data or None, 60, what="a.log completed")
        # shipped and idle for spool-reap (1 s): reaped, not an hour later
        wait_for(lambda: not (sp.spool / "a.log").exists() or None, 60, what="a.log reaped")
    finally:
        code = sp.stop(p)
    assert code == 0, sp.log_text()[-3000:]
    assert_exact(s3, sp.bucket, {"a.log": data})
