"""Test-only: a wall clock that steps, as a real process sees one (libfaketime-like, in Python).

With this directory first on PYTHONPATH and $WALLCLOCK_SHIFT_FILE set, every Python process
started (spoolup's main and upload processes, `spoolup status`) reads time.time() and
time.time_ns() shifted by the seconds written in that file, re-read at most every 20 ms: the
test writes a new shift and the processes' wall clock steps, as NTP or an operator steps the
system clock.  The monotonic clock is left alone (a step does not move it).
"""

import os
import time

_path = os.environ.get("WALLCLOCK_SHIFT_FILE")
if _path:
    _real_time, _real_time_ns, _monotonic = time.time, time.time_ns, time.monotonic
    _state = {"shift": 0.0, "read_at": None}

    def _shift() -> float:
        now = _monotonic()
        if _state["read_at"] is None or now - _state["read_at"] >= 0.02:
            try:
                with open(_path) as f:
                    _state["shift"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
            _state["read_at"] = now
        return _state["shift"]

    time.time = lambda: _real_time() + _shift()
    time.time_ns = lambda: _real_time_ns() + int(_shift() * 1e9)
