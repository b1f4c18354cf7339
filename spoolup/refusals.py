"""The upload coordinator's failures and refused objects: retries with backoff, and objects that
S3 refuses (or whose handling failed unexpectedly) retried only slowly, journaled for status.

A mixin of coordinator.Uploader (its failures, refused, stats, journal, health and log), kept
apart so that the coordinator's module stays about scheduling and journaling results.
"""

from __future__ import annotations

import json
import sqlite3
import time

from spoolup import metrics
from spoolup.backoff import backoff
from spoolup.journal import REFUSED_OBJECTS_META
from spoolup.protocol import permanent
from spoolup.s3 import S3Error
from spoolup.work import Failure, Task

REFUSED_RETRY = 600.0  # seconds between attempts of an object S3 refuses (or that failed unexpectedly)


def journal_broken(e: BaseException) -> bool:
    """An error of the journal itself (it cannot be written: disk full, I/O, locked), which
    stops the process -- as opposed to a bug in handling one object's result."""
    return isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.IntegrityError)


class Refusals:
    def _backoff(self, attempts: int) -> float:
        """Seconds to wait after the attempts-th failure in a row: exponential, jittered,
        at most retry-max-delay."""
        return backoff(attempts, base=0.5, cap=self.cfg.retry_max_delay)

    def _failed(self, task: Task, e: S3Error, *, remote: bool = True) -> None:
        """A task failed: retry it later.  remote: S3 failed (not a local chunk file or a bug),
        which makes the upload process's S3 health "failing"."""
        previous = self.failures.get(task)
        attempts = (previous.attempts if previous else 0) + 1
        self.stats["errors"] += 1
        self.stats["retries"] += 1
        metrics.upload_error(e.code, e.op or task.kind.value)
        if permanent(e):
            # S3 refuses the request itself (EntityTooLarge, AccessDenied, a damaged local chunk...):
            # sending it again at once cannot help.  The object is refused: said at error level
            # (again every 10th attempt), in status and the metrics, and tried again only every
            # REFUSED_RETRY seconds, so it resumes by itself once the cause is gone.
            self._refuse(task, e.op or task.kind.value, e.code, e.detail, e.key)
            delay = self._refused_delay()
            if attempts == 1 or attempts % 10 == 0:
                self.log.error("S3 refuses this object's request; object quarantined, retried slowly",
                               task=task.kind.value, object=task.object_id, code=e.code, error=str(e),
                               attempt=attempts, retry_in=round(delay, 2))
        else:
            delay = self._backoff(attempts)
            self.log.warning("S3 call failed; will retry", task=task.kind.value, object=task.object_id, code=e.code,
                             error=str(e), attempt=attempts, retry_in=round(delay, 2))
        self.failures[task] = Failure(attempts, time.monotonic() + delay)
        self._journal_error(e.op or task.kind.value, e, remote=remote)

    def _unexpected(self, task: Task, e: Exception, where: str) -> None:
        """Any other exception while working on one object (a bug, an odd reply, a chunk file
        that cannot be read): that object is refused and tried again slowly; the rest goes on."""
        previous = self.failures.get(task)
        attempts = (previous.attempts if previous else 0) + 1
        self.stats["errors"] += 1
        code = type(e).__name__
        metrics.upload_error(code, task.kind.value)
        self._refuse(task, task.kind.value, code, str(e))
        delay = self._refused_delay()
        self.failures[task] = Failure(attempts, time.monotonic() + delay)
        if attempts == 1 or attempts % 10 == 0:
            self.log.error(f"unexpected error {where}; object quarantined, retried slowly", task=task.kind.value,
                           object=task.object_id, code=code, error=str(e), attempt=attempts,
                           retry_in=round(delay, 2), exc_info=e)
        self._journal_error(task.kind.value, S3Error(code, str(e), op=task.kind.value), remote=False)

    def _refused_delay(self) -> float:
        return max(REFUSED_RETRY, self.cfg.retry_max_delay)

    def _journal_error(self, op: str, e: S3Error, *, remote: bool) -> None:
        try:
            with self.journal.savepoint():
                self.journal.record_error(self.process, op, e.code, e.detail, e.key)
                if remote:
                    self.health.failed(op, e.code, e.detail)
        except sqlite3.Error as err:
            if journal_broken(err):
                raise
            self.log.warning("cannot journal this; going on", what="an error", error=str(err))

    def _refuse(self, task: Task, op: str, code: str, message: str, key: str | None = None) -> None:
        """Journal the object as refused (status reads it as quarantined_objects: one source of truth).
        A task of no object (the ledger's segment, object 0) is named by the key S3 refused: every
        object waiting for its record waits for it."""
        oid = task.object_id
        if oid in self.refused:
            return
        obj = self.journal.object(oid) if oid else None
        self.refused[oid] = {"object_id": oid, "key": (obj.final_key or obj.key) if obj else key,
                                 "operation": op, "code": code, "message": message, "since": time.time()}
        self._save_refused()

    def refused_before_start(self, op: str, code: str, message: str, key: str | None) -> None:
        """S3 refused a request of the reconcile that comes before any upload: every object waits
        for it (object 0 in the refused objects, as the ledger's segment)."""
        if 0 not in self.refused:
            self.refused[0] = {"object_id": 0, "key": key, "operation": op, "code": code, "message": message,
                               "since": time.time()}
            self._save_refused()

    def accepted_before_start(self) -> None:
        if self.refused.pop(0, None) is not None:
            self.log.info("refused request accepted by S3 again", operation="reconcile")
            self._save_refused()

    def _retry_succeeded(self, task: Task) -> None:
        """A task that had failed succeeded: said, and its object no longer refused."""
        self.log.info("retry succeeded", task=task.kind.value, object=task.object_id)
        self._release(task)

    def _release(self, task: Task) -> None:
        if self.refused.pop(task.object_id, None) is not None:
            self.log.info("refused object accepted by S3 again", object=task.object_id)
            self._save_refused()

    def _save_refused(self) -> None:
        """(Joins harvest's transaction when called from it.)"""
        with self.journal.transaction():
            self.journal.set_meta(REFUSED_OBJECTS_META, json.dumps(sorted(self.refused.values(),
                                                                     key=lambda q: q["object_id"])))
