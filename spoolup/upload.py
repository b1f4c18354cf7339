"""The upload process: sealed chunks -> parts -> completed S3 objects.

A separate OS process (hashing, HTTP and boto3 want their own core).  One
coordinator thread owns the journal; a bounded pool of `upload-threads` workers
does the S3 calls of the object protocol (spoolup/protocol.py: claim, start,
part, complete) and returns results, which the coordinator journals.

The scheduler looks past every task that is in flight or waiting out its backoff,
takes parts round-robin across objects, and gives an object whose calls keep
failing one call in flight at a time: one failing object never delays the others.
An object completes only after the earlier objects of its key (and timestamp), so
index order is record order.  Failures are retried with exponential backoff; an
error S3 gives for the request itself (EntityTooLarge, AccessDenied, ...)
quarantines the object: reported, and retried only slowly.  Chunk files are
deleted only once their object is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from spoolup import crash, logs, metrics
from spoolup.chunks import remove_chunk_files
from spoolup.config import Config
from spoolup.health import S3Health
from spoolup.journal import QUARANTINE_META, Journal, disk_full
from spoolup.protocol import (CapabilityProbe, Claimed, Done, KeyTaken, PartDone, PartsMismatch, Protocol, Started,
                              UploadGone, journal_capabilities, permanent)
from spoolup.s3 import S3, S3Error

HEARTBEAT_EVERY = 2.0
PRUNE_EVERY = 3600.0
PRUNE_AFTER = 7 * 86400.0
QUARANTINE_RETRY = 600.0  # seconds between attempts of a call S3 refused for the request itself


# ---------------------------------------------------------------------------
# the coordinator


class Uploader:
    def __init__(self, cfg: Config, journal: Journal, s3: S3, log, *, process: str = "upload"):
        self.cfg = cfg
        self.journal = journal
        self.log = log
        self.process = process
        self.work = Protocol(cfg, s3, cfg.chunk_dir, journal.journal_id)
        self.pool = ThreadPoolExecutor(max_workers=cfg.upload_threads, thread_name_prefix="upload")
        self.inflight: dict[tuple, Future] = {}
        self.failures: dict[tuple, tuple[int, float]] = {}  # task -> (attempts, not before)
        self.vanished: dict[int, int] = {}  # object id -> uploads lost in a row (NoSuchUpload)
        self.wake = threading.Event()
        self.stats = {"parts": 0, "objects": 0, "bytes": 0, "errors": 0, "retries": 0}
        self._last_prune = 0.0
        self._after_commit: list[Callable[[], None]] = []  # what harvest() runs once its transaction commits
        self.health = S3Health(journal, process)
        self.quarantined: dict[int, dict] = {}  # object id -> why S3 refuses it (journal meta, for status)
        self._save_quarantine()  # a new upload process starts with none: each is found again

    # -- scheduling --------------------------------------------------------------

    def _submit(self, task: tuple, fn: Callable, *args) -> None:
        if task in self.inflight:
            return
        attempts, not_before = self.failures.get(task, (0, 0.0))
        if time.monotonic() < not_before:
            return
        if self._room() <= 0:
            return
        if attempts:
            metrics.upload_retry()
        future = self.pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self.wake.set())
        self.inflight[task] = future

    def _room(self) -> int:
        return self.cfg.upload_threads * 2 - len(self.inflight)

    def _waiting(self, kind: str) -> set:
        """Tasks of a kind that cannot be submitted now: in flight, or waiting out a backoff.
        The journal's queries leave them out, so they never fill a window for the others."""
        now = time.monotonic()
        busy = {t for t in self.inflight if t[0] == kind}
        busy |= {t for t, (_n, not_before) in self.failures.items() if t[0] == kind and now < not_before}
        return {t[1:] if kind == "part" else t[1] for t in busy}

    def schedule(self) -> None:
        """Submit what is ready, finishing started objects first (complete, parts, start)
        and claiming new ones last: objects complete early and steadily, and the S3 work
        per object is the same in any order."""
        j = self.journal
        for obj in j.completable(skip=self._waiting("complete")):
            if self._room() <= 0:
                return
            self._submit(("complete", obj.id), self.work.complete, obj, j.chunks_of(obj.id))
        # an object whose calls keep failing gets one call in flight at a time: the others keep
        # the rest of the pool (with few threads its retries would otherwise fill every slot)
        failing = {t[1] for t, (n, _) in self.failures.items() if n}
        busy = {t[1] for t in self.inflight}
        for obj, chunk in j.parts_to_upload(limit=self.cfg.upload_threads * 4, skip=self._waiting("part")):
            if self._room() <= 0:
                return
            if obj.id in failing and obj.id in busy:
                continue
            busy.add(obj.id)
            task = ("part", obj.id, chunk.part)
            attempts = self.failures.get(task, (0, 0.0))[0]
            self._submit(task, self.work.part, obj, chunk, attempts)
        for obj in j.to_start(skip=self._waiting("start")):
            if self._room() <= 0:
                return
            chunks = j.chunks_of(obj.id) if obj.mode == "single" else []
            size = chunks[0].part_size if chunks else None  # a single PutObject checks its file's size
            self._submit(("start", obj.id), self.work.start, obj, size)
        for obj, prev, n_chunks in j.claimable_with_context(limit=self.cfg.upload_threads * 8,
                                                            skip=self._waiting("claim")):
            if self._room() <= 0:
                return
            start = 0 if prev is None else prev + 1
            in_use = j.indexes_in_use(obj.key, obj.ts, obj.id)
            mode = "single" if obj.state == "closed" and n_chunks == 1 else "multipart"
            self._submit(("claim", obj.id), self.work.claim, obj, start, in_use, mode)

    def harvest(self) -> int:
        """Journal the results of finished tasks, all in one transaction; returns how many
        finished.  What must follow the commit (crash points of the tests, deleting the
        chunk files of completed objects) runs after it."""
        finished = [(t, f) for t, f in self.inflight.items() if f.done()]
        if not finished:
            return 0
        parts: list[PartDone] = []
        self._after_commit = []
        succeeded = False
        with self.journal.transaction():
            for task, future in finished:
                del self.inflight[task]
                try:
                    result = future.result()
                except S3Error as e:
                    self._failed(task, e, remote=not e.code.startswith("Local"))
                    continue
                except Exception as e:  # noqa: BLE001 - a bug or a local I/O error: keep retrying, say so
                    self._failed(task, S3Error(type(e).__name__, str(e), op=task[0]), remote=False)
                    continue
                succeeded = True
                if self.failures.pop(task, None) is not None:
                    self.log.info("retry succeeded", task=task[0], object=task[1])
                    self._release(task)
                if isinstance(result, PartDone):
                    parts.append(result)
                else:
                    self._apply(result)
            if succeeded:
                self.health.ok()
            if parts:
                self.journal.record_parts([(p.object_id, p.part, p.etag, p.md5) for p in parts])
                self._after_commit.append(lambda: crash.point("after-record-part"))
                self.stats["parts"] += len(parts)
        for action in self._after_commit:
            action()
        return len(finished)

    def _apply(self, result: Any) -> None:
        j = self.journal
        if isinstance(result, Claimed):
            j.claim(result.object_id, result.idx, result.final_key, result.mode)
            self._after_commit.append(lambda: crash.point("after-claim"))
            self.log.debug("index claimed", object=result.object_id, key=result.final_key, mode=result.mode)
        elif isinstance(result, Started):
            j.set_upload_id(result.object_id, result.upload_id)
        elif isinstance(result, Done):
            j.complete(result.object_id, result.etag)
            self.vanished.pop(result.object_id, None)
            self.stats["objects"] += 1
            metrics.object_uploaded()
            obj = j.object(result.object_id)
            oid = result.object_id
            parts = j.conn.execute("SELECT coalesce(max(part), 0) FROM chunks WHERE object_id = ?", (oid,)).fetchone()[0]
            # seconds: from its close (it was complete on the spoolup side) to complete in the bucket
            self.log.info("object completed", key=obj.final_key, bytes=obj.size, parts=parts,
                          seconds=round(time.time() - (obj.closed_at or obj.created), 3), records=obj.records,
                          how=result.how, close_reason=obj.close_reason)
            self._after_commit.append(lambda: crash.point("after-object-done"))
            self._after_commit.append(lambda: remove_chunk_files(self.cfg.chunk_dir, oid, parts))
        elif isinstance(result, KeyTaken):
            self.log.warning("object key already taken by someone else; using the next free index",
                             key=result.final_key, object=result.object_id)
            j.record_error(self.process, "claim", "KeyTaken", f"{result.final_key} exists and is not spoolup's: "
                           "moved to the next free index", result.final_key)
            for key, upload_id in j.unclaim(result.object_id):
                # later objects of the key claim again after this one (record order); the uploads
                # they had are this journal's own, unused now (best effort: reconcile notes any left)
                self.pool.submit(self._abort_quietly, key, upload_id)
        elif isinstance(result, UploadGone):
            # the next CreateMultipartUpload waits, with a delay growing while the uploads keep
            # vanishing: a store that answers NoSuchUpload to everything must not be hammered
            # with Create/UploadPart/Abort rounds
            n = self.vanished[result.object_id] = self.vanished.get(result.object_id, 0) + 1
            delay = self._backoff(n)
            self.failures[("start", result.object_id)] = (n, time.monotonic() + delay)
            self.log.warning("multipart upload vanished; starting it again from the local chunks",
                             object=result.object_id, retry_in=round(delay, 2))
            obj = j.object(result.object_id)
            j.record_error(self.process, "upload", "NoSuchUpload", "multipart upload vanished; re-uploading "
                           "every part from local chunks", obj.final_key if obj else None)
            j.reset_upload(result.object_id)
        elif isinstance(result, PartsMismatch):
            self.log.warning("S3 does not hold some parts as journaled; uploading them again",
                             object=result.object_id, parts=result.parts)
            j.reseal_parts(result.object_id, result.parts)

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self.work.abort(key, upload_id)
        except S3Error as e:
            self.log.warning("cannot abort an unused upload of this journal's", key=key, error=str(e))

    def _backoff(self, attempts: int) -> float:
        """Seconds to wait after the attempts-th failure in a row: exponential, jittered,
        at most retry-max-delay."""
        return min(self.cfg.retry_max_delay, 0.25 * 2 ** min(attempts, 20)) * random.uniform(0.5, 1.0)

    def _failed(self, task: tuple, e: S3Error, *, remote: bool = True) -> None:
        """A task failed: retry it later.  remote: S3 failed (not a local chunk file or a bug),
        which makes the upload process's S3 health "failing"."""
        attempts, _ = self.failures.get(task, (0, 0.0))
        attempts += 1
        self.stats["errors"] += 1
        self.stats["retries"] += 1
        metrics.upload_error(e.code, e.op or task[0])
        if permanent(e):
            # S3 refuses the request itself (EntityTooLarge, AccessDenied, a damaged local chunk...):
            # sending it again at once cannot help.  The object is quarantined: said at error level
            # (again every 10th attempt), in status and the metrics, and tried again only every
            # QUARANTINE_RETRY seconds, so it resumes by itself once the cause is gone.
            self._quarantine(task, e)
            delay = max(QUARANTINE_RETRY, self.cfg.retry_max_delay)
            if attempts == 1 or attempts % 10 == 0:
                self.log.error("S3 refuses this object's request; object quarantined, retried slowly",
                               task=task[0], object=task[1], code=e.code, error=str(e), attempt=attempts,
                               retry_in=round(delay, 2))
        else:
            delay = self._backoff(attempts)
            self.log.warning("S3 call failed; will retry", task=task[0], object=task[1], code=e.code,
                             error=str(e), attempt=attempts, retry_in=round(delay, 2))
        self.failures[task] = (attempts, time.monotonic() + delay)
        with contextlib.suppress(Exception):
            self.journal.record_error(self.process, e.op or task[0], e.code, e.detail, e.key)
            if remote:
                self.health.failed(e.op or task[0], e.code, e.detail)

    def _quarantine(self, task: tuple, e: S3Error) -> None:
        """Journal the object as quarantined (status reads it: one source of truth)."""
        oid = task[1]
        if oid in self.quarantined:
            return
        obj = self.journal.object(oid)
        self.quarantined[oid] = {"object_id": oid, "key": (obj.final_key or obj.key) if obj else None,
                                 "operation": e.op or task[0], "code": e.code, "message": e.detail,
                                 "since": time.time()}
        self._save_quarantine()

    def _release(self, task: tuple) -> None:
        if self.quarantined.pop(task[1], None) is not None:
            self.log.info("quarantined object accepted by S3 again", object=task[1])
            self._save_quarantine()

    def _save_quarantine(self) -> None:
        with contextlib.suppress(Exception), self.journal.transaction():
            self.journal.set_meta(QUARANTINE_META, json.dumps(sorted(self.quarantined.values(),
                                                                     key=lambda q: q["object_id"])))

    # -- running ---------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        self.harvest()
        self.schedule()
        self.wake.wait(timeout)
        self.wake.clear()

    def busy(self) -> bool:
        return bool(self.inflight)

    def finish_inflight(self, timeout: float) -> None:
        """Let in-flight calls finish (up to `timeout`) and journal their results."""
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            self.wake.wait(min(0.2, max(deadline - time.monotonic(), 0)))
            self.wake.clear()
            self.harvest()

    def housekeeping(self) -> None:
        now = time.time()
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            pruned = self.journal.prune_done(now - PRUNE_AFTER)
            if pruned:
                self.log.info("forgot old completed objects", objects=pruned)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------
# the process


def _set_parent_death_signal() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(config_path: str, parent_pid: int) -> int:
    """`spoolup _upload`: started by `spoolup run`/`drain`; stdin is the wake pipe
    (a byte means "look at the journal"; EOF means the parent is gone)."""
    from spoolup import config as config_mod
    from spoolup import protocol, recover

    _set_parent_death_signal()
    crash.set_parent(parent_pid)
    cfg = config_mod.load(config_path)
    logs.setup(level=cfg.log_level, fmt=cfg.log_format, secrets=cfg.secrets, process="upload",
               log_file=cfg.log_file or None)
    metrics.child(cfg)
    log = logs.get("spoolup.upload")
    stop = threading.Event()
    wake = threading.Event()

    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_w, False)

    def on_term(signum, _frame):
        # Always the graceful stop, however many signals: a Ctrl-C (SIGINT to the whole process
        # group) or systemd signalling every process reaches us *and* the parent, which forwards
        # SIGTERM -- that must not count as a second, hard stop.  The hard stop is the parent's:
        # a second signal to it SIGKILLs this process.
        # No locks in here: the handler runs between two bytecodes of the main thread, which may
        # hold the very lock Event.set() takes (it waits on `wake` most of the time), and a killed
        # parent sends its parent-death signal once per thread -- Event.set() here deadlocked the
        # process, which then held upload.lock forever and no upload process could start again.
        # A byte on a pipe wakes the "stop" thread, which sets the events.
        with contextlib.suppress(OSError):
            os.write(sig_w, b"\0")

    def stopper():
        os.read(sig_r, 1)
        stop.set()
        wake.set()

    threading.Thread(target=stopper, name="stop", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, lambda *_: logs.reopen())
    if os.getppid() != parent_pid:
        return 0

    lock_fd = os.open(cfg.state_dir / "upload.lock", os.O_RDWR | os.O_CREAT, 0o600)
    while True:  # an upload process of a killed predecessor may still be finishing
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if stop.wait(0.2):
                return 0

    journal = Journal.open(cfg.journal_path, fsync=cfg.fsync, create=False)
    s3 = S3(cfg)
    uploader = Uploader(cfg, journal, s3, log)
    uploader.wake = wake

    def read_wakes():
        while True:
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                stop.set()  # the parent is gone
                uploader.wake.set()
                return
            uploader.wake.set()

    threading.Thread(target=read_wakes, name="wake", daemon=True).start()
    started = time.time()
    health = uploader.health

    last_beat = [0.0]

    def beat() -> bool:
        """A heartbeat (with the S3 health) when one is due; True if it was."""
        if time.monotonic() - last_beat[0] < HEARTBEAT_EVERY:
            return False
        last_beat[0] = time.monotonic()
        try:
            with journal.transaction():
                journal.heartbeat("upload", os.getpid(), started,
                                  f"inflight={len(uploader.inflight)} parts={uploader.stats['parts']} "
                                  f"objects={uploader.stats['objects']}")
                health.flush()
        except sqlite3.OperationalError as e:
            # a full state dir is no reason to die (before the loop as much as in it): the
            # heartbeat is tried again at the next one due
            if not disk_full(e):
                raise
            log.warning("state dir disk full: heartbeat not journaled", error=str(e), retry_in=HEARTBEAT_EVERY)
            return False
        return True

    def pause(seconds: float) -> None:
        """Wait before trying again (a stop ends it), the heartbeats going on."""
        until = time.monotonic() + seconds
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            stop.wait(min(left, HEARTBEAT_EVERY))
            beat()

    beat()
    log.info("upload process started", threads=cfg.upload_threads, bucket=cfg.bucket)

    # reconcile with S3 before uploading anything (retried until S3 answers); the process
    # is alive meanwhile and says so (heartbeats), and S3's failure is its health, not its death
    attempt = 0
    while not stop.is_set():
        if attempt:
            metrics.upload_retry()
        try:
            if s3.ensure_bucket():
                log.info("bucket did not exist; created it", bucket=cfg.bucket)
            # "auto": a probe still to be made runs beside the first uploads (below), not before them
            caps = protocol.ensure_capabilities(cfg, s3, journal, wait=False)
            if caps is not None:
                log.info("S3 capabilities detected", put_if_none_match=caps.put_if_none_match,
                         complete_if_none_match=caps.complete_if_none_match)
            report = recover.Report()
            protocol.reconcile(cfg, journal, s3, report, dry_run=False)
            for line in report.lines:
                log.info("recovery", action=line)
            for line in report.notes:
                log.warning("recovery note", note=line)
            health.ok()
            break
        except protocol.CapabilityRefused as e:
            # conditional-writes = "on" and the server would overwrite: refuse to write, say why
            # (checked again slowly: the server or the configuration may change)
            attempt += 1
            log.error("conditional-writes refused by the server; not uploading", error=str(e),
                      retry_in=QUARANTINE_RETRY)
            with contextlib.suppress(Exception):
                journal.record_error("upload", "conditional-writes", "ConditionalWritesUnsupported", str(e))
            pause(QUARANTINE_RETRY)
        except sqlite3.OperationalError as e:
            # the journal cannot take reconcile's results or the health (the state dir's disk is
            # full): as in the loop below, wait and go on once there is space -- reconciling
            # again is harmless, it decides by what the bucket holds
            if not disk_full(e):
                raise
            attempt += 1
            delay = min(cfg.retry_max_delay, 0.5 * 2 ** min(attempt, 10))
            log.error("state dir disk full: cannot journal upload results; retrying", error=str(e), retry_in=delay)
            pause(delay)
        except S3Error as e:
            attempt += 1
            delay = min(cfg.retry_max_delay, 0.5 * 2 ** min(attempt, 10))
            log.warning("cannot reconcile with S3 yet; retrying", error=str(e), retry_in=delay)
            metrics.upload_error(e.code, e.op or "recover")
            with contextlib.suppress(Exception):
                journal.record_error("upload", e.op or "recover", e.code, e.detail, e.key)
                health.failed(e.op or "recover", e.code, e.detail)
            pause(delay)

    probe = None
    if not stop.is_set() and s3.capabilities is None:
        probe = CapabilityProbe(cfg, s3, journal.journal_id, stop).start()
    full = 0
    while not stop.is_set():
        try:
            uploader.step(0.5)
            logs.handle_reopen()
            if probe is not None:
                probe = probe_events(probe, journal, log)
            if beat():
                uploader.housekeeping()
            full = 0
        except sqlite3.OperationalError as e:
            # the journal cannot grow (the state dir's disk is full): the results of the calls
            # just finished are not journaled, so those calls are made again later -- harmless,
            # by invariants 2, 3 and 5.  Wait, and go on once there is space.
            if not disk_full(e):
                raise
            full += 1
            delay = min(cfg.retry_max_delay, 0.5 * 2 ** min(full - 1, 10))
            log.error("state dir disk full: cannot journal upload results; retrying", error=str(e), retry_in=delay)
            stop.wait(delay)
    inflight = len(uploader.inflight)
    log.info("upload process stopping", inflight=inflight, timeout=cfg.shutdown_timeout)
    deadline = time.monotonic() + cfg.shutdown_timeout
    uploader.finish_inflight(cfg.shutdown_timeout)
    if probe is not None:  # (it ends within a few requests: its scratch object is then gone)
        probe.join(deadline - time.monotonic())
        with contextlib.suppress(Exception):
            probe_events(probe, journal, log)
    unfinished = len(uploader.inflight)
    uploader.close()
    with contextlib.suppress(Exception):
        health.flush()
        journal.stopped("upload", os.getpid(), started)
    journal.close()
    log.info("upload process stopped", finished=inflight - unfinished, unfinished=unfinished)
    # Everything is journaled and closed: skip the interpreter's teardown (joining idle
    # HTTP threads, collecting boto3), which would keep `spoolup run`/`drain` waiting.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def probe_events(probe: CapabilityProbe, journal: Journal, log) -> CapabilityProbe | None:
    """Journal and log what the capability probe found (or why it failed); None once it is done.
    (A full state dir: what is not journaled is kept for the next call.)"""
    events = probe.poll()
    for i, (kind, what) in enumerate(events):
        try:
            if kind == "found":
                journal_capabilities(journal, what)
                log.info("S3 capabilities detected", put_if_none_match=what.put_if_none_match,
                         complete_if_none_match=what.complete_if_none_match)
            else:
                e, delay = what
                log.warning("cannot probe what S3 honours yet; every write is checked with a HEAD meanwhile",
                            error=str(e), retry_in=delay)
                metrics.upload_error(e.code, e.op or "probe")
                journal.record_error("upload", e.op or "probe", e.code, e.detail, e.key)
        except sqlite3.OperationalError:
            probe.keep(events[i:])
            raise
    return probe if probe.running or probe.pending else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
