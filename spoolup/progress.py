"""Progress of `spoolup drain`: bytes shipped of the total, rate and ETA.

On a terminal (stderr is a TTY) one line rewritten in place; otherwise a log
event `drain progress` every few seconds (JSON lines under systemd or in a
pipe).  Bytes are record bytes (before compression): the spool bytes the drain
covers not read yet, plus the bytes of chunks not yet uploaded in objects not
yet completed; a chunk counts as shipped once its part is uploaded.
"""

from __future__ import annotations

import sys
import time

from spoolup.status import human_bytes

TTY_EVERY = 0.5
LOG_EVERY = 5.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def unshipped_bytes(journal) -> int:
    """Record bytes in objects not completed whose chunks are not uploaded yet."""
    return journal.unshipped_bytes()


def pending_bytes(journal) -> int:
    """What a running service has still to ship, as its journal says: unshipped chunk bytes
    and the spool bytes of active files not read yet (as of the service's last look)."""
    return journal.unread_bytes() + unshipped_bytes(journal)


class DrainProgress:
    def __init__(self, log, *, stream=None, tty: bool | None = None):
        self.log = log
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.total: int | None = None
        self.last = 0.0
        self.shown = False

    def due(self) -> bool:
        """Would update() show a line now?  The drain loop asks before it computes `remaining`
        (a journal query over every chunk not uploaded) at every turn -- 20 times a second, while
        a line is shown every TTY_EVERY / LOG_EVERY seconds."""
        return time.monotonic() - self.last >= (TTY_EVERY if self.tty else LOG_EVERY)

    def update(self, remaining: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.total is None:
            self.total = remaining
        self.total = max(self.total, remaining)  # records that arrived for the drain's files meanwhile
        if not final and now - self.last < (TTY_EVERY if self.tty else LOG_EVERY):
            return
        self.last = now
        shipped = self.total - remaining
        elapsed = max(now - self.started, 1e-6)
        rate = shipped / elapsed
        eta = remaining / rate if rate > 0 else None
        if self.tty:
            pct = 100.0 * shipped / self.total if self.total else 100.0
            line = (f"drain: {human_bytes(shipped)} of {human_bytes(self.total)} shipped ({pct:.0f}%), "
                    f"{human_bytes(rate)}/s, ETA {_duration(eta) if eta is not None else '-'}")
            self.stream.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
            self.stream.flush()
            self.shown = not final
        else:
            self.log.info("drain progress", shipped_bytes=shipped, total_bytes=self.total,
                          bytes_per_second=round(rate), eta_seconds=round(eta, 1) if eta is not None else None,
                          done=final)
