"""The S3 object protocol: every step spoolup takes to turn an object of the journal
into a completed S3 object, and how it reconciles those steps after a crash.

  claim      choose the object's final index: the first one >= the previous object's
             index + 1 that the bucket does not hold (objects or pending uploads, with or
             without a compression suffix);
  start      CreateMultipartUpload, its upload id journaled before any part is sent
             (invariant 4) -- or, for an object that is one complete chunk, one PutObject;
  part       UploadPart from the chunk file, ETag journaled after (invariant 2);
  complete   CompleteMultipartUpload, journaled after (invariant 3);
  is_ours    is the object at a key the one this journal wrote?  (spoolup's metadata, or
             the ETag computed from the journaled part ETags);
  abort      only upload ids this journal created, never anyone else's;
  reconcile  after a crash: classify each object by its outcome in the bucket (HEAD, the
             multipart ETag, does its upload still exist), never by the error code a
             server happens to give, and one object that cannot be checked never holds
             up the others.

The upload process (upload.py) and `spoolup recover` (recover_cmd.py) both use this
module; it imports neither.  Where S3 servers differ (docs/operations.md, "S3
implementations tested"), the difference is handled here or in s3.py, once:

* whether If-None-Match: * is honoured, separately for PutObject and for
  CompleteMultipartUpload, is probed on a scratch key of spoolup's own when the upload
  process starts (a journaled probe of the same endpoint younger than REPROBE_AFTER is reused)
  (Capabilities); where it is not honoured, a HEAD right before the write stands in.  With
  conditional-writes = "auto" the probe runs beside the first uploads (CapabilityProbe),
  which meanwhile assume nothing (that HEAD before every write); with "on" it runs before
  any write, since the server may have to be refused;
* a Complete that fails for any reason (RGW answers 500 for an aborted upload) is
  classified by outcome: ours in the bucket -> done; upload gone -> start again;
  someone else's object -> next index;
* "the upload does not exist" is NoSuchUpload on AWS and moto, NoSuchKey on RGW
  (S3.list_parts translates).

Everything here runs in worker threads (or in recover) and never touches the journal
except through the Report-driven reconcile.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spoolup import crash, keys, metrics
from spoolup import form as forms
from spoolup.chunks import Codec, part_file, remove_chunk_files
from spoolup.config import Config
from spoolup.form import Form
from spoolup.journal import CAPABILITIES_META, ChunkRow, Journal, ObjectRow
from spoolup.s3 import (_CATCH, S3, FileBody, InvalidPart, NoSuchUpload, NotImplementedByServer, PreconditionFailed,
                        S3Error, _translate, multipart_etag, same_etag)

if TYPE_CHECKING:
    from spoolup.recover import Report

META_KEY = "spoolup-object"  # x-amz-meta-spoolup-object: <journal id>/<object id>
CHECK_UPLOAD_AFTER = 3  # failed part attempts before asking S3 whether the upload still exists
PENDING_TTL = 2.0  # seconds one listing of pending multipart uploads serves claims
REPROBE_AFTER = 3600.0  # seconds a journaled probe is trusted across restarts

# S3 errors that are answers about the request itself: sending it again cannot succeed
# until something changes (the object, the configuration, the bucket's policy).
PERMANENT_CODES = frozenset({
    "EntityTooLarge", "EntityTooSmall", "InvalidArgument", "InvalidRequest", "KeyTooLongError",
    "MetadataTooLarge", "InvalidStorageClass", "InvalidObjectState", "AccessDenied", "InvalidDigest",
    "BadDigest", "MalformedXML", "LocalChunkDamaged",
})


def compressed_suffixes(key_suffix: str = "") -> tuple[str, ...]:
    """The endings a final key of an object with this object-key-suffix may have in the bucket:
    with or without the suffix (s3() before 4.8.2 has none), with or without .gz/.zst."""
    ends = ("", ".gz", ".zst")
    return ends + tuple(key_suffix + e for e in ends) if key_suffix else ends


def permanent(e: S3Error) -> bool:
    """An error that retrying the same request cannot fix (quarantine, don't hammer)."""
    return e.code in PERMANENT_CODES


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
    """The claimed key holds (or is being written with) someone else's object: claim the next free index."""
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
# what the server honours


HONOURED, IGNORED, NOT_IMPLEMENTED, OFF = "honoured", "ignored", "not-implemented", "off"


@dataclass
class Capabilities:
    """Whether the server honours If-None-Match: * on PutObject and on CompleteMultipartUpload."""
    put_if_none_match: str
    complete_if_none_match: str
    probed_at: float
    endpoint: str

    @property
    def put_conditional(self) -> bool:
        return self.put_if_none_match == HONOURED

    @property
    def complete_conditional(self) -> bool:
        return self.complete_if_none_match == HONOURED

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Capabilities | None":
        try:
            return cls(**json.loads(text)) if text else None
        except (TypeError, ValueError):
            return None

    def describe(self) -> list[str]:
        def how(call: str, v: str) -> str:
            if v == HONOURED:
                return f"{call}: If-None-Match: * honoured (the server refuses to overwrite)"
            if v == OFF:
                return f"{call}: conditional writes off (HEAD right before the write)"
            return f"{call}: If-None-Match: * {v} by the server (spoolup does a HEAD right before the write)"
        return [how("PutObject", self.put_if_none_match), how("CompleteMultipartUpload", self.complete_if_none_match)]

    def refusal(self, cfg: Config) -> str | None:
        """With conditional-writes = "on": why this server cannot be used (None: it can)."""
        if cfg.conditional_writes != "on":
            return None
        bad = [c for c, v in (("PutObject", self.put_if_none_match),
                              ("CompleteMultipartUpload", self.complete_if_none_match)) if v != HONOURED]
        if not bad:
            return None
        return (f"conditional-writes = \"on\", but the server at {self.endpoint or 'AWS'} does not honour "
                f"If-None-Match: * on {' and '.join(bad)} (it would overwrite an object someone else wrote "
                "at the key). Set conditional-writes = \"auto\" (spoolup then checks with a HEAD right before "
                "each such write) or use a server that honours it")


def probe_key_prefix(cfg: Config, owner: str = "") -> str:
    """Scratch keys of the probe start with this; `owner` (a journal id) makes them this
    journal's, so that its reconcile may abort a probe upload a crash left behind."""
    return f"{keys.static_prefix(cfg.object_key)}.spoolup-probe-{owner[:16] or 'check'}-"


def probe_capabilities(cfg: Config, s3: S3, owner: str = "") -> Capabilities:
    """Find out, on a scratch key of spoolup's own under the key template's static prefix, what
    the server does with If-None-Match: * on PutObject and on CompleteMultipartUpload (it
    honours it: 412; ignores it: 200 and overwrites the scratch object; or 501).  About eight
    small requests (once an hour at most: _recent_probe); the scratch object is deleted."""
    if cfg.conditional_writes == "off":
        return Capabilities(OFF, OFF, time.time(), cfg.url)
    key = probe_key_prefix(cfg, owner) + uuid.uuid4().hex[:12]
    try:
        return _probe(cfg, s3, key)
    except _CATCH as e:  # (the calls made on the client itself)
        raise _translate(e, "capability probe", key) from None


def _probe(cfg: Config, s3: S3, key: str) -> Capabilities:
    body = _scratch(cfg)
    probing: list[str] = []
    try:
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"spoolup capability probe\n")
        put = _conditional_outcome(lambda: s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"x\n",
                                                                IfNoneMatch="*"), "PutObject", key)
        upload_id = s3.create_multipart(key, {}, Form.of_config(cfg).object_args())
        probing.append(upload_id)
        try:
            etag = s3.upload_part(key, upload_id, 1, body)
            complete = _conditional_outcome(lambda: s3.client.complete_multipart_upload(
                Bucket=s3.bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}), "CompleteMultipartUpload", key)
        finally:
            try:
                s3.abort(key, upload_id)  # (already completed where the condition was ignored)
            except S3Error:
                pass
    finally:
        _clean_probe(s3, key, probing)
        body.path.unlink(missing_ok=True)
    return Capabilities(put, complete, time.time(), cfg.url)


def _clean_probe(s3: S3, key: str, upload_ids: list[str]) -> None:
    """Best effort: the scratch object deleted, the probe's upload gone.  (A Complete that a
    loaded RGW answers 500 while it goes on completing is retried by botocore; the abort that
    follows can find the upload still in progress: it is aborted again until it is gone.)"""
    for attempt in range(3):
        try:
            s3.delete(key)
            left = [u for k, u in s3.list_uploads(key) if k == key and u in upload_ids]
        except S3Error:
            left = upload_ids
        if not left:
            return
        for upload_id in left:
            try:
                s3.abort(key, upload_id)
            except S3Error:
                pass
        time.sleep(0.5 * (attempt + 1))


def _scratch(cfg: Config) -> FileBody:
    fd, name = tempfile.mkstemp(prefix="spoolup-probe-")  # (check-config may run before any state dir)
    with os.fdopen(fd, "wb") as f:
        f.write(b"spoolup capability probe part\n")
    return FileBody.of(Path(name))


def _conditional_outcome(call, op: str, key: str) -> str:
    try:
        call()
    except _CATCH as e:
        err = _translate(e, op, key)
        if isinstance(err, PreconditionFailed):
            return HONOURED
        if isinstance(err, NotImplementedByServer):
            return NOT_IMPLEMENTED
        raise err from None
    return IGNORED


def ensure_capabilities(cfg: Config, s3: S3, journal: Journal | None = None, *,
                        wait: bool = True) -> Capabilities | None:
    """Probe the server (at most once per REPROBE_AFTER: a younger journaled probe of the same
    endpoint is reused), act on it and journal it; raises CapabilityRefused
    when conditional-writes = "on" and the server does not honour it.  With `wait` false and
    conditional-writes = "auto", a probe still to be made is not made here: None, and the
    caller runs a CapabilityProbe beside its uploads."""
    owner = journal.journal_id if journal is not None else ""
    s3.probe_prefix = probe_key_prefix(cfg, owner)
    caps = _recent_probe(cfg, journal)
    if caps is None:
        if not wait and cfg.conditional_writes == "auto":
            return None
        caps = probe_capabilities(cfg, s3, owner)
        if journal is not None:
            journal_capabilities(journal, caps)
    adopt(s3, caps)
    refusal = caps.refusal(cfg)
    if refusal:
        raise CapabilityRefused(refusal)
    return caps


def adopt(s3: S3, caps: Capabilities) -> None:
    """From now on the protocol's steps act on what the server honours (Protocol.put_conditional,
    complete_conditional); a server that answers 501 is sent no If-None-Match at all."""
    if not caps.put_conditional and caps.put_if_none_match == NOT_IMPLEMENTED:
        s3.conditional = False
    s3.capabilities = caps


def journal_capabilities(journal: Journal, caps: Capabilities) -> None:
    with journal.transaction():
        journal.set_meta(CAPABILITIES_META, caps.to_json())


class CapabilityProbe:
    """The probe of what the server honours, off the upload path (conditional-writes = "auto"):
    a thread of its own, started after reconcile, beside the first uploads.  Until it ends the
    steps assume nothing -- a HEAD right before every PutObject and Complete, If-None-Match
    sent all the same -- which is what they do on a server that honours nothing, so no write
    waits for it.  Its finding is adopted at once; the thread that owns the journal journals
    it (`poll`).  A probe that fails (S3 down) is tried again with backoff until it succeeds
    or the process stops; `join` gives it the time of a stop to end, so that its scratch
    object is not left behind (a crash can leave one: reconcile removes it)."""

    def __init__(self, cfg: Config, s3: S3, owner: str, stop: threading.Event):
        self.cfg, self.s3, self.owner, self.stop = cfg, s3, owner, stop
        self._events: list[tuple[str, Any]] = []  # ("found", Capabilities) | ("failed", (S3Error, retry_in))
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="capability-probe", daemon=True)

    def start(self) -> "CapabilityProbe":
        self._thread.start()
        return self

    def _run(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                caps = probe_capabilities(self.cfg, self.s3, self.owner)
            except Exception as e:  # (S3Error; anything else is reported the same way, not lost with the thread)
                if not isinstance(e, S3Error):
                    e = S3Error(type(e).__name__, str(e), op="capability probe")
                attempt += 1
                delay = min(self.cfg.retry_max_delay, 0.5 * 2 ** min(attempt, 10))
                with self._lock:
                    self._events.append(("failed", (e, delay)))
                self.stop.wait(delay)
                continue
            adopt(self.s3, caps)
            with self._lock:
                self._events.append(("found", caps))
            return

    def poll(self) -> list[tuple[str, Any]]:
        """What happened since the last poll (for the journal's thread to journal and log)."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def keep(self, events: list[tuple[str, Any]]) -> None:
        """Events polled but not journaled (the journal refused): polled again next time."""
        with self._lock:
            self._events[:0] = events

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._events)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(max(0.0, timeout))


def _recent_probe(cfg: Config, journal: Journal | None) -> Capabilities | None:
    """The journaled probe of this endpoint, when it is younger than REPROBE_AFTER and was made
    under the same conditional-writes setting: a restart (a crash loop, a drain after a run)
    need not probe again.  None: probe."""
    if journal is None:
        return None
    caps = Capabilities.from_json(journal.meta(CAPABILITIES_META))
    if caps is None or caps.endpoint != cfg.url:
        return None
    if (caps.put_if_none_match == OFF) != (cfg.conditional_writes == "off"):
        return None
    return caps if 0 <= time.time() - caps.probed_at < REPROBE_AFTER else None


class CapabilityRefused(Exception):
    """conditional-writes = "on" and the server does not honour it: spoolup will not write there."""


# ---------------------------------------------------------------------------
# the steps (worker threads; never touch the journal)


class Protocol:
    def __init__(self, cfg: Config, s3: S3, chunk_dir: Path, journal_id: str):
        self.cfg = cfg
        self.s3 = s3
        self.chunk_dir = chunk_dir
        self.form = Form.of_config(cfg)  # for objects journaled without a form of their own
        self.journal_id = journal_id
        self.prefix = keys.static_prefix(cfg.object_key)
        self._pending: tuple[float, set[str]] = (-PENDING_TTL - 1.0, set())
        self._pending_lock = threading.Lock()

    # -- what the server honours (unknown until probed: then assume nothing) --------

    @property
    def put_conditional(self) -> bool:
        caps = self.s3.capabilities
        return caps is not None and caps.put_conditional and self.s3.conditional

    @property
    def complete_conditional(self) -> bool:
        caps = self.s3.capabilities
        return caps is not None and caps.complete_conditional and self.s3.conditional

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

    def is_ours(self, head: dict[str, Any] | None, object_id: int, expected_etag: str | None) -> bool:
        if head is None:
            return False
        if head["metadata"].get(META_KEY) == f"{self.journal_id}/{object_id}":
            return True
        return same_etag(head["etag"], expected_etag)

    # -- claim -------------------------------------------------------------------

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

    def _seen_pending(self, key: str) -> None:
        """A per-key listing found an upload at `key` that the cached listing may predate (it
        appeared after it: a foreign writer, or the orphans of a Create whose replies were lost).
        The claims the cache serves must see it too: else the next claim takes the key again,
        meets the upload again, and so on until the cache expires -- a claim/KeyTaken loop of two
        listings every few milliseconds."""
        with self._pending_lock:
            stamp, found = self._pending
            self._pending = (stamp, found | {key})

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

    # -- start -------------------------------------------------------------------

    def start(self, obj: ObjectRow, part_size: int | None = None) -> Started | Done | KeyTaken:
        key = obj.final_key
        if obj.mode == "single":
            return self.put(obj, part_size)
        # An upload at the key that this journal does not know is someone else's (another agent,
        # syslog-ng's s3()) -- or one of ours whose Create reply was lost, which holds no part and
        # costs nothing.  Never abort it: leave the key to it and take the next index.
        if any(k == key for k, _ in self.s3.list_uploads(key)):
            self._seen_pending(key)
            return KeyTaken(obj.id, key)
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
        if not self.put_conditional:  # If-None-Match not honoured (or not known to be): look before writing
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

    # -- part --------------------------------------------------------------------

    def part(self, obj: ObjectRow, chunk: ChunkRow, attempts: int) -> PartDone | UploadGone:
        body = FileBody.of(part_file(self.chunk_dir, obj.id, chunk.part, self.codec_of(obj)), md5=self.s3.part_md5)
        if chunk.part_size is not None and body.size != chunk.part_size:
            raise S3Error("LocalChunkDamaged", f"chunk file {body.path} has {body.size} bytes, journal says "
                          f"{chunk.part_size}; run `spoolup recover`", op="UploadPart", key=obj.final_key)
        try:
            etag = self.s3.upload_part(obj.final_key, obj.upload_id, chunk.part, body)
        except NoSuchUpload:
            return self._gone(obj)
        except S3Error:
            if attempts >= CHECK_UPLOAD_AFTER and not self.s3.upload_exists(obj.final_key, obj.upload_id):
                return self._gone(obj)
            raise
        crash.point("after-upload-part")
        metrics.uploaded(1, body.size)
        return PartDone(obj.id, chunk.part, etag, body.md5_hex)

    # -- complete ----------------------------------------------------------------

    def complete(self, obj: ObjectRow, parts: list[ChunkRow]) -> Done | KeyTaken | UploadGone | PartsMismatch:
        key = obj.final_key
        listed = [(c.part, c.etag) for c in parts]
        expected = multipart_etag(e for _, e in listed)
        if not self.complete_conditional:
            # the server would overwrite whatever is at the key (RGW ignores If-None-Match on
            # Complete): look right before completing
            head = self.s3.head(key)
            if head is not None:
                if self.is_ours(head, obj.id, expected):
                    return Done(obj.id, head["etag"], "found completed in the bucket")
                self.abort(key, obj.upload_id)
                return KeyTaken(obj.id, key)
        try:
            etag = self.s3.complete(key, obj.upload_id, listed)
        except InvalidPart:
            try:
                held = self.s3.list_parts(key, obj.upload_id)
            except NoSuchUpload:
                return self._outcome(obj, expected, None)
            bad = [c.part for c in parts if not same_etag(held.get(c.part, ("", 0))[0], c.etag)]
            if bad:
                return PartsMismatch(obj.id, bad)
            raise
        except S3Error as e:
            # NoSuchUpload, PreconditionFailed, RGW's 500 for an aborted upload, a lost reply...:
            # what matters is the outcome, not the code
            return self._outcome(obj, expected, e)
        crash.point("after-complete")
        return Done(obj.id, etag or expected, "completed")

    def _outcome(self, obj: ObjectRow, expected: str, error: S3Error | None):
        """After a failed Complete: is the object ours in the bucket (our Complete took effect
        and its reply or journal entry was lost), someone else's, or is our upload gone?"""
        key = obj.final_key
        head = self.s3.head(key)
        if self.is_ours(head, obj.id, expected):
            return Done(obj.id, head["etag"], "found completed in the bucket")
        exists = self.s3.upload_exists(key, obj.upload_id)
        if head is not None:
            if exists:
                self.abort(key, obj.upload_id)
            return KeyTaken(obj.id, key)
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
        return UploadGone(obj.id)

    # -- abort -------------------------------------------------------------------

    def abort(self, key: str, upload_id: str | None) -> None:
        """Abort an upload this journal created (the only kind spoolup ever aborts)."""
        if upload_id:
            self.s3.abort(key, upload_id)


# ---------------------------------------------------------------------------
# reconcile: the bucket after a crash


def reconcile(cfg: Config, journal: Journal, s3: S3, report: "Report", *, dry_run: bool) -> None:
    """Compare every unfinished object of the journal with the bucket.  An object that cannot be
    checked now (S3 refuses or fails for it) is noted and left to the upload process, which
    classifies it by outcome when it gets to it: it never holds up the others."""
    proto = Protocol(cfg, s3, cfg.chunk_dir, journal.journal_id)
    for obj in journal.objects_where("state != 'done' AND final_key IS NOT NULL"):
        try:
            if obj.mode == "multipart" and obj.upload_id is not None:
                _reconcile_multipart(cfg, journal, proto, obj, report, dry_run=dry_run)
            elif obj.mode == "single":
                _reconcile_single(cfg, journal, proto, obj, report, dry_run=dry_run)
        except S3Error as e:
            if e.code == "NoSuchBucket":
                raise
            report.note(f"{obj.final_key}: cannot be checked with S3 now ({e}); the upload process checks it "
                        "again when it gets to it, and every other object ships meanwhile")

    # other uploads under the target prefix the journal does not know are never aborted: they
    # are someone else's (a concurrent agent or s3() writer) or, at a key spoolup claimed, an
    # empty one whose Create reply was lost.  spoolup skips their indexes, as s3() does.
    known_ids = {r[0] for r in journal.conn.execute("SELECT upload_id FROM objects WHERE upload_id IS NOT NULL")}
    ours = probe_key_prefix(cfg, journal.journal_id)
    for key, upload_id in s3.list_uploads(proto.prefix):
        if key.startswith(ours):
            # a capability probe of this journal's that a crash cut short: its scratch key is ours
            report.did(f"abort the upload of an interrupted capability probe at {key}")
            if not dry_run:
                s3.abort(key, upload_id)
        elif upload_id not in known_ids and ".spoolup-probe-" not in key:
            report.note(f"multipart upload {upload_id[:16]}... of {key} is not one this journal created; its index "
                        "is skipped and it is left alone (abort it with `aws s3api abort-multipart-upload` if it "
                        "is stale, or let a lifecycle rule AbortIncompleteMultipartUpload do it)")
    for key in sorted(s3.list_keys(ours)):
        # the scratch object of a probe of this journal's that a crash cut short (capabilities or
        # listing encoding: none runs while reconcile does)
        report.did(f"remove the scratch object of an interrupted capability probe at {key}")
        if not dry_run:
            s3.delete(key)


def _reconcile_multipart(cfg: Config, journal: Journal, proto: Protocol, obj: ObjectRow, report: "Report",
                         *, dry_run: bool) -> None:
    s3 = proto.s3
    chunks = journal.chunks_of(obj.id)
    codec = proto.codec_of(obj)
    if obj.state == "closed" and chunks and all(c.state == "uploaded" for c in chunks):
        # the outcome first: a Complete that took effect before the crash leaves our object at
        # the key (and, on RGW, a ListParts that says NoSuchKey)
        head = s3.head(obj.final_key)
        if proto.is_ours(head, obj.id, multipart_etag(c.etag for c in chunks)):
            report.did(f"{obj.final_key}: CompleteMultipartUpload had succeeded but was not journaled; "
                       "marked done (ETag matches the journaled parts), not uploaded again")
            if not dry_run:
                journal.complete(obj.id, head["etag"])
                remove_chunk_files(cfg.chunk_dir, obj.id)
            return
    try:
        held = s3.list_parts(obj.final_key, obj.upload_id)
    except NoSuchUpload:
        report.did(f"{obj.final_key}: multipart upload {obj.upload_id[:16]}... no longer exists; a new one "
                   f"is started and its {len(chunks)} part(s) uploaded again from local chunks")
        if not dry_run:
            journal.reset_upload(obj.id)
        return
    for c in chunks:
        in_s3 = held.get(c.part)
        if c.state == "uploaded" and (in_s3 is None or not same_etag(in_s3[0], c.etag)):
            report.did(f"{obj.final_key}: part {c.part} is journaled but S3 does not hold it; "
                       "uploading it again from the local chunk")
            if not dry_run:
                journal.reseal_parts(obj.id, [c.part])
        elif c.state == "sealed" and in_s3 is not None:
            path = part_file(cfg.chunk_dir, obj.id, c.part, codec)
            if not path.exists():
                continue
            body = FileBody.of(path)
            if same_etag(in_s3[0], f'"{body.md5_hex}"'):
                report.did(f"{obj.final_key}: part {c.part} was uploaded but its ETag not journaled; "
                           "journaled now (not uploaded again)")
                if not dry_run:
                    journal.record_parts([(obj.id, c.part, in_s3[0], body.md5_hex)])


def _reconcile_single(cfg: Config, journal: Journal, proto: Protocol, obj: ObjectRow, report: "Report",
                      *, dry_run: bool) -> None:
    path = part_file(cfg.chunk_dir, obj.id, 1, proto.codec_of(obj))
    if not path.exists():
        return
    head = proto.s3.head(obj.final_key)
    if head is not None and proto.is_ours(head, obj.id, f'"{FileBody.of(path).md5_hex}"'):
        report.did(f"{obj.final_key}: PutObject had succeeded but was not journaled; marked done")
        if not dry_run:
            journal.complete(obj.id, head["etag"])
            remove_chunk_files(cfg.chunk_dir, obj.id)
