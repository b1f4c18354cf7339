"""Routing: records -> the open object of their key and timestamp (rotation by objects.py's
pure policy: newer timestamp, max-object-size, max-parts, object-key-suffix) -> its chunk
files, parts sealed by chunk-size and S3's part-size bound.  What it writes and closes
goes into Ingest's batch (spoolup/ingest.py), which commits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spoolup import objects
from spoolup.chunks import ChunkStore
from spoolup.form import Form
from spoolup.journal import ChunkState, ObjectRow, ObjectState
from spoolup.scan import Source

if TYPE_CHECKING:
    from spoolup.ingest import Ingest

_COMPRESSED_SLICE = 256 << 10  # raw bytes compressed at a time (the part-size rule checks each)
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


class Router:
    """The open objects, by id and by (key, timestamp), and the writing of records into them."""

    def __init__(self, store: ChunkStore, form: Form, log, ingest: Ingest):
        self.store = store
        self.form = form  # the form of the objects this run creates
        self._form_json = form.to_json()
        self.log = log
        self.ingest = ingest
        self.max_part = objects.max_part_size()  # (read once: not on the per-read path)
        self.open: dict[int, OpenObject] = {}
        self.open_by_key: dict[str, dict[str, OpenObject]] = {}
        self.newest: dict[str, str | None] = {}
        self.next_id = 1

    def clear(self) -> None:
        """Forget every open object (a rollback: Ingest.load() tracks the journaled ones again)."""
        self.open.clear()
        self.open_by_key.clear()
        self.newest.clear()

    def track(self, obj: OpenObject) -> None:
        self.open[obj.id] = obj
        self.open_by_key.setdefault(obj.key, {})[obj.ts] = obj

    def _untrack(self, obj: OpenObject) -> None:
        del self.open[obj.id]
        by_ts = self.open_by_key[obj.key]
        del by_ts[obj.ts]
        if not by_ts:
            del self.open_by_key[obj.key]

    def deliver(self, src: Source, key: str, ts: str, data: bytes, start: int, end: int, now: float,
                 suffix: str, base: int = 0, src_end: int | None = None) -> None:
        """Whole newline-terminated records data[start:end] of one (key, ts).  `base`: the
        source offset of data[0]; `src_end`: where the records end in the source (see
        Ingest.deliver): each object's piece is one span of the source (Batch.ranges)."""
        if src_end is None:
            src_end = base + end
        pos = start
        while pos < end:
            obj = self._target(key, ts, now, suffix)
            limit, compressed = obj.form.max_object_size, obj.form.codec.compressed
            if compressed:  # the stored size is known only once compressed: write in blind runs
                stop = objects.cut(data, pos, end, objects.blind_bytes(self.stored(obj), limit))
            else:
                stop, full = objects.take(obj.size, limit, data, pos, end)
            self._write(obj, data, pos, stop, now)
            self.ingest.batch.source_objects.add((src.id, obj.id))
            self._span(obj.id, src.id, base + pos, min(base + stop, src_end))
            if compressed:
                full = self.stored(obj) >= limit
            if full:
                self.close(obj, "max-object-size", now)
            elif objects.full_by_parts(obj.sealed + 1):
                self.close(obj, "max-parts", now)
            pos = stop

    def deliver_records(self, src: Source, key: str, ts: str, records: list[bytes], now: float,
                         suffix: str, spans: list[tuple[int, int]] | None = None) -> None:
        """Records (each ending in b"\\n", possibly containing more newlines) of one (key, ts);
        `spans`: each record's [start, end) in the source (its envelope line)."""
        i = 0
        while i < len(records):
            obj = self._target(key, ts, now, suffix)
            limit, compressed = obj.form.max_object_size, obj.form.codec.compressed
            j, size = i, 0
            if compressed:  # the stored size is known only once compressed: write in blind runs
                blind = objects.blind_bytes(self.stored(obj), limit)
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
            self.ingest.batch.source_objects.add((src.id, obj.id))
            if spans is not None:
                for a, b in spans[i:j]:
                    self._span(obj.id, src.id, a, b)
            if (self.stored(obj) if compressed else obj.size) >= limit:
                self.close(obj, "max-object-size", now)
            elif objects.full_by_parts(obj.sealed + 1):
                self.close(obj, "max-parts", now)
            i = j

    def _span(self, object_id: int, source_id: int, start: int, end: int) -> None:
        """The object took the source's bytes [start, end): into the batch's spans, merged with
        the pair's last span when it continues it."""
        ranges = self.ingest.batch.ranges
        spans = ranges.get((object_id, source_id))
        if spans is None:
            ranges[(object_id, source_id)] = [[start, end]]
        elif spans[-1][1] == start:
            spans[-1][1] = end
        else:
            spans.append([start, end])

    def _target(self, key: str, ts: str, now: float, suffix: str) -> OpenObject:
        by_ts = self.open_by_key.get(key, {})
        route = objects.route(self._newest(key), by_ts.keys(), ts)
        for old_ts in route.close:
            self.close(by_ts[old_ts], "newer-timestamp", now)
        self.newest[key] = route.newest
        if route.reuse:
            obj = by_ts[ts]
            if obj.suffix == suffix:
                return obj
            # another object-key-suffix for the same key: its records go to an object of their own
            self.close(obj, "object-key-suffix", now)
        return self._new_object(key, ts, now, suffix)

    def _newest(self, key: str) -> str | None:
        if key in self.newest:
            return self.newest[key]
        if len(self.newest) >= NEWEST_CACHE:
            for k in [k for k in self.newest if k not in self.open_by_key][: NEWEST_CACHE // 2]:
                del self.newest[k]
        newest = self.ingest.journal.newest_ts(key)
        self.newest[key] = newest
        return newest

    def _new_object(self, key: str, ts: str, now: float, suffix: str) -> OpenObject:
        obj = OpenObject(self.next_id, key, ts, 0, 0, now, now, suffix=suffix, form=self.form)
        self.next_id += 1
        self.track(obj)
        self.ingest.batch.new_objects.append(ObjectRow(obj.id, key, ts, ObjectState.OPEN, None, None, None, None, 0, 0,
                                                       now, now, key_suffix=suffix, form=self._form_json))
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
                self.ingest.batch.chunks[(obj.id, obj.part)] = (obj.chunk_len, ChunkState.OPEN, None)
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
                self.ingest.batch.chunks[(obj.id, obj.part)] = (obj.chunk_len, ChunkState.OPEN, None)
                if obj.chunk_len >= chunk_size and obj.part < objects.MAX_PARTS:
                    self._seal(obj)
        obj.size += n
        obj.records += records
        obj.last_write = now
        self.ingest.batch.objects[obj.id] = (obj.size, obj.records, now)
        self.ingest.stats["bytes"] += n
        self.ingest.stats["records"] += records

    def stored(self, obj: OpenObject) -> int:
        """The object's stored size: its sealed parts and what its open chunk's compressor
        has produced so far (what max-object-size is measured on with compression, as s3())."""
        if obj.chunk_len == 0:
            return obj.sealed_bytes
        return obj.sealed_bytes + self.store.stored_len(obj.id, obj.part, obj.chunk_len, obj.form.codec)

    def _seal(self, obj: OpenObject) -> None:
        part_size = self.store.seal(obj.id, obj.part, obj.chunk_len, obj.form.codec)
        obj.sealed_bytes += part_size
        self.ingest.batch.chunks[(obj.id, obj.part)] = (obj.chunk_len, ChunkState.SEALED, part_size)
        self.ingest.sealed_in_batch.append((obj.id, obj.part, obj.form.codec))
        self.ingest.sealed_pending += 1
        obj.sealed += 1
        obj.part += 1
        obj.chunk_len = 0

    def close(self, obj: OpenObject, reason: str, now: float) -> None:
        if obj.chunk_len > 0:
            self._seal(obj)
        self.ingest.batch.closed[obj.id] = (reason, now)
        self._untrack(obj)
        self.log.debug("object closed", object=obj.id, key=obj.key, ts=obj.ts, reason=reason, size=obj.size)
