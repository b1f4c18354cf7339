"""backoff(): the one retry-delay formula (spoolup/backoff.py), checked as a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spoolup.backoff import backoff

attempts = st.integers(min_value=-3, max_value=10_000)
bases = st.floats(min_value=0.001, max_value=100.0)
caps = st.floats(min_value=0.001, max_value=100_000.0)


@given(attempts, bases, caps)
def test_without_jitter_doubles_from_base_up_to_the_cap(n, base, cap):
    delay = backoff(n, base=base, cap=cap, jitter=False)
    if n < 60:
        assert delay == min(cap, base * 2.0 ** (max(n, 1) - 1))
    else:
        assert delay == cap
    assert 0 < delay <= cap


@given(attempts, bases, caps)
def test_never_shrinks_as_failures_go_on(n, base, cap):
    assert backoff(n, base=base, cap=cap, jitter=False) <= backoff(n + 1, base=base, cap=cap, jitter=False)


@given(attempts, bases, caps)
def test_jitter_is_between_half_and_all_of_the_delay(n, base, cap):
    full = backoff(n, base=base, cap=cap, jitter=False)
    delay = backoff(n, base=base, cap=cap)
    assert full / 2 <= delay <= full


def test_first_failures():
    assert [backoff(n, base=0.5, cap=30.0, jitter=False) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff(0, base=1.0, cap=30.0, jitter=False) == 1.0  # (a count not yet incremented: the first)
