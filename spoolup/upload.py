"""The upload process: sealed chunks -> parts -> completed S3 objects.

A separate OS process (hashing, HTTP and boto3 want their own core), started and
restarted by the service (service.UploadSupervisor).  UploadProcess is its life: start
(signals, the upload lock, the journal), reconcile with the bucket until that succeeds,
the loop of the coordinator (spoolup/coordinator.py: schedule the protocol's calls on the
workers, journal their results) beside the capability probe, and a graceful shutdown.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sqlite3
import sys
import threading
import time

from spoolup import catchup, crash, logs, metrics, recover, reconcile
from spoolup.backoff import backoff
from spoolup.capabilities import (UNKNOWN, CapabilityProbe, CapabilityRefused, Capabilities, ensure_capabilities,
                                  journal_capabilities, probe_key_prefix)
from spoolup.config import Config
from spoolup.coordinator import Uploader
from spoolup.refusals import REFUSED_RETRY
from spoolup.journal import Journal, disk_full
from spoolup.protocol import permanent
from spoolup.s3 import S3, S3Error

HEARTBEAT_EVERY = 2.0


def _set_parent_death_signal() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: the wake pipe's EOF still stops it
        pass


class UploadProcess:
    """`spoolup _upload`: started by `spoolup run`/`drain`; stdin is the wake pipe (a byte
    means "look at the journal"; EOF means the parent is gone)."""

    def __init__(self, cfg: Config, parent_pid: int):
        self.cfg = cfg
        self.parent_pid = parent_pid
        self.log = logs.get("spoolup.upload")
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.started = time.time()
        self.journal: Journal | None = None
        self.uploader: Uploader | None = None
        self.probe: CapabilityProbe | None = None
        self._last_beat = 0.0

    def run(self) -> bool:
        """False: stopped before it could start (nothing to close)."""
        if not self.start():
            return False
        self.reconcile()
        if not self.stop.is_set() and self.uploader.work.caps.put_if_none_match == UNKNOWN:
            self.probe = CapabilityProbe(self.cfg, self.uploader.work.s3, self.journal.journal_id, self.stop,
                                         self.wake).start()
        self.loop()
        self.shutdown()
        return True

    # -- start ---------------------------------------------------------------------

    def _signals(self) -> None:
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
            self.stop.set()
            self.wake.set()

        threading.Thread(target=stopper, name="stop", daemon=True).start()
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, lambda *_: logs.reopen())
        logs.ignore_signals()

    def _read_wakes(self) -> None:
        while True:
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                self.stop.set()  # the parent is gone
                self.wake.set()
                return
            self.wake.set()

    def start(self) -> bool:
        """Signals, the upload lock (an upload process of a killed predecessor may still be
        finishing), the journal, the coordinator.  False: stopped before it could start."""
        self._signals()
        if os.getppid() != self.parent_pid:
            return False
        lock_fd = os.open(self.cfg.state_dir / "upload.lock", os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self.stop.wait(0.2):
                    return False
        self.journal = Journal.open(self.cfg.journal_path, fsync=self.cfg.fsync, create=False)
        s3 = S3(self.cfg, probe_prefix=probe_key_prefix(self.cfg, self.journal.journal_id))
        self.uploader = Uploader(self.cfg, self.journal, s3, self.log)
        self.uploader.wake = self.wake
        threading.Thread(target=self._read_wakes, name="wake", daemon=True).start()
        self.beat()
        self.log.info("upload process started", threads=self.cfg.upload_threads, bucket=self.cfg.bucket)
        return True

    def beat(self) -> bool:
        """A heartbeat (with the S3 health) when one is due; True if it was."""
        if time.monotonic() - self._last_beat < HEARTBEAT_EVERY:
            return False
        self._last_beat = time.monotonic()
        up = self.uploader
        try:
            with self.journal.transaction():
                self.journal.heartbeat("upload", os.getpid(), self.started,
                                       f"inflight={len(up.inflight)} parts={up.stats['parts']} "
                                       f"objects={up.stats['objects']} stale={up.stats['stale']}")
                up.health.flush()
        except sqlite3.OperationalError as e:
            # a full state dir is no reason to die (before the loop as much as in it): the
            # heartbeat is tried again at the next one due
            if not disk_full(e):
                raise
            self.log.warning("state dir disk full: heartbeat not journaled", error=str(e), retry_in=HEARTBEAT_EVERY)
            return False
        return True

    def pause(self, seconds: float) -> None:
        """Wait before trying again (a stop ends it), the heartbeats going on."""
        until = time.monotonic() + seconds
        while not self.stop.is_set() and (left := until - time.monotonic()) > 0:
            self.stop.wait(min(left, HEARTBEAT_EVERY))
            self.beat()

    # -- reconcile -------------------------------------------------------------------

    def reconcile(self) -> None:
        """Reconcile with S3 before uploading anything (retried until S3 answers); the process
        is alive meanwhile and says so (heartbeats), and S3's failure is its health, not its death."""
        cfg, journal, up, log = self.cfg, self.journal, self.uploader, self.log
        s3 = up.work.s3
        attempt = 0
        while not self.stop.is_set():
            if attempt:
                metrics.upload_retry()
            delay = backoff(attempt + 1, base=1.0, cap=cfg.retry_max_delay, jitter=False)
            try:
                if s3.ensure_bucket():
                    log.info("bucket did not exist; created it", bucket=cfg.bucket)
                # "auto": a probe still to be made runs beside the first uploads, not before them
                if catchup.unchecked(journal):
                    # the start-up comparison with the bucket's ledger could not reach S3: made here,
                    # before anything is uploaded.  Behind: nothing is uploaded until spoolup is
                    # restarted (its start brings the journal forward while nothing runs)
                    if catchup.behind(cfg, journal, s3):
                        attempt += 1
                        message = ("the bucket's ledger knows of objects this journal does not (a restored backup, a "
                                   "copied state dir, a lost write-ahead log or a wiped state dir), found after a "
                                   "start without S3: nothing is uploaded; restart spoolup (its start brings the "
                                   "journal forward from the bucket)")
                        log.error("journal behind the bucket's ledger; not uploading", advice=message)
                        self._record("ledger", "JournalBehindTheBucket", message)
                        self.pause(REFUSED_RETRY)
                        continue
                    catchup.checked(journal)
                caps = ensure_capabilities(cfg, s3, journal, wait=False)
                if caps is not None:
                    self.adopt(caps)
                report = recover.Report()
                up.work.seed_pending(reconcile.reconcile(cfg, journal, s3, report, dry_run=False))
                for line in report.lines:
                    log.info("recovery", action=line)
                for line in report.notes:
                    log.warning("recovery note", note=line)
                up.health.ok()
                up.accepted_before_start()
                return
            except CapabilityRefused as e:
                # conditional-writes = "on" and the server would overwrite: refuse to write, say why
                # (checked again slowly: the server or the configuration may change)
                attempt += 1
                log.error("conditional-writes or checksum-algorithm refused by the server; not uploading", error=str(e),
                          retry_in=REFUSED_RETRY)
                self._record("conditional-writes", "ConditionalWritesUnsupported", str(e))
                self.pause(REFUSED_RETRY)
            except sqlite3.OperationalError as e:
                # the journal cannot take reconcile's results or the health (the state dir's disk is
                # full): as in the loop, wait and go on once there is space -- reconciling again is
                # harmless, it decides by what the bucket holds
                if not disk_full(e):
                    raise
                attempt += 1
                log.error("state dir disk full: cannot journal upload results; retrying", error=str(e), retry_in=delay)
                self.pause(delay)
            except S3Error as e:
                attempt += 1
                if permanent(e):
                    # S3 refuses the request itself (AccessDenied: a permission the credentials lack,
                    # named in the error): sending it again at once cannot help.  Said at error level,
                    # in status (quarantined_objects, which ends a foreground drain) and /readyz, and
                    # tried again only every REFUSED_RETRY seconds: it resumes once it is granted
                    delay = max(REFUSED_RETRY, cfg.retry_max_delay)
                    log.error("S3 refuses a request spoolup makes before it uploads anything; nothing is "
                              "uploaded, retried slowly", code=e.code, error=str(e), retry_in=delay)
                    self._refused(e)
                else:
                    log.warning("cannot reconcile with S3 yet; retrying", error=str(e), retry_in=delay)
                metrics.upload_error(e.code, e.op or "recover")
                self._record(e.op or "recover", e.code, e.detail, e.key)
                try:
                    up.health.failed(e.op or "recover", e.code, e.detail)
                except sqlite3.OperationalError as err:
                    log.warning("cannot journal this; going on", what="the S3 health", error=str(err))
                self.pause(delay)

    def _refused(self, e: S3Error) -> None:
        try:
            self.uploader.refused_before_start(e.op or "recover", e.code, e.detail, e.key)
        except sqlite3.OperationalError as err:
            self.log.warning("cannot journal this; going on", what="the refused request", error=str(err))

    def _record(self, op: str, code: str, message: str, key: str | None = None) -> None:
        try:
            self.journal.record_error("upload", op, code, message, key)
        except sqlite3.OperationalError as e:
            self.log.warning("cannot journal this; going on", what="an error", error=str(e))

    def adopt(self, caps: Capabilities) -> None:
        """From now on the protocol's steps act on what the server honours (one immutable value,
        replaced here, in the thread that owns the journal)."""
        self.uploader.work.caps = caps
        self.log.info("S3 capabilities detected", put_if_none_match=caps.put_if_none_match,
                      complete_if_none_match=caps.complete_if_none_match)

    # -- the loop --------------------------------------------------------------------

    def loop(self) -> None:
        full = 0
        while not self.stop.is_set():
            try:
                self.uploader.step(0.5)
                logs.handle_reopen()
                if self.probe is not None:
                    self.probe_events()
                if self.beat():
                    self.uploader.housekeeping()
                full = 0
            except sqlite3.OperationalError as e:
                # the journal cannot grow (the state dir's disk is full): the results of the calls
                # just finished are not journaled, so those calls are made again later -- harmless,
                # by invariants 2, 3 and 5.  Wait, and go on once there is space.
                if not disk_full(e):
                    raise
                full += 1
                delay = backoff(full, base=0.5, cap=self.cfg.retry_max_delay, jitter=False)
                self.log.error("state dir disk full: cannot journal upload results; retrying", error=str(e),
                               retry_in=delay)
                self.stop.wait(delay)

    def probe_events(self) -> None:
        """Journal, log and adopt what the capability probe found (or why it failed); the probe
        is dropped once it is done.  (A full state dir: what is not journaled is kept for the next call.)"""
        probe = self.probe
        events = probe.poll()
        for i, (kind, what) in enumerate(events):
            try:
                if kind == "found":
                    journal_capabilities(self.journal, what)
                    self.adopt(what)
                elif kind == "put":
                    # PutObject's half, before the probe ends (not journaled: a restart probes again)
                    if self.uploader.work.caps.probed_at == 0.0:
                        self.uploader.work.caps = what
                else:
                    e, delay = what
                    self.log.warning("cannot probe what S3 honours yet; every write is checked with a HEAD "
                                     "meanwhile", error=str(e), retry_in=delay)
                    metrics.upload_error(e.code, e.op or "probe")
                    self.journal.record_error("upload", e.op or "probe", e.code, e.detail, e.key)
            except sqlite3.OperationalError:
                probe.keep(events[i:])
                raise
        if not (probe.running or probe.pending):
            self.probe = None

    # -- shutdown --------------------------------------------------------------------

    def shutdown(self) -> None:
        up, log, cfg = self.uploader, self.log, self.cfg
        inflight = len(up.inflight)
        log.info("upload process stopping", inflight=inflight, timeout=cfg.shutdown_timeout)
        deadline = time.monotonic() + cfg.shutdown_timeout
        up.finish_inflight(cfg.shutdown_timeout)
        if self.probe is not None:  # (it ends within a few requests: its scratch object is then gone)
            self.probe.join(deadline - time.monotonic())
            try:
                self.probe_events()
            except sqlite3.OperationalError as e:
                log.warning("cannot journal this; going on", what="the capability probe's finding", error=str(e))
        unfinished = len(up.inflight)
        up.close()
        try:
            up.health.flush()
            self.journal.stopped("upload", os.getpid(), self.started)
        except sqlite3.OperationalError as e:
            log.warning("cannot journal this; going on", what="the stop", error=str(e))
        self.journal.close()
        log.info("upload process stopped", finished=inflight - unfinished, unfinished=unfinished)


def main(config_path: str, parent_pid: int) -> int:
    from spoolup import config as config_mod

    _set_parent_death_signal()
    crash.set_parent(parent_pid)
    cfg = config_mod.load(config_path)
    logs.setup(level=cfg.log_level, fmt=cfg.log_format, secrets=cfg.secrets, process="upload",
               log_file=cfg.log_file or None)
    metrics.child(cfg)
    if UploadProcess(cfg, parent_pid).run():
        # Everything is journaled and closed: skip the interpreter's teardown (joining idle
        # HTTP threads, collecting boto3), which would keep `spoolup run`/`drain` waiting.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
