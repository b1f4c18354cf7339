"""Quarantine: a fault stays in the smallest unit that owns it (one spool entry, or one key).

A quarantined spool entry is not read (or, for `cannot-delete`, not deleted); its bytes
stay in the spool untouched; it is a row of the journal's `quarantine` table (reason,
since, next retry, attempts), which `spoolup status` and the metrics read, so the two
never disagree; it is retried on a backoff and resumes by itself once the cause is gone.
Only transitions are logged (quarantined / resumed), never each retry.

This module is pure: the reasons, what to do about each, and the backoff.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spoolup.backoff import backoff


@dataclass(frozen=True)
class Reason:
    what_to_do: str
    retry: bool = True  # retried on a backoff (False: only at the next start)
    stops_reading: bool = True  # False: the entry is still read, only not deleted
    blocks_shipping: bool = True  # its bytes (if any) are not shipped while it is quarantined


REASONS: dict[str, Reason] = {
    "unreadable": Reason(
        "give spoolup's user read permission on the file (e.g. syslog-ng file(... group(\"spoolup\") "
        "perm(0640)), or chmod g+r); spoolup retries by itself"),
    "not-a-regular-file": Reason(
        "spoolup reads regular files only and follows no symbolic links: remove the entry (FIFO, socket, device, "
        "link), or replace it by the file itself; spoolup looks again at every scan"),
    "unreadable-directory": Reason(
        "give spoolup's user read and execute permission on the directory; spoolup retries by itself"),
    "cannot-delete": Reason(
        "the file is fully shipped but cannot be deleted: give spoolup's user write permission on its directory "
        "(or chattr -i it, or remount it read-write); spoolup retries by itself",
        stops_reading=False, blocks_shipping=False),
    "read-error": Reason("check the disk and the kernel log (dmesg); spoolup retries by itself"),
    "invalid-key": Reason(
        "fix object-key or rename the file (move it out of the spool and back under a valid name); checked again "
        "at the next start", retry=False),
}

FIRST_RETRY = 1.0  # seconds


def next_retry(reason: str, attempts: int, now: float, max_delay: float) -> float | None:
    """When to try a quarantined entry again after `attempts` failures (None: not before the
    next start).  The delay starts at FIRST_RETRY and doubles, up to max_delay."""
    if not REASONS[reason].retry:
        return None
    return now + backoff(attempts, base=FIRST_RETRY, cap=max_delay, jitter=False)


def due(retry_at: float | None, now: float) -> bool:
    return retry_at is not None and retry_at <= now and not math.isnan(retry_at)


@dataclass
class Entry:
    """One quarantined spool entry, as journaled."""

    path: str
    reason: str
    message: str
    since: float
    next_retry: float | None
    attempts: int = 1
    source_id: int | None = None
    key: str | None = None

    @property
    def rule(self) -> Reason:
        return REASONS.get(self.reason, REASONS["read-error"])
