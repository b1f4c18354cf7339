"""Backoff: how long to wait after the n-th failure in a row, one formula for every retry.

Every retry loop of spoolup (S3 calls, the capability probe, reconcile, a full state dir,
restarting the upload process, quarantined spool entries) waits base, 2*base, 4*base, ...
up to a cap.  Jitter (a uniform factor in [0.5, 1]) spreads retries that would otherwise
fire together -- many objects of one upload process failing on the same outage; loops that
are alone in their process (one probe, one supervisor) need none.
"""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 60  # 2**60 times any sensible base is past every cap; avoids float overflow


def backoff(attempts: int, *, base: float, cap: float, jitter: bool = True) -> float:
    """Seconds to wait after the attempts-th failure in a row (attempts >= 1; less counts as 1):
    base * 2**(attempts - 1), at most cap; with jitter, a uniform fraction of it from half to all."""
    delay = min(cap, base * 2.0 ** min(max(attempts - 1, 0), _MAX_DOUBLINGS))
    return delay * random.uniform(0.5, 1.0) if jitter else delay
