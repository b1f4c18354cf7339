"""What the S3 server honours: the capability probe and the immutable value it yields.

Whether If-None-Match: * is honoured, separately for PutObject and for
CompleteMultipartUpload, is probed on a scratch key of spoolup's own when the upload
process starts (a journaled probe of the same endpoint younger than REPROBE_AFTER is
reused).  Where it is not honoured, a HEAD right before the write stands in.  With
conditional-writes = "auto" the probe runs beside the first uploads (CapabilityProbe),
which meanwhile assume nothing (Capabilities.unknown: a HEAD before every write); with
"on" it runs before any write, since the server may have to be refused.

The finding is one frozen Capabilities value.  The thread that owns the journal (the
upload coordinator) hands it to the protocol (Protocol.caps); neither the probe's thread
nor the workers write it, and the S3 client holds none of it: If-None-Match is an argument
of each call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spoolup import checksums, keys
from spoolup.backoff import backoff
from spoolup.config import Config
from spoolup.form import Form
from spoolup.journal import CAPABILITIES_META, Journal
from spoolup.s3 import S3, FileBody, NotImplementedByServer, PreconditionFailed, S3Error

REPROBE_AFTER = 3600.0  # seconds a journaled probe is trusted across restarts

HONOURED, IGNORED, NOT_IMPLEMENTED, OFF = "honoured", "ignored", "not-implemented", "off"
UNKNOWN = "unknown"  # not probed yet: assume nothing (a HEAD before every write)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Whether the server honours If-None-Match: * on PutObject and on CompleteMultipartUpload."""
    put_if_none_match: str
    complete_if_none_match: str
    probed_at: float
    endpoint: str
    # S3 flexible checksums (checksum-algorithm, issue 22 item 6): what the server does with a
    # checksum of `checksum_algorithm` -- VERIFIED (a wrong one is refused), STORED (kept and
    # returned, not checked: moto), IGNORED (accepted, neither checked nor kept: Ceph RGW 16.2),
    # REJECTED (an error to the header), OFF (checksum-algorithm = "none"), UNKNOWN (not probed)
    checksum: str = UNKNOWN
    checksum_algorithm: str = ""

    @classmethod
    def unknown(cls, cfg: Config) -> "Capabilities":
        """Before the probe has found out: If-None-Match sent (unless conditional-writes = "off"),
        and a HEAD right before every write; no flexible checksum sent."""
        v = OFF if cfg.conditional_writes == "off" else UNKNOWN
        return cls(v, v, 0.0, cfg.url, *checksum_unknown(cfg))

    def sends_checksum(self, algorithm: str | None) -> bool:
        """Send a flexible checksum of `algorithm` (the server checks it, or at least keeps it)."""
        return bool(algorithm) and algorithm == self.checksum_algorithm and self.checksum in (VERIFIED, STORED)

    @property
    def object_checksum(self) -> str | None:
        """The algorithm objects get a checksum of (in their ledger record and sent to S3): the
        probed one where the server takes it, else none (the ETag, an MD5, still guards)."""
        return self.checksum_algorithm if self.sends_checksum(self.checksum_algorithm) else None

    @property
    def send_condition(self) -> bool:
        """Send If-None-Match: * at all: not with conditional-writes = "off", nor to a server
        that answered 501 to it."""
        return OFF not in (self.put_if_none_match, self.complete_if_none_match) and \
            NOT_IMPLEMENTED not in (self.put_if_none_match, self.complete_if_none_match)

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
        lines = [how("PutObject", self.put_if_none_match), how("CompleteMultipartUpload", self.complete_if_none_match)]
        algo = self.checksum_algorithm or "checksums"
        lines.append({VERIFIED: f"flexible checksums: {algo} sent and checked by the server",
                      STORED: f"flexible checksums: {algo} sent and kept by the server, which does not check it",
                      IGNORED: f"flexible checksums: {algo} ignored by the server (neither checked nor kept): not sent",
                      REJECTED: f"flexible checksums: {algo} refused by the server: not sent",
                      OFF: "flexible checksums: off (checksum-algorithm = \"none\")"}.get(
                          self.checksum, f"flexible checksums: {self.checksum}"))
        return lines

    def checksum_refusal(self, cfg: Config) -> str | None:
        """With checksum-algorithm set to an algorithm: why this server cannot be used (None: it can)."""
        if cfg.checksum_algorithm in ("auto", "none") or self.checksum in (VERIFIED, STORED, UNKNOWN):
            return None
        how = "refuses" if self.checksum == REJECTED else "ignores (neither checks nor keeps)"
        return (f"checksum-algorithm = \"{cfg.checksum_algorithm}\", but the server at {self.endpoint or 'AWS'} "
                f"{how} S3 flexible checksums. Set checksum-algorithm = \"auto\" (spoolup then relies on the "
                "ETag/Content-MD5 there) or \"none\"")

    def refusal(self, cfg: Config) -> str | None:
        """With conditional-writes = "on": why this server cannot be used (None: it can)."""
        if cfg.conditional_writes != "on":
            return self.checksum_refusal(cfg)
        bad = [c for c, v in (("PutObject", self.put_if_none_match),
                              ("CompleteMultipartUpload", self.complete_if_none_match)) if v != HONOURED]
        if not bad:
            return self.checksum_refusal(cfg)
        return (f"conditional-writes = \"on\", but the server at {self.endpoint or 'AWS'} does not honour "
                f"If-None-Match: * on {' and '.join(bad)} (it would overwrite an object someone else wrote "
                "at the key). Set conditional-writes = \"auto\" (spoolup then checks with a HEAD right before "
                "each such write) or use a server that honours it")


VERIFIED, STORED, REJECTED = "verified", "stored", "rejected"  # (IGNORED, OFF, UNKNOWN: as for If-None-Match)


def checksum_unknown(cfg: Config) -> tuple[str, str]:
    algo = checksums.preferred(cfg.checksum_algorithm)
    return (UNKNOWN, algo) if algo else (OFF, "")


def probe_key_prefix(cfg: Config, owner: str = "") -> str:
    """Scratch keys of the probe start with this; `owner` (a journal id) makes them this
    journal's, so that its reconcile may abort a probe upload a crash left behind."""
    return f"{keys.static_prefix(cfg.object_key)}.spoolup-probe-{owner[:16] or 'check'}-"


PROBE_MAX_AGE = 3600.0  # seconds: far longer than a probe takes (about ten small requests)
PROBE_NAME = re.compile(r"\.spoolup-probe-[^/]{1,16}-[0-9a-f]{12}(-a b)?")  # (-a b: the listing-encoding probe)


def probe_max_age() -> float:
    """PROBE_MAX_AGE; the tests lower it (SPOOLUP_TEST_PROBE_MAX_AGE) rather than wait an hour."""
    override = os.environ.get("SPOOLUP_TEST_PROBE_MAX_AGE")
    return float(override) if override else PROBE_MAX_AGE


def is_probe_scratch(cfg: Config, key: str) -> bool:
    """Is `key` named as the scratch key of a probe of spoolup's (of any journal, or of
    check-config) under this object-key's static prefix?"""
    prefix = keys.static_prefix(cfg.object_key)
    return key.startswith(prefix) and PROBE_NAME.fullmatch(key[len(prefix):]) is not None


def probe_scratch_prefix(cfg: Config) -> str:
    """The listing prefix of every probe's scratch keys (of any journal, or of check-config)."""
    return keys.static_prefix(cfg.object_key) + ".spoolup-probe-"


def stale_probe_scratch(cfg: Config, s3: S3, now: float | None = None, *, listed: tuple | None = None
                        ) -> tuple[list[str], list[tuple[str, str]]]:
    """Scratch objects and uploads of probes that a crash (a killed check-config, a service
    whose journal was replaced) cut short: named as probe scratch (is_probe_scratch) and older
    than a probe can take (probe_max_age, by the server's LastModified / Initiated against this
    host's clock).  An upload whose scratch object is younger is a probe still running (moto
    gives every upload the same Initiated, in 2010): left alone.  `listed`: (the objects under
    probe_scratch_prefix, the uploads with their Initiated under it or under a shorter prefix)
    when the caller has listed them already (reconcile: no listing of its own here)."""
    prefix = probe_scratch_prefix(cfg)
    cutoff = (time.time() if now is None else now) - probe_max_age()
    listed_objects, listed_uploads = listed if listed is not None else (s3.list_objects(prefix),
                                                                        s3.list_uploads_initiated(prefix))
    objects = {k: t for k, t in listed_objects.items() if is_probe_scratch(cfg, k)}
    uploads = [(k, u) for k, u, t in listed_uploads
               if is_probe_scratch(cfg, k) and t <= cutoff and objects.get(k, 0.0) <= cutoff]
    return sorted(k for k, t in objects.items() if t <= cutoff), uploads


def remove_stale_probes(cfg: Config, s3: S3, *, dry_run: bool = False, listed: tuple | None = None) -> list[str]:
    """Abort and delete stale_probe_scratch (whatever journal or check-config made it); returns
    what was (dry_run: would be) done.  Nothing else under the prefix is touched.  `listed`:
    as for stale_probe_scratch."""
    stale_keys, stale_uploads = stale_probe_scratch(cfg, s3, listed=listed)
    done = []
    for key, upload_id in stale_uploads:
        done.append(f"abort the upload of an interrupted capability probe at {key} (older than "
                    f"{probe_max_age():g} s)")
        if not dry_run:
            s3.abort(key, upload_id)
    for key in stale_keys:
        done.append(f"remove the scratch object of an interrupted capability probe at {key} (older than "
                    f"{probe_max_age():g} s)")
        if not dry_run:
            s3.delete(key)
    return done


def probe_capabilities(cfg: Config, s3: S3, owner: str = "", on_put=None) -> Capabilities:
    """Find out, on a scratch key of spoolup's own under the key template's static prefix, what
    the server does with If-None-Match: * on PutObject and on CompleteMultipartUpload (it
    honours it: 412; ignores it: 200 and overwrites the scratch object; or 501).  About eight
    small requests (once an hour at most: recent_probe); the scratch object is deleted."""
    key = probe_key_prefix(cfg, owner) + uuid.uuid4().hex[:12]
    if cfg.conditional_writes == "off":
        caps = Capabilities(OFF, OFF, time.time(), cfg.url, *checksum_unknown(cfg))
    else:
        caps = _probe(cfg, s3, key, on_put)
    return _probe_checksum(cfg, s3, key, caps)


def _probe_checksum(cfg: Config, s3: S3, key: str, caps: Capabilities) -> Capabilities:
    """What the server does with a flexible checksum of the configured (auto: the strongest
    available) algorithm, on the scratch key: a right one (refused: REJECTED), then a wrong one
    (refused: VERIFIED; accepted: STORED when a HEAD with checksum mode returns it, else IGNORED).
    Three small requests and a DELETE; none when checksum-algorithm = "none"."""
    state, algo = checksum_unknown(cfg)
    if not algo:
        return dataclasses.replace(caps, checksum=OFF, checksum_algorithm="")
    data = b"spoolup checksum probe\n"
    right = _checksum_of(data, algo)
    wrong = _checksum_of(data + b"x", algo)
    try:
        try:
            s3.put_bytes(key, data, checksum=right)
        except S3Error as e:
            if e.status is not None and 400 <= e.status < 500 or isinstance(e, NotImplementedByServer):
                return dataclasses.replace(caps, checksum=REJECTED, checksum_algorithm=algo)
            raise
        try:
            s3.put_bytes(key, data, checksum=wrong)
        except S3Error as e:
            if e.status is not None and 400 <= e.status < 500:
                return dataclasses.replace(caps, checksum=VERIFIED, checksum_algorithm=algo)
            raise
        kept = (s3.head(key, checksum=True) or {}).get("checksum")
        state = STORED if kept == wrong else IGNORED
        return dataclasses.replace(caps, checksum=state, checksum_algorithm=algo)
    finally:
        try:
            s3.delete(key)
        except S3Error:
            pass


def _checksum_of(data: bytes, algo: str) -> str:
    h = checksums.hasher(algo)
    h.update(data)
    return checksums.tag(algo, h.digest())


def _probe(cfg: Config, s3: S3, key: str, on_put=None) -> Capabilities:
    """`on_put`: called with what PutObject does with If-None-Match as soon as that is known
    (two requests in), before the Complete half of the probe."""
    body = _scratch(cfg)
    probing: list[str] = []
    try:
        s3.put_bytes(key, b"spoolup capability probe\n")
        put = _conditional_outcome(lambda: s3.put_bytes(key, b"x\n", if_none_match=True))
        if on_put is not None:
            on_put(put)
        upload_id = s3.create_multipart(key, {}, Form.of_config(cfg).object_args())
        probing.append(upload_id)
        try:
            etag = s3.upload_part(key, upload_id, 1, body)
            complete = _conditional_outcome(lambda: s3.complete(key, upload_id, [(1, etag)], if_none_match=True))
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
    """Best effort: the scratch object deleted, every upload at the scratch key gone.  Every
    one, not only `upload_ids` (those whose id the probe got back): the key is this probe's
    alone (a random suffix), and a Create whose reply was lost or came after s3-timeout (RGW's
    first writes to a new bucket can take longer) is sent again by botocore, so the probe goes
    on with the second upload while the first, whose id it never learns, stays at the key.
    (A Complete that a loaded RGW answers 500 while it goes on completing is retried by
    botocore; the abort that follows can find the upload still in progress: it is aborted
    again until it is gone.)  A Create the server carries out only after this listing is left
    to the next start's reconcile (this journal's probe key prefix) or, a check-config's, to
    the stale-probe cleanup."""
    for attempt in range(3):
        try:
            s3.delete(key)
            left = [u for k, u in s3.list_uploads(key) if k == key]
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


def _conditional_outcome(call) -> str:
    try:
        call()
    except PreconditionFailed:
        return HONOURED
    except NotImplementedByServer:
        return NOT_IMPLEMENTED
    return IGNORED


def ensure_capabilities(cfg: Config, s3: S3, journal: Journal | None = None, *,
                        wait: bool = True) -> Capabilities | None:
    """Probe the server (at most once per REPROBE_AFTER: a younger journaled probe of the same
    endpoint is reused), act on it and journal it; raises CapabilityRefused
    when conditional-writes = "on" and the server does not honour it.  With `wait` false and
    conditional-writes = "auto", a probe still to be made is not made here: None, and the
    caller runs a CapabilityProbe beside its uploads.  The caller hands what it returns to
    the protocol (Protocol.caps)."""
    owner = journal.journal_id if journal is not None else ""
    caps = recent_probe(cfg, journal)
    if caps is None:
        if not wait and cfg.conditional_writes == "auto" and cfg.checksum_algorithm in ("auto", "none"):
            return None
        caps = probe_capabilities(cfg, s3, owner)
        if journal is not None:
            journal_capabilities(journal, caps)
    refusal = caps.refusal(cfg)
    if refusal:
        raise CapabilityRefused(refusal)
    return caps


def journal_capabilities(journal: Journal, caps: Capabilities) -> None:
    with journal.transaction():
        journal.set_meta(CAPABILITIES_META, caps.to_json())


class CapabilityProbe:
    """The probe of what the server honours, off the upload path (conditional-writes = "auto"):
    a thread of its own, started after reconcile, beside the first uploads.  Until it ends the
    steps assume nothing -- a HEAD right before every PutObject and Complete, If-None-Match
    sent all the same -- which is what they do on a server that honours nothing, so no write
    waits for it.  What PutObject does is known after the probe's first two requests, and
    reported then ("put": a Capabilities whose Complete half is still unknown, not journaled),
    so that small objects stop paying a HEAD each four requests before the probe ends.  The thread that owns the journal takes its finding (`poll`), journals it
    and hands it to the protocol.  A probe that fails (S3 down) is tried again with backoff until it succeeds
    or the process stops; `join` gives it the time of a stop to end, so that its scratch
    object is not left behind (a crash can leave one: reconcile removes it)."""

    def __init__(self, cfg: Config, s3: S3, owner: str, stop: threading.Event, wake: threading.Event | None = None):
        self.cfg, self.s3, self.owner, self.stop = cfg, s3, owner, stop
        self.wake = wake  # set with each event: the journal's thread takes it at once, not at its next turn
        # ("put", Capabilities: PutObject's half) | ("found", Capabilities) | ("failed", (S3Error, retry_in))
        self._events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="capability-probe", daemon=True)

    def start(self) -> "CapabilityProbe":
        self._thread.start()
        return self

    def _run(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                caps = probe_capabilities(self.cfg, self.s3, self.owner, on_put=self._put_found)
            except Exception as e:  # (S3Error; anything else is reported the same way, not lost with the thread)
                if not isinstance(e, S3Error):
                    e = S3Error(type(e).__name__, str(e), op="capability probe")
                attempt += 1
                delay = backoff(attempt, base=1.0, cap=self.cfg.retry_max_delay, jitter=False)
                self._event(("failed", (e, delay)))
                self.stop.wait(delay)
                continue
            self._event(("found", caps))
            return

    def _put_found(self, put: str) -> None:
        partial = Capabilities(put, Capabilities.unknown(self.cfg).complete_if_none_match, 0.0, self.cfg.url)
        self._event(("put", partial))

    def _event(self, event: tuple[str, Any]) -> None:
        with self._lock:
            self._events.append(event)
        if self.wake is not None:
            self.wake.set()

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


def recent_probe(cfg: Config, journal: Journal | None) -> Capabilities | None:
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
    if caps.checksum_algorithm != (checksums.preferred(cfg.checksum_algorithm) or "") or caps.checksum == UNKNOWN:
        return None  # probed for another checksum-algorithm (or before spoolup probed checksums)
    return caps if 0 <= time.time() - caps.probed_at < REPROBE_AFTER else None


class CapabilityRefused(Exception):
    """conditional-writes = "on" and the server does not honour it: spoolup will not write there."""
