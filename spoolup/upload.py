"""The upload process: sealed chunks -> parts -> completed S3 objects.

A separate OS process (hashing, HTTP and boto3 want their own core).  One
coordinator thread owns the journal; a bounded pool of `upload-threads` workers
does the S3 calls and returns results, which the coordinator journals:

  claim     choose the object's final index: the first one >= the previous
            object's index + 1 that the bucket does not hold (objects or
            pending uploads, with or without a compression suffix);
  start     CreateMultipartUpload, upload id journaled before any part is sent
            (invariant 4) -- or, for an object that is one complete chunk,
            a single conditional PutObject;
  part      UploadPart from the chunk file, ETag journaled after (invariant 2);
  complete  CompleteMultipartUpload with If-None-Match: *, journaled after
            (invariant 3).  NoSuchUpload / PreconditionFailed are checked with
            HEAD against the multipart ETag computed from the journaled part
            ETags (or spoolup's metadata): ours -> done; someone else's key ->
            next free index and re-upload (invariant 5).

Failures are retried with exponential backoff, forever: an object is never
dropped.  Chunk files are deleted only once their object is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from spoolup import crash, keys, logs, metrics
from spoolup import form as forms
from spoolup.chunks import Codec, chunk_name, part_file
from spoolup.config import Config
from spoolup.form import Form
from spoolup.health import S3Health
from spoolup.journal import ChunkRow, Journal, ObjectRow, disk_full
from spoolup.s3 import S3, FileBody, InvalidPart, NoSuchUpload, PreconditionFailed, S3Error, multipart_etag, same_etag

META_KEY = "spoolup-object"  # x-amz-meta-spoolup-object: <journal id>/<object id>
HEARTBEAT_EVERY = 2.0
PRUNE_EVERY = 3600.0
PRUNE_AFTER = 7 * 86400.0
CHECK_UPLOAD_AFTER = 3  # failed part attempts before asking S3 whether the upload still exists
PENDING_TTL = 2.0  # seconds one listing of pending multipart uploads serves claims


def compressed_suffixes(key_suffix: str = "") -> tuple[str, ...]:
    """The endings a final key of an object with this object-key-suffix may have in the bucket:
    with or without the suffix (s3() before 4.8.2 has none), with or without .gz/.zst."""
    ends = ("", ".gz", ".zst")
    return ends + tuple(key_suffix + e for e in ends) if key_suffix else ends


# ---------------------------------------------------------------------------
# results handed from workers to the coordinator


@dataclass
class Claimed:
    object_id: int
    idx: int
    final_key: str
    mode: str


@dataclass
class Started:
    object_id: int
    upload_id: str


@dataclass
class PartDone:
    object_id: int
    part: int
    etag: str
    md5: str


@dataclass
class Done:
    object_id: int
    etag: str
    how: str


@dataclass
class KeyTaken:
    """The claimed key holds someone else's object: claim the next free index."""
    object_id: int
    final_key: str


@dataclass
class UploadGone:
    """The multipart upload no longer exists and the object is not in the bucket: start again."""
    object_id: int


@dataclass
class PartsMismatch:
    object_id: int
    parts: list[int]  # part numbers to upload again


# ---------------------------------------------------------------------------
# S3 work (runs in worker threads; never touches the journal)


class Work:
    def __init__(self, cfg: Config, s3: S3, chunk_dir: Path, journal_id: str):
        self.cfg = cfg
        self.s3 = s3
        self.chunk_dir = chunk_dir
        self.form = Form.of_config(cfg)  # for objects journaled without a form of their own
        self.journal_id = journal_id
        self.prefix = keys.static_prefix(cfg.object_key)
        self._pending: tuple[float, set[str]] = (-PENDING_TTL - 1.0, set())
        self._pending_lock = threading.Lock()

    def metadata(self, obj: ObjectRow) -> dict[str, str]:
        # the configured metadata cannot use spoolup's names (config refuses "spoolup-*")
        return {**dict(self.form_of(obj).metadata), META_KEY: f"{self.journal_id}/{obj.id}"}

    def form_of(self, obj: ObjectRow) -> Form:
        """The form the object was started with (its options, journaled by ingest)."""
        return forms.parse(obj.form, self.form)

    def codec_of(self, obj: ObjectRow) -> Codec:
        """The codec the object was started with (its chunk files' names and contents)."""
        return forms.parse(obj.form, self.form).codec

    def is_ours(self, head: dict[str, Any] | None, object_id: int, expected_etag: str | None) -> bool:
        if head is None:
            return False
        if head["metadata"].get(META_KEY) == f"{self.journal_id}/{object_id}":
            return True
        return same_etag(head["etag"], expected_etag)

    def pending_upload_keys(self) -> set[str]:
        """Keys with a multipart upload in progress under the object-key's static prefix.
        One ListMultipartUploads serves every claim for PENDING_TTL seconds (the per-key
        listing s3() does would double the requests per object when there are many keys)."""
        with self._pending_lock:
            stamp, found = self._pending
            if time.monotonic() - stamp > PENDING_TTL:
                found = {k for k, _ in self.s3.list_uploads(self.prefix)}
                self._pending = (time.monotonic(), found)
            return found

    def taken_keys(self, key: str, ts: str) -> set[str]:
        prefix = keys.key_prefix(key, ts)
        if not prefix.startswith(self.prefix):  # an object of an earlier object-key
            return self.s3.list_keys(prefix) | {k for k, _ in self.s3.list_uploads(prefix)}
        return self.s3.list_keys(prefix) | {k for k in self.pending_upload_keys() if k.startswith(prefix)}

    def free_indexes(self, obj: ObjectRow, start: int, in_use: set[int], taken: set[str]):
        """Candidate indexes from `start` on, skipping those spoolup's journal uses and
        those the bucket holds (objects or pending uploads, with or without a suffix)."""
        idx = start
        while True:
            if idx not in in_use and not any(keys.final_key(obj.key, obj.ts, idx, sfx) in taken
                                             for sfx in compressed_suffixes(obj.key_suffix)):
                yield idx
            idx += 1

    def claim(self, obj: ObjectRow, start: int, in_use: set[int], mode: str) -> Claimed:
        idx = next(self.free_indexes(obj, start, in_use, self.taken_keys(obj.key, obj.ts)))
        suffix = obj.key_suffix + forms.parse(obj.form, self.form).compression_suffix
        return Claimed(obj.id, idx, keys.final_key(obj.key, obj.ts, idx, suffix), mode)

    def start(self, obj: ObjectRow, part_size: int | None = None) -> Started | Done | KeyTaken:
        key = obj.final_key
        if obj.mode == "single":
            return self.put(obj, part_size)
        # uploads at exactly this key can only be ours (the claim saw none): a Create whose
        # reply was lost, or a crash before its id was journaled.  Abort them first.
        for k, upload_id in self.s3.list_uploads(key):
            if k == key:
                self.s3.abort(k, upload_id)
        existing = self.s3.head(key)
        if existing is not None and not self.is_ours(existing, obj.id, None):
            return KeyTaken(obj.id, key)
        upload_id = self.s3.create_multipart(key, self.metadata(obj), self.form_of(obj).object_args())
        crash.point("after-create-multipart")
        return Started(obj.id, upload_id)

    def put(self, obj: ObjectRow, part_size: int | None = None) -> Done | KeyTaken:
        key = obj.final_key
        body = FileBody.of(part_file(self.chunk_dir, obj.id, 1, self.codec_of(obj)))
        if part_size is not None and body.size != part_size:
            raise S3Error("LocalChunkDamaged", f"chunk file {body.path} has {body.size} bytes, journal says "
                          f"{part_size}; run `spoolup recover`", op="PutObject", key=key)
        if not self.s3.conditional:  # no If-None-Match on this store: look before writing
            existing = self.s3.head(key)
            if existing is not None:
                if self.is_ours(existing, obj.id, f'"{body.md5_hex}"'):
                    return Done(obj.id, existing["etag"], "already in the bucket")
                return KeyTaken(obj.id, key)
        try:
            etag = self.s3.put(key, body, self.metadata(obj), self.form_of(obj).object_args())
        except PreconditionFailed:
            existing = self.s3.head(key)
            if self.is_ours(existing, obj.id, f'"{body.md5_hex}"'):
                return Done(obj.id, existing["etag"], "already in the bucket")
            return KeyTaken(obj.id, key)
        metrics.uploaded(0, body.size)
        crash.point("after-put-object")
        return Done(obj.id, etag, "put")

    def abort_others(self, key: str, upload_id: str) -> None:
        """Abort the other uploads at a key this object completed.  They can only be
        spoolup's own (the claim saw none there): a CreateMultipartUpload whose reply was
        lost (a timeout, a reset) and which the client then retried.  Best effort: the
        recovery at the next start aborts any left."""
        try:
            for k, other in self.s3.list_uploads(key):
                if k == key and other != upload_id:
                    self.s3.abort(k, other)
        except S3Error:
            pass

    def part(self, obj: ObjectRow, chunk: ChunkRow, attempts: int) -> PartDone | UploadGone:
        body = FileBody.of(part_file(self.chunk_dir, obj.id, chunk.part, self.codec_of(obj)), md5=self.s3.part_md5)
        if chunk.part_size is not None and body.size != chunk.part_size:
            raise S3Error("LocalChunkDamaged", f"chunk file {body.path} has {body.size} bytes, journal says "
                          f"{chunk.part_size}; run `spoolup recover`", op="UploadPart", key=obj.final_key)
        try:
            etag = self.s3.upload_part(obj.final_key, obj.upload_id, chunk.part, body)
        except NoSuchUpload:
            return UploadGone(obj.id)
        except S3Error:
            if attempts >= CHECK_UPLOAD_AFTER:
                try:
                    self.s3.list_parts(obj.final_key, obj.upload_id)
                except NoSuchUpload:
                    return UploadGone(obj.id)
            raise
        crash.point("after-upload-part")
        metrics.uploaded(1, body.size)
        return PartDone(obj.id, chunk.part, etag, body.md5_hex)

    def complete(self, obj: ObjectRow, parts: list[ChunkRow]) -> Done | KeyTaken | UploadGone | PartsMismatch:
        key = obj.final_key
        listed = [(c.part, c.etag) for c in parts]
        expected = multipart_etag(e for _, e in listed)
        try:
            etag = self.s3.complete(key, obj.upload_id, listed)
        except (NoSuchUpload, PreconditionFailed) as e:
            # maybe our own Complete succeeded and its reply (or journal entry) was lost
            head = self.s3.head(key)
            if self.is_ours(head, obj.id, expected):
                self.abort_others(key, obj.upload_id)
                return Done(obj.id, head["etag"], "found completed in the bucket")
            if isinstance(e, NoSuchUpload):
                return UploadGone(obj.id) if head is None else KeyTaken(obj.id, key)
            self.s3.abort(key, obj.upload_id)
            return KeyTaken(obj.id, key)
        except InvalidPart:
            try:
                held = self.s3.list_parts(key, obj.upload_id)
            except NoSuchUpload:
                return UploadGone(obj.id)
            bad = [c.part for c in parts if not same_etag(held.get(c.part, ("", 0))[0], c.etag)]
            if bad:
                return PartsMismatch(obj.id, bad)
            raise
        crash.point("after-complete")
        self.abort_others(key, obj.upload_id)
        return Done(obj.id, etag or expected, "completed")


# ---------------------------------------------------------------------------
# the coordinator


class Uploader:
    def __init__(self, cfg: Config, journal: Journal, s3: S3, log, *, process: str = "upload"):
        self.cfg = cfg
        self.journal = journal
        self.log = log
        self.process = process
        self.work = Work(cfg, s3, cfg.chunk_dir, journal.journal_id)
        self.pool = ThreadPoolExecutor(max_workers=cfg.upload_threads, thread_name_prefix="upload")
        self.inflight: dict[tuple, Future] = {}
        self.failures: dict[tuple, tuple[int, float]] = {}  # task -> (attempts, not before)
        self.vanished: dict[int, int] = {}  # object id -> uploads lost in a row (NoSuchUpload)
        self.wake = threading.Event()
        self.stats = {"parts": 0, "objects": 0, "bytes": 0, "errors": 0, "retries": 0}
        self._last_prune = 0.0
        self._after_commit: list[Callable[[], None]] = []  # what harvest() runs once its transaction commits
        self.health = S3Health(journal, process)

    # -- scheduling --------------------------------------------------------------

    def _submit(self, task: tuple, fn: Callable, *args) -> None:
        if task in self.inflight:
            return
        attempts, not_before = self.failures.get(task, (0, 0.0))
        if time.monotonic() < not_before:
            return
        if len(self.inflight) >= self.cfg.upload_threads * 2:
            return
        if attempts:
            metrics.upload_retry()
        future = self.pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self.wake.set())
        self.inflight[task] = future

    def _room(self) -> int:
        return self.cfg.upload_threads * 2 - len(self.inflight)

    def _ready(self, task: tuple) -> bool:
        return task not in self.inflight and time.monotonic() >= self.failures.get(task, (0, 0.0))[1]

    def schedule(self) -> None:
        """Submit what is ready, finishing started objects first (complete, parts, start)
        and claiming new ones last: objects complete early and steadily, and the S3 work
        per object is the same in any order."""
        j = self.journal
        for obj in j.completable():
            if self._room() <= 0:
                return
            if self._ready(("complete", obj.id)):
                self._submit(("complete", obj.id), self.work.complete, obj, j.chunks_of(obj.id))
        for obj, chunk in j.parts_to_upload(limit=self.cfg.upload_threads * 4):
            if self._room() <= 0:
                return
            task = ("part", obj.id, chunk.part)
            attempts = self.failures.get(task, (0, 0.0))[0]
            self._submit(task, self.work.part, obj, chunk, attempts)
        for obj in j.to_start():
            if self._room() <= 0:
                return
            if not self._ready(("start", obj.id)):
                continue
            chunks = j.chunks_of(obj.id) if obj.mode == "single" else []
            size = chunks[0].part_size if chunks else None  # a single PutObject checks its file's size
            self._submit(("start", obj.id), self.work.start, obj, size)
        for obj, prev, n_chunks in j.claimable_with_context(limit=self.cfg.upload_threads * 8):
            if self._room() <= 0:
                return
            task = ("claim", obj.id)
            if not self._ready(task):
                continue
            start = 0 if prev is None else prev + 1
            in_use = j.indexes_in_use(obj.key, obj.ts, obj.id)
            mode = "single" if obj.state == "closed" and n_chunks == 1 else "multipart"
            self._submit(task, self.work.claim, obj, start, in_use, mode)

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
            j.unclaim(result.object_id)
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
            with j.transaction():
                j.conn.executemany(
                    "UPDATE chunks SET state = 'sealed', etag = NULL WHERE object_id = ? AND part = ?",
                    [(result.object_id, p) for p in result.parts],
                )

    def _backoff(self, attempts: int) -> float:
        """Seconds to wait after the attempts-th failure in a row: exponential, jittered,
        at most retry-max-delay."""
        return min(self.cfg.retry_max_delay, 0.25 * 2 ** min(attempts, 20)) * random.uniform(0.5, 1.0)

    def _failed(self, task: tuple, e: S3Error, *, remote: bool = True) -> None:
        """A task failed: retry it later.  remote: S3 failed (not a local chunk file or a bug),
        which makes the upload process's S3 health "failing"."""
        attempts, _ = self.failures.get(task, (0, 0.0))
        attempts += 1
        delay = self._backoff(attempts)
        self.failures[task] = (attempts, time.monotonic() + delay)
        self.stats["errors"] += 1
        self.stats["retries"] += 1
        metrics.upload_error(e.code, e.op or task[0])
        self.log.warning("S3 call failed; will retry", task=task[0], object=task[1], code=e.code,
                         error=str(e), attempt=attempts, retry_in=round(delay, 2))
        with contextlib.suppress(Exception):
            self.journal.record_error(self.process, e.op or task[0], e.code, e.detail, e.key)
            if remote:
                self.health.failed(e.op or task[0], e.code, e.detail)

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


def remove_chunk_files(chunk_dir: Path, object_id: int, parts: int | None = None) -> None:
    """Delete a completed object's chunk files (every name a chunk of it can have).
    With `parts` known, by name; otherwise by scanning the directory (recovery only)."""
    names: list[str] = []
    if parts is None:
        prefix = f"{object_id:012d}-"
        with contextlib.suppress(FileNotFoundError):
            names = [e.name for e in os.scandir(chunk_dir) if e.name.startswith(prefix)]
    else:
        names = [chunk_name(object_id, p) + sfx for p in range(1, parts + 1) for sfx in ("", ".tmp", ".part")]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(chunk_dir / name)


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
    from spoolup import recover

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
        with journal.transaction():
            journal.heartbeat("upload", os.getpid(), started,
                              f"inflight={len(uploader.inflight)} parts={uploader.stats['parts']} "
                              f"objects={uploader.stats['objects']}")
            health.flush()
        return True

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
            report = recover.Report()
            recover.reconcile_remote(cfg, journal, s3, report, dry_run=False)
            for line in report.lines:
                log.info("recovery", action=line)
            health.ok()
            break
        except S3Error as e:
            attempt += 1
            delay = min(cfg.retry_max_delay, 0.5 * 2 ** min(attempt, 10))
            log.warning("cannot reconcile with S3 yet; retrying", error=str(e), retry_in=delay)
            metrics.upload_error(e.code, e.op or "recover")
            with contextlib.suppress(Exception):
                journal.record_error("upload", e.op or "recover", e.code, e.detail, e.key)
                health.failed(e.op or "recover", e.code, e.detail)
            until = time.monotonic() + delay
            while not stop.is_set() and (left := until - time.monotonic()) > 0:
                stop.wait(min(left, HEARTBEAT_EVERY))
                beat()

    full = 0
    while not stop.is_set():
        try:
            uploader.step(0.5)
            logs.handle_reopen()
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
    uploader.finish_inflight(cfg.shutdown_timeout)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
