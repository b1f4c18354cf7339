"""Key races for the kill -9 torture (bench/torture.py --key-races): a second writer at the
keys spoolup is about to claim, and the check of what it did.

ForeignWriter (another agent, syslog-ng's s3()) PUTs objects and starts multipart uploads
(completed later, left pending, some empty) at the next indexes of what the bucket holds and
at the bare key of the next minute's timestamp.  races() says whether it was respected (its
objects keep their bytes, its uploads are never taken away) and whether every index spoolup
skipped is explained by the bucket; completions() reads when spoolup completed each key from
its log.  The key layout (PREFIX, TS_FORMAT, KEY_RE) is defined here and used by both files.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

PREFIX = "torture/"
TS_FORMAT = "%Y%m%d%H%M"  # object-key-timestamp
KEY_RE = re.compile(r"^torture/(?P<name>[^/]+?)-(?P<ts>\d{12})(?:-(?P<idx>\d+))?(?:\.gz|\.zst)?$")


FOREIGN = b"FOREIGN "  # a foreign object's body starts so; spoolup's records start with their file's name


def s3_client(url: str, keys: tuple[str, str], **config):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=keys[0], aws_secret_access_key=keys[1],
                        region_name="us-east-1",
                        config=BotoConfig(s3={"addressing_style": "path"}, **config))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class ForeignWriter(threading.Thread):
    """Another writer of the bucket (another agent, syslog-ng's s3()) racing spoolup for the
    keys it claims next.  At random moments it looks at what the bucket holds for one of the
    torture's keys and takes a key spoolup is about to claim: the next index of the current
    timestamp (or one or two past it), or the bare key of the next minute's timestamp.  There
    it PUTs an object, or starts a multipart upload with one part that it completes later or
    leaves pending; now and then it leaves an upload empty, as a writer killed right after its
    CreateMultipartUpload does, and never touches it again.

    It never overwrites anything: its writes are conditional (If-None-Match: *).  Where the
    server does not honour that (probed once on a scratch key outside the torture's prefix)
    it does not make that call at all: no PUT (uploads instead), or an upload aborted
    instead of completed (Ceph RGW ignores it on Complete).  A HEAD first would leave an
    instant in which it could overwrite spoolup's object, and the torture would blame
    spoolup for the records this writer destroyed.  No request is retried by botocore, so every upload it
    creates has its id here; a request whose reply is lost is kept as `unsure`.  verify()
    reads all this: which objects and uploads are foreign, which keys it held at some moment
    (they explain an index spoolup skipped), and that its objects keep their bytes."""

    def __init__(self, url: str, bucket: str, keys: tuple[str, str], names: list[str], rnd: random.Random,
                 suffix: str = "", pause: tuple[float, float] = (0.05, 0.4), busy: threading.Event | None = None):
        super().__init__(name="foreign-writer", daemon=True)
        self.s3 = s3_client(url, keys, retries={"max_attempts": 1}, read_timeout=60, connect_timeout=10)
        self.bucket, self.names, self.rnd, self.suffix, self.pause = bucket, names, rnd, suffix, pause
        self.stop = threading.Event()
        self.written: dict[str, bytes] = {}  # key -> bytes of an object it wrote (put, or a completed upload)
        self.written_at: dict[str, tuple[float, float]] = {}  # key -> when that write was sent, its reply came
        self.unsure: dict[str, bytes] = {}  # key -> bytes of a write whose reply never came
        self.uploads: dict[str, str] = {}  # upload id -> key: every upload it created
        self.parts: dict[str, tuple[bytes, str]] = {}  # upload id -> (its one part, ETag)
        self.open: list[str] = []  # uploads with a part, neither completed nor aborted by it (yet)
        self.empty: list[str] = []  # uploads it left empty, for good
        self.settled: set[str] = set()  # uploads it completed or aborted, or whose Complete reply it lost
        self.create_lost: set[str] = set()  # keys where a CreateMultipartUpload reply was lost
        self.tried: set[str] = set()  # keys (without suffix) it aimed at: each at most once
        self.counts: collections.Counter = collections.Counter()
        self.conditional = {"put": False, "complete": False}
        self.error: BaseException | None = None
        self.last_error = ""
        self.journal: list[str] = []  # what it did, when (foreign.log in the work directory)
        self.busy = busy or threading.Event()  # set when spoolup gets a multipart object to ship
        self.hurry_until = 0.0
        self.at_uploads: set[str] = set()  # keys it PUT an object at while an upload was in progress there

    # -- what verify() needs

    def held_keys(self) -> set[str]:
        """Keys it held at some moment (an object, or an upload in progress), or may have."""
        return set(self.written) | set(self.unsure) | set(self.uploads.values()) | self.create_lost

    # -- the thread

    def run(self) -> None:
        try:
            while not self.stop.is_set():  # spoolup creates the bucket
                try:
                    self.s3.head_bucket(Bucket=self.bucket)
                    break
                except (ClientError, BotoCoreError):
                    self.stop.wait(0.2)
            if self.stop.is_set():
                return
            self.probe()
            while not self.stop.wait(self.rnd.uniform(0.01, 0.05) if time.monotonic() < self.hurry_until
                                     else self.rnd.uniform(*self.pause)):
                if self.busy.is_set():  # a multipart upload is coming: watch for it closely for a while
                    self.busy.clear()
                    self.hurry_until = time.monotonic() + 3
                try:
                    self.act()
                except (ClientError, BotoCoreError) as e:
                    self.counts["errors"] += 1
                    self.last_error = repr(e)
        except BaseException as e:  # noqa: BLE001 - reported by the driver
            self.error = e

    def probe(self) -> None:
        """Does the server refuse If-None-Match: * writes at a key that holds an object?"""
        key = f"foreign-probe-{self.rnd.randrange(1 << 32):08x}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"probe")
        self.conditional["put"] = self._refused(lambda: self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=b"probe", IfNoneMatch="*"))
        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        etag = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x")["ETag"]
        self.conditional["complete"] = self._refused(lambda: self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}))
        with contextlib.suppress(ClientError):
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    @staticmethod
    def _refused(write: Callable[[], object]) -> bool:
        try:
            write()
        except ClientError as e:
            if _status(e) == 412:
                return True
        return False

    def act(self) -> None:
        if self.open and self.rnd.random() < 0.3:
            self.complete_upload(self.open.pop(self.rnd.randrange(len(self.open))))
            return
        target = self.target()
        if target is None:
            return
        key, how = target
        if not self.conditional["put"]:  # see the class's docstring
            self.start_upload(key)
        elif how == "put" or self.rnd.random() < 0.5:
            if self.put_at(key) and how == "put":
                self.counts["put-at-upload"] += 1  # that upload's Complete finds the key taken
                self.at_uploads.add(key)
        else:
            self.start_upload(key)

    def target(self) -> tuple[str, str] | None:
        """A key spoolup is about to claim, or has claimed and not completed yet, and how to
        take it ("put" or "any"); None: one it aimed at before.  Three kinds:
        - beside an upload in progress that is not its own (spoolup's, while its object is
          being uploaded): its very key (a PUT, so that spoolup's Complete finds the key
          taken), or the next index or the one after (where spoolup's next objects of the
          key wait, claimed, for this one to complete);
        - the bare key of the next minute's timestamp;
        - the next index after what the bucket holds for the current timestamp, or one or
          two past it."""
        now = time.time()
        theirs = [k for page in self.s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=PREFIX) for u in page.get("Uploads", []) or []
            if u["UploadId"] not in self.uploads and KEY_RE.match(k := u["Key"])]
        how = "any"
        beside = []  # (key, steps past an upload in progress) it has not aimed at yet
        for m in map(KEY_RE.match, theirs):
            for step in (0, 0, 1, 1, 2):
                i = int(m["idx"] or 0) + step
                if (k := f"{PREFIX}{m['name']}-{m['ts']}" + (f"-{i}" if i else "")) not in self.tried:
                    beside.append((k, step))
        if beside and self.rnd.random() < 0.7:
            key, step = self.rnd.choice(beside)
            aim, how = ("at-upload", "put") if not step else ("after-upload", how)
            self.hurry_until = max(self.hurry_until, time.monotonic() + 1)  # spoolup is busy there: come back soon
        elif time.monotonic() < self.hurry_until:
            return None  # watching for an upload
        else:
            name = self.rnd.choice(self.names)
            if self.rnd.random() < 0.25:
                key, aim = f"{PREFIX}{name}-{time.strftime(TS_FORMAT, time.localtime(now + 60))}", "next-minute"
            else:
                ts = time.strftime(TS_FORMAT, time.localtime(now))
                prefix = f"{PREFIX}{name}-{ts}"
                held = [o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix) for o in page.get("Contents", [])]
                held += [k for k in theirs if k.startswith(prefix)]
                idxs = [int(m["idx"] or 0) for m in map(KEY_RE.match, held)
                        if m and m["name"] == name and m["ts"] == ts]
                idx = (max(idxs) + 1 if idxs else 0) + self.rnd.choice((0, 0, 0, 1, 2))
                key, aim = prefix + (f"-{idx}" if idx else ""), "next-index"
        if key in self.tried:
            return None
        self.tried.add(key)
        self.counts[f"aim-{aim}"] += 1
        return key + (self.rnd.choice(("", self.suffix)) if self.suffix else ""), how

    def note(self, what: str, key: str, outcome: str = "") -> None:
        self.journal.append(f"{time.time():.3f} {what} {key} {outcome}".rstrip())

    def body(self, key: str) -> bytes:
        self.counts["bodies"] += 1
        return b"%s%s n=%d %s\n" % (FOREIGN, key.encode(), self.counts["bodies"], self.rnd.randbytes(16).hex().encode())

    def put_at(self, key: str) -> bool:
        body = self.unsure[key] = self.body(key)
        sent = time.time()
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as e:
            if _status(e) < 500:  # a definite no
                del self.unsure[key]
            self.note("put", key, f"HTTP {_status(e)}")
            if _status(e) == 412:
                self.counts["refused"] += 1
                return False
            raise
        self.written[key] = self.unsure.pop(key)
        self.written_at[key] = (sent, time.time())
        self.counts["puts"] += 1
        self.note("put", key, "done")
        return True

    def start_upload(self, key: str) -> None:
        try:
            upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        except BotoCoreError:
            self.create_lost.add(key)
            raise
        self.uploads[upload_id] = key
        if self.rnd.random() < 0.2:
            self.empty.append(upload_id)
            self.note("create", key, f"{upload_id} left empty")
            return
        body = self.body(key)
        etag = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body)["ETag"]
        self.parts[upload_id] = (body, etag)
        self.open.append(upload_id)
        self.note("create", key, f"{upload_id} with a part")

    def complete_upload(self, upload_id: str) -> None:
        key, (body, etag) = self.uploads[upload_id], self.parts[upload_id]
        if not self.conditional["complete"]:  # see the class's docstring
            self.abort(upload_id)
            return
        self.settled.add(upload_id)
        self.unsure[key] = body
        sent = time.time()
        try:
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}, IfNoneMatch="*")
        except ClientError as e:
            self.note("complete", key, f"{upload_id} HTTP {_status(e)}")
            if _status(e) < 500:
                del self.unsure[key]
            if _status(e) == 412:
                self.abort(upload_id)
                return
            if _status(e) < 500:
                self.settled.discard(upload_id)  # not completed: verify() says whether it still exists
            raise
        self.written[key] = self.unsure.pop(key)
        self.written_at[key] = (sent, time.time())
        self.counts["completed"] += 1
        self.note("complete", key, f"{upload_id} done")

    def abort(self, upload_id: str) -> None:
        """Its own upload, whose key someone else took meanwhile (or that it may not complete)."""
        self.counts["refused"] += 1
        self.settled.add(upload_id)
        self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.uploads[upload_id], UploadId=upload_id)


# ---------------------------------------------------------------------------
# verification


def completions(log: Path | None) -> dict[str, list[float]]:
    """key -> when spoolup logged it completed there ("object completed", time.time() scale)."""
    out: dict[str, list[float]] = {}
    if log is None or not log.exists():
        return out
    import datetime

    for line in log.read_text(errors="replace").splitlines():
        if '"object completed"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                e = json.loads(line)
                when = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
                out.setdefault(e["key"], []).append(when)
        elif "had succeeded but was not journaled" in line:
            # a Complete in flight when the process was killed, found by reconcile: its time is unknown
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out.setdefault(json.loads(line)["action"].split(": ", 1)[0], []).append(float("nan"))
    return out


RACE_WINDOW = 2.0  # seconds: a write of spoolup's that ends this soon after a foreign one was in flight with it


def races(foreign: ForeignWriter | None, raw: dict[str, bytes], foreign_objects: set[str], all_uploads: list[dict],
          ours: dict[tuple[str, str], set[int]], problems: list[str],
          completed: dict[str, list[float]] | None = None) -> dict:
    """The key races' figures: what the foreign writer did and whether it was respected (its
    objects keep their bytes, its uploads are never taken away), and index gaps.

    s3() numbering: a key+timestamp's objects take indexes from the bare key up, skipping
    those the bucket holds.  So each index below spoolup's highest one of a key+timestamp
    must be explained by the bucket: spoolup's object, a foreign object, a key the foreign
    writer held at some moment (an upload it later completed elsewhere or aborted, a write
    whose reply it lost), or an upload still pending there.  Any other is a gap.

    A foreign object replaced by spoolup's own, whose write spoolup logged as completed at
    that key after the foreign write was sent and at most RACE_WINDOW after its reply (or,
    for a PUT at the key of an upload in progress, whose Complete reconcile found done after
    a kill, at an unknown time), was replaced by a write that was in flight with it (a write of spoolup's that started after
    the foreign one ended would have found the key taken): only an atomic conditional
    write protects it there.  moto checks
    If-None-Match before it assembles the parts and stores the object (not atomic), Ceph
    RGW ignores it on Complete (spoolup HEADs right before: docs/operations.md), so these
    are counted apart (foreign_overwritten_in_flight), not as spoolup's failures.  Any
    other replacement (such as spoolup completing an upload at a key its journal gave up,
    issue 18 item 2) is foreign_overwritten."""
    pending = {u["UploadId"] for u in all_uploads}
    explained: dict[tuple[str, str], set[int]] = {}
    for key in [*foreign_objects, *(u["Key"] for u in all_uploads), *(foreign.held_keys() if foreign else ())]:
        if m := KEY_RE.match(key):
            explained.setdefault((m["name"], m["ts"]), set()).add(int(m["idx"] or 0))
    gaps = 0
    for (name, ts), idxs in sorted(ours.items()):
        holes = [i for i in range(max(idxs)) if i not in idxs and i not in explained.get((name, ts), ())]
        gaps += len(holes)
        if holes:
            problems.append(f"{PREFIX}{name}-{ts}: index gap {holes[:10]} (spoolup's indexes {sorted(idxs)[:20]})")
    if foreign is None:
        return {"index_gaps": gaps, "foreign_objects": 0, "foreign_uploads": 0, "foreign_pending_uploads": 0,
                "foreign_overwritten": 0, "foreign_uploads_vanished": 0, "foreign_overwritten_in_flight": 0}
    completed = completed or {}
    replaced = [k for k, body in foreign.written.items() if raw.get(k) != body]
    def overlaps(key: str, slack: float) -> bool:
        sent, replied = foreign.written_at.get(key, (-1e9, -1e9))
        return any(sent - slack <= t <= replied + RACE_WINDOW or (t != t and key in foreign.at_uploads)
                   for t in completed.get(key, ()))

    in_flight = [k for k in replaced if k in raw and not raw[k].startswith(FOREIGN) and overlaps(k, 0)]
    overwritten = [k for k in replaced if k not in in_flight]
    # the other way round (rarer: a foreign PUT is small, its check and store are close):
    # spoolup's object at a key replaced by a foreign write in flight with it; its records
    # then count as lost, and this says why
    lost_in_flight = [k for k in foreign_objects if overlaps(k, RACE_WINDOW)]
    for key in lost_in_flight[:10]:
        problems.append(f"spoolup's object at {key} was replaced by a foreign write in flight with it (the "
                        "server's If-None-Match check is not atomic): its records count as lost")
    for key in overwritten[:10]:
        problems.append(f"foreign object {key} " + ("is gone" if key not in raw else "was overwritten"))
    odd = [k for k in foreign_objects if raw[k] not in (foreign.written.get(k), foreign.unsure.get(k))]
    for key in odd[:10]:
        problems.append(f"foreign object {key} holds bytes the foreign writer did not write there")
    # an upload with a part, neither completed nor aborted by the foreign writer, must still be there;
    # one it left empty may be gone (an empty upload at a claimed key may be adopted: issue 18 item 4)
    vanished = [u for u in foreign.parts if u not in foreign.settled and u not in pending]
    for upload_id in vanished[:10]:
        problems.append(f"foreign upload at {foreign.uploads[upload_id]} (with a part) was taken away")
    return {
        "index_gaps": gaps, "foreign_objects": len(foreign_objects), "foreign_uploads": len(foreign.uploads),
        "foreign_puts": foreign.counts["puts"], "foreign_completed": foreign.counts["completed"],
        "foreign_refused": foreign.counts["refused"], "foreign_errors": foreign.counts["errors"],
        "foreign_last_error": foreign.last_error,
        "foreign_aims": {k[4:]: n for k, n in sorted(foreign.counts.items()) if k.startswith("aim-")},
        "foreign_puts_at_uploads": foreign.counts["put-at-upload"],
        "foreign_pending_uploads": sum(1 for u in foreign.uploads if u in pending),
        "foreign_empty_uploads_gone": sum(1 for u in foreign.empty if u not in pending),
        "foreign_conditional": dict(foreign.conditional),
        "foreign_overwritten": len(overwritten) + len(odd), "foreign_uploads_vanished": len(vanished),
        "foreign_overwritten_in_flight": len(in_flight), "spoolup_overwritten_in_flight": len(lost_in_flight),
    }
