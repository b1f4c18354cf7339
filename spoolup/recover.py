"""Recovery: reconcile the journal with the chunk files, the spool and the bucket.

`spoolup recover` runs all of it and prints the report; `spoolup run` runs the
local part before ingest starts and the upload process runs the remote part
(spoolup/reconcile.py: the bucket) before it uploads anything.  With dry_run nothing is changed anywhere: the
report says what would be done.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from spoolup import form as forms
from spoolup.chunks import part_file, raw_file
from spoolup.config import Config
from spoolup.form import Form
from spoolup.files import syncfs
from spoolup.journal import ChunkState, Journal, ObjectState, SourceState
from spoolup.scan import scan


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
    rows = journal.unfinished_chunks()
    for oid, part, length, state, part_size, form in rows:
        # each object's files are named by the codec it was started with, not today's
        codec = forms.parse(form, configured).codec
        if state == ChunkState.OPEN or not codec.compressed:
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
    obj = journal.object(int(chunk_name[:12]))
    return obj is None or obj.state == ObjectState.DONE


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
        elif src.state == SourceState.ERROR and src.error:
            report.note(f"spool file {cfg.spool_dir / entry.path}: {src.error}")
        elif src.state == SourceState.REFUSED and src.error:
            report.note(f"spool file {cfg.spool_dir / entry.path}: {src.error}")
        if entry.path != src.path:
            report.did(f"spool file {src.path} was renamed to {entry.path}; it keeps its object key")
