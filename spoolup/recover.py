"""Recovery: reconcile the journal with the chunk files, the spool and the bucket.

`spoolup recover` runs all of it and prints the report; `spoolup run` runs the
local part before ingest starts and the upload process runs the remote part
before it uploads anything.  With dry_run nothing is changed anywhere: the
report says what would be done.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spoolup import keys
from spoolup import form as forms
from spoolup.chunks import part_file, raw_file
from spoolup.config import Config
from spoolup.form import Form
from spoolup.files import syncfs
from spoolup.journal import Journal
from spoolup.spool import scan

if TYPE_CHECKING:
    from spoolup.s3 import S3


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)  # what was found and done (or would be)
    problems: list[str] = field(default_factory=list)  # what recovery cannot fix: the operator must act
    notes: list[str] = field(default_factory=list)  # needs attention, does not stop shipping

    def did(self, text: str) -> None:
        self.lines.append(text)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self, dry_run: bool) -> str:
        out = []
        verb = "would do" if dry_run else "did"
        if self.lines:
            out.append(f"Recovery actions ({verb}):")
            out.extend(f"  - {line}" for line in self.lines)
        elif self.problems:  # something could not be checked or fixed: agreement is not known
            out.append("Nothing to repair in what could be checked; see the problems below.")
        else:
            out.append("Nothing to repair: journal, chunk files and bucket agree.")
        if self.notes:
            out.append("Needs attention (shipping continues for everything else):")
            out.extend(f"  - {n}" for n in self.notes)
        if self.problems:
            out.append("PROBLEMS recovery cannot fix (spoolup will not guess):")
            out.extend(f"  - {p}" for p in self.problems)
        return "\n".join(out)


# ---------------------------------------------------------------------------
# local: chunk files


def reconcile_chunks(cfg: Config, journal: Journal, report: Report, *, dry_run: bool) -> None:
    """Chunk files longer than journaled are truncated (the tail was never committed);
    shorter or missing ones are problems; files the journal does not know are removed."""
    configured = Form.of_config(cfg)
    directory = cfg.chunk_dir
    if not directory.exists():
        return
    expected: dict[str, int] = {}  # file name -> journaled size
    rows = journal.conn.execute(
        "SELECT c.object_id, c.part, c.length, c.state, c.part_size, o.form "
        "FROM chunks c JOIN objects o ON o.id = c.object_id WHERE o.state != 'done'"
    ).fetchall()
    for oid, part, length, state, part_size, form in rows:
        # each object's files are named by the codec it was started with, not today's
        codec = forms.parse(form, configured).codec
        if state == "open" or not codec.compressed:
            expected[raw_file(directory, oid, part).name] = length
        else:
            expected[part_file(directory, oid, part, codec).name] = part_size
    present = {e.name: e for e in os.scandir(directory) if e.is_file(follow_symlinks=False)}
    truncated: list[str] = []
    for name, size in sorted(expected.items()):
        entry = present.get(name)
        actual = _size(entry)
        if actual == size:
            continue
        if (actual is None or actual < size) and _done_now(journal, name):
            continue  # completed meanwhile by the upload process (it starts alongside), files removed
        if actual is not None and actual > size and not name.endswith(".part"):
            truncated.append(f"{name} ({actual} -> {size})")
            if not dry_run:
                os.truncate(entry.path, size)
            continue
        shown = "missing" if actual is None else f"{actual} bytes"
        report.problem(
            f"chunk file {directory / name} is {shown} but the journal says {size} bytes: "
            "bytes that were journaled as safe are gone from the state dir (disk corruption or manual "
            "deletion). Restore the file from a backup; spoolup will not upload a damaged object"
        )
    if truncated:
        report.did(f"truncate {len(truncated)} chunk file(s) to their journaled lengths (the bytes past them "
                   "were never committed: a batch cut short, or the zero padding of an O_DIRECT block; they "
                   f"are read again from the spool): {', '.join(truncated[:5])}{' ...' if len(truncated) > 5 else ''}")
        if not dry_run and cfg.fsync:
            syncfs(directory)  # one flush for all of them
    stray = sorted(set(present) - set(expected))
    if stray:
        report.did(f"remove {len(stray)} chunk file(s) the journal does not reference "
                   f"(uncommitted or already uploaded): {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}")
        if not dry_run:
            for name in stray:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / name)


def _size(entry: os.DirEntry | None) -> int | None:
    try:
        return entry.stat().st_size if entry is not None else None
    except FileNotFoundError:
        return None


def _done_now(journal: Journal, chunk_name: str) -> bool:
    row = journal.conn.execute("SELECT state FROM objects WHERE id = ?", (int(chunk_name[:12]),)).fetchone()
    return row is None or row[0] == "done"


# ---------------------------------------------------------------------------
# local: spool sources


def inspect_sources(cfg: Config, journal: Journal, report: Report) -> None:
    """Report spool files that shrank, were replaced or vanished under a journaled offset.
    (The ingest's spool scanner journals the same findings when it runs.)"""
    found, _odd = scan(cfg.spool_dir) if cfg.spool_dir.exists() else ({}, {})
    by_path = {e.path: ident for ident, e in found.items()}
    for src in journal.live_sources():
        entry = found.get((src.dev, src.ino))
        if entry is None:
            unread = (f"; {src.size - src.offset} bytes of the old file not yet read are lost to spoolup"
                      if src.offset < src.size else "")
            if src.path in by_path:
                report.note(f"spool file {cfg.spool_dir / src.path} was replaced by another file (its inode "
                            f"changed under the journaled offset {src.offset}): the new file is shipped from its "
                            f"start as a new spool file, to the next object of its key{unread}. Everything "
                            "journaled from the old file is safe")
            elif unread:
                report.note(f"spool file {cfg.spool_dir / src.path} was removed{unread}. Everything journaled "
                            "before is safe")
            continue
        if entry.st.st_size < src.offset:
            report.note(f"spool file {cfg.spool_dir / entry.path} shrank to {entry.st.st_size} bytes, below the "
                        f"{src.offset} bytes already shipped: it was truncated or rewritten in place (copytruncate). "
                        "Its content now is shipped from byte 0 by the next run. Everything journaled is safe")
        elif src.state == "error" and src.error:
            report.note(f"spool file {cfg.spool_dir / entry.path}: {src.error}")
        elif src.state == "refused" and src.error:
            report.note(f"spool file {cfg.spool_dir / entry.path}: {src.error}")
        if entry.path != src.path:
            report.did(f"spool file {src.path} was renamed to {entry.path}; it keeps its object key")


# ---------------------------------------------------------------------------
# remote: the bucket


def reconcile_remote(cfg: Config, journal: Journal, s3: "S3", report: Report, *, dry_run: bool) -> None:
    from spoolup.s3 import FileBody, NoSuchUpload, multipart_etag, same_etag
    from spoolup.upload import Work, remove_chunk_files

    work = Work(cfg, s3, cfg.chunk_dir, journal.journal_id)

    # 1. multipart uploads the journal knows: compare with what S3 holds (ListParts)
    for obj in journal.objects_where("state != 'done' AND mode = 'multipart' AND upload_id IS NOT NULL"):
        chunks = journal.chunks_of(obj.id)
        try:
            held = s3.list_parts(obj.final_key, obj.upload_id)
        except NoSuchUpload:
            if obj.state == "closed" and chunks and all(c.state == "uploaded" for c in chunks):
                head = s3.head(obj.final_key)
                if work.is_ours(head, obj.id, multipart_etag(c.etag for c in chunks)):
                    report.did(f"{obj.final_key}: CompleteMultipartUpload had succeeded but was not journaled; "
                               "marked done (ETag matches the journaled parts), not uploaded again")
                    if not dry_run:
                        journal.complete(obj.id, head["etag"])
                        remove_chunk_files(cfg.chunk_dir, obj.id)
                    continue
            report.did(f"{obj.final_key}: multipart upload {obj.upload_id[:16]}... no longer exists; a new one "
                       f"is started and its {len(chunks)} part(s) uploaded again from local chunks")
            if not dry_run:
                journal.reset_upload(obj.id)
            continue
        for c in chunks:
            in_s3 = held.get(c.part)
            if c.state == "uploaded" and (in_s3 is None or not same_etag(in_s3[0], c.etag)):
                report.did(f"{obj.final_key}: part {c.part} is journaled but S3 does not hold it; "
                           "uploading it again from the local chunk")
                if not dry_run:
                    with journal.transaction():
                        journal.conn.execute("UPDATE chunks SET state = 'sealed', etag = NULL "
                                             "WHERE object_id = ? AND part = ?", (obj.id, c.part))
            elif c.state == "sealed" and in_s3 is not None:
                path = part_file(cfg.chunk_dir, obj.id, c.part, work.codec_of(obj))
                if not path.exists():
                    continue
                body = FileBody.of(path)
                if same_etag(in_s3[0], f'"{body.md5_hex}"'):
                    report.did(f"{obj.final_key}: part {c.part} was uploaded but its ETag not journaled; "
                               "journaled now (not uploaded again)")
                    if not dry_run:
                        journal.record_parts([(obj.id, c.part, in_s3[0], body.md5_hex)])

    # 2. claimed keys whose upload id was never journaled: the upload S3 created is an orphan
    for obj in journal.objects_where("state != 'done' AND mode = 'multipart' AND upload_id IS NULL "
                                     "AND final_key IS NOT NULL"):
        for key, upload_id in s3.list_uploads(obj.final_key):
            if key == obj.final_key:
                report.did(f"abort orphaned multipart upload {upload_id[:16]}... of {key} "
                           "(created just before a crash, its id never journaled)")
                if not dry_run:
                    s3.abort(key, upload_id)

    # 3. single-part objects whose PutObject may have succeeded before a crash
    for obj in journal.objects_where("state != 'done' AND mode = 'single' AND final_key IS NOT NULL"):
        path = part_file(cfg.chunk_dir, obj.id, 1, work.codec_of(obj))
        if not path.exists():
            continue
        head = s3.head(obj.final_key)
        if head is not None and work.is_ours(head, obj.id, f'"{FileBody.of(path).md5_hex}"'):
            report.did(f"{obj.final_key}: PutObject had succeeded but was not journaled; marked done")
            if not dry_run:
                journal.complete(obj.id, head["etag"])
                remove_chunk_files(cfg.chunk_dir, obj.id)

    # 4. other uploads under the target prefix the journal does not know.  At a key spoolup
    #    claimed they are orphans of spoolup's own (a Create whose reply was lost): abort them.
    #    Anywhere else they are someone else's (a concurrent s3() writer, a leftover): spoolup
    #    skips their indexes, as s3() does, and leaves them alone.
    known_ids = {r[0] for r in journal.conn.execute("SELECT upload_id FROM objects WHERE upload_id IS NOT NULL")}
    claimed = {r[0] for r in journal.conn.execute("SELECT final_key FROM objects WHERE final_key IS NOT NULL")}
    prefix = keys.static_prefix(cfg.object_key)
    for key, upload_id in s3.list_uploads(prefix):
        if upload_id in known_ids:
            continue
        if key in claimed:
            report.did(f"abort multipart upload {upload_id[:16]}... of {key}: spoolup claimed this key but the "
                       "journal does not know the upload (orphan of a crash)")
            if not dry_run:
                s3.abort(key, upload_id)
        else:
            report.note(f"multipart upload {upload_id[:16]}... of {key} is not spoolup's; its index is skipped "
                        "and it is left alone (abort it with `aws s3api abort-multipart-upload` if it is stale)")
