"""The upload coordinator: schedules the object protocol's calls on a worker pool and journals
their results, each only if the object is still in the state it was computed for.

One thread (the upload process's main thread) owns the journal; a bounded pool of
`upload-threads` workers does the S3 calls of the object protocol (spoolup/protocol.py:
claim, start, part, complete) and returns typed results (spoolup/work.py), which the
coordinator journals with a compare-and-set: a result whose basis no longer holds (a KeyTaken
moved the object, its upload vanished) is dropped, and what its call created that is
provably spoolup's own (an upload our worker just created) is cleaned up.

The scheduler looks past every task that is in flight or waiting out its backoff, takes
parts round-robin across objects, and gives an object whose calls keep failing one call in
flight at a time: one failing object never delays the others.  An object completes only
after the earlier objects of its key (and timestamp), so index order is record order.
Failures are retried with exponential backoff; an error S3 gives for the request itself
(EntityTooLarge, AccessDenied, ...) or any unexpected exception while working on one object
makes it a refused object ("quarantined" in status and the logs): reported, retried only
slowly, and the rest goes on.  Only a
journal that cannot be written stops the process.  Chunk files are deleted only once their
object is done.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol as Interface

from spoolup import crash, flow, metrics
from spoolup.chunks import remove_chunk_files
from spoolup.config import Config
from spoolup.health import S3Health
from spoolup.journal import Journal, ObjectRow, ObjectState, UploadMode
from spoolup.journal.cleanups import KINDS, UPLOAD
from spoolup.protocol import Protocol
from spoolup.s3 import S3, S3Error
from spoolup.ledgerstage import MAX_RECORDS, LedgerStage
from spoolup.refusals import Refusals
from spoolup.results import Action, Results
from spoolup.work import Failure, KeyTaken, Kind, PartDone, Task

PRUNE_EVERY = 3600.0
PRUNE_AFTER = 7 * 86400.0
GATHER_MAX = 0.02  # seconds a turn may wait for more results while the workers have calls queued
REMOVALS_BACKLOG = 1000  # completed objects whose chunk files wait for the loop's idle time, at most
CLAIMS_PER_TURN = 1000  # claims the journal's thread makes in one turn (one ledger segment's worth)
# claimed objects not done at most (claims are not made further ahead of the uploads): the claims
# that need no request would otherwise run ahead by the whole backlog -- a drain of 50,000 new
# keys claimed them all long before their PutObjects, and every per-turn query of claimed
# objects read them all (bench/scale.py).  Two segments' worth keeps a segment gathering while
# the previous one's objects upload.
CLAIMS_AHEAD = 2 * MAX_RECORDS



class Executor(Interface):
    """What the coordinator needs of its worker pool (a ThreadPoolExecutor; tests inject one
    that holds each task until the test releases it, to choose the order of results)."""

    def submit(self, fn: Callable, /, *args) -> Future: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


class Uploader(Refusals, Results):
    def __init__(self, cfg: Config, journal: Journal, s3: S3, log, *, process: str = "upload",
                 executor: Executor | None = None):
        self.cfg = cfg
        self.journal = journal
        self.log = log
        self.process = process
        self.work = Protocol(cfg, s3, cfg.chunk_dir, journal.journal_id)
        self.ledger = LedgerStage(cfg, journal, self.work, log)  # records before PutObject/Complete
        # its threads' S3 requests take a slot of the adaptive concurrency (spoolup/flow.py)
        self.pool: Executor = executor or ThreadPoolExecutor(max_workers=cfg.upload_threads,
                                                             thread_name_prefix="upload",
                                                             initializer=flow.worker_thread)
        self.inflight: dict[Task, Future] = {}
        self.failures: dict[Task, Failure] = {}
        self.cleanups: dict[Task, tuple[Callable, tuple]] = {}  # ABORT/DISCARD tasks not yet done
        self.vanished: dict[int, int] = {}  # object id -> uploads lost in a row (NoSuchUpload)
        # (object id, claim_gen) of claims this process journaled and has not started yet: no
        # Create was sent for them, so any upload at their key is someone else's.  For every
        # other claim without an upload id (journaled before a restart, or whose start failed) a
        # Create may have been sent: an empty upload at the key is its orphan, adopted.
        self.fresh_claims: set[tuple[int, int]] = set()
        # the object each START task in flight was submitted for (its claim then): see _unsettled
        self.starting: dict[Task, ObjectRow] = {}
        # object id -> (a key it gave up while its START was in flight, its cleanup's row): cleaned
        # up after it (_gave_up)
        self.orphans_after_start: dict[int, tuple[str, int]] = {}
        # the ledger segment being gathered waits for the claims of the small objects up to this
        # id (None: not waiting): see _claims_coming
        self.wave: int | None = None
        self.wake = threading.Event()
        self.removals: deque[tuple[int, int, bool]] = deque()  # (object id, parts, compressed): chunk files to delete
        self.stats = {"parts": 0, "objects": 0, "bytes": 0, "errors": 0, "retries": 0, "stale": 0}
        self._last_prune = 0.0
        self.health = S3Health(journal, process)
        # The refused objects: S3 refuses their request, or working on them failed unexpectedly.
        # (Not the spool entries of spoolup/quarantine.py.  The public names -- status's
        # quarantined_objects, the metric, the log messages -- say "quarantined" for both.)
        self.refused: dict[int, dict] = {}  # object id -> why it is refused (journal meta, for status)
        self._resume_cleanups()
        try:
            self._save_refused()  # a new upload process starts with none: each is found again
        except sqlite3.OperationalError as e:  # (a full state dir: the next save writes the whole list)
            log.warning("cannot journal this; going on", what="the refused objects", error=str(e))

    # -- scheduling --------------------------------------------------------------

    def _submit(self, task: Task, fn: Callable, *args) -> None:
        if task in self.inflight:
            return
        failure = self.failures.get(task)
        if failure is not None and time.monotonic() < failure.not_before:
            return
        if self._room() <= 0:
            return
        if failure is not None:
            metrics.upload_retry()
        future = self.pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self.wake.set())
        self.inflight[task] = future

    def _room(self) -> int:
        return self.cfg.upload_threads * 2 - len(self.inflight)

    def _waiting(self, kind: Kind) -> set[Task]:
        """Tasks of a kind that cannot be submitted now: in flight, or waiting out a backoff.
        The journal's queries leave them out, so they never fill a window for the others."""
        now = time.monotonic()
        busy = {t for t in self.inflight if t.kind is kind}
        return busy | {t for t, f in self.failures.items() if t.kind is kind and now < f.not_before}

    def _waiting_ids(self, kind: Kind) -> set[int]:
        return {t.object_id for t in self._waiting(kind)}

    def schedule(self) -> None:
        """Submit what is ready, finishing started objects first (cleanups, complete, parts,
        start) and claiming new ones last: objects complete early and steadily, and the S3
        work per object is the same in any order.  Claims that need no request are made first,
        here, with no worker in between (_claim_here): their ledger segment goes out this turn."""
        j = self.journal
        for task, (fn, args) in list(self.cleanups.items()):
            self._submit(task, fn, *args)
        to_claim = self._claim_here()
        self._schedule_ledger()
        if self._room() > 0:
            for obj in j.completable(limit=self._room(), skip=self._waiting_ids(Kind.COMPLETE)):
                if self._room() <= 0:
                    return
                self._submit(Task(Kind.COMPLETE, obj.id), self.work.complete, obj, j.chunks_of(obj.id))
        # an object whose calls keep failing gets one call in flight at a time: the others keep
        # the rest of the pool (with few threads its retries would otherwise fill every slot)
        failing = {t.object_id for t, f in self.failures.items() if f.attempts}
        busy = {t.object_id for t in self.inflight}
        skip = {(t.object_id, t.part) for t in self._waiting(Kind.PART)}
        if self._room() <= 0:  # (no query of the journal for a window that is full)
            return
        for obj, chunk in j.parts_to_upload(limit=self.cfg.upload_threads * 4, skip=skip):
            if self._room() <= 0:
                return
            if obj.id in failing and obj.id in busy:
                continue
            busy.add(obj.id)
            task = Task(Kind.PART, obj.id, chunk.part)
            failure = self.failures.get(task)
            self._submit(task, self.work.part, obj, chunk, failure.attempts if failure else 0)
        if self._room() <= 0:  # (no query of the journal for a window that is full)
            return
        # (every row the query gives can be submitted: those in flight or backing off are skipped)
        for obj in j.to_start(limit=self._room(), skip=self._waiting_ids(Kind.START)):
            if self._room() <= 0:
                return
            claim = (obj.id, obj.claim_gen)
            adopt = claim not in self.fresh_claims
            single = obj.mode == UploadMode.SINGLE
            # (a multipart object that may adopt: its chunks tell its own parts in an upload at the key)
            chunks = j.chunks_of(obj.id) if single or adopt else []
            size = chunks[0].part_size if single and chunks else None  # a single PutObject checks its file's size
            md5 = chunks[0].md5 if single and chunks else None  # (its ledger record's ETag: not hashed again)
            task = Task(Kind.START, obj.id)
            self._submit(task, self.work.start, obj, size, adopt, md5, [] if single else chunks)
            if task in self.inflight:
                self.fresh_claims.discard(claim)
                self.starting.setdefault(task, obj)
        for obj, prev, in_use, mode in to_claim:  # the claims that need a listing: a worker's
            if self._room() <= 0:
                return
            self._submit(Task(Kind.CLAIM, obj.id), self.work.claim, obj, prev, in_use, mode)

    def _claim_here(self) -> list[tuple[ObjectRow, int | None, set[int], str]]:
        """Claim, in this thread and one transaction, every claimable object whose index the
        caches tell (spoolup/claims.py: no request; the write at the key is the check that
        counts), up to CLAIMS_PER_TURN: a worker's claim costs a turn and a commit of its own per
        object, and the small objects of a burst are claimed before their ledger segment is
        written (rule 2).  A claimed object's next one of its key is claimable at once, so the
        query is made again while claims land.  Returns the claims that need a listing (a
        window not listed yet, the pending uploads' listing expired, an earlier object-key):
        made on a worker as before.  The claims are journaled with the compare-and-set of a
        worker's result (Journal.claim_if), so nothing about the claim's rules changes."""
        j = self.journal
        out: list[tuple[ObjectRow, int | None, set[int], str]] = []
        seen: set[int] = set()
        after: list[Action] = []
        unsettled: set[tuple[str, str]] | None = None
        claimed = 0
        allowed = min(CLAIMS_PER_TURN, CLAIMS_AHEAD - j.claimed_in_flight(CLAIMS_AHEAD))
        if allowed <= 0:  # (the uploads are behind: the claims wait for them)
            return out
        rows = j.claimable_with_context(limit=min(allowed, 256), skip=self._waiting_ids(Kind.CLAIM))
        if not rows:  # (no write transaction for nothing: it would take the journal's lock)
            return out
        with j.transaction():
            while True:
                landed = 0
                for obj, prev, n_chunks in rows:
                    seen.add(obj.id)
                    if unsettled is None:  # (only once there is something to claim)
                        unsettled = self._unsettled()
                    if (obj.key, obj.ts) in unsettled:
                        continue
                    in_use = j.indexes_in_use(obj.key, obj.ts, obj.id)
                    mode = UploadMode.SINGLE if obj.state == ObjectState.CLOSED and n_chunks == 1 \
                        else UploadMode.MULTIPART
                    task = Task(Kind.CLAIM, obj.id)
                    try:
                        result = self.work.claim(obj, prev, in_use, mode, cached=True)
                    except Exception as e:  # noqa: BLE001 - a bug: this object only, as on a worker
                        self._unexpected(task, e, "in its claim")
                        continue
                    if result is None:
                        out.append((obj, prev, in_use, mode))
                        continue
                    if self.failures.pop(task, None) is not None:
                        self._retry_succeeded(task)
                    actions = self._journal_result(task, result)
                    if actions is None:
                        continue
                    after += actions
                    landed += 1
                claimed += landed
                if not landed or claimed + len(out) >= allowed:
                    break
                rows = j.claimable_with_context(limit=min(allowed - claimed - len(out), 256),
                                                skip=self._waiting_ids(Kind.CLAIM) | seen)
        for action in after:
            action()
        return out

    def _schedule_ledger(self) -> None:
        """One ledger segment in flight at a time, recording every object ready to finish but for
        its record (rule 1: record before visible; rule 2: one segment per burst).  Its number is
        journaled before the PUT: a crash or a failed attempt leaves a gap, never a reuse."""
        task = Task(Kind.LEDGER, 0)
        failure = self.failures.get(task)
        if task in self.inflight or self._room() <= 0 or (failure is not None and time.monotonic() < failure.not_before):
            return
        objs = self.journal.to_record(limit=MAX_RECORDS, skip=self._waiting_ids(Kind.LEDGER))
        # and the start intents of multipart objects waiting to be started (same segment)
        starts = self.journal.to_intend(limit=MAX_RECORDS - len(objs), skip=self._waiting_ids(Kind.LEDGER)) \
            if len(objs) < MAX_RECORDS else []
        if not objs and not starts:
            self.wave = None
            return
        # a wave of small objects waits for the claims still coming; a start intent never waits
        # (its Create, and the parts after it, take real time)
        if not starts and len(objs) < MAX_RECORDS and self._claims_coming():
            return
        self.wave = None
        drafts = (self.ledger.drafts(objs) if objs else []) + self.ledger.intents(starts)
        if drafts:
            self._submit(task, self.ledger.write, self.journal.next_ledger_seq(), drafts)

    def _claims_coming(self) -> bool:
        """Whether the segment waits for the rest of its wave (rule 2: one segment per burst):
        small objects whose claims are in flight or can be sent now (the first unclaimed object
        of each key: the ones after it follow, one turn each) are recordable the moment their
        claim is journaled.  A segment written as soon as the first claims of a burst land
        would record a few objects each, and a key's run of objects one per segment: a PUT per
        object or two, where issue 20 allows 1.1 requests per small object, segments included.

        The wave is bounded when the waiting starts (self.wave: the highest id of a small object
        then waiting for its claim): objects arriving meanwhile are the next segment's, so a
        steady stream of new objects never holds a segment back.  A claim backing off (a
        failing server, a refused object) is not waited for.  Nothing coming (a lone object,
        the end of a wave) writes the segment in the turn its objects became ready."""
        if self.journal.claimed_in_flight(CLAIMS_AHEAD) >= CLAIMS_AHEAD:
            return False  # (no claim is made before this segment's objects ship: _claim_here)
        chains = self.journal.single_claims_waiting(self.wave, first=MAX_RECORDS)
        if not chains:
            return False
        inflight = {t.object_id for t in self.inflight if t.kind is Kind.CLAIM}
        backing_off = self._waiting_ids(Kind.CLAIM) - inflight
        coming = [last for head, last in chains.items() if head not in backing_off]
        if not coming:
            return False
        if self.wave is None:
            self.wave = max(coming)
        return True

    def _unsettled(self) -> set[tuple[str, str]]:
        """The (key, ts) whose final keys may hold, for a moment, an upload or object of this
        journal's own that no claim owns: a start in flight for a claim its object has given up
        meanwhile (a KeyTaken of an earlier object unclaimed it: the upload it creates is aborted
        once its result is harvested), or a cleanup (ABORT/DISCARD) not yet done.  No object of
        such a (key, ts) claims until they are gone: a claim's listing (or a fresh claim's start)
        meanwhile takes our own upload for someone else's and skips its index, and once it is
        aborted the bucket holds nothing that explains the gap in the numbering (issue 18's
        torture: index 12 skipped for a later object's stale Create, then aborted).  A cleanup
        that S3 keeps failing holds no claim back (the index is skipped then, the upload still
        being in the bucket)."""
        j = self.journal
        out: set[tuple[str, str]] = set()
        for obj in self.starting.values():
            now = j.object(obj.id)
            if now is None or now.claim_gen != obj.claim_gen:
                out.add((obj.key, obj.ts))
        for task in self.cleanups:
            if task in self.failures:
                continue
            obj = j.object(task.object_id)
            if obj is not None:
                out.add((obj.key, obj.ts))
        return out

    def _resume_cleanups(self) -> None:
        """The cleanups the journal owes the bucket (a crash, or the bring-forward at start, left
        them): tasks like any other cleanup, submitted by the first schedule -- before any claim
        of their (key, ts) (_unsettled) -- and forgotten only once S3 confirms each."""
        for c in self.journal.cleanups_owed():
            if c.kind not in KINDS or (c.kind == UPLOAD and not c.upload_id):
                continue  # (nothing this journal writes: a damaged row is left, not a crash of every start)
            task, fn, *args = self._cleanup_call(c.kind, c.key, c.object_id or 0, c.id, upload_id=c.upload_id,
                                                 etag=c.etag)
            self.cleanups[task] = (fn, tuple(args))

    def _cleanup(self, task: Task, fn: Callable, *args) -> Action:
        """A cleanup call (of something spoolup's own), submitted once the round is committed."""
        def submit() -> None:
            self.cleanups[task] = (fn, args)
            self._submit(task, fn, *args)
        return submit

    # -- harvesting ----------------------------------------------------------------

    def harvest(self, defer_removals: bool = False) -> int:
        """Journal the results of finished tasks, all in one transaction; returns how many
        finished.  What must follow the commit (crash points of the tests, deleting the
        chunk files of completed objects, cleanups) runs after it -- the deletions, with
        defer_removals, only at remove_done() (the loop's turn submits the next calls first).
        A result that cannot be applied (a bug, an odd value) refuses its object, not the round."""
        finished = [(t, f) for t, f in self.inflight.items() if f.done()]
        if not finished:
            if not defer_removals:
                self.remove_done()
            return 0
        after: list[Action] = []
        succeeded = False
        parts = 0
        with self.journal.transaction():
            for task, future in finished:
                del self.inflight[task]
                self.starting.pop(task, None)
                if task.kind is Kind.START and task.object_id in self.orphans_after_start:  # (its Create landed)
                    after.append(self._abort_orphans(task.object_id, *self.orphans_after_start.pop(task.object_id)))
                try:
                    result = future.result()
                except S3Error as e:
                    self._failed(task, e, remote=not e.code.startswith("Local"))
                    continue
                except Exception as e:  # noqa: BLE001 - a bug or a local I/O error: this object only
                    self._unexpected(task, e, "in its S3 call")
                    continue
                succeeded = True
                if task.kind in (Kind.ABORT, Kind.DISCARD):
                    self.cleanups.pop(task, None)
                    if task.cleanup:  # S3 confirmed it: no longer owed
                        self.journal.cleanup_done(task.cleanup)
                previous = self.failures.pop(task, None)
                if previous is not None and isinstance(result, KeyTaken):
                    # the key turned out taken after this call failed (a lost reply, a server
                    # failing): not a success that resets the backoff -- the object's next claim
                    # waits as the next attempt would have, so a walk from index to index under a
                    # failing server slows down like any retry
                    n = previous.attempts + 1
                    self.failures[Task(Kind.CLAIM, task.object_id)] = Failure(n, time.monotonic() + self._backoff(n))
                elif previous is not None:
                    self._retry_succeeded(task)
                actions = self._journal_result(task, result)
                if actions is None:
                    continue
                after += actions
                parts += isinstance(result, PartDone)
            if succeeded:
                self.health.ok()
        if parts:
            self.stats["parts"] += parts
            crash.point("after-record-part")
        for action in after:
            action()
        if not defer_removals:
            self.remove_done()
        return len(finished)

    def remove_done(self, until: threading.Event | None = None) -> None:
        """Delete the chunk files of the objects completed (and committed) so far.  In this
        thread, after the commit: a chunk file is deleted only by the thread that journaled its
        object done (tests/test_durability.py checks it).  An unlink can wait for the
        filesystem's journal, behind the fsyncs of both processes (a millisecond or more each
        under load, longer than the rest of a small object's turn): the loop makes them in its
        idle time -- after submitting the turn's calls, and only until `until` is set (a result
        arrived: it is journaled first), unless REMOVALS_BACKLOG objects wait."""
        while self.removals:
            if until is not None and until.is_set() and len(self.removals) <= REMOVALS_BACKLOG:
                return
            oid, parts, compressed = self.removals.popleft()
            remove_chunk_files(self.cfg.chunk_dir, oid, parts, compressed)

    # -- running ---------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        self.harvest(defer_removals=True)
        self.schedule()
        self.remove_done(until=self.wake)
        self.wake.wait(timeout)
        self.wake.clear()
        self._gather()

    def _gather(self) -> None:
        """Before journaling what finished, let more results finish while the workers still have
        calls queued: a turn (its commit, an fsync, and the schedule's queries) per few results,
        not per result -- of a small object's journal work, the turn was most.  It harvests as
        soon as upload-threads/2 results wait, the workers' queue is empty (the next calls are
        due), or GATHER_MAX has passed; never while nothing finished (a wake from ingest or the
        probe is acted on at once)."""
        deadline = time.monotonic() + GATHER_MAX
        enough = max(1, self.cfg.upload_threads // 2)
        while True:
            done = sum(1 for f in self.inflight.values() if f.done())
            if not done or done >= enough or len(self.inflight) - done <= self.cfg.upload_threads:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wake.wait(left)
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
        self.remove_done()  # (what the loop's idle time left)

    def housekeeping(self) -> None:
        now = time.time()
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            pruned = self.journal.prune_done(now - PRUNE_AFTER)
            if pruned:
                self.log.info("forgot old completed objects", objects=pruned)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
