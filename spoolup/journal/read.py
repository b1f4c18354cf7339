"""The journal's read queries: what status, drain progress, metrics and recovery ask of it
(counts, sums, lookups); none of them writes."""

from __future__ import annotations

import json
from typing import NamedTuple

from spoolup.journal.rows import (ACTIVE, CHUNK_OPEN, CLOSED, DONE, OPEN, SEALED, UPLOADED, ObjectRow, ObjectState,
                                  _object)
from spoolup.journal.store import REFUSED_OBJECTS_META, Store


class UnfinishedChunk(NamedTuple):
    """A chunk of an object not done, with the form its object was started with (recover)."""

    object_id: int
    part: int
    length: int
    state: str  # a ChunkState's value
    part_size: int | None
    form: str | None


class Read(Store):
    """Read-only verbs over objects, chunks, sources and dead letters."""

    def object(self, object_id: int) -> ObjectRow | None:
        row = self._conn.execute("SELECT * FROM objects WHERE id = ?", (object_id,)).fetchone()
        return _object(row) if row else None

    def pending_objects(self, through: int | None = None) -> int:
        """Objects not done (with ids up to `through`, if given: what a drain closed).  A drain
        asks at every turn of its loop: the states besides done are named, so SQLite searches the
        index objects_state for them instead of scanning it whole (`!=`: every done object of the
        week the journal keeps, a quarter of a drain's main process after 24,000 objects)."""
        if through is None:
            return self._conn.execute(
                f"SELECT count(*) FROM objects WHERE state IN ('{OPEN}', '{CLOSED}')").fetchone()[0]
        return self._conn.execute(
            f"SELECT count(*) FROM objects WHERE state IN ('{OPEN}', '{CLOSED}') AND id <= ?", (through,)
        ).fetchone()[0]

    def refusals_holding(self, through: int, since: float) -> list[dict]:
        """The refusals (REFUSED_OBJECTS_META, written by the upload process since `since`) that
        hold back every object up to `through` that is not done, or [] while any of those is
        not held by one (it may still ship).  A refusal of object 0 (the ledger's segment, or the
        reconcile before any upload) holds back all of them.  A foreground drain ends on them:
        they are retried only slowly."""
        refused = [q for q in json.loads(self.meta(REFUSED_OBJECTS_META) or "[]") if q.get("since", 0) >= since]
        if not refused or any(q.get("object_id") == 0 for q in refused):
            return refused
        held = {q.get("object_id") for q in refused}
        rows = self._conn.execute(f"SELECT id FROM objects WHERE state != '{DONE}' AND id <= ?", (through,))
        return refused if all(oid in held for (oid,) in rows) else []

    def has_closed_objects(self) -> bool:
        """Is any object closed and waiting for its upload?"""
        return self._conn.execute(f"SELECT 1 FROM objects WHERE state = '{CLOSED}' LIMIT 1").fetchone() is not None

    def object_totals(self, state: ObjectState) -> tuple[int, int, float | None]:
        """(count, record bytes, earliest closed_at) of the objects in `state`."""
        row = self._conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(closed_at) FROM objects WHERE state = ?", (state,)).fetchone()
        return row[0], row[1], row[2]

    def sealed_totals(self) -> tuple[int, int]:
        """(count, stored bytes) of the sealed parts waiting for their upload."""
        row = self._conn.execute(
            f"SELECT count(*), coalesce(sum(part_size), 0) FROM chunks WHERE state = '{SEALED}'").fetchone()
        return row[0], row[1]

    def oldest_pending_created(self) -> float | None:
        """When the oldest object not done was created."""
        return self._conn.execute(f"SELECT min(created) FROM objects WHERE state != '{DONE}'").fetchone()[0]

    def open_object_parts(self) -> dict[int, tuple[int, int, int]]:
        """Per open object, in one pass over its chunks: the parts uploaded, their bytes, and the
        sealed (or uploaded) parts' stored bytes (what max-object-size counts with compression)."""
        rows = self._conn.execute(
            f"SELECT c.object_id, sum(c.state = '{UPLOADED}'), "
            f"coalesce(sum(CASE WHEN c.state = '{UPLOADED}' THEN c.part_size END), 0), "
            f"coalesce(sum(CASE WHEN c.state != '{CHUNK_OPEN}' THEN c.part_size END), 0) "
            f"FROM chunks c JOIN objects o ON o.id = c.object_id WHERE o.state = '{OPEN}' GROUP BY c.object_id")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def last_indexes(self) -> dict[tuple[str, str], int]:
        """The highest index claimed for each (key, timestamp)."""
        rows = self._conn.execute("SELECT key, ts, max(idx) FROM objects WHERE idx IS NOT NULL GROUP BY key, ts")
        return {(r[0], r[1]): r[2] for r in rows}

    def claimed_unfinished(self) -> list[ObjectRow]:
        """Objects with a final key that are not done: what recovery compares with the bucket."""
        return [_object(r) for r in self._conn.execute(
            f"SELECT * FROM objects WHERE state != '{DONE}' AND final_key IS NOT NULL ORDER BY id")]

    def upload_ids(self) -> set[str]:
        """Every multipart upload id the journal holds."""
        return {r[0] for r in self._conn.execute("SELECT upload_id FROM objects WHERE upload_id IS NOT NULL")}

    def last_part(self, object_id: int) -> int:
        """The number of an object's last chunk (its chunk files are 1..this), 0 if none."""
        return self._conn.execute(
            "SELECT coalesce(max(part), 0) FROM chunks WHERE object_id = ?", (object_id,)).fetchone()[0]

    def unfinished_chunks(self) -> list[UnfinishedChunk]:
        """Every chunk of the objects not done, with its object's form (the chunk files to expect)."""
        return [UnfinishedChunk(*r) for r in self._conn.execute(
            "SELECT c.object_id, c.part, c.length, c.state, c.part_size, o.form "
            f"FROM chunks c JOIN objects o ON o.id = c.object_id WHERE o.state != '{DONE}'")]

    def unshipped_bytes(self) -> int:
        """Record bytes in objects not completed whose chunks are not uploaded yet.  A drain asks
        at every turn of its loop (its progress): the chunks are selected by their state through
        the index chunks_state (open and sealed: the states besides uploaded), so the cost follows
        the chunks not uploaded, not the week of done objects' chunks the journal keeps (`!=`
        scanned every chunk row: 92 % of a drain's main process after 20,000 objects)."""
        return self._conn.execute(
            "SELECT coalesce(sum(c.length), 0) FROM chunks c JOIN objects o ON o.id = c.object_id "
            f"WHERE c.state IN ('{CHUNK_OPEN}', '{SEALED}') AND o.state != '{DONE}'").fetchone()[0]

    def unread_bytes(self) -> int:
        """Spool bytes of active files not read yet (as of ingest's last look at their sizes)."""
        return self._conn.execute(
            f"SELECT coalesce(sum(max(size - offset, 0)), 0) FROM sources WHERE state = '{ACTIVE}'").fetchone()[0]

    def dead_letters(self) -> list[dict]:
        """The dead-letter tally of each spool file (records and bytes not shipped), by path."""
        return [dict(r) for r in self._conn.execute("SELECT * FROM dead_letters ORDER BY path")]

    def dead_letter_bytes(self) -> dict[int, int]:
        """Source id -> dead-letter bytes journaled (ingest reconciles its in-memory tally with it)."""
        return dict(self._conn.execute("SELECT source_id, bytes FROM dead_letters").fetchall())
