"""Idle time of a spool file, safe against wall-clock steps (issue 10.9).

A spool file is deleted (and an unterminated tail taken as final) only once it has
been idle for `spool-reap`.  Its mtime is wall-clock time, and the wall clock can
step: an NTP correction, a suspend and resume, an operator's `date -s`.  A forward
step larger than `spool-reap` would make a file syslog-ng still writes look idle.
So the wall clock is watched against CLOCK_MONOTONIC (which never steps and does not
advance during a suspend): when their difference changes, the clock stepped, and
from then on no idle time counts from before the step -- an idle time is at most the
monotonic time since the last step.

Across restarts the journal keeps the boot id and the wall-minus-monotonic offset of
the last run (`meta.clock`).  A start in the same boot with the same offset carries on;
any other start (another boot, a step while spoolup was stopped) counts as a step at
the start, so no file is deleted before `spool-reap` has passed on the monotonic clock
in this run.  A first start (no record) trusts the wall clock: nothing is journaled yet.

The functions are pure (both clocks are arguments); `Clock` holds the last step.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_TOLERANCE = 1.0  # seconds the wall-minus-monotonic offset may drift (slewing) before it is a step


def idle_seconds(mtime: float, now_wall: float, now_mono: float, step_mono: float | None) -> float:
    """Seconds a file with this mtime has been idle: by the wall clock, but never more than
    the monotonic time since the last wall-clock step (step_mono: monotonic time of it)."""
    idle = now_wall - mtime
    if step_mono is not None:
        idle = min(idle, now_mono - step_mono)
    return idle


def step(prev_offset: float, offset: float, tolerance: float = STEP_TOLERANCE) -> float | None:
    """The size of a wall-clock step between two wall-minus-monotonic offsets (None: none)."""
    delta = offset - prev_offset
    return delta if abs(delta) > tolerance else None


def start_is_step(record: dict | None, boot_id: str, offset: float) -> str | None:
    """Why this start counts as a wall-clock step (None: the last run's idle times carry on)."""
    if record is None:
        return None
    if record.get("boot_id") != boot_id:
        return "the machine rebooted since the last run (idle times before it cannot be checked)"
    delta = step(float(record.get("offset", offset)), offset)
    if delta is not None:
        return f"the wall clock stepped by {delta:+.1f} s while spoolup was stopped"
    return None


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass
class Clock:
    """The wall clock as watched against the monotonic clock by one process."""

    offset: float  # wall - monotonic, as last seen
    step_mono: float | None = None  # monotonic time of the last step (None: none seen)
    boot: str = ""

    @classmethod
    def start(cls, record: dict | None, now_wall: float, now_mono: float, log) -> "Clock":
        """record: the last run's Clock.record() from the journal (None: a first start)."""
        boot = boot_id()
        offset = now_wall - now_mono
        why = start_is_step(record, boot, offset)
        clock = cls(offset, None, boot)
        if why is not None:
            clock.step_mono = now_mono
            log.warning("wall clock not trusted for idle times at start; no spool file is deleted before "
                        "spool-reap has passed in this run", reason=why)
        return clock

    def tick(self, now_wall: float, now_mono: float, log) -> None:
        offset = now_wall - now_mono
        delta = step(self.offset, offset)
        self.offset = offset
        if delta is not None:
            self.step_mono = now_mono
            log.warning("wall clock stepped; idle times of spool files count again from now", step_seconds=round(delta, 3))

    def idle(self, mtime: float, now_wall: float, now_mono: float) -> float:
        return idle_seconds(mtime, now_wall, now_mono, self.step_mono)

    def record(self) -> dict:
        return {"boot_id": self.boot, "offset": self.offset}
