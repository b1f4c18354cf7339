"""Reconcile the journal with the bucket after a crash: each unfinished object classified by
its outcome in the bucket, before the upload process uploads anything (and in `spoolup recover`).

Each object is judged by what the bucket holds (HEAD, the multipart ETag, does its upload
still exist), never by the error code a server happens to give, and one object that cannot
be checked never holds up the others.  The local part (chunk files, spool sources) is
spoolup/recover.py, which also holds the Report both fill.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from spoolup.capabilities import probe_key_prefix, probe_scratch_prefix, remove_stale_probes
from spoolup.chunks import part_file, remove_chunk_files
from spoolup.config import Config
from spoolup.journal import ChunkState, Journal, ObjectRow, ObjectState, UploadMode
from spoolup.journal.cleanups import ORPHANS
from spoolup.protocol import Protocol
from spoolup.s3 import S3, FileBody, NoSuchUpload, S3Error, multipart_etag, same_etag

if TYPE_CHECKING:
    from spoolup.recover import Report


def reconcile(cfg: Config, journal: Journal, s3: S3, report: "Report", *, dry_run: bool) -> set[str]:
    """Compare every unfinished object of the journal with the bucket.  An object that cannot be
    checked now (S3 refuses or fails for it) is noted and left to the upload process, which
    classifies it by outcome when it gets to it: it never holds up the others.  Returns the keys
    with a multipart upload in progress under the object-key's static prefix, as listed at its
    end (the upload process's claims start from it: Protocol.seed_pending)."""
    proto = Protocol(cfg, s3, cfg.chunk_dir, journal.journal_id)
    for obj in journal.claimed_unfinished():
        try:
            if obj.mode == UploadMode.MULTIPART and obj.upload_id is not None:
                _reconcile_multipart(cfg, journal, proto, obj, report, dry_run=dry_run)
            elif obj.mode == UploadMode.SINGLE:
                _reconcile_single(cfg, journal, proto, obj, report, dry_run=dry_run)
        except S3Error as e:
            if e.code == "NoSuchBucket":
                raise
            report.note(f"{obj.final_key}: cannot be checked with S3 now ({e}); the upload process checks it "
                        "again when it gets to it, and every other object ships meanwhile")

    # other uploads under the target prefix the journal does not know are never aborted here: they
    # are someone else's (a concurrent agent or s3() writer), skipped as s3() does -- or, at a key
    # claimed by an object whose upload id is not journaled, an empty one whose Create reply or
    # journal entry was lost, which the upload process adopts, or one holding the object's own
    # parts, which it aborts (spoolup/protocol.py, adopt).
    owed = journal.cleanups_owed()  # (the upload process carries them out, before any claim of their keys)
    known_ids = journal.upload_ids() | {c.upload_id for c in owed if c.upload_id}
    owed_keys = {c.key for c in owed if c.kind == ORPHANS}
    starting = {o.final_key for o in journal.claimed_unfinished()
                if o.mode == UploadMode.MULTIPART and o.upload_id is None}
    ours = probe_key_prefix(cfg, journal.journal_id)
    uploads, probe_objects = listings(cfg, s3, proto.prefix)
    for key, upload_id, _ in uploads:
        if key.startswith(ours):
            # a capability probe of this journal's that a crash cut short: its scratch key is ours
            report.did(f"abort the upload of an interrupted capability probe at {key}")
            if not dry_run:
                s3.abort(key, upload_id)
        elif upload_id not in known_ids and key in owed_keys:
            report.note(f"multipart upload {upload_id[:16]}... of {key}: at a key an object of this journal gave up "
                        "after a CreateMultipartUpload may have been sent for it; the upload process aborts it if it "
                        "holds no part (that Create's orphan) or a part of the object's own chunk files, else it is "
                        "someone else's, left alone and its index skipped")
        elif upload_id not in known_ids and key in starting:
            report.note(f"multipart upload {upload_id[:16]}... of {key}: at the key this journal claimed for an object "
                        "whose upload id is not journaled -- the orphan of its CreateMultipartUpload if it holds no "
                        "part (a crash or a lost reply), which the upload process adopts (or aborts, if someone else's "
                        "object holds the key or the object moves to another index); a lost state of this "
                        "journal's if it holds a part of the object's own chunk files (a restored backup), which "
                        "the upload process aborts; else someone else's, left alone and its index skipped")
        elif upload_id not in known_ids and ".spoolup-probe-" not in key:
            report.note(f"multipart upload {upload_id[:16]}... of {key} is not one this journal created; its index "
                        "is skipped and it is left alone (abort it with `aws s3api abort-multipart-upload` if it "
                        "is stale, or let a lifecycle rule AbortIncompleteMultipartUpload do it)")
    for key in sorted(k for k in probe_objects if k.startswith(ours)):
        # the scratch object of a probe of this journal's that a crash cut short (capabilities or
        # listing encoding: none runs while reconcile does)
        report.did(f"remove the scratch object of an interrupted capability probe at {key}")
        if not dry_run:
            s3.delete(key)
    # the probe scratch of any journal (or of a check-config) that a crash cut short and that is
    # older than a probe can take: nothing else ever removes it (issue 18 item 9)
    aborted = {u for k, u, _ in uploads if k.startswith(ours)}
    probe_uploads = [(k, u, t) for k, u, t in uploads if k.startswith(probe_scratch_prefix(cfg)) and u not in aborted]
    ours_removed = {k for k in probe_objects if k.startswith(ours)}
    for what in remove_stale_probes(cfg, s3, dry_run=dry_run, listed=(
            {k: t for k, t in probe_objects.items() if k not in ours_removed}, probe_uploads)):
        report.did(what)
    return {k for k, _, _ in uploads if not k.startswith(ours)}


def listings(cfg: Config, s3: S3, prefix: str) -> tuple[list[tuple[str, str, float]], dict[str, float]]:
    """The two listings reconcile needs, made at once (one round trip, not one after the other):
    the multipart uploads under the object-key's static prefix (with their Initiated: the probe
    scratch among them), and the probe scratch objects (this journal's, and any stale ones)."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="reconcile") as pool:
        objects = pool.submit(s3.list_objects, probe_scratch_prefix(cfg))
        uploads = s3.list_uploads_initiated(prefix)
        return uploads, objects.result()


def _reconcile_multipart(cfg: Config, journal: Journal, proto: Protocol, obj: ObjectRow, report: "Report",
                         *, dry_run: bool) -> None:
    s3 = proto.s3
    chunks = journal.chunks_of(obj.id)
    codec = proto.codec_of(obj)
    if obj.state == ObjectState.CLOSED and chunks and all(c.state == ChunkState.UPLOADED for c in chunks):
        # the outcome first: a Complete that took effect before the crash leaves our object at
        # the key (and, on RGW, a ListParts that says NoSuchKey)
        head = s3.head(obj.final_key)
        size = sum(c.part_size for c in chunks) if all(c.part_size is not None for c in chunks) else None
        if proto.is_ours(head, obj.id, multipart_etag(c.etag for c in chunks), size):
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
        if c.state == ChunkState.UPLOADED and (in_s3 is None or not same_etag(in_s3[0], c.etag)):
            report.did(f"{obj.final_key}: part {c.part} is journaled but S3 does not hold it; "
                       "uploading it again from the local chunk")
            if not dry_run:
                journal.reseal_parts(obj.id, [c.part])
        elif c.state == ChunkState.SEALED and in_s3 is not None:
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
    body = FileBody.of(path) if head is not None else None
    if body is not None and proto.is_ours(head, obj.id, f'"{body.md5_hex}"', body.size):
        report.did(f"{obj.final_key}: PutObject had succeeded but was not journaled; marked done")
        if not dry_run:
            journal.complete(obj.id, head["etag"])
            remove_chunk_files(cfg.chunk_dir, obj.id)
