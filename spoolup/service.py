"""The service: `spoolup run` and `spoolup drain`.

The main process owns the state-dir lock, recovers the chunk files, runs
ingest and supervises the upload process (a child it restarts if it dies).
The two share nothing but the journal; a pipe to the child's stdin carries
"look at the journal" wake-ups, and its EOF tells the child that we are gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from spoolup import catchup, keys, logs, metrics, recover, stateid, statespace, systemd
from spoolup.backoff import backoff
from spoolup.chunks import ChunkStore, Codec
from spoolup.config import Config
from spoolup.deadletter import DeadLetters
from spoolup.form import Form, check_run_config
from spoolup.ingest import Ingest
from spoolup.journal import REQUEST_REFUSED, Journal, JournalError, disk_full
from spoolup.idle import Clock
from spoolup.lock import StateLock
from spoolup.progress import DrainProgress, unshipped_bytes
from spoolup.reaper import REAPING, Reap, try_reap
from spoolup.spool import Spool
from spoolup.watcher import DATA_POLL, Watcher

HEARTBEAT_EVERY = 2.0
SMALL_BATCH = 1 << 20  # a pump that read less than this ...
PACE_SECONDS = 0.05  # ... waits this long before the next one (at most 20 small commits a second)
EXPIRE_EVERY = 0.25
REAP_EVERY = 5.0
PRUNE_EVERY = 3600.0  # seconds between prunes of the spool files' history
REAP_SETTLE = 0.2  # seconds between moving a shipped spool file aside and deleting it


class RecoveryProblem(Exception):
    """Local recovery found damage it will not guess about."""


def prepare_state_dir(cfg: Config, log) -> None:
    os.umask(0o077)
    cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o700)
    cfg.chunk_dir.mkdir(mode=0o700, exist_ok=True)
    cfg.deadletter_dir.mkdir(mode=0o700, exist_ok=True)
    if not cfg.spool_dir.exists():
        cfg.spool_dir.mkdir(mode=0o755, parents=True)
        log.warning("spool dir did not exist; created it (empty): nothing ships until syslog-ng writes there. "
                    "Check spool-dir if that is not what you expect", spool_dir=str(cfg.spool_dir))


class UploadSupervisor:
    """The child upload process, restarted with backoff when it dies."""

    def __init__(self, cfg: Config, log):
        self.cfg = cfg
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        if self.cfg.source is None:
            raise RuntimeError("the upload process needs the configuration file's path")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spoolup", "_upload", "--config", str(self.cfg.source),
             "--parent-pid", str(os.getpid())],
            stdin=subprocess.PIPE,
            close_fds=True,
        )
        fcntl.fcntl(self.proc.stdin.fileno(), fcntl.F_SETFL, os.O_NONBLOCK)
        self.log.info("upload process started", pid=self.proc.pid)

    def wake(self) -> None:
        if self.proc is None or self.proc.stdin is None:
            return
        try:
            os.write(self.proc.stdin.fileno(), b".")
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EPIPE):
                raise

    def supervise(self, journal: Journal) -> None:
        """Restart the upload process if it died (killed, crashed)."""
        if self.proc is None:
            return
        code = self.proc.poll()
        if code is None:
            return
        now = time.monotonic()
        if self.next_start == 0.0:
            self.restarts += 1
            metrics.upload_restarted()
            delay = backoff(self.restarts, base=0.5, cap=30.0, jitter=False)
            self.next_start = now + delay
            self.log.error("upload process exited; restarting it", code=code, restart_in=delay)
            try:
                journal.record_error("ingest", "supervise", f"exit {code}", f"upload process exited with {code}; restarted")
            except sqlite3.Error as e:  # (a full state dir: the log above says it)
                self.log.warning("cannot journal this; going on", what="an error", error=str(e))
        if now >= self.next_start:
            self.next_start = 0.0
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.start()

    def healthy_for(self) -> None:
        self.restarts = 0

    def stop(self, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            self.log.info("asked the upload process to stop", pid=self.proc.pid, timeout=timeout)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.log.warning("upload process did not stop in time; killing it (safe: it resumes next start)")
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


@dataclass
class DrainState:
    request_ids: list[int] = field(default_factory=list)
    snapshot: dict[int, int] = field(default_factory=dict)  # source id -> size at the request
    closed_through: int | None = None  # objects up to this id were closed for the drain
    started: float = field(default_factory=time.time)  # (wall clock, as the refusals' `since`)


class Service:
    def __init__(self, cfg: Config, log):
        self.cfg = cfg
        self.log = log
        self.stop = threading.Event()
        self.signals = 0
        self.lock = StateLock(cfg.state_dir)
        self.journal: Journal | None = None
        self.uploader = UploadSupervisor(cfg, log)
        self.started = time.time()
        self.full_streak = 0  # disk-full failures in a row
        self._mark: dict = {}  # the claims last written to state-id (stateid.update_mark)
        self.reaps: Counter[Reap] = Counter()  # reaper.try_reap()'s outcomes so far

    # -- setup -----------------------------------------------------------------

    def open(self) -> None:
        """Lock the state dir, open (and migrate) the journal, recover the chunk files."""
        if self.cfg.metrics_listen:
            metrics.check_listen(self.cfg)  # a port in use fails before anything is created
        prepare_state_dir(self.cfg, self.log)
        self.lock.acquire()
        if self.cfg.metrics_listen:
            metrics.serve(self.cfg, self.log)  # before the upload process starts: it inherits the metrics dir
        problem = stateid.before_open(self.cfg)  # a lost journal (rebuilt on purpose: recover --from-bucket)
        if problem:
            raise JournalError(problem)
        lost = stateid.lost_commits(self.cfg)  # a lost write-ahead log: the bucket settles it (below)
        if lost:
            self.log.warning("journal lost transactions", detail=lost)
        self.journal = Journal.open(self.cfg.journal_path, fsync=self.cfg.fsync, check=True)
        problem = stateid.after_open(self.cfg, self.journal)  # another journal
        if problem:
            raise JournalError(problem)
        for name in self.journal.migrated:
            self.log.info("recovery", action=f"migrate the journal: {name}")
        mark = stateid.behind_mark(self.cfg, self.journal)
        if mark:
            self.log.warning("journal lost transactions", detail=stateid.behind_mark_message(self.cfg, self.journal, mark))
        # the bucket's ledger decides what was shipped, before anything is read or uploaded: a
        # journal behind it (restored, copied, lost -wal, wiped state dir) is brought forward
        catchup.at_start(self.cfg, self.journal, self.log, mark=mark)
        # objects open or waiting for S3 finish in the form they were started in; objects
        # journaled before forms were take this run's (see spoolup/form.py)
        stamped = self.journal.stamp_forms(Form.of_config(self.cfg).to_json())
        if stamped:
            self.log.info("recovery", action=f"journal the form (compression, chunk-size, ...) of {stamped} "
                          "object(s) journaled before forms were: this run's configuration")
        check_run_config(self.cfg, self.journal)
        self._prune_history()
        # start the upload process now: its start-up (boto3, reconciling with S3) overlaps
        # the local recovery and the first ingest batches.  Local recovery only touches open
        # chunks and unreferenced files, which the upload process never reads.
        self.uploader.start()
        report = recover.Report()
        recover.reconcile_chunks(self.cfg, self.journal, report, dry_run=False)
        for line in report.lines:
            self.log.info("recovery", action=line)
        if report.problems:
            for p in report.problems:
                self.log.error("recovery problem", problem=p)
            raise RecoveryProblem("; ".join(report.problems))
        codec = Codec(self.cfg.compression, self.cfg.compresslevel)
        budget = descriptor_budget(self.cfg.max_open_files, _raise_fd_limit())
        self.log.debug("descriptor budget", **budget)
        self.store = ChunkStore(self.cfg.chunk_dir, codec, fsync=self.cfg.fsync, max_open=budget["chunk_files"])
        self.dead = DeadLetters(self.cfg.deadletter_dir, fsync=self.cfg.fsync, log=self.log,
                                max_open=budget["dead_letter_files"])
        self.spool = Spool(self.cfg.spool_dir, self.journal, self.log, fsync=self.cfg.fsync,
                           object_key=self.cfg.object_key if self.cfg.format == "lines" else None,
                           retry_max=self.cfg.quarantine_retry, max_open=budget["spool_files"],
                           key_room=self.cfg.key_room)
        self.ingest = Ingest(self.cfg, self.journal, self.spool, self.store, self.dead, self.log,
                             notify=self.uploader.wake)
        self.spool.clock = Clock.start(self.journal.state("clock"), time.time(), time.monotonic(), self.log)
        self.journal.set_state("clock", self.spool.clock.record())
        self.spool.load()
        self.ingest.load()

    def _prune_history(self) -> None:
        """Forget spool files done with but the newest few (Journal.prune_sources): start-up
        and rollbacks load the live ones only, and the journal does not grow with history."""
        pruned = self.journal.prune_sources()
        if pruned:
            self.log.info("forgot old spool files", sources=pruned)

    def install_signals(self) -> None:
        def on_stop(signum, _frame):
            self.signals += 1
            if self.signals > 1:
                self.log.warning("second stop signal: exiting at once (crash-safe; resumed at next start)")
                self.uploader.kill()
                os._exit(1)
            self.log.info("stop requested", signal=signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        logs.ignore_signals()  # SIGUSR1, SIGUSR2, ...: logged, never a silent death

    def _on_hup(self, _signum, _frame) -> None:
        logs.reopen()
        self.uploader.signal(signal.SIGHUP)

    def close(self) -> None:
        self.uploader.stop(self.cfg.shutdown_timeout + 5.0)
        for thing in ("store", "dead", "spool"):
            obj = getattr(self, thing, None)
            if obj is not None:
                try:
                    obj.close()
                except OSError as e:  # (closing descriptors; what they wrote is synced and journaled already)
                    self.log.warning("cannot close at stop; going on", what=thing, error=str(e))
        if self.journal is not None:
            try:
                stateid.update_mark(self.cfg, self.journal, self._mark)
            except (OSError, sqlite3.Error) as e:  # (the next start raises the mark from the journal)
                self.log.warning("cannot journal this; going on", what="the claims mark", error=str(e))
            self.journal.close()
        self.lock.release()

    # -- the loop ------------------------------------------------------------------

    def run(self, *, drain: bool = False, drain_timeout: float = 0.0) -> int:
        """The service loop.  With drain=True: ingest what is in the spool now, close
        every object, wait until all are uploaded, and return."""
        cfg, journal, ingest, spool = self.cfg, self.journal, self.ingest, self.spool
        watcher = Watcher(cfg.spool_dir, self.log)
        # every timer on the monotonic clock: a wall-clock step (NTP, an operator) must not hold
        # up (backwards) or bunch (forwards) scans, flush-grace expiry, reaping and pruning; `now`
        # (wall time) is what they are given, as it is what the journal's timestamps are in
        last = {"scan": -math.inf, "expire": -math.inf, "reap": -math.inf, "beat": -math.inf,
                "prune": time.monotonic()}
        drain_state: DrainState | None = None
        progress = DrainProgress(self.log) if drain else None
        deadline = time.monotonic() + drain_timeout if drain_timeout else None
        self.log.info("spoolup running", spool_dir=str(cfg.spool_dir), bucket=cfg.bucket, format=cfg.format,
                      mode="drain" if drain else "run")
        systemd.notify("READY=1")
        try:
            while not self.stop.is_set():
                try:
                    now = time.time()
                    mono = time.monotonic()
                    spool.clock.tick(now, mono, self.log)
                    if watcher.structure_changed or mono - last["scan"] >= cfg.poll_interval:
                        watcher.structure_changed = False
                        spool.rescan(now)
                        last["scan"] = mono
                    if drain and drain_state is None:
                        drain_state = self._start_drain([])
                    elif not drain:
                        ids = journal.open_requests("drain")
                        if ids and drain_state is None:
                            drain_state = self._start_drain(ids)
                    sources = spool.active()
                    if drain_state is not None and drain_state.closed_through is None:
                        sources = [s for s in sources if s.id in drain_state.snapshot]
                    consumed = ingest.pump(sources, now)
                    if consumed:
                        metrics.ingested(ingest.stats)
                        self.full_streak = 0
                    logs.handle_reopen()
                    if mono - last["expire"] >= EXPIRE_EVERY:
                        ingest.expire(now)
                        last["expire"] = mono
                    if drain_state is not None:
                        finished = self._drain_step(drain_state, consumed, now)
                        if progress is not None and (finished or progress.due()):
                            progress.update(self._drain_remaining(drain_state), final=finished)
                        if not finished and drain and self._drain_refused(drain_state):
                            return 1
                        if not finished and not drain and (refused := self._drain_refused(drain_state, since=0.0)):
                            # a `spoolup drain` waiting on this service ends on them too, exit 1, with
                            # what they are; the service keeps everything and ships it once S3 accepts
                            journal.finish_requests(drain_state.request_ids, REQUEST_REFUSED + "; ".join(refused))
                            drain_state = None
                            continue
                        if finished:
                            if drain:
                                self._reap(time.time())
                                return self._drain_result()
                            journal.finish_requests(drain_state.request_ids, "ok")
                            self.log.info("drain request done", requests=drain_state.request_ids)
                            drain_state = None
                    if mono - last["reap"] >= REAP_EVERY:
                        self._reap(now)
                        last["reap"] = mono
                    if mono - last["prune"] >= PRUNE_EVERY:
                        self._prune_history()
                        last["prune"] = mono
                    self.uploader.supervise(journal)
                    if mono - last["beat"] >= HEARTBEAT_EVERY:
                        journal.heartbeat("ingest", os.getpid(), self.started,
                                          f"sources={len(spool.sources)} open_objects={len(ingest.open)}")
                        journal.set_state("clock", spool.clock.record())
                        stateid.update_mark(cfg, journal, self._mark)
                        last["beat"] = mono
                    if deadline is not None and mono > deadline:
                        self.log.error("drain timed out with work pending", pending_objects=journal.pending_objects())
                        return 1
                    if consumed == 0 or ingest.at_cap():
                        watcher.event.wait(0.05 if (ingest.at_cap() or drain_state)
                                           else min(cfg.poll_interval, DATA_POLL))
                        watcher.event.clear()
                    elif consumed < SMALL_BATCH and drain_state is None:
                        # a writer trickling lines in (syslog-ng flushes every few KiB): gather for
                        # a moment rather than commit (and sync) a tiny batch per write
                        self.stop.wait(PACE_SECONDS)
                except (OSError, sqlite3.Error) as e:
                    if disk_full(e):
                        self._disk_full(e)
                    elif not ingest.restored:  # a rollback's restore failed again: keep trying
                        self._not_restored(e)
                    else:
                        raise
            if drain:  # stopped by a signal before everything was shipped
                self.log.warning("drain interrupted by a stop signal; what was not shipped yet is shipped "
                                 "by the next run or drain")
                return 1
            return 0
        finally:
            if progress is not None and progress.shown:
                progress.stream.write("\n")  # leave the last progress line standing
            systemd.notify("STOPPING=1")
            watcher.stop()
            try:
                ingest.flush()
            except (OSError, sqlite3.Error) as e:
                if not disk_full(e) and ingest.restored:
                    raise
                self.log.error("state dir disk full at stop: the last batch is read again at the next start",
                               error=str(e))
            self.uploader.stop(cfg.shutdown_timeout + 5.0)
            try:
                journal.stopped("ingest", os.getpid(), self.started)
            except sqlite3.Error as e:
                self.log.warning("cannot journal this; going on", what="the stop", error=str(e))
            self.log.info("spoolup stopped", bytes=ingest.stats["bytes"], records=ingest.stats["records"])

    def _disk_full(self, e: Exception) -> None:
        """The state dir's filesystem is full: abandon the batch in progress (ingest goes back
        to the journaled state, freeing what the batch wrote), say so in the log and in
        `status`, and try again later, with a growing delay.  The backlog waits in the spool;
        nothing journaled is lost, and the service resumes by itself when space returns."""
        self.full_streak += 1
        delay = backoff(self.full_streak, base=0.5, cap=self.cfg.retry_max_delay, jitter=False)
        message = (f"no space left on the filesystem of the state dir {self.cfg.state_dir} ({e}); ingest "
                   f"pauses and retries (the backlog waits in the spool, nothing journaled is lost). Free "
                   f"space there; spoolup resumes by itself")
        with contextlib.suppress(OSError):
            code, text = statespace.advice(self.cfg, statespace.measure(self.cfg))
            if code == "StateDirTooSmall":  # not someone else's space
                message = f"no space left ({e}): {text}"
        self.log.error("state dir disk full", error=str(e), state_dir=str(self.cfg.state_dir), retry_in=delay)
        try:
            self.ingest.rollback()
        except (OSError, sqlite3.Error) as again:
            self.log.error("disk full: could not go back to the journaled state yet; retrying", error=str(again))
        try:
            self.journal.record_error("ingest", "write", "ENOSPC", message)
        except sqlite3.Error as e:  # (likely, the disk being full: the log above says it all)
            self.log.warning("cannot journal this; going on", what="an error", error=str(e))
        self._pause(delay)

    def _not_restored(self, e: Exception) -> None:
        """Going back to the journaled state after a disk-full failed again (the truncation or
        the sync after it; e.g. EIO from a device that ran out of space): nothing is read or
        committed until it succeeds; try again with the same growing delay."""
        self.full_streak += 1
        delay = backoff(self.full_streak, base=0.5, cap=self.cfg.retry_max_delay, jitter=False)
        self.log.error("disk full: could not go back to the journaled state yet; retrying", error=str(e),
                       retry_in=delay)
        self._pause(delay)

    def _pause(self, delay: float) -> None:
        until = time.monotonic() + delay
        while not self.stop.is_set() and time.monotonic() < until:
            time.sleep(0.05)  # (not stop.wait(): the stop signal's handler sets `stop`, and must never
            #                   find its lock held by this thread)

    def _start_drain(self, request_ids: list[int]) -> DrainState:
        snapshot = {s.id: s.size for s in self.spool.active()}
        self.log.info("draining", sources=len(snapshot), requests=request_ids or None)
        return DrainState(request_ids, snapshot)

    def _drain_step(self, state: DrainState, consumed: int, now: float) -> bool:
        """Advance a drain; True once everything it covers is in completed objects."""
        if state.closed_through is None:
            if consumed > 0 or self.ingest.at_cap():
                return False
            pending = [s for s in self.spool.active() if s.id in state.snapshot and s.offset < state.snapshot[s.id]]
            for s in pending:
                self.spool.refresh(s)
            if any(s.offset < s.size and self._has_record(s) for s in pending):
                return False  # more whole records to read (the cap was hit, or they just arrived)
            closed = self.ingest.close_all("drain", now)
            state.closed_through = self.ingest.next_id - 1
            self.uploader.wake()
            self.log.info("drain: everything in the spool is ingested; waiting for the uploads",
                          objects_closed=closed, pending_objects=self.journal.pending_objects())
            return False
        return self.journal.pending_objects(through=state.closed_through) == 0

    def _drain_refused(self, state: DrainState, since: float | None = None) -> list[str]:
        """Does S3 refuse (AccessDenied, ...: retried only every few minutes) what the drain still
        waits for?  Then `spoolup drain` ends, exit 1, naming each refused request rather than wait
        without end; nothing is lost (journaled and in the spool, it ships once S3 accepts it).
        The refused requests, or [].  `since`: the oldest refusal that counts -- a foreground
        drain's own start (older ones are a previous upload process's); 0 for a running service,
        whose live upload process keeps its list current."""
        if state.closed_through is None:
            return []
        refused = self.journal.refusals_holding(state.closed_through, state.started if since is None else since)
        said = [f"{q.get('key')}: {q.get('operation')} {q.get('code')}: {q.get('message')}" for q in refused]
        if said:
            self.log.error("drain cannot finish: S3 refuses requests what is left needs (retried only slowly); "
                           "nothing is lost: it ships once S3 accepts them (grant what the error names, then run "
                           "drain again or start the service); see spoolup status", refused=said)
        return said

    def _drain_remaining(self, state: DrainState) -> int:
        """Record bytes the drain has still to ship: unread spool bytes it covers, and chunks
        not yet uploaded."""
        unread = 0
        if state.closed_through is None:
            unread = sum(max(state.snapshot[s.id] - s.offset, 0) for s in self.spool.active() if s.id in state.snapshot)
        return unread + unshipped_bytes(self.journal)

    def _has_record(self, src) -> bool:
        fd = self.spool.fd(src)
        if fd is None:
            return False
        tail = self.spool.pread(src, fd, min(src.size - src.offset, 1 << 20), src.offset)
        return tail is not None and b"\n" in tail

    def _drain_result(self) -> int:
        """0 when everything in the spool is shipped; 1 when quarantined entries kept some of it
        back (they are listed by `spoolup status`; what can be shipped is)."""
        blocking = self.spool.blocking_entries()
        if not blocking:
            return 0
        self.log.error("drain finished, but spool entries are quarantined and not shipped; see spoolup status",
                       entries=[f"{keys.printable(e.path)}: {e.reason}" for e in blocking])
        return 1

    def _reap(self, now: float) -> None:
        """Delete spool files whose bytes are all in completed objects (invariant 6)."""
        moved = []
        for src in list(self.spool.active()):
            if src.offset < src.size or self.spool.idle(src, now) < self.cfg.spool_reap_seconds:
                continue
            if not self.spool.deletable(src, now):
                continue
            if self.journal.source_pending_objects(src.id):
                continue
            if self._try_reap(src, now) is not Reap.DELETED and os.path.basename(src.path).startswith(REAPING):
                moved.append(src)
        if moved:
            # moved aside (see reaper.try_reap): an open of the old path that was under way has
            # completed by now, and holds the file open; the others are deleted
            time.sleep(REAP_SETTLE)
            for src in moved:
                self._try_reap(src, time.time())

    def _try_reap(self, src, now: float) -> Reap:
        """One reaper.try_reap(), logged and counted by its outcome (self.reaps)."""
        from spoolup import crash

        path = src.path
        outcome = try_reap(self.spool, src, now, self.cfg.spool_reap_seconds, crash.point)
        self.reaps[outcome] += 1
        if outcome is Reap.DELETED:
            self.log.info("spool file shipped and deleted", source=src.id, path=keys.printable(src.key_path),
                          bytes=src.offset)
        elif outcome is Reap.MOVED_ASIDE:
            self.log.debug("shipped spool file moved aside to be deleted", source=src.id, path=path, to=src.path)
        elif outcome is not Reap.NOT_READY:
            self.log.debug("shipped spool file not deleted", source=src.id, path=keys.printable(path),
                           outcome=outcome.value)
        return outcome


FD_RESERVE = 64  # descriptors left for the journal, sockets, pipes, inotify, Python itself


def descriptor_budget(max_open_files: int, limit: int) -> dict[str, int]:
    """How many descriptors the main process keeps open for spool files, chunk files and
    dead-letter files (each an LRU: the least recently used is closed first): max-open-files,
    but never closer than FD_RESERVE to RLIMIT_NOFILE (at most half of a small limit)."""
    total = max(min(max_open_files, max(limit - FD_RESERVE, limit // 2)), 8)
    dead = max(total // 8, 2)
    return {"spool_files": max(total // 2, 2), "chunk_files": max(total - total // 2 - dead, 2),
            "dead_letter_files": dead}


def _raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; returns the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
