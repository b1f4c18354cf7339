"""Applying the workers' results to the journal: each by compare-and-set against the state it
was computed for (its `Basis`), a stale one dropped and what it created cleaned up.

A mixin of coordinator.Uploader (its journal, work, ledger, failures, stats and log), kept apart
so that the coordinator's module stays about scheduling: this one says what a result changes.
"""

from __future__ import annotations

import time
from typing import Callable

from spoolup import crash, metrics
from spoolup.journal import ObjectRow, UploadMode
from spoolup.journal.cleanups import DISCARD, ORPHANS, UPLOAD
from spoolup.ledgerstage import clash_message
from spoolup.refusals import journal_broken
from spoolup.s3 import S3Error
from spoolup.work import (Basis, CleanedUp, Claimed, Done, Failure, KeyTaken, Kind, LedgerClash, PartDone, PartsMismatch,
                          Recorded, Result, Started, Task, UploadGone)

Action = Callable[[], None]  # what runs once harvest's transaction has committed


class Results:
    def _journal_result(self, task: Task, result: Result) -> list[Action] | None:
        """Journal one result in a savepoint of its own: what must run after the commit, or None
        when applying it failed unexpectedly -- that object is refused (retried slowly), the
        others go on; only an error of the journal itself is raised."""
        try:
            with self.journal.savepoint():
                return self._apply(result)
        except Exception as e:  # noqa: BLE001 - this object's, unless the journal itself broke
            if journal_broken(e):
                raise
            self._unexpected(task, e, "journaling its result")
            return None

    def _stale(self, result: Result, basis: Basis, why: str) -> list[Action]:
        """A result computed for a state of the object that no longer holds: dropped."""
        self.stats["stale"] += 1
        self.log.info("result no longer applies; dropped", result=type(result).__name__, object=basis.object_id,
                      key=basis.final_key, why=why)
        return []

    def _apply(self, result: Result) -> list[Action]:
        """Journal one result if its basis still holds; returns what must run after the commit."""
        j = self.journal
        match result:
            case Claimed(basis=b, idx=idx, final_key=key, mode=mode, prev_idx=prev):
                if not j.claim_if(b.object_id, b.claim_gen, prev, idx, key, mode):
                    return self._stale(result, b, "the object or the ones before it were claimed again")
                self.log.debug("index claimed", object=b.object_id, key=key, mode=mode)
                if mode == "multipart":  # (claim_if bumped its claim_gen by one)
                    self.fresh_claims.add((b.object_id, b.claim_gen + 1))
                return [lambda: crash.point("after-claim")]
            case Started(basis=b, upload_id=upload_id, how=how, checksum_algorithm=algo, aborted=aborted):
                self._lost_aborted(b, aborted)
                if not j.set_upload_id_if(b.object_id, b.claim_gen, upload_id, algo):
                    # our worker created (or adopted) that upload for a claim the object no longer has
                    self._stale(result, b, "the object gave up the key it was started at")
                    return [self._owed_abort(b.object_id, b.final_key, upload_id)]
                if how == "adopted":
                    self.log.info("adopted the empty upload a lost CreateMultipartUpload reply (or a crash before "
                                  "its id was journaled) left at the claimed key", object=b.object_id,
                                  key=b.final_key, upload=upload_id[:16])
                return []
            case PartDone(basis=b, part=part, etag=etag, md5=md5, checksum=checksum):
                if not j.record_part_if(b.object_id, b.claim_gen, b.upload_id, part, etag, md5, checksum):
                    return self._stale(result, b, "the part was sent to an upload the object no longer has")
                return []
            case Done(basis=b):
                return self._done(result, b)
            case KeyTaken(basis=b, aborted=aborted, orphans=orphans):
                self._lost_aborted(b, aborted)
                for upload_id in orphans:  # (Protocol.adopt)
                    self.log.info("aborted the empty upload a lost Create left at the claimed key, which someone "
                                  "else's object or upload holds", object=b.object_id, key=b.final_key,
                                  upload=upload_id[:16])
                return self._key_taken(result, b)
            case UploadGone(basis=b):
                return self._upload_gone(result, b)
            case PartsMismatch(basis=b, parts=bad):
                if not j.reseal_parts_if(b.object_id, b.claim_gen, b.upload_id, bad):
                    return self._stale(result, b, "the object no longer has that upload")
                self.log.warning("S3 does not hold some parts as journaled; uploading them again",
                                 object=b.object_id, parts=list(bad))
                return []
            case CleanedUp(what=what):
                self.log.info("cleaned up", what=what)
                return []
            case Recorded():
                return self._recorded(result)
            case LedgerClash(seq=seq, key=key, seen=seen):
                j.saw_ledger_seq(seen)
                message = clash_message(self.ledger.agent, key)
                self.log.error("ledger segment exists already: another spoolup uses this agent id", agent=self.ledger.agent,
                               key=key, seq=seq, highest=seen, advice=message)
                j.record_error(self.process, "ledger", "PreconditionFailed", message, key)
                return []
            case _:
                raise TypeError(f"unknown result {result!r}")

    def _lost_aborted(self, b: Basis, aborted: tuple[str, ...]) -> None:
        """Said once the start's result is harvested: uploads at the claimed key that a lost state
        of this journal started (Protocol.adopt) were aborted."""
        for upload_id in aborted:
            self.log.warning("aborted a multipart upload at the claimed key that a lost state of this journal "
                             "started: it holds this object's own chunks (its parts' ETags are the chunk files' "
                             "MD5), and no journal that knows its id is left (a restored backup or an old copy of "
                             "the state dir); the parts are sent again to an upload of the object's own",
                             object=b.object_id, key=b.final_key, upload=upload_id[:16])

    def _recorded(self, result: Recorded) -> list[Action]:
        """Journal, per object, that segment `seq` records it -- only if its claim still holds
        (else it is recorded again at its new claim: the record in the bucket is an intention
        that did not happen)."""
        j = self.journal
        j.saw_ledger_seq(result.seq)
        recorded = 0
        for basis, md5, checksum in result.entries:
            if j.recorded_if(basis.object_id, basis.claim_gen, basis.final_key, result.seq, checksum, md5):
                recorded += 1
                if self.failures.pop(Task(Kind.LEDGER, basis.object_id), None) is not None:
                    self._release(Task(Kind.LEDGER, basis.object_id))
            else:
                self._stale(result, basis, "the object's claim moved while its ledger record was written")
        for basis in result.started:  # its CreateMultipartUpload may be sent now
            if j.intended_if(basis.object_id, basis.claim_gen, basis.final_key, result.seq):
                recorded += 1
            else:
                self._stale(result, basis, "the object's claim moved while its start intent was written")
        for oid, error in result.damaged:  # its chunk file cannot be read: this object waits, quarantined
            task = Task(Kind.LEDGER, oid)
            if isinstance(error, S3Error):
                self._failed(task, error, remote=False)
            else:
                self._unexpected(task, error, "reading its chunk file")
        if not recorded:
            return []
        self.log.debug("ledger segment written", key=result.key, seq=result.seq, objects=recorded)
        return [lambda: crash.point("after-ledger-recorded")]

    def _done(self, result: Done, b: Basis) -> list[Action]:
        j = self.journal
        if not j.complete_if(b.object_id, b.claim_gen, result.etag):
            # the object is ours at a key the journal gave up meanwhile: it is written again at
            # its new claim, so this copy goes (only if its metadata says it is this object)
            self._stale(result, b, "the object gave up the key it was completed at")
            row = j.owe_cleanup(DISCARD, b.final_key, object_id=b.object_id, etag=result.etag)
            return [self._cleanup(*self._cleanup_call(DISCARD, b.final_key, b.object_id, row, etag=result.etag))]
        self.vanished.pop(b.object_id, None)
        self.stats["objects"] += 1
        obj = j.object(b.object_id)
        oid = b.object_id
        parts = j.last_part(oid)
        # seconds: from its close (it was complete on the spoolup side) to complete in the bucket
        self.log.info("object completed", key=obj.final_key, bytes=obj.size, parts=parts,
                      seconds=round(time.time() - (obj.closed_at or obj.created), 3), records=obj.records,
                      how=result.how, close_reason=obj.close_reason)
        # counted once journaled: a scrape never sees it uploaded and still pending in the journal
        compressed = self.work.codec_of(obj).compressed
        return [metrics.object_uploaded, lambda: crash.point("after-object-done"),
                lambda: self.removals.append((oid, parts, compressed))]

    def _key_taken(self, result: KeyTaken, b: Basis) -> list[Action]:
        j = self.journal
        later = j.unclaim_if(b.object_id, b.claim_gen)
        if later is None:
            return self._stale(result, b, "the object no longer has that claim")
        self.log.warning("object key already taken by someone else; using the next free index",
                         key=b.final_key, object=b.object_id)
        j.record_error(self.process, "claim", "KeyTaken", f"{b.final_key} exists and is not spoolup's: "
                       "moved to the next free index", b.final_key)
        # later objects of the key claim again after this one (record order); the uploads they
        # had are this journal's own, unused now: aborted (retried until S3 says so).  Each is
        # owed in this very transaction (the journal's cleanups), so a crash right after its
        # commit forgets none of them: the next upload process carries them out
        return [lambda: crash.point("after-unclaim")] \
            + [self._owed_abort(o.id, o.final_key, o.upload_id) for o in later if o.upload_id] \
            + [a for o in later if (a := self._gave_up(o)) is not None]

    def _owed_abort(self, object_id: int, key: str, upload_id: str) -> Action:
        """An upload this journal created and no longer uses: owed (journaled in the current
        transaction), aborted once it commits."""
        row = self.journal.owe_cleanup(UPLOAD, key, upload_id=upload_id, object_id=object_id)
        return self._cleanup(*self._cleanup_call(UPLOAD, key, object_id, row, upload_id=upload_id))

    def _gave_up(self, obj: ObjectRow) -> Action | None:
        """A later object gave up its claim `obj` with no upload id journaled: unless this process
        journaled that claim and never started it (fresh_claims), a Create may have been sent for
        it, and its orphan, which the start would have adopted, is at the key -- known as ours by
        nothing once the claim is gone (every later start skips its index as someone else's: the
        state-loss torture's "upload left behind").  So the empty uploads there are aborted (a
        tracked cleanup, owed in the journal from this transaction on); after the object's START
        still in flight, if any, is harvested."""
        claim = (obj.id, obj.claim_gen)
        if obj.upload_id or obj.mode != UploadMode.MULTIPART or not obj.final_key or claim in self.fresh_claims:
            self.fresh_claims.discard(claim)
            return None
        row = self.journal.owe_cleanup(ORPHANS, obj.final_key, object_id=obj.id)
        if Task(Kind.START, obj.id) in self.inflight:
            self.orphans_after_start[obj.id] = (obj.final_key, row)
            return None
        return self._abort_orphans(obj.id, obj.final_key, row)

    def _abort_orphans(self, object_id: int, key: str, row: int) -> Action:
        """The orphans at `key` (and uploads holding the object's own chunks: Protocol.abort_orphans)."""
        return self._cleanup(*self._cleanup_call(ORPHANS, key, object_id, row))

    def _cleanup_call(self, kind: str, key: str, object_id: int, row: int, *, upload_id: str | None = None,
                      etag: str | None = None) -> tuple:
        """(task, function, *arguments) of the call that carries out a cleanup the journal owes
        (`row`: its id in the cleanups table): the one mapping of a cleanup's kind to its call,
        for the cleanups owed as results are journaled and for those a new process resumes."""
        if kind == UPLOAD:
            return Task(Kind.ABORT, object_id, upload_id=upload_id, cleanup=row), self.work.abort_unused, key, upload_id
        if kind == ORPHANS:
            j = self.journal
            return (Task(Kind.ABORT, object_id, key=key, cleanup=row), self.work.abort_orphans, key,
                    j.object(object_id), j.chunks_of(object_id))
        if kind == DISCARD:
            return Task(Kind.DISCARD, object_id, cleanup=row), self.work.discard, key, object_id, etag
        raise ValueError(f"unknown cleanup kind {kind!r}")

    def _upload_gone(self, result: UploadGone, b: Basis) -> list[Action]:
        j = self.journal
        if not j.reset_upload_if(b.object_id, b.claim_gen, b.upload_id):
            return self._stale(result, b, "the object no longer has that upload")
        # the next CreateMultipartUpload waits, with a delay growing while the uploads keep
        # vanishing: a store that answers NoSuchUpload to everything must not be hammered
        # with Create/UploadPart/Abort rounds
        n = self.vanished[b.object_id] = self.vanished.get(b.object_id, 0) + 1
        delay = self._backoff(n)
        self.failures[Task(Kind.START, b.object_id)] = Failure(n, time.monotonic() + delay)
        self.log.warning("multipart upload vanished; starting it again from the local chunks",
                         object=b.object_id, retry_in=round(delay, 2))
        j.record_error(self.process, "upload", "NoSuchUpload", "multipart upload vanished; re-uploading "
                       "every part from local chunks", b.final_key)
        return []
