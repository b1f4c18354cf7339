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
import time
from dataclasses import dataclass
from typing import Callable

from spoolup import crash, envelope, objects, reader, statespace
from spoolup import form as forms
from spoolup.chunks import ChunkStore, Codec
from spoolup.config import Config
from spoolup.deadletter import REMOVED_STATE, DeadLetters
from spoolup.form import Form
from spoolup.journal import Batch, ChunkState, Journal, ObjectRow, ObjectState, SourceState, disk_full
from spoolup.reader import SourceReader
from spoolup.scan import Source
from spoolup.spool import Spool

_COMPRESSED_SLICE = 256 << 10  # raw bytes compressed at a time (the part-size rule checks each)
BATCH_BYTES = 16 << 20  # a batch commits after this many bytes (or when nothing more is ready)
MIN_BATCH_BYTES = 256 << 10  # the smallest batch after a disk-full rollback (see rollback())
NEWEST_CACHE = 100_000  # keys whose newest timestamp is kept in memory


@dataclass
class OpenObject:
    id: int
    key: str
    ts: str
    size: int
    records: int
    created: float
    last_write: float
    part: int = 1  # part number of the chunk being filled
    chunk_len: int = 0  # raw bytes in that chunk (0: not started)
    sealed: int = 0  # parts sealed so far
    sealed_bytes: int = 0  # their stored (compressed) size
    suffix: str = ""  # object-key-suffix of its final key
    form: Form | None = None  # the options it was started with (spoolup/form.py)


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
        self.max_part = objects.max_part_size()  # (read once: not on the per-read path)
        self.open: dict[int, OpenObject] = {}
        self.open_by_key: dict[str, dict[str, OpenObject]] = {}
        self.newest: dict[str, str | None] = {}
        self.next_id = 1
        self.batch = Batch()
        self.batch_bytes = 0
        self.batch_limit = BATCH_BYTES  # smaller for a while after the disk was full
        self.sealed_pending = 0
        self._sealed_in_batch: list[tuple[int, int, Codec]] = []
        self._ts_cache: tuple[int, str] = (-1, "")
        self.stats = {"bytes": 0, "records": 0}
        self._envelope = envelope.Parser(cfg.object_key, cfg.key_suffix)
        self._restored = True  # False from a rollback until the journaled state is back (restore())
        self.form = Form.of_config(cfg)  # the form of the objects this run creates
        self._form_json = self.form.to_json()
        self.space_low = False  # the state dir had no room to ingest at the last pump
        self.waiting: tuple[Source, int, int] | None = None  # a long record without room yet: source, offset, length
        self.reader = SourceReader(cfg, spool, log, self)  # alone moves a source's offset, scan position and tail

    # -- state ---------------------------------------------------------------------

    def load(self) -> None:
        self.next_id = self.journal.max_object_id() + 1
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
            self._track(obj)
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

    def _track(self, obj: OpenObject) -> None:
        self.open[obj.id] = obj
        self.open_by_key.setdefault(obj.key, {})[obj.ts] = obj

    def _untrack(self, obj: OpenObject) -> None:
        del self.open[obj.id]
        by_ts = self.open_by_key[obj.key]
        del by_ts[obj.ts]
        if not by_ts:
            del self.open_by_key[obj.key]

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
        self._close(obj, "state-dir-space", now)

    def _timestamp(self, now: float) -> str:
        tpl = self.cfg.object_key_timestamp
        if not tpl:
            return ""
        second = int(now)
        if self._ts_cache[0] != second:
            self._ts_cache = (second, time.strftime(tpl, time.localtime(now)))
        return self._ts_cache[1]

    def deliver(self, src: Source, data: bytes, start: int, end: int, now: float) -> None:
        """Whole records data[start:end] of `src` (from SourceReader): routed to their objects."""
        if self.cfg.format == "lines":
            self._lines(src, data, start, end, now)
        else:
            self._envelopes(src, data, start, end, now)

    def _lines(self, src: Source, data: bytes, start: int, end: int, now: float) -> None:
        self._deliver(src, src.key, self._timestamp(now), data, start, end, now, self.cfg.object_key_suffix)

    def _envelopes(self, src: Source, data: bytes, start: int, end: int, now: float) -> None:
        """Per record: parse and validate (bad lines go to the dead-letter file).  The good
        records are grouped by key, keeping their order within each key: routing depends
        only on a key's own sequence of timestamps, so this is the order s3() would see,
        and each key's consecutive records of one timestamp are written with one call."""
        parse, bad = self._envelope.parse, envelope.Bad
        by_key: dict[str, list[envelope.Record]] = {}
        lines = data[start:end].split(b"\n")
        if data[end - 1:end] == b"\n":
            lines.pop()  # the empty string after the last newline
        for line in lines:
            rec = parse(line)
            if type(rec) is bad:
                self._dead_letter(src, line, rec.reason)
                continue
            group = by_key.get(rec.key)
            if group is None:
                by_key[rec.key] = [rec]
            else:
                group.append(rec)
        for key, records in by_key.items():
            run_ts, run_suffix = records[0].ts, records[0].suffix
            run: list[bytes] = []
            for rec in records:
                if rec.ts != run_ts or rec.suffix != run_suffix:
                    self._deliver_records(src, key, run_ts, run, now, run_suffix)
                    run_ts, run_suffix, run = rec.ts, rec.suffix, []
                run.append(rec.body)
            self._deliver_records(src, key, run_ts, run, now, run_suffix)

    def _dead_letter(self, src: Source, line: bytes, reason: str) -> None:
        self.dead.write(src.id, src.key_path, line, reason)  # key_path: the path it was found at
        path, n, b, _ = self.batch.dead_letters.get(src.id, (src.path, 0, 0, ""))
        self.batch.dead_letters[src.id] = (src.path, n + 1, b + len(line) + 1, reason)
        self.batch.counters["dead_letter_records"] = self.batch.counters.get("dead_letter_records", 0) + 1

    # -- routing and writing ---------------------------------------------------------------

    def _deliver(self, src: Source, key: str, ts: str, data: bytes, start: int, end: int, now: float,
                 suffix: str) -> None:
        """Whole newline-terminated records data[start:end] of one (key, ts)."""
        pos = start
        while pos < end:
            obj = self._target(key, ts, now, suffix)
            limit, compressed = obj.form.max_object_size, obj.form.codec.compressed
            if compressed:  # the stored size is known only once compressed: write in blind runs
                stop = objects.cut(data, pos, end, objects.blind_bytes(self._stored(obj), limit))
            else:
                stop, full = objects.take(obj.size, limit, data, pos, end)
            self._write(obj, data, pos, stop, now)
            self.batch.source_objects.add((src.id, obj.id))
            if compressed:
                full = self._stored(obj) >= limit
            if full:
                self._close(obj, "max-object-size", now)
            elif objects.full_by_parts(obj.sealed + 1):
                self._close(obj, "max-parts", now)
            pos = stop

    def _deliver_records(self, src: Source, key: str, ts: str, records: list[bytes], now: float,
                         suffix: str) -> None:
        """Records (each ending in b"\\n", possibly containing more newlines) of one (key, ts)."""
        i = 0
        while i < len(records):
            obj = self._target(key, ts, now, suffix)
            limit, compressed = obj.form.max_object_size, obj.form.codec.compressed
            j, size = i, 0
            if compressed:  # the stored size is known only once compressed: write in blind runs
                blind = objects.blind_bytes(self._stored(obj), limit)
                while j < len(records) and size + len(records[j]) <= blind:
                    size += len(records[j])
                    j += 1
                j = max(j, i + 1)
            else:
                room = limit - obj.size
                while j < len(records) and size < room:
                    size += len(records[j])
                    j += 1
            blob = b"".join(records[i:j])
            self._write(obj, blob, 0, len(blob), now, records=j - i)
            self.batch.source_objects.add((src.id, obj.id))
            if (self._stored(obj) if compressed else obj.size) >= limit:
                self._close(obj, "max-object-size", now)
            elif objects.full_by_parts(obj.sealed + 1):
                self._close(obj, "max-parts", now)
            i = j

    def _target(self, key: str, ts: str, now: float, suffix: str) -> OpenObject:
        by_ts = self.open_by_key.get(key, {})
        route = objects.route(self._newest(key), by_ts.keys(), ts)
        for old_ts in route.close:
            self._close(by_ts[old_ts], "newer-timestamp", now)
        self.newest[key] = route.newest
        if route.reuse:
            obj = by_ts[ts]
            if obj.suffix == suffix:
                return obj
            # another object-key-suffix for the same key: its records go to an object of their own
            self._close(obj, "object-key-suffix", now)
        return self._new_object(key, ts, now, suffix)

    def _newest(self, key: str) -> str | None:
        if key in self.newest:
            return self.newest[key]
        if len(self.newest) >= NEWEST_CACHE:
            for k in [k for k in self.newest if k not in self.open_by_key][: NEWEST_CACHE // 2]:
                del self.newest[k]
        newest = self.journal.newest_ts(key)
        self.newest[key] = newest
        return newest

    def _new_object(self, key: str, ts: str, now: float, suffix: str) -> OpenObject:
        obj = OpenObject(self.next_id, key, ts, 0, 0, now, now, suffix=suffix, form=self.form)
        self.next_id += 1
        self._track(obj)
        self.batch.new_objects.append(ObjectRow(obj.id, key, ts, ObjectState.OPEN, None, None, None, None, 0, 0, now,
                                                now, key_suffix=suffix, form=self._form_json))
        self.log.debug("object opened", object=obj.id, key=key, ts=ts)
        return obj

    def _write(self, obj: OpenObject, data: bytes, start: int, stop: int, now: float, records: int | None = None) -> None:
        n = stop - start
        if records is None:
            records = data.count(b"\n", start, stop) or 1
        view = memoryview(data)[start:stop]
        chunk_size, codec = obj.form.chunk_size, obj.form.codec
        if codec.compressed:
            # chunk-size is measured after compression, so a part passes it by what the last
            # write added and the member's tail.  Sealed *before* a slice whose worst case could
            # take the part past S3's maximum part size: every part stays within it by construction.
            max_part = self.max_part
            pos = 0
            while pos < n:
                # a slice of whole records (a compressed part never splits one), about
                # _COMPRESSED_SLICE bytes, or one longer record
                end = data.rfind(b"\n", start + pos, min(stop, start + pos + _COMPRESSED_SLICE))
                if end < 0:
                    end = data.find(b"\n", start + pos + _COMPRESSED_SLICE, stop)
                k = (end + 1 if end >= 0 else stop) - start - pos
                if (obj.chunk_len and obj.part < objects.MAX_PARTS
                        and self.store.part_bound(obj.id, obj.part, k, obj.chunk_len, codec) > max_part):
                    self._seal(obj)
                self.store.append(obj.id, obj.part, view[pos:pos + k], obj.chunk_len, codec)
                obj.chunk_len += k
                pos += k
                self.batch.chunks[(obj.id, obj.part)] = (obj.chunk_len, ChunkState.OPEN, None)
                if self.store.stored_len(obj.id, obj.part, obj.chunk_len, codec) >= chunk_size \
                        and obj.part < objects.MAX_PARTS:
                    self._seal(obj)
        else:
            pos = 0
            while pos < n:
                if obj.chunk_len >= chunk_size and obj.part < objects.MAX_PARTS:
                    self._seal(obj)  # an open chunk already that long (journaled before forms were)
                k = n - pos if obj.part >= objects.MAX_PARTS else min(chunk_size - obj.chunk_len, n - pos)
                self.store.append(obj.id, obj.part, view[pos:pos + k], obj.chunk_len, codec)
                obj.chunk_len += k
                pos += k
                self.batch.chunks[(obj.id, obj.part)] = (obj.chunk_len, ChunkState.OPEN, None)
                if obj.chunk_len >= chunk_size and obj.part < objects.MAX_PARTS:
                    self._seal(obj)
        obj.size += n
        obj.records += records
        obj.last_write = now
        self.batch.objects[obj.id] = (obj.size, obj.records, now)
        self.stats["bytes"] += n
        self.stats["records"] += records

    def _stored(self, obj: OpenObject) -> int:
        """The object's stored size: its sealed parts and what its open chunk's compressor
        has produced so far (what max-object-size is measured on with compression, as s3())."""
        if obj.chunk_len == 0:
            return obj.sealed_bytes
        return obj.sealed_bytes + self.store.stored_len(obj.id, obj.part, obj.chunk_len, obj.form.codec)

    def _seal(self, obj: OpenObject) -> None:
        part_size = self.store.seal(obj.id, obj.part, obj.chunk_len, obj.form.codec)
        obj.sealed_bytes += part_size
        self.batch.chunks[(obj.id, obj.part)] = (obj.chunk_len, ChunkState.SEALED, part_size)
        self._sealed_in_batch.append((obj.id, obj.part, obj.form.codec))
        self.sealed_pending += 1
        obj.sealed += 1
        obj.part += 1
        obj.chunk_len = 0

    def _close(self, obj: OpenObject, reason: str, now: float) -> None:
        if obj.chunk_len > 0:
            self._seal(obj)
        self.batch.closed[obj.id] = (reason, now)
        self._untrack(obj)
        self.log.debug("object closed", object=obj.id, key=obj.key, ts=obj.ts, reason=reason, size=obj.size)

    # -- rotation by time, drain -----------------------------------------------------------

    def expire(self, now: float) -> int:
        """Complete objects without a new record for flush-grace-period."""
        self._ready()
        stale = objects.expired(list(self.open.values()), now, self.cfg.grace_seconds)
        for obj in stale:
            self._close(obj, "flush-grace-period", now)
        if stale:
            self.flush()
        return len(stale)

    def close_all(self, reason: str, now: float) -> int:
        self._ready()
        n = len(self.open)
        for obj in list(self.open.values()):
            self._close(obj, reason, now)
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
        for oid, part, codec in self._sealed_in_batch:
            self.store.sealed_committed(oid, part, codec)
        if self.batch.closed or self._sealed_in_batch:
            self.notify()
        self.batch = Batch()
        self.batch_bytes = 0
        self._sealed_in_batch = []
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
        self._sealed_in_batch = []
        self.open.clear()
        self.open_by_key.clear()
        self.newest.clear()
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
        self.open.clear()
        self.open_by_key.clear()
        self.newest.clear()
        self.load()
        self._restored = True

    @property
    def restored(self) -> bool:
        """False after a rollback whose restore() has not succeeded yet."""
        return self._restored

    def _ready(self) -> None:
        if not self._restored:
            self.restore()
