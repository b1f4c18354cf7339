"""The bucket decides what was shipped when the state dir cannot: the start-up check and the
bring-forward from the ledger (docs/DESIGN.md, "The bucket is the ledger"; issue 22 item 2).

A journal knows the highest ledger segment number its agent wrote or saw.  Before ingest or
upload starts (`run`, `drain`, `recover`), one LIST of the agent's ledger prefix after that
number says whether the bucket knows of objects the journal does not: a restored backup, a
copied state dir started late, a write-ahead log lost after a crash, a wiped state dir (a new
journal knows no segment).  If it does, the journal is *brought forward* before anything is
read or uploaded:

  a. the segments after the journal's number are read (`recover --from-bucket`: all of the
     agent's), the latest record of each object kept, and of those the ones whose object is
     at its final key with that size and ETag are *shipped* (a record is written before its
     object becomes visible: one without its object is an intention a crash cut short);
  b. each shipped object the journal does not have done at that key is inserted as done,
     with its spans of the spool files (found again by device, inode, birth time and a digest
     of their first bytes; a file the journal does not know gets a source row);
  c. every not-done object of the journal holding shipped bytes is discarded (rows and chunk
     files), its spool files rewound to the start of its bytes (and every other not-done
     object holding bytes of them past that point discarded too), and each rewound or behind
     source gets *skip spans*: the shipped bytes past its offset -- the records read and the
     journal's own done objects (objects complete out of order across keys and timestamps) --
     which ingest reads past without shipping (spoolup/reader.py).  Contiguous shipped bytes
     at the offset are not even read again: the offset moves past them;
  d. if bytes that must be read again are no longer in the spool, nothing is changed and
     spoolup exits 1 naming the file, the bytes and what to do.

All journal changes are one transaction (Journal.bring_forward); the discarded objects'
chunk files are removed after it commits.  The multipart uploads of the objects it discards
or unclaims are owed to the bucket in that transaction (the journal's cleanups) and aborted
after it, each forgotten once S3 confirms it: a crash in between leaves them to the upload
process, never in the bucket for good.

Before any of that, the uploads the lost journal had started are aborted (lost_uploads): a
multipart object's CreateMultipartUpload is sent only once a segment holds its *start intent*
(spoolup/ledgerstage.py), so for every latest start intent of this agent whose object is not
shipped -- and for every object of this journal whose intent it journaled but whose upload id
it did not -- an upload at that final key whose id this journal does not know is the lost
journal's own: no process of this state dir will ever complete it (the upload process would
call it someone else's and skip its index).  Limit: a foreign writer that starts an upload at
the very key the lost journal had claimed, after that journal's intent and before the loss,
loses that upload too (docs/operations.md, "When the journal is lost").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from spoolup import crash, identity, keytime, ledger, segments
from spoolup.chunks import remove_chunk_files
from spoolup.config import Config
from spoolup.journal import Journal, JournalError, ObjectRow
from spoolup.journal.cleanups import UPLOAD
from spoolup.journal.ledger import DoneObject, Forward, NewSource
from spoolup.ledger import Record, SourceSpans, Span
from spoolup.s3 import S3, S3Error
from spoolup.scan import ScanEntry, open_regular, scan

Ref = int  # a source: its journal id, or -1 - i for Forward.new_sources[i]


class BehindTheBucket(JournalError):
    """The journal cannot be brought forward (bytes to read again are gone, a segment cannot
    be read): nothing was changed; the message says why and what to do."""


def agent_of(cfg: Config) -> str:
    """The agent id the ledger is kept under (option agent-id; its default survives the state dir)."""
    return getattr(cfg, "agent_id", None) or ledger.default_agent_id(cfg.spool_dir)


@dataclass
class Result:
    segments: int = 0  # segments read
    shipped: int = 0  # records whose object is in the bucket
    lines: list[str] = field(default_factory=list)  # what was (or would be) done
    discarded: list[ObjectRow] = field(default_factory=list)


# ---------------------------------------------------------------------------
# the start-up check


def behind(cfg: Config, journal: Journal, s3: S3) -> bool:
    """One LIST: does the bucket hold a segment of this agent numbered after the journal's?
    (A bucket that does not exist yet holds none.)"""
    try:
        return bool(segments.after(s3, cfg.object_key, agent_of(cfg), journal.ledger_seq(), first_only=True))
    except S3Error as e:
        if e.code == "NoSuchBucket":
            return False
        raise


def start_check_client(cfg: Config) -> S3:
    """The start-up check's client tries each request once: where S3 does not answer, the
    check is the upload process's (below), and ingest does not wait for botocore's retries and
    their back-off (seconds, every start while S3 is down)."""
    return S3(cfg, attempts=1)


def at_start(cfg: Config, journal: Journal, log, *, mark: int = 0,
             s3_factory: Callable[[Config], S3] = start_check_client) -> Result | None:
    """The check `run` and `drain` make before ingest and upload start; brings the journal
    forward when the bucket is ahead.  Where S3 fails, the check is left to the upload process
    (`unchecked`), which makes it before it uploads anything.  `mark`: the state dir's claims mark, when
    the journal is below it (it lost transactions): settled by the bucket, then raised."""
    s3 = s3_factory(cfg)
    try:
        result = None
        if behind(cfg, journal, s3):
            log.warning("the bucket's ledger knows of objects this journal does not (a restored backup, a "
                        "copied state dir, a lost write-ahead log or a wiped state dir): bringing the journal "
                        "forward from it before anything is shipped", agent=agent_of(cfg),
                        journal_seq=journal.ledger_seq())
            result = bring_forward(cfg, journal, s3, dry_run=False)
            for line in result.lines:
                log.info("recovery", action=line)
        if mark:
            journal.raise_claims(mark)
        checked(journal)
        return result
    except S3Error as e:
        # S3 does not answer: ingest goes on (it only stages chunk files; a bring-forward
        # later discards whatever overlaps the bucket), and the upload process makes the
        # comparison before it uploads anything (spoolup/upload.py: nothing is shipped
        # from a journal that may be behind the bucket)
        journal.set_meta(UNCHECKED_META, "1")
        log.warning("cannot compare the journal with the bucket's ledger yet (S3 fails); the upload process "
                    "compares it before it uploads anything", error=str(e))
        return None
    finally:
        s3.close()


UNCHECKED_META = "ledger_unchecked"  # "1": the start-up check could not reach S3; the upload process makes it


def unchecked(journal: Journal) -> bool:
    return journal.meta(UNCHECKED_META) == "1"


def checked(journal: Journal) -> None:
    journal.set_meta(UNCHECKED_META, "0")


# ---------------------------------------------------------------------------
# the bring-forward


def bring_forward(cfg: Config, journal: Journal, s3: S3, *, dry_run: bool, everything: bool = False) -> Result:
    """Read the agent's segments after the journal's number (`everything`: all of them) and
    bring the journal forward (module docstring).  dry_run: the journal given is a copy
    (in memory), the chunk files and the bucket are left alone.  Raises BehindTheBucket,
    having changed nothing, when it cannot."""
    agent = agent_of(cfg)
    since = 0 if everything else journal.ledger_seq()
    # a not-done object already recorded may have been shipped by the future this journal lost:
    # its record is in a segment at or below the journal's number, so reading starts there (else
    # the object is discarded below and its bytes are read and shipped again)
    unfinished = None if everything else journal.lowest_unfinished_record()
    if unfinished is not None:
        since = min(since, unfinished - 1)
    keys = segments.after(s3, cfg.object_key, agent, since)
    records: list[Record] = []
    seq = since
    for key in keys:
        try:
            seg = segments.read(s3, key)
        except ledger.LedgerFormatError as e:
            raise BehindTheBucket(
                f"the ledger segment {key} in bucket {cfg.bucket} cannot be read ({e}); it may record objects "
                "this journal does not know, so spoolup will not ship anything before it is understood. Is it "
                "written by a newer spoolup? Upgrade spoolup; nothing was changed") from None
        except S3Error as e:
            if e.code in ("NoSuchKey", "404"):
                continue  # (deleted since the listing: an operator cleaning up; nothing to bring)
            raise
        seq = max(seq, seg.seq, ledger.seq_of(key) or 0)
        records.extend(seg.records)
    latest = ledger.latest(records)
    shipped = segments.in_bucket(s3, latest.values())
    result = Result(segments=len(keys), shipped=len(shipped))
    fw, discarded, lines = plan(cfg, journal, shipped, seq)
    result.lines = lines
    result.discarded = discarded
    # the lost journal's uploads go before the journal changes (and its segment number rises
    # past their intents): an abort that fails raises, and the next attempt finds them again
    for key, upload_id, origin in lost_uploads(journal, s3, ledger.latest_starts(records), shipped):
        result.lines.append(f"abort multipart upload {upload_id[:16]}... at {key}: started by object {origin}, whose "
                            "start intent is in the bucket's ledger, and unknown to this journal (it went back in "
                            "time or was rebuilt): no one else would ever complete or abort it; its records are "
                            "shipped from the spool")
        if not dry_run:
            try:
                s3.abort(key, upload_id)
            except S3Error as e:
                if e.code not in ("NoSuchUpload", "NoSuchKey", "404"):
                    raise
    if not fw.done and not fw.discard and not fw.moves and not fw.new_sources and not fw.skips and not fw.unclaim \
            and not fw.retire:
        if seq > journal.ledger_seq():
            journal.saw_ledger_seq(seq)
        if keys:
            result.lines.append(f"ledger: {len(keys)} segment(s) of agent {agent} after number {since} read; "
                                "the journal knew every object they record that is in the bucket")
        return result
    journal.bring_forward(fw)
    if not dry_run:
        crash.point("after-bring-forward")
        for row in discarded:
            remove_chunk_files(cfg.chunk_dir, row.id)
        abort_owed(journal, s3, {(key, upload_id) for key, upload_id, _ in fw.aborts}, result.lines)
    return result


def abort_owed(journal: Journal, s3: S3, which: set[tuple[str, str]], lines: list[str]) -> None:
    """Abort the uploads a bring-forward let go (its unclaims' and discards' own: owed in its
    transaction, the journal's cleanups), each forgotten once S3 confirms it (NoSuchUpload: it
    is gone already, completed or aborted).  One S3 fails for stays owed: the upload process
    aborts it (spoolup/coordinator.py), after a crash here too."""
    for c in journal.cleanups_owed():
        if c.kind != UPLOAD or (c.key, c.upload_id) not in which:
            continue
        try:
            s3.abort(c.key, c.upload_id)
        except S3Error as e:
            lines.append(f"multipart upload {c.upload_id[:16]}... at {c.key} not aborted yet ({e.code}); the upload "
                         "process aborts it")
            continue
        journal.cleanup_done(c.id)


def lost_uploads(journal: Journal, s3: S3, starts: dict[str, Record], shipped: list[Record]
                 ) -> list[tuple[str, str, str]]:
    """(final key, upload id, origin of the intent) of the multipart uploads a lost journal of
    this agent started and this journal does not know: at the final key of each latest start
    intent whose object is not shipped (nor done in this journal at that key), and of each of
    this journal's objects whose intent is journaled and upload id is not (a backup taken
    between the two), every upload whose id the journal does not hold.  One listing per key."""
    jid = journal.journal_id
    shipped_origins = {r.origin for r in shipped}
    claimed: dict[str, str] = {}  # final key -> origin of the intent
    for origin, r in starts.items():
        if origin not in shipped_origins:
            claimed.setdefault(r.final_key, origin)
    for o in journal.lost_starts():
        if f"{jid}/{o.id}" not in shipped_origins:
            claimed.setdefault(o.final_key, f"{jid}/{o.id}")
    if not claimed:
        return []
    for key, (oid, _etag, origin) in journal.done_final_keys(list(claimed)).items():
        if (origin or f"{jid}/{oid}") == claimed[key]:
            del claimed[key]  # completed: the journal has it done
    known = journal.upload_ids()
    out: list[tuple[str, str, str]] = []
    for key in sorted(claimed):
        out.extend((key, upload_id, claimed[key]) for k, upload_id in s3.list_uploads(key)
                   if k == key and upload_id not in known)
    return out


class _Spool:
    """The spool files, found once, and their first bytes."""

    def __init__(self, cfg: Config):
        self.dir = cfg.spool_dir
        self.found: dict[tuple[int, int], ScanEntry] = scan(cfg.spool_dir)[0] if cfg.spool_dir.exists() else {}

    def read(self, entry: ScanEntry, n: int, at: int = 0) -> bytes | None:
        try:
            fd = open_regular(self.dir / entry.path)
        except OSError:
            return None
        try:
            return os.pread(fd, n, at)
        except OSError:
            return None
        finally:
            os.close(fd)

    def btime(self, entry: ScanEntry) -> int | None:
        return identity.birth_time(path=self.dir / entry.path)


def plan(cfg: Config, journal: Journal, shipped: list[Record], seq: int) -> tuple[Forward, list[ObjectRow], list[str]]:
    """What bringing the journal forward to the shipped records changes (Forward), the not-done
    objects it discards, and the report's lines.  Raises BehindTheBucket for bytes that must be
    read again and are no longer in the spool."""
    fw = Forward(seq=seq)
    lines: list[str] = []
    jid = journal.journal_id
    known = journal.done_final_keys(r.final_key for r in shipped)
    new = [r for r in shipped if r.final_key not in known]
    if not new:
        return fw, [], lines
    spool = _Spool(cfg)
    live = {(s.dev, s.ino): s for s in journal.live_sources()}
    heads = journal.source_heads()
    refs: dict[tuple, Ref] = {}  # a SourceSpans' file identity -> ref, as matched
    entries: dict[Ref, ScanEntry] = {}
    unmatched: set[str] = set()
    retired: dict[int, str] = {}  # journal source id -> path: its inode holds another file the ledger names

    def ref_of(ss: SourceSpans) -> Ref | None:
        # Matched by the whole identity, never by (dev, ino) alone: the inode of a reaped spool
        # file is handed to the next file created (the writer recreates its file), so one inode
        # can carry spans of two files -- the journal's (a backup's live row) and the one the
        # spool holds now.
        ident = (ss.dev, ss.ino, ss.btime, ss.head_len, ss.head)
        if ident in refs:
            return refs[ident]
        row, entry = live.get((ss.dev, ss.ino)), spool.found.get((ss.dev, ss.ino))
        head = heads.get(row.id) if row is not None else None
        entry_btime = spool.btime(entry) if entry is not None else None
        if row is not None and head is not None and len(head) >= ss.head_len:
            same = ss.same_file(row.dev, row.ino, row.btime, head)
        elif row is not None and entry is not None and not identity.other_file(row.btime, entry_btime):
            same = ss.same_file(ss.dev, ss.ino, entry_btime, spool.read(entry, ss.head_len) or b"")
        else:
            same = False
        if same:
            ref = row.id
        elif entry is not None and ss.same_file(ss.dev, ss.ino, entry_btime, spool.read(entry, ss.head_len) or b""):
            # the spool's file is the record's, and it is not the journal's row on that inode
            # (that file was deleted and its inode reused): the row is retired -- the scan would
            # forget it and read the file it finds there from byte 0 as a new one, shipping
            # again what the bucket holds -- and the file gets a row of its own
            if row is not None:
                retired[row.id] = ss.path
            st = entry.st
            fw.new_sources.append(NewSource(ss.dev, ss.ino, entry.path, ss.path, st.st_size, st.st_mtime,
                                            entry_btime, b"", 0, None))
            ref = -len(fw.new_sources)
        else:
            unmatched.add(ss.path)
            return None
        refs[ident] = ref
        if entry is not None:
            entries[ref] = entry
        return ref

    shipped_spans: dict[Ref, list[Span]] = {}
    mapped: list[tuple[Record, dict[Ref, list[Span]]]] = []
    for r in new:
        ranges: dict[Ref, list[Span]] = {}
        for ss in r.sources:
            ref = ref_of(ss)
            if ref is not None:
                ranges.setdefault(ref, []).extend(ss.spans)
        ranges = {k: ledger.coalesce(v) for k, v in ranges.items()}
        for k, v in ranges.items():
            shipped_spans.setdefault(k, []).extend(v)
        mapped.append((r, ranges))
    shipped_spans = {k: ledger.coalesce(v) for k, v in shipped_spans.items()}

    # c. the journal's not-done objects that hold shipped bytes (or this journal's id of a
    # shipped object) go, and so does every later one of their sources
    unfinished = journal.unfinished_ranges()
    own_ids = {r.object for r in new if r.journal == jid}
    discard = {oid for oid, by_src in unfinished.items()
               if oid in own_ids or any(ledger.overlaps(spans, shipped_spans.get(sid, [])) for sid, spans in by_src.items())}
    rewind: dict[Ref, int] = {}
    while True:
        for oid in discard:
            for sid, spans in unfinished[oid].items():
                rewind[sid] = min(rewind.get(sid, spans[0][0]), spans[0][0])
        more = {oid for oid, by_src in unfinished.items() if oid not in discard
                and any(sid in rewind and spans[-1][1] > rewind[sid] for sid, spans in by_src.items())}
        if not more:
            break
        discard |= more
    discarded = [row for row in (journal.object(oid) for oid in sorted(discard)) if row is not None]
    fw.discard = sorted(discard)

    # the sources: offsets, skip spans; d. bytes to read again must be in the spool
    rows = {s.id: s for s in live.values()}
    stamped = cfg.format == "lines" and bool(cfg.object_key_timestamp)
    updated = journal.sources_updated() if stamped else {}
    old_skips = journal.skip_ranges()
    problems: list[str] = []
    for ref in sorted(set(shipped_spans) | set(rewind)):
        row = rows.get(ref) if ref >= 0 else None
        # the bytes the bucket holds: the records read, and the journal's own done objects
        # (objects complete out of order across keys and timestamps, and a bring-forward inserts
        # done objects past the offset): a rewind below one of those must read past its bytes
        # like past the records' -- its skip span, if it had one, is long passed
        spans = ledger.coalesce(shipped_spans.get(ref, []) + (_done_spans(journal, ref, unfinished) if row else []))
        if ref >= 0 and row is None:
            continue  # a spool file the journal is done with (reaped, gone): nothing is read from it
        entry = entries.get(ref) or (spool.found.get((row.dev, row.ino)) if row is not None else None)
        old = row.offset if row is not None else 0
        start = min(old, rewind.get(ref, old))
        path = row.path if row is not None else fw.new_sources[-1 - ref].path
        why = _unavailable(spool, row, heads.get(ref) if row is not None else None, entry)
        if ref in retired:
            why = why or "its inode holds another file now (the ledger's records of that file say so)"
        needed = ledger.subtract([(start, old)], spans)
        if needed and (why or entry.st.st_size < needed[-1][1]):
            problems.append(_problem(cfg, path, needed, why or f"it is {entry.st.st_size} bytes now", discarded))
            continue
        if ref in retired:
            continue  # nothing of it is read again: retired below, the new file has its own row
        offset = ledger.frontier(spans, start)
        if why:  # gone or another file, and nothing of it needed: it is not read again
            offset = max(offset, old)
        tail = None
        if offset > 0 and not why:
            sample = spool.read(entry, offset - identity.sample_start(offset), identity.sample_start(offset))
            if sample is not None and len(sample) == offset - identity.sample_start(offset):
                tail = identity.digest(sample)
        head = (spool.read(entry, identity.HEAD_BYTES) or b"") if entry is not None and not why else b""
        skip = ledger.coalesce([(max(a, offset), b) for a, b in spans + old_skips.get(ref, []) if b > offset]) \
            if not why else []
        if ref < 0:
            s = fw.new_sources[-1 - ref]
            s.offset, s.tail, s.head = offset, tail, head
        elif offset != old or ref in rewind:
            fw.moves[ref] = (offset, tail, head or None)
        if skip or ref in old_skips:
            fw.skips[ref] = skip
        if skip and stamped:
            known = _known_objects(journal, ref, mapped, discard)
            gone = [(a, b, o.key, o.ts) for o in discarded for a, b in unfinished[o.id].get(ref, [])]
            stamps = gap_timestamps(cfg, offset, skip, known, gone,
                                    updated.get(ref) if row is not None and offset == old else None)
            if stamps:
                fw.skip_ts[ref] = stamps
        if ref >= 0 and offset == old and not skip and ref not in rewind:
            continue
        moved = f"offset {old} -> {offset}" if ref >= 0 else f"a new spool file of the journal, from offset {offset}"
        lines.append(f"spool file {cfg.spool_dir / path}: {moved}"
                     + (f"; {sum(b - a for a, b in skip)} bytes past it in the bucket already are read past, not "
                        f"shipped again" if skip else ""))
    if problems:
        raise BehindTheBucket("; ".join(problems))
    for sid, path in sorted(retired.items()):
        fw.retire.append(sid)
        lines.append(f"spool file {cfg.spool_dir / rows[sid].path}: its inode now holds another file, {path}, whose "
                     "bytes the bucket's ledger records; the journal's row of the old file is retired (gone) and the "
                     "new file is read on from the bucket's offset, not from byte 0")

    # b. the shipped objects the journal did not know, inserted as done
    ids_in_use = journal.max_object_id()
    next_id = max([ids_in_use] + [r.object for r in new if r.journal == jid]) + 1
    for r, ranges in sorted(mapped, key=lambda m: (m[0].journal != jid, m[0].key, m[0].ts, m[0].idx)):
        oid = r.object if r.journal == jid else None
        if oid is not None and oid not in discard and journal.object(oid) is not None:
            oid = None
        if oid is None:
            oid, next_id = next_id, next_id + 1
        fw.done.append(DoneObject(oid, r.key, r.ts, r.idx, r.final_key, r.mode, r.raw, r.records, r.etag, r.checksum,
                                  r.origin, seq, ranges))
    done_keys = {r.final_key for r in new}
    unclaimed = [o for o in journal.claimed_unfinished() if o.id not in discard and o.final_key in done_keys]
    fw.unclaim = [o.id for o in unclaimed]
    # the uploads of the objects it unclaims or discards are this journal's own and used by no
    # claim any more: owed in its transaction, aborted after it (a crash in between: the upload
    # process aborts them); an object it unclaims had its upload at a key the bucket's object holds
    fw.aborts = [(o.final_key, o.upload_id, o.id) for o in unclaimed + discarded if o.upload_id and o.final_key]
    for o in unclaimed:
        if o.upload_id:
            lines.append(f"abort multipart upload {o.upload_id[:16]}... of object #{o.id} at {o.final_key}: the "
                         "bucket's object holds that key, and the object claims the next free index")
    lines.insert(0, f"bring the journal forward from the bucket's ledger: {len(new)} object(s) in the bucket that it "
                    f"did not know are journaled as done ({_some(sorted(done_keys))})")
    if discarded:
        lines.insert(1, f"discard {len(discarded)} object(s) not shipped yet that hold bytes the bucket has, or "
                        f"follow them (their records are read again from the spool): "
                        f"{_some([f'#{o.id} ({o.key})' for o in discarded])}")
    if fw.unclaim:
        lines.append(f"{len(fw.unclaim)} object(s) give up their claimed index (the bucket's objects hold those "
                     "keys) and claim the next free one")
    if unmatched:
        lines.append(f"spans of {len(unmatched)} spool file(s) not in the spool any more are not needed: "
                     f"{_some(sorted(unmatched))}")
    return fw, discarded, lines


def _done_spans(journal: Journal, source_id: int, unfinished: dict[int, dict[int, list[Span]]]) -> list[Span]:
    """The spans of the source held by the journal's done objects (every object not in
    `unfinished` is done; discarded objects are all unfinished)."""
    return [(a, b) for oid, a, b in journal.ranges_of_source(source_id) if oid not in unfinished]


ObjectSpan = tuple[int, int, str, str]  # start, end, key, ts: an object's span of a source


def _known_objects(journal: Journal, ref: Ref, mapped: list[tuple[Record, dict[Ref, list[Span]]]],
                   discard: set[int]) -> list[ObjectSpan]:
    """The spans of the source that the bucket's shipped objects and the journal's objects it
    keeps hold, with their objects' key and timestamp."""
    out = [(a, b, r.key, r.ts) for r, ranges in mapped for a, b in ranges.get(ref, [])]
    if ref >= 0:
        rows: dict[int, ObjectRow | None] = {}
        for oid, a, b in journal.ranges_of_source(ref):
            if oid in discard:
                continue
            if oid not in rows:
                rows[oid] = journal.object(oid)
            o = rows[oid]
            if o is not None:
                out.append((a, b, o.key, o.ts))
    return out


def gap_timestamps(cfg: Config, offset: int, skip: list[Span], known: list[ObjectSpan], gone: list[ObjectSpan],
                   updated: float | None) -> dict[int, str]:
    """Format "lines" with object-key-timestamp: the timestamp of the records a rewound (or
    behind) source reads again before each of its skip spans, by the span's start.

    Read again now, they would get the ingest time and sort after the bucket's objects holding
    the source's later bytes (a region's object can stay unfinished while a later timestamp's
    object completes: objects of different timestamps have no completion order).  The bytes
    of a gap were first given a timestamp T with Tp <= T < Tn, Tp the timestamp of the object
    holding the bytes before them and Tn that of the shipped object holding the bytes after
    them (T = Tn is impossible: objects of one key and timestamp complete in index order).
    The timestamp chosen, the first that is known and below Tn (same key):
      1. Tp: the object holding the source's bytes just before the gap (shipped or journaled);
         the records go to a backfill object of (key, Tp), after it in index order;
      2. T itself: the discarded object of the restored journal that held the gap's first byte;
      3. the source row's last change, rendered, when the gap starts at the journal's offset
         (the journal had read that far when it last changed it, and nothing of the gap yet):
         at or after the earlier bytes' timestamps, at or before the gap's first ingest.
    Never the smallest timestamp of the later objects (a backfill at Tn takes a higher index
    than the shipped one: out of order).  None known: the ingest time (a file the journal
    did not know, whose first bytes are in no object of the bucket)."""
    out: dict[int, str] = {}
    pos = offset
    for a, b in skip:
        if a > pos:
            after = [o for o in known if o[0] == a]
            key_n, ts_n = (after[0][2], after[0][3]) if after else (None, None)

            def fits(o: ObjectSpan | None) -> str | None:
                if o is None or (key_n is not None and (o[2] != key_n or o[3] >= ts_n)):
                    return None
                return o[3]

            before = max((o for o in known if o[1] <= pos), key=lambda o: o[1], default=None)
            held = next((o for o in gone if o[0] <= pos < o[1]), None)
            ts = fits(before) or fits(held)
            if ts is None and updated is not None and pos == offset:
                ts = fits((0, 0, key_n or "", keytime.render(cfg.object_key_timestamp, updated, cfg.timestamp_zone)))
            if ts:
                out[a] = ts
        pos = max(pos, b)
    return out


def _unavailable(spool: _Spool, row, head: bytes | None, entry: ScanEntry | None) -> str | None:
    """Why the journaled source's bytes cannot be read from the spool (None: they can)."""
    if entry is None:
        return "the file is no longer in the spool"
    if row is None:
        return None
    if identity.other_file(row.btime, spool.btime(entry)):
        return "its path holds another file now (another birth time)"
    if head and spool.read(entry, len(head)) != head:
        return "it holds another file now (its first bytes differ)"
    return None


def _problem(cfg: Config, path: str, needed: list[Span], why: str, discarded: list[ObjectRow]) -> str:
    n = sum(b - a for a, b in needed)
    where = ", ".join(f"{a}-{b}" for a, b in needed[:5]) + (" ..." if len(needed) > 5 else "")
    return (f"the journal is behind the bucket's ledger, and bringing it forward needs {n} bytes of spool file "
            f"{cfg.spool_dir / path} read again (bytes {where}: records the journal had put in objects that are not in "
            f"the bucket, #{', #'.join(str(o.id) for o in discarded[:5])}), but {why}. Nothing was changed and "
            "nothing was shipped. Put the file back as it was (from a backup) and start again; or, to give up those "
            "records, stop spoolup, move the state dir aside and run `spoolup recover --from-bucket` (the journal "
            "is rebuilt from the bucket; records that are in no object of the bucket and no longer in the spool are "
            "not shipped)")


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
