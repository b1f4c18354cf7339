"""Adaptive concurrency and max-bandwidth (issue 21 item 5), through the fault proxy.

The proxy holds each request until `upload-threads` requests are in flight (or a moment
passed), so the concurrency spoolup allows shows, by count, in what arrives: all threads
before a SlowDown storm, one request at a time once the storm has halved the limit down to
its floor, all threads again once requests succeed.  Whether a count is reached does not
depend on timing: the hold's timeout only lets a request through when fewer are allowed.
"""

from __future__ import annotations

import threading

import pytest

from crashkit import assert_exact, write
from helpers import pending_uploads, syslog_lines, wait_for
from spoolup.flow import Concurrency, outcome_of

pytestmark = pytest.mark.s3_servers("moto", "rgw")

THREADS = 4
STORM = 30  # SlowDown answers
LATE = 12  # storm answers after which the limit is at its floor: 4 -> 2 -> 1 takes two generations
FILES = {f"f{i:02d}.log": syslog_lines(20, host=f"h{i}") for i in range(80)}


# the storm is the proxy's, the concurrency spoolup's own: moto only
@pytest.mark.s3_servers("moto")
def test_slowdown_storm_lowers_requests_in_flight_and_they_recover(make_spoolup, s3, proxy):
    sp = make_spoolup(**{"object-key": "{name}", "url": proxy.url, "upload-threads": THREADS,
                         "flush-grace-period": "1s", "retry-max-delay": 1.0, "conditional-writes": "off",
                         "shutdown-timeout": 5})
    for name, data in FILES.items():
        write(sp.spool / name, data)
    proxy.hold(THREADS, timeout=0.3)
    p = sp.start()
    try:
        # before the storm: every upload thread has a request in flight
        wait_for(lambda: any(r.concurrent >= THREADS for r in proxy.requests()), 60, what="full concurrency")
        assert max(r.concurrent for r in proxy.requests()) == THREADS, "never more than upload-threads"
        storm = proxy.add(action="error", status=503, code="SlowDown", times=STORM)
        wait_for(lambda: storm.hits >= STORM, 120, what="the storm")
        throttled = [r for r in proxy.requests() if r.action == "error"]
        assert len(throttled) == STORM
        late = [r.concurrent for r in throttled[LATE:]]
        # AIMD: the limit halved to its floor; without it every thread keeps retrying at full width
        assert late == [1] * len(late), [r.concurrent for r in throttled]
        after_storm = len(proxy.requests())
        # ... and comes back up as requests succeed (+1 per `limit` successes) to upload-threads
        wait_for(lambda: any(r.concurrent >= THREADS for r in proxy.requests()[after_storm:]), 120,
                 what="full concurrency again")
    finally:
        proxy.hold(None)
        proxy.clear()
    try:
        r = sp.drain(timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        assert sp.stop(p) == 0
    assert_exact(s3, sp.bucket, FILES)
    assert pending_uploads(s3, sp.bucket) == []


# ---------------------------------------------------------------------------
# the controller alone (threads and a condition variable, no S3)


def test_aimd_halves_once_per_generation_floors_at_one_and_recovers():
    c = Concurrency(8)
    gens = [c.acquire() for _ in range(8)]
    assert c.inflight == 8 and c.limit == 8
    for g in gens:  # eight throttled answers to requests sent under the same limit: one halving
        c.release(g, "throttled")
    assert c.limit == 4
    for expected in (2, 1, 1):
        c.release(c.acquire(), "throttled")
        assert c.limit == expected
    successes = 0
    while c.limit < 8:
        c.release(c.acquire(), "ok")
        successes += 1
    assert successes == sum(range(1, 8))  # +1 per `limit` successes
    c.release(c.acquire(), "ok")
    assert c.limit == 8  # never above upload-threads
    c.release(c.acquire(), "other")  # an error that is not a throttle changes nothing
    assert c.limit == 8


def test_a_thread_waits_for_a_slot_at_the_limit():
    c = Concurrency(2)
    c.release(c.acquire(), "throttled")
    assert c.limit == 1
    held = c.acquire()
    got = threading.Event()

    def second():
        c.release(c.acquire(), "ok")
        got.set()

    t = threading.Thread(target=second)
    t.start()
    assert not got.wait(0.2)  # (a bound for the check, not a threshold: it must still be waiting)
    c.release(held, "ok")
    t.join(10)
    assert got.is_set()


def test_what_counts_as_a_throttle():
    assert outcome_of({"status_code": 503}, {}, None) == "throttled"
    assert outcome_of({"status_code": 429}, {}, None) == "throttled"
    assert outcome_of({"status_code": 400}, {"Error": {"Code": "SlowDown"}}, None) == "throttled"
    assert outcome_of({"status_code": 500}, {"Error": {"Code": "InternalError"}}, None) == "other"
    assert outcome_of({"status_code": 200}, {}, None) == "ok"
    assert outcome_of(None, None, ConnectionResetError()) == "other"
