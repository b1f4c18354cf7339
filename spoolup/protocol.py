"""The S3 object protocol: the steps spoolup takes to turn an object of the journal into a
completed S3 object.

  claim      choose the object's final index: the first one >= the previous object's
             index + 1 that the bucket does not hold (objects or pending uploads, with or
             without a compression suffix), by listings cached per window of indexes
             (spoolup/claims.py): most claims make no request, and with If-None-Match
             honoured a single-part object costs one conditional PutObject;
  start      CreateMultipartUpload, its upload id journaled before any part is sent
             (invariant 4); an empty upload at the key once a Create may have been sent for
             the claim is that Create's orphan, adopted (aborted if someone else's object
             holds the key, and when its object gives the key up: abort_orphans), and one
             holding a part of the object's own chunk files (by content) a lost journal
             state's, aborted -- or, for
             an object that is one complete chunk, one PutObject;
  part       UploadPart from the chunk file, ETag journaled after (invariant 2);
  complete   CompleteMultipartUpload, journaled after (invariant 3);
  is_ours    is the object at a key the one this journal wrote?  (spoolup's metadata id
             and the content: the ETag computed from the journaled part ETags or the
             body's MD5, and the size);
  abort      only upload ids this journal created, never anyone else's.

Reconcile after a crash is spoolup/reconcile.py; what the server honours (If-None-Match)
is spoolup/capabilities.py, handed in as one immutable value (Protocol.caps).  Where S3
servers differ (docs/operations.md, "S3 implementations tested"):

* where If-None-Match: * is not honoured (or not known to be), a HEAD right before the
  write stands in; a server that answers 501 to it (conditional-writes = "auto") gets the
  write again without it, after that HEAD;
* a Complete that fails for any reason (RGW answers 500 for an aborted upload) is
  classified by outcome: ours in the bucket -> done; upload gone -> start again;
  someone else's object -> next index;
* "the upload does not exist" is NoSuchUpload on AWS and moto, NoSuchKey on RGW
  (S3.list_parts translates).

Every step runs in a worker thread and never touches the journal: it returns a result
(spoolup/work.py) carrying the basis it was computed for, which the coordinator journals
only if that basis still holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from spoolup import checksums, crash, flow, keys, metrics
from spoolup import form as forms
from spoolup.capabilities import HONOURED, Capabilities
from spoolup.claims import BucketIndexes, Uncached
from spoolup.chunks import Codec, part_file
from spoolup.config import Config
from spoolup.form import Form
from spoolup.journal import ChunkRow, ChunkState, ObjectRow, UploadMode
from spoolup.s3 import NOT_SENDABLE, S3, FileBody, InvalidPart, NoSuchUpload, NotImplementedByServer, PreconditionFailed, S3Error
from spoolup.s3 import multipart_etag, same_etag
from spoolup.work import Basis, CleanedUp, Claimed, Done, KeyTaken, PartDone, PartsMismatch, Started, UploadGone

META_KEY = "spoolup-object"  # x-amz-meta-spoolup-object: <journal id>/<object id>
CHECK_UPLOAD_AFTER = 3  # failed part attempts before asking S3 whether the upload still exists
PENDING_TTL = 2.0  # seconds one listing of pending multipart uploads serves claims

# S3 errors that are answers about the request itself: sending it again cannot succeed
# until something changes (the object, the configuration, the bucket's policy).
PERMANENT_CODES = frozenset({
    "EntityTooLarge", "EntityTooSmall", "InvalidArgument", "InvalidRequest", "KeyTooLongError",
    "MetadataTooLarge", "InvalidStorageClass", "InvalidObjectState", "AccessDenied", "InvalidDigest",
    "BadDigest", "MalformedXML", "LocalChunkDamaged", "InvalidTag", NOT_SENDABLE,
})


def compressed_suffixes(key_suffix: str = "") -> tuple[str, ...]:
    """The endings a final key of an object with this object-key-suffix may have in the bucket:
    with or without the suffix (s3() before 4.8.2 has none), with or without .gz/.zst."""
    ends = ("", ".gz", ".zst")
    return ends + tuple(key_suffix + e for e in ends) if key_suffix else ends


def _gated(run):
    """`run` on a thread whose S3 requests take a concurrency slot, as the worker's own do."""
    def gated() -> None:
        flow.worker_thread()
        run()
    return gated


def permanent(e: S3Error) -> bool:
    """An error that retrying the same request cannot fix (its object is refused and retried slowly, not hammered)."""
    return e.code in PERMANENT_CODES


# ---------------------------------------------------------------------------
# the steps (worker threads; never touch the journal)


class Protocol:
    def __init__(self, cfg: Config, s3: S3, chunk_dir: Path, journal_id: str, caps: Capabilities | None = None):
        self.cfg = cfg
        self.s3 = s3
        # what the server honours: one immutable value, replaced (never changed) by the thread
        # that owns the journal once the probe has found out; each step reads it once
        self.caps = caps or Capabilities.unknown(cfg)
        self.chunk_dir = chunk_dir
        self.form = Form.of_config(cfg)  # for objects journaled without a form of their own
        self.journal_id = journal_id
        self.prefix = keys.static_prefix(cfg.object_key)
        self._pending: tuple[float, set[str]] = (-PENDING_TTL - 1.0, set())
        self._pending_lock = threading.Lock()
        self.indexes = BucketIndexes(s3)  # the bucket's keys by windows of indexes (spoolup/claims.py)

    # -- is-ours ---------------------------------------------------------------

    def metadata(self, obj: ObjectRow) -> dict[str, str]:
        # the configured metadata cannot use spoolup's names (config refuses "spoolup-*")
        return {**dict(self.form_of(obj).metadata), META_KEY: f"{self.journal_id}/{obj.id}"}

    def form_of(self, obj: ObjectRow) -> Form:
        """The form the object was started with (its options, journaled by ingest)."""
        return forms.parse(obj.form, self.form)

    def codec_of(self, obj: ObjectRow) -> Codec:
        """The codec the object was started with (its chunk files' names and contents)."""
        return forms.parse(obj.form, self.form).codec

    def is_ours(self, head: dict[str, Any] | None, object_id: int, expected_etag: str | None,
                size: int | None = None) -> bool:
        """Is the object at a key (its HEAD) this journal's object `object_id`, with the content
        the journal says it has?  Its metadata id AND the expected ETag (single: the body's MD5;
        multipart: the ETag of the journaled parts) AND, where known, its size (issue 22 item 5):
        a journal that went back in time rebuilds an object under the same id from re-read spool
        bytes that can end at another record, and the id alone would take the bucket's other
        object for it ("found completed") while its records past that object's end are lost.
        Without an expected ETag nothing is provably ours."""
        if head is None or expected_etag is None:
            return False
        if head["metadata"].get(META_KEY) != f"{self.journal_id}/{object_id}":
            return False
        # (a HEAD's size of 0 is no size: spoolup never writes an empty object, and a proxy in
        # between may answer a HEAD with Content-Length: 0)
        if size is not None and head.get("size") and head["size"] != size:
            return False
        return same_etag(head["etag"], expected_etag)

    # -- claim -------------------------------------------------------------------

    def pending_upload_keys(self, cached: bool = False) -> set[str]:
        """Keys with a multipart upload in progress under the object-key's static prefix.
        One ListMultipartUploads serves every claim for PENDING_TTL seconds (the per-key
        listing s3() does would double the requests per object when there are many keys).
        cached: Uncached (spoolup/claims.py) instead of a listing."""
        with self._pending_lock:
            stamp, found = self._pending
            if time.monotonic() - stamp > PENDING_TTL:
                if cached:
                    raise Uncached("pending uploads")
                found = {k for k, _ in self.s3.list_uploads(self.prefix)}
                self._pending = (time.monotonic(), found)
            return found

    def seed_pending(self, found: set[str]) -> None:
        """A listing of the pending uploads under the static prefix made just now by someone else
        (the upload process's reconcile, right before its first claims): it serves the claims as
        pending_upload_keys's own would, for PENDING_TTL seconds -- the first claims need not wait
        a round trip for the same listing again."""
        with self._pending_lock:
            self._pending = (time.monotonic(), set(found))

    def _seen_pending(self, key: str) -> None:
        """A per-key listing found an upload at `key` that the cached listing may predate (it
        appeared after it: a foreign writer, or the orphans of a Create whose replies were lost).
        The claims the cache serves must see it too: else the next claim takes the key again,
        meets the upload again, and so on until the cache expires -- a claim/KeyTaken loop of two
        listings every few milliseconds."""
        with self._pending_lock:
            stamp, found = self._pending
            self._pending = (stamp, found | {key})

    def _forget_pending(self, key: str) -> None:
        """Our own upload at `key` is aborted: the claims the cached listing serves must not
        skip its index for it (a foreign upload there, if any, is found by the start's own listing)."""
        with self._pending_lock:
            stamp, found = self._pending
            self._pending = (stamp, found - {key})

    def taken_keys(self, key: str, ts: str) -> set[str]:
        """Every key under the (key, ts) prefix, objects and pending uploads: for an object of an
        earlier object-key (outside the static prefix the cached listings cover)."""
        prefix = keys.key_prefix(key, ts)
        return self.s3.list_keys(prefix) | {k for k, _ in self.s3.list_uploads(prefix)}

    def free_indexes(self, obj: ObjectRow, start: int, in_use: set[int], taken: set[str] | None = None,
                     cached: bool = False):
        """Candidate indexes from `start` on, skipping those spoolup's journal uses and
        those the bucket holds (objects or pending uploads, with or without a suffix):
        `taken` when given (a full listing), else the cached windows (spoolup/claims.py) and
        the cached listing of pending uploads (cached: Uncached where a listing is needed)."""
        variants = compressed_suffixes(obj.key_suffix)
        pending = self.pending_upload_keys(cached) if taken is None else taken
        idx = start
        while True:
            if idx not in in_use and not any(keys.final_key(obj.key, obj.ts, idx, sfx) in pending for sfx in variants) \
                    and (taken is not None or not self.indexes.held(obj.key, obj.ts, idx, variants, cached)):
                yield idx
            idx += 1

    def claim(self, obj: ObjectRow, prev_idx: int | None, in_use: set[int], mode: str,
              cached: bool = False) -> Claimed | None:
        """The object's index: no request at all once the windows it looks at are listed (the
        write at the key is the check that counts: spoolup/claims.py).  cached: only from what
        the caches hold, None if a listing is needed -- the journal's thread claims so, with no
        worker in between (spoolup/coordinator.py), and hands the others to a worker."""
        start = 0 if prev_idx is None else prev_idx + 1
        try:
            if keys.key_prefix(obj.key, obj.ts).startswith(self.prefix):
                idx = next(self.free_indexes(obj, start, in_use, cached=cached))
            elif cached:
                return None
            else:  # an object of an earlier object-key
                idx = next(self.free_indexes(obj, start, in_use, self.taken_keys(obj.key, obj.ts)))
        except Uncached:
            return None
        suffix = obj.key_suffix + forms.parse(obj.form, self.form).compression_suffix
        return Claimed(Basis.of(obj), idx, keys.final_key(obj.key, obj.ts, idx, suffix), mode, prev_idx)

    def _key_taken(self, obj: ObjectRow) -> KeyTaken:
        """The claimed key holds someone else's object or upload: remembered, and the window of
        its index listed again at the next claim (another writer is at work there)."""
        self.indexes.taken(keys.key_prefix(obj.key, obj.ts), obj.idx, obj.final_key)
        return KeyTaken(Basis.of(obj))

    # -- start -------------------------------------------------------------------

    def start(self, obj: ObjectRow, part_size: int | None = None, adopt: bool = False,
              md5: str | None = None, chunks: Sequence[ChunkRow] = ()) -> Started | Done | KeyTaken:
        """Start the object's upload.  An upload at the key that this journal does not know is
        someone else's (another agent, syslog-ng's s3()): the key is left to it and the object
        takes the next index -- unless `adopt`: a Create may have been sent for this claim
        already (by a process that crashed, or an attempt whose reply was lost, or a lost future
        of this journal), and an upload at the key holding no part is that Create's orphan,
        adopted (docs/operations.md, "Uploads a lost Create reply leaves"); one holding a part of
        this object's own `chunks` (by content) is a lost journal state's, aborted.  The
        coordinator says `adopt` for every attempt but the first one of a claim its own process
        journaled."""
        key = obj.final_key
        if obj.mode == UploadMode.SINGLE:
            return self.put(obj, part_size, md5)
        # the HEAD at the key is sent beside the listing of its uploads: one round trip for both
        # before the Create, not two (its answer is used only once the listing shows no upload)
        head = self._beside(self.s3.head, key)
        lost: tuple[str, ...] = ()
        if adopt:
            found, lost = self.adopt(obj, chunks, head)
            if found is not None:
                return found
        elif any(k == key for k, _ in self.s3.list_uploads(key)):
            self._seen_pending(key)
            return self._key_taken(obj)
        existing = head()
        if existing is not None and not self.is_ours(existing, obj.id, None):
            return replace(self._key_taken(obj), aborted=lost)
        # parts carry flexible checksums only where the server takes them (and of a composite kind)
        algo = self.caps.object_checksum
        algo = algo if algo in checksums.COMPOSITE else None
        upload_id, retried = self.s3.create_upload(key, self.metadata(obj), self.form_of(obj).object_args(), algo)
        crash.point("after-create-multipart")
        if retried:
            # botocore sent the Create again after a lost reply: the first one may have created an
            # upload too.  Keep one of them, abort the others (if this fails, the next attempt
            # lists them again and adopts one)
            found, more = self.adopt(obj, chunks)
            if found is not None:
                return replace(found, aborted=lost + found.aborted)
            return Started(Basis.of(obj), upload_id, checksum_algorithm=algo, aborted=lost + more)
        return Started(Basis.of(obj), upload_id, checksum_algorithm=algo, aborted=lost)

    def _beside(self, fn, *args):
        """Call fn(*args) on a thread of its own, beside what the calling worker does next;
        returns a function that waits for its result (or raises its exception).  A result no
        one waits for is dropped (the call was a read)."""
        done = threading.Event()
        box: list = []

        def run() -> None:
            try:
                box.append((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - handed to the waiter
                box.append((False, e))
            finally:
                done.set()

        threading.Thread(target=_gated(run), name="beside", daemon=True).start()

        def result():
            done.wait()
            ok, value = box[0]
            if not ok:
                raise value
            return value
        return result

    def adopt(self, obj: ObjectRow, chunks: Sequence[ChunkRow] = (), head=None
              ) -> tuple[Started | KeyTaken | None, tuple[str, ...]]:
        """The uploads at the object's claimed key, once a Create may have been sent for its claim
        (the claim's listing showed the key free): each holding no part is ours -- a part is sent
        only to an upload whose id is journaled -- and one is adopted, the others aborted.  One
        holding a part of this object's own (`chunks`: own_parts) is ours too, started by a state of
        this journal that is lost (a restored backup or an old copy of the state dir journaled the
        object's start intent, its lost future the upload id and parts): nothing that knows its id
        exists any more, so it is aborted (the object's parts are sent again to an upload of its
        own).  One holding only other parts is someone else's (left alone: KeyTaken, after our own
        are aborted).  `head`: the HEAD at the key (a function that waits for it), asked once there
        is an empty upload to adopt: someone else's object at the key (a writer took it while our
        Create's id went unjournaled) means the orphan would be adopted for nothing -- every part
        sent to it, and only the Complete finding the key taken -- so it is aborted at once and the
        key left to them (KeyTaken).  Returns (the result, or None: there is none of ours to adopt
        and none of someone else's; the lost uploads aborted)."""
        key = obj.final_key
        empty: list[str] = []
        foreign: list[str] = []
        lost: list[str] = []
        for upload_id, held in self._uploads_at(key, but=obj.upload_id):
            if not held:
                empty.append(upload_id)
            elif self.own_parts(obj, held, chunks):
                lost.append(upload_id)
            else:
                foreign.append(upload_id)
        for upload_id in lost:  # (an S3Error: the next attempt lists them again)
            self.s3.abort(key, upload_id)
        if lost and not foreign:
            self._forget_pending(key)
        if not empty and not foreign:
            return None, tuple(lost)
        occupied = False
        if not foreign and head is not None:
            existing = head()
            occupied = existing is not None and not self.is_ours(existing, obj.id, None)
        keep = None if foreign or occupied else empty[0]
        for upload_id in empty:
            if upload_id != keep:
                self.s3.abort(key, upload_id)  # ours (an S3Error: the next attempt lists them again)
        if foreign or occupied:
            if foreign:
                self._seen_pending(key)
            else:
                self._forget_pending(key)
            return replace(self._key_taken(obj), aborted=tuple(lost), orphans=tuple(empty)), tuple(lost)
        # (an orphan's Create was sent with the algorithm the capabilities gave then: assumed the same now)
        algo = self.caps.object_checksum
        return Started(Basis.of(obj), keep, "adopted", algo if algo in checksums.COMPOSITE else None,
                       tuple(lost)), tuple(lost)

    def _uploads_at(self, key: str, but: str | None = None) -> list[tuple[str, dict[int, tuple[str, int]]]]:
        """The multipart uploads at exactly `key` (not `but`), each with the parts it holds
        (part -> (ETag, size)); one completed or aborted meanwhile is left out."""
        found = []
        for k, upload_id in self.s3.list_uploads(key):
            if k != key or upload_id == but:
                continue
            try:
                found.append((upload_id, self.s3.list_parts(key, upload_id)))
            except NoSuchUpload:
                continue  # completed or aborted meanwhile
        return found

    def own_parts(self, obj: ObjectRow, held: dict[int, tuple[str, int]], chunks: Sequence[ChunkRow]) -> bool:
        """Does an upload holding `held` (part -> (ETag, size)) hold a part of this object's own:
        the bytes of one of its sealed chunk files, by content (the part's size is the file's and
        its ETag the file's MD5), never by a name or an id (issue 22 item 5)?  A sealed chunk
        file never changes, so a journal state that sent it as a part under an upload id it then
        lost sent these very bytes."""
        for c in chunks:
            if c.part not in held or c.state == ChunkState.OPEN or c.part_size is None:
                continue
            etag, size = held[c.part]
            if size != c.part_size:
                continue
            md5 = c.md5
            if md5 is None:
                try:
                    n, md5, _ = checksums.hash_file(part_file(self.chunk_dir, obj.id, c.part, self.codec_of(obj)), None)
                except OSError:
                    continue  # (a chunk file that cannot be read: the part step says so)
                if n != c.part_size:
                    continue
            if same_etag(etag, md5):
                return True
        return False

    def put(self, obj: ObjectRow, part_size: int | None = None, md5: str | None = None) -> Done | KeyTaken:
        """md5: the body's MD5 as its ledger record gives it (journaled: not hashed again; a file
        that changed since fails S3's Content-MD5 check instead of shipping other bytes)."""
        key = obj.final_key
        path = part_file(self.chunk_dir, obj.id, 1, self.codec_of(obj))
        body = FileBody(path, path.stat().st_size, md5) if md5 else FileBody.of(path)
        if part_size is not None and body.size != part_size:
            raise S3Error("LocalChunkDamaged", f"chunk file {body.path} has {body.size} bytes, journal says "
                          f"{part_size}; run `spoolup recover`", op="PutObject", key=key)
        caps = self.caps
        if caps.put_if_none_match != HONOURED:  # not honoured (or not known to be): look before writing
            existing = self.s3.head(key)
            if existing is not None:
                if self.is_ours(existing, obj.id, f'"{body.md5_hex}"', body.size):
                    return Done(Basis.of(obj), existing["etag"], "already in the bucket")
                return self._key_taken(obj)
        args = (key, body, self.metadata(obj), self.form_of(obj).object_args())
        # the checksum its ledger record holds, taken in the pass that took the MD5: a file changed
        # since is refused by a server that checks it (never shipped as other bytes)
        sent = obj.checksum if caps.sends_checksum((checksums.split(obj.checksum) or ("",))[0]) else None
        try:
            try:
                etag = self.s3.put(*args, if_none_match=caps.send_condition, checksum=sent)
            except NotImplementedByServer:
                if not (caps.send_condition and self.cfg.conditional_writes == "auto"):
                    raise
                # the store does not do conditional writes (the probe will say so): look, then write
                if self.s3.head(key) is not None:
                    raise PreconditionFailed("PreconditionFailed", "the key exists", op="PutObject", key=key) from None
                etag = self.s3.put(*args, if_none_match=False, checksum=sent)
        except PreconditionFailed:
            existing = self.s3.head(key)
            if self.is_ours(existing, obj.id, f'"{body.md5_hex}"', body.size):
                return Done(Basis.of(obj), existing["etag"], "already in the bucket")
            return self._key_taken(obj)
        metrics.uploaded(0, body.size)
        crash.point("after-put-object")
        return Done(Basis.of(obj), etag, "put")

    # -- part --------------------------------------------------------------------

    def part(self, obj: ObjectRow, chunk: ChunkRow, attempts: int) -> PartDone | UploadGone:
        # one pass over the part: its MD5 where it is sent, and the checksum of the algorithm its
        # upload was created with (sent for S3 to check; journaled with the ETag for the composite)
        path = part_file(self.chunk_dir, obj.id, chunk.part, self.codec_of(obj))
        size, md5, checksum = checksums.hash_file(path, obj.upload_checksum, md5=self.s3.part_md5)
        body = FileBody(path, size, md5)
        if chunk.part_size is not None and body.size != chunk.part_size:
            raise S3Error("LocalChunkDamaged", f"chunk file {body.path} has {body.size} bytes, journal says "
                          f"{chunk.part_size}; run `spoolup recover`", op="UploadPart", key=obj.final_key)
        try:
            etag = self.s3.upload_part(obj.final_key, obj.upload_id, chunk.part, body, checksum)
        except NoSuchUpload:
            return self._gone(obj)
        except S3Error:
            if attempts >= CHECK_UPLOAD_AFTER and not self.s3.upload_exists(obj.final_key, obj.upload_id):
                return self._gone(obj)
            raise
        crash.point("after-upload-part")
        metrics.uploaded(1, body.size)
        return PartDone(Basis.of(obj), chunk.part, etag, body.md5_hex, checksum)

    # -- complete ----------------------------------------------------------------

    def complete(self, obj: ObjectRow, parts: list[ChunkRow]) -> Done | KeyTaken | UploadGone | PartsMismatch:
        """Complete the upload; with Object Lock, then lock the object from its completion (its
        Create carried a retention counted from the Create): a failure is retried, and the retry
        finds the object completed and locks it again (object-lock-retain: from completion)."""
        result = self._complete_upload(obj, parts)
        form = self.form_of(obj)
        if isinstance(result, Done) and form.object_lock:
            self.s3.lock_object(obj.final_key, form.object_lock_mode, form.retain_until(), form.object_lock_legal_hold)
        return result

    def _complete_upload(self, obj: ObjectRow, parts: list[ChunkRow]) -> Done | KeyTaken | UploadGone | PartsMismatch:
        key = obj.final_key
        listed = [(c.part, c.etag) for c in parts]
        expected = multipart_etag(e for _, e in listed)
        size = sum(c.part_size for c in parts) if all(c.part_size is not None for c in parts) else None
        caps = self.caps
        if caps.complete_if_none_match != HONOURED:
            # the server would overwrite whatever is at the key (RGW ignores If-None-Match on
            # Complete): look right before completing
            head = self.s3.head(key)
            if head is not None:
                if self.is_ours(head, obj.id, expected, size):
                    return Done(Basis.of(obj), head["etag"], "found completed in the bucket")
                self.abort(key, obj.upload_id)
                return self._key_taken(obj)
        sums = [c.checksum for c in parts] if obj.upload_checksum else None
        try:
            etag = self._complete(caps, key, obj.upload_id, listed, sums)
        except InvalidPart:
            try:
                held = self.s3.list_parts(key, obj.upload_id)
            except NoSuchUpload:
                return self._outcome(obj, expected, None, size)
            bad = [c.part for c in parts if not same_etag(held.get(c.part, ("", 0))[0], c.etag)]
            if bad:
                return PartsMismatch(Basis.of(obj), tuple(bad))
            raise
        except S3Error as e:
            # NoSuchUpload, PreconditionFailed, RGW's 500 for an aborted upload, a lost reply...:
            # what matters is the outcome, not the code
            return self._outcome(obj, expected, e, size)
        crash.point("after-complete")
        return Done(Basis.of(obj), etag or expected, "completed")

    def _complete(self, caps: Capabilities, key: str, upload_id: str, listed: list[tuple[int, str]],
                  sums: list[str | None] | None = None) -> str:
        try:
            return self.s3.complete(key, upload_id, listed, if_none_match=caps.send_condition, part_checksums=sums)
        except NotImplementedByServer:
            if not (caps.send_condition and self.cfg.conditional_writes == "auto"):
                raise
            # the server does not do conditional writes (the probe will say so): the HEAD
            # right before completing (caps: not honoured) stood in for it
            return self.s3.complete(key, upload_id, listed, if_none_match=False, part_checksums=sums)

    def _outcome(self, obj: ObjectRow, expected: str, error: S3Error | None, size: int | None = None):
        """After a failed Complete: is the object ours in the bucket (our Complete took effect
        and its reply or journal entry was lost: our id, our parts' ETag, our size), someone
        else's, or is our upload gone?"""
        key = obj.final_key
        head = self.s3.head(key)
        if self.is_ours(head, obj.id, expected, size):
            return Done(Basis.of(obj), head["etag"], "found completed in the bucket")
        exists = self.s3.upload_exists(key, obj.upload_id)
        if head is not None:
            if exists:
                self.abort(key, obj.upload_id)
            return self._key_taken(obj)
        if not exists:
            return self._gone(obj)
        if error is not None:
            raise error  # a transient failure: retried
        raise S3Error("InvalidPart", "the server refused the part list but holds every part", op="Complete", key=key)

    def _gone(self, obj: ObjectRow) -> UploadGone:
        """The server says the upload is gone.  Abort it all the same (it is this journal's,
        and a server or proxy may say NoSuchUpload of one that exists): the new upload then
        starts at a key that holds no upload, and none of ours is left behind."""
        try:
            self.abort(obj.final_key, obj.upload_id)
        except S3Error:
            pass
        return UploadGone(Basis.of(obj))

    # -- abort -------------------------------------------------------------------

    def abort(self, key: str, upload_id: str | None) -> None:
        """Abort an upload this journal created (the only kind spoolup ever aborts)."""
        if upload_id:
            self.s3.abort(key, upload_id)

    def abort_unused(self, key: str, upload_id: str) -> CleanedUp:
        """A cleanup task: an upload this journal created and no longer uses."""
        self.abort(key, upload_id)
        self._forget_pending(key)
        return CleanedUp(f"aborted unused upload {upload_id[:16]}... at {key}")

    def abort_orphans(self, key: str, obj: ObjectRow | None = None, chunks: Sequence[ChunkRow] = ()) -> CleanedUp:
        """A cleanup task: `key` is the claimed key of an object that gave it up with no upload id
        journaled, after a Create may have been sent for that claim (a crash or a lost reply before
        its id was journaled; a start that failed after its Create).  The uploads there that hold
        no part are that Create's orphans -- a part is only ever sent to an upload whose id is
        journaled -- which the object's start would have adopted: aborted, else nothing would ever
        know them as ours again (every later start would skip their index as someone else's, for
        good).  One holding a part of the object's own chunk files (`obj`, `chunks`: own_parts, by
        content) is a lost journal state's, aborted as the start would have.  Any other upload
        holding a part is someone else's and left alone."""
        empty: list[str] = []
        lost: list[str] = []
        left = False
        for upload_id, held in self._uploads_at(key):
            if held and (obj is None or not self.own_parts(obj, held, chunks)):
                left = True
                continue
            self.s3.abort(key, upload_id)
            (lost if held else empty).append(upload_id)
        if not empty and not lost:
            return CleanedUp(f"no empty upload at {key}, a key given up")
        if not left:
            self._forget_pending(key)
        said = []
        if empty:
            said.append(f"aborted the empty upload {', '.join(f'{u[:16]}...' for u in empty)} a lost "
                        f"CreateMultipartUpload left at {key}, a key its object gave up")
        if lost:
            said.append(f"aborted the upload {', '.join(f'{u[:16]}...' for u in lost)} at {key}, a key its object gave "
                        "up, that a lost state of this journal started (it holds the object's own chunks)")
        return CleanedUp("; ".join(said))

    def discard(self, key: str, object_id: int, etag: str | None = None) -> CleanedUp:
        """A cleanup task: the object at `key` is removed if it is this journal's object
        `object_id` as our worker wrote it there (its metadata id and the ETag that write
        returned), written at a key the journal gave up meanwhile."""
        head = self.s3.head(key)
        if self.is_ours(head, object_id, etag):
            self.s3.delete(key)
            return CleanedUp(f"removed object {object_id} from {key}, a key it no longer has")
        return CleanedUp(f"nothing of object {object_id} at {key}")
