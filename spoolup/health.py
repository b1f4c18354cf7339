"""Whether S3 works for the upload process: a fact apart from its liveness.

The heartbeat says the process runs; this says whether its S3 calls succeed,
since when they fail and with what error (S3's own code and message).  It is
kept in the journal (meta `health:upload`), so `spoolup status` and the metrics
read the same fact.  Written when it changes (the first failure after a
success, each failure, the first success after failures) and with each
heartbeat (the time of the last success), never per call.
"""

from __future__ import annotations

import time

from spoolup.journal import Journal


def empty() -> dict:
    return {"failing_since": None, "failures": 0, "last_success": None, "last_failure": None}


class S3Health:
    def __init__(self, journal: Journal, process: str = "upload"):
        self.journal = journal
        self.process = process
        self.state = empty()  # a new process: what it finds out itself, nothing older
        self.dirty = True

    @property
    def failing(self) -> bool:
        return self.state["failing_since"] is not None

    def ok(self, now: float | None = None) -> None:
        """An S3 call succeeded."""
        now = time.time() if now is None else now
        changed = self.failing or self.state["last_success"] is None
        self.state.update(failing_since=None, failures=0, last_success=now)
        self.dirty = True
        if changed:
            self.flush()

    def failed(self, op: str, code: str | None, message: str, now: float | None = None) -> None:
        """An S3 call failed (S3 answered with an error, or did not answer)."""
        now = time.time() if now is None else now
        if self.state["failing_since"] is None:
            self.state["failing_since"] = now
        self.state["failures"] += 1
        self.state["last_failure"] = {"at": now, "operation": op, "code": code, "message": message}
        self.dirty = True
        self.flush()

    def flush(self) -> None:
        if self.dirty:
            self.journal.set_health(self.process, self.state)
            self.dirty = False
