"""Ingest: spool records -> open objects' chunk files -> one journal transaction per batch.

SourceReader (spoolup/reader.py) reads each source from its journaled offset and
gives whole records to deliver(), which routes them with
the rotation policy (objects.py) and appends them to the chunk files of their
objects.  A batch ends after BATCH_BYTES or when nothing more is ready; then
the chunk files are synced and the batch committed (invariant 1).  At
max-pending-uploads sealed chunks, reading stops (back-pressure): the backlog
stays in the spool.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

from spoolup import crash, envelope, keytime, objects, reader, statespace
from spoolup import form as forms
from spoolup.chunks import ChunkStore, Codec
from spoolup.config import Config
from spoolup.deadletter import REMOVED_STATE, DeadLetters
from spoolup.form import Form
from spoolup.journal import Batch, ChunkState, Journal, SourceState, disk_full
from spoolup.reader import SourceReader
from spoolup.router import OpenObject, Router
from spoolup.scan import Source
from spoolup.spool import Spool

BATCH_BYTES = 16 << 20  # a batch commits after this many bytes (or when nothing more is ready)
MIN_BATCH_BYTES = 256 << 10  # the smallest batch after a disk-full rollback (see rollback())
CLOSE_BATCH = 32  # objects close_all closes per commit (the upload process starts on the first ones)


class Ingest:
    def __init__(self, cfg: Config, journal: Journal, spool: Spool, store: ChunkStore, dead: DeadLetters, log,
                 notify: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.journal = journal
        self.spool = spool
        self.store = store
        self.dead = dead
        self.log = log
        self.notify = notify
        self.batch = Batch()
        self.skips: dict[int, list[tuple[int, int]]] = {}  # (load())
        self.skip_ts: dict[int, list[tuple[int, str]]] = {}  # (load())
        self.batch_bytes = 0
        self.batch_limit = BATCH_BYTES  # smaller for a while after the disk was full
        self.sealed_pending = 0
        self.sealed_in_batch: list[tuple[int, int, Codec]] = []  # (object, part, codec) sealed by this batch
        # lines: object-key-timestamp and object-key's strftime fields, rendered at ingest time
        self.keytime = keytime.KeyTime(cfg.object_key if cfg.format == "lines" else "", cfg.key_timezone,
                                       cfg.object_key_timestamp, cfg.timestamp_zone)
        self.stats = {"bytes": 0, "records": 0}
        self._envelope = envelope.Parser(cfg.object_key, cfg.key_suffix)
        self._restored = True  # False from a rollback until the journaled state is back (restore())
        self.form = Form.of_config(cfg)  # the form of the objects this run creates
        self.router = Router(store, self.form, log, self)  # the open objects and the writing into them
        self.space_low = False  # the state dir had no room to ingest at the last pump
        self.waiting: tuple[Source, int, int] | None = None  # a long record without room yet: source, offset, length
        self.reader = SourceReader(cfg, spool, log, self)  # alone moves a source's offset, scan position and tail

    # -- state ---------------------------------------------------------------------

    def load(self) -> None:
        self.router.next_id = self.journal.max_object_id() + 1
        # bytes the bucket holds already, beyond each source's offset (read past, not shipped: reader.py)
        self.skips: dict[int, list[tuple[int, int]]] = self.journal.skip_ranges()
        # lines: the object-key-timestamp of records read again before a skip span (catchup.py)
        self.skip_ts: dict[int, list[tuple[int, str]]] = self.journal.skip_timestamps()
        for row in self.journal.open_objects():
            obj = OpenObject(row.id, row.key, row.ts, row.size, row.records, row.created, row.last_write,
                             suffix=row.key_suffix, form=forms.parse(row.form, self.form))
            for chunk in self.journal.chunks_of(row.id):
                if chunk.state == ChunkState.OPEN:
                    obj.part, obj.chunk_len = chunk.part, chunk.length
                else:
                    obj.sealed += 1
                    obj.sealed_bytes += chunk.part_size or 0
                    obj.part = chunk.part + 1
            self.router.track(obj)
        self.sealed_pending = self.journal.sealed_pending()
        # dead-letter lines of a batch that never committed are read from the spool again
        journaled = self.journal.dead_letter_bytes()
        removed = {int(k): v for k, v in ((self.journal.state(REMOVED_STATE) or {}).get("bytes") or {}).items()}
        for action in self.dead.reconcile(journaled, removed):
            self.log.info("recovery", action=action)
        self.dead.journal_removed = self._journal_dead_removed
        if self.dead.removed != removed:
            self._journal_dead_removed(self.dead.removed)

    def _journal_dead_removed(self, removed: dict[int, int]) -> None:
        """Dead-letter bytes the operator removed, journaled before a new file takes lines."""
        self.journal.set_state(REMOVED_STATE, {"bytes": {str(k): v for k, v in removed.items()}})

    @property
    def open(self) -> dict[int, OpenObject]:
        """The open objects, by id (Router's)."""
        return self.router.open

    @property
    def next_id(self) -> int:
        return self.router.next_id

    def at_cap(self) -> bool:
        return self.sealed_pending >= self.cfg.max_pending_uploads

    # -- reading the spool ---------------------------------------------------------------

    def pump(self, sources: list[Source], now: float, *, budget: int | None = None) -> int:
        """Read what is ready in `sources`, within `budget` bytes; commit as we go."""
        self._ready()
        if budget is None:
            budget = self.batch_limit * 4
        consumed = 0
        self.sealed_pending = self.journal.sealed_pending() + self.batch.seals
        budget = min(budget, self._room(now))
        for src in sources:
            if self.at_cap() or consumed >= budget:
                break
            if src.state != SourceState.ACTIVE or not self.spool.readable(src, now):
                continue
            consumed += self.reader.read(src, now, budget - consumed)
            if self.batch_bytes >= self.batch_limit:
                self.flush()
        self.flush()
        return consumed

    def _room(self, now: float) -> int:
        """Spool bytes the state dir has room for (statespace.room).  None: ingest pauses --
        the backlog waits in the spool -- and, when spoolup's own chunk files are what fills
        the state dir, the largest open object is completed early so that its chunk files are
        uploaded and removed (chunk files are kept until their object is completed)."""
        total, free = statespace.free_bytes(self.cfg)
        room = statespace.room(free, len(self.open), self.store.codec.compressed)
        record = self._waiting_record()
        if (room <= 0 or record) and self.journal.shrink_wal(statespace.WAL_KEPT):  # the WAL's space, back
            total, free = statespace.free_bytes(self.cfg)
            room = statespace.room(free, len(self.open), self.store.codec.compressed)
        if room > 0 and (not record or statespace.fits(free, len(self.open), self.store.codec.compressed, record)):
            if self.space_low:
                self.space_low = False
                self.log.info("state dir has room again; ingest resumes", free=free, state_dir=str(self.cfg.state_dir))
            return room
        space = statespace.measure(self.cfg, len(self.open), record)  # spoolup's own files, counted
        if not self.space_low:
            self.space_low = True
            code, message = statespace.advice(self.cfg, space)
            self.log.warning("state dir low on space: ingest paused", code=code, free=free, total=total,
                             chunk_bytes=space.chunks, state_dir=str(self.cfg.state_dir), advice=message)
            try:
                self.journal.record_error("ingest", "space", code, message)
            except sqlite3.Error as e:  # the journal cannot grow either: status shows state_dir_space
                if not disk_full(e):
                    raise
        if statespace.own_space(space):
            self._complete_early(now)
        return 0

    def fits(self, src: Source, n: int) -> bool:
        """Room for src's next record, n bytes long (statespace.fits)?  If not, it waits, and so
        does the rest of ingest (else it would take the room as it frees): _room() completes
        objects early until there is room for it."""
        if n <= statespace.READ_SLACK:
            return True
        _total, free = statespace.free_bytes(self.cfg)
        if statespace.fits(free, len(self.open), self.store.codec.compressed, n):
            self.waiting = None
            return True
        self.waiting = (src, src.offset, n)
        return False

    def _waiting_record(self) -> int:
        """The length of the long record waiting for room (0: none, or its source moved on)."""
        if self.waiting is not None:
            src, offset, n = self.waiting
            if src.state == "active" and src.offset == offset:
                return n
            self.waiting = None
        return 0

    def _complete_early(self, now: float) -> None:
        """Free the state dir: complete the largest open object, unless an object closed before
        still waits for its upload (its completion frees space first)."""
        if self.batch.closed or self.journal.has_closed_objects():
            return
        obj = max(self.open.values(), key=lambda o: o.size, default=None)
        if obj is None or obj.size == 0:
            return
        self.log.info("completing an object early to free the state dir", object=obj.id, key=obj.key, size=obj.size)
        self.router.close(obj, "state-dir-space", now)

    def deliver(self, src: Source, data: bytes, start: int, end: int, now: float, src_end: int | None = None) -> None:
        """Whole records data[start:end] of `src` (from SourceReader): routed to their objects.
        data[start] is the byte at the source's offset; `src_end`: the source offset where these
        records end (less than offset + end - start by the b"\n" an unterminated tail was given),
        so that each object's spans (Batch.ranges, the ledger's) are the spool file's own bytes."""
        if src_end is None:
            src_end = src.offset + end - start
        if self.cfg.format == "lines":
            self._lines(src, data, start, end, now, src_end)
        else:
            self._envelopes(src, data, start, end, now, src_end)

    def _lines(self, src: Source, data: bytes, start: int, end: int, now: float, src_end: int) -> None:
        kt = self.keytime
        self.router.deliver(src, kt.key(src, now), self._timestamp(src, now), data, start, end, now,
                            self.cfg.object_key_suffix, src.offset - start, src_end)

    def _timestamp(self, src: Source, now: float) -> str:
        """The object-key-timestamp of src's records at its offset: the ingest time -- unless the
        bring-forward rewound src before bytes the bucket holds and gave the records up to them
        a timestamp of their own (catchup.gap_timestamps): read again now, at the ingest time
        they would sort after the bucket's later objects.  (A delivery never crosses a skip
        span, so the whole of it is below the mark.)"""
        marks = self.skip_ts.get(src.id)
        if marks and self.keytime.timestamp_template:
            while marks and marks[0][0] <= src.offset:
                marks.pop(0)
            if marks:
                return marks[0][1]
            del self.skip_ts[src.id]
        return self.keytime.timestamp(now)

    def _envelopes(self, src: Source, data: bytes, start: int, end: int, now: float, src_end: int) -> None:
        """Per record: parse and validate (bad lines go to the dead-letter file).  The good
        records are grouped by key, keeping their order within each key: routing depends
        only on a key's own sequence of timestamps, so this is the order s3() would see,
        and each key's consecutive records of one timestamp are written with one call.
        Each record carries its line's span of the spool file (the ledger's: a key's records
        interleave with other keys' in the file, and a dead-lettered line is in no object)."""
        parse, bad = self._envelope.parse, envelope.Bad
        by_key: dict[str, tuple[list[envelope.Record], list[tuple[int, int]]]] = {}
        lines = data[start:end].split(b"\n")
        if data[end - 1:end] == b"\n":
            lines.pop()  # the empty string after the last newline
        pos = src.offset
        for line in lines:
            at, pos = pos, pos + len(line) + 1
            rec = parse(line)
            if type(rec) is bad:
                self._dead_letter(src, line, rec.reason)
                continue
            group = by_key.get(rec.key)
            if group is None:
                by_key[rec.key] = group = ([], [])
            group[0].append(rec)
            group[1].append((at, pos if pos <= src_end else src_end))
        for key, (records, spans) in by_key.items():
            run_ts, run_suffix = records[0].ts, records[0].suffix
            run: list[bytes] = []
            first = 0
            for i, rec in enumerate(records):
                if rec.ts != run_ts or rec.suffix != run_suffix:
                    self.router.deliver_records(src, key, run_ts, run, now, run_suffix, spans[first:i])
                    run_ts, run_suffix, run, first = rec.ts, rec.suffix, [], i
                run.append(rec.body)
            self.router.deliver_records(src, key, run_ts, run, now, run_suffix, spans[first:])

    def _dead_letter(self, src: Source, line: bytes, reason: str) -> None:
        self.dead.write(src.id, src.key_path, line, reason)  # key_path: the path it was found at
        path, n, b, _ = self.batch.dead_letters.get(src.id, (src.path, 0, 0, ""))
        self.batch.dead_letters[src.id] = (src.path, n + 1, b + len(line) + 1, reason)
        self.batch.counters["dead_letter_records"] = self.batch.counters.get("dead_letter_records", 0) + 1


    # -- rotation by time, drain -----------------------------------------------------------

    def expire(self, now: float) -> int:
        """Complete objects without a new record for flush-grace-period, or max-object-age after
        their first record."""
        self._ready()
        stale = objects.due(list(self.open.values()), now, self.cfg.grace_seconds, self.cfg.max_age_seconds)
        for obj, reason in stale:
            self.router.close(obj, reason, now)
        if stale:
            self.flush()
        return len(stale)

    def close_all(self, reason: str, now: float) -> int:
        """Close every open object; committed every CLOSE_BATCH objects, so that the upload
        process starts on the first ones while the others are sealed (a drain of many keys:
        each seal is a write and an fdatasync of its chunk file)."""
        self._ready()
        n = len(self.open)
        for i, obj in enumerate(list(self.open.values()), 1):
            self.router.close(obj, reason, now)
            if i % CLOSE_BATCH == 0:
                self.flush()
        self.flush()
        return n

    # -- committing --------------------------------------------------------------------------

    def flush(self) -> None:
        self._ready()
        if not self.batch:
            return
        crash.point("after-chunk-write")
        self.store.sync()
        self.dead.sync()
        crash.point("after-chunk-sync")
        self.journal.commit_batch(self.batch)
        crash.point("after-batch-commit")
        if self.batch.dead_letters:
            self.dead.committed()
        for oid, part, codec in self.sealed_in_batch:
            self.store.sealed_committed(oid, part, codec)
        if self.batch.closed or self.sealed_in_batch:
            self.notify()
        self.batch = Batch()
        self.batch_bytes = 0
        self.sealed_in_batch = []
        self.batch_limit = min(self.batch_limit * 2, BATCH_BYTES)

    def rollback(self) -> None:
        """The batch in progress could not be made durable (the state dir's disk is full):
        abandon it and go back to exactly what the journal says.  First, in memory only (this
        cannot fail): the batch, the open objects and every file's written length are
        dropped, so nothing of the abandoned batch can be committed any more.  Then restore()
        reloads the journaled state and cuts the chunk files back to their journaled lengths
        (which frees the space the batch took).  The same spool bytes are read again on the
        next try, in smaller batches for a while, so that progress is possible in whatever
        space there is.  Nothing journaled is touched."""
        self._restored = False
        self.batch = Batch()
        self.batch_bytes = 0
        self.sealed_in_batch = []
        self.router.clear()
        self.store.discard()
        self.dead.discard()
        self.batch_limit = max(self.batch_limit // 4, MIN_BATCH_BYTES)
        self.restore()

    def restore(self) -> None:
        """The I/O half of rollback(): may fail (the truncation, the syncfs after it, the
        journal reads).  Until it succeeds nothing is read, written or committed -- every entry
        point (pump, expire, close_all, flush) tries it again first -- so a failed rollback
        restarts from the journal instead of carrying on with the abandoned batch."""
        from spoolup import recover

        report = recover.Report()
        recover.reconcile_chunks(self.cfg, self.journal, report, dry_run=False)
        for action in report.lines:
            self.log.info("recovery", action=action)
        for problem in report.problems:
            self.log.error("recovery problem", problem=problem)
        reader.revert(self.spool, self.journal)
        self.router.clear()
        self.load()
        self._restored = True

    @property
    def restored(self) -> bool:
        """False after a rollback whose restore() has not succeeded yet."""
        return self._restored

    def _ready(self) -> None:
        if not self._restored:
            self.restore()
