"""The journal's objects and chunks: the ingest batch commit, and the upload verbs (claim,
start, parts, complete), each one transaction: the invariants of docs/DESIGN.md."""

from __future__ import annotations

import json
import time
from typing import Iterable

from spoolup.journal.rows import (CLAIMED, CLAIMED_ROWS, CLOSED, DONE, MULTIPART, NOT_DONE, NOT_DONE_ROWS, OPEN,
                                  SEALED, SINGLE, UPLOADED, Batch, ChunkRow, ObjectRow, UploadMode, _ids, _object,
                                  db_path)
from spoolup.journal.ledger import Ledger


class Objects(Ledger):
    """Verbs on the objects and chunks tables (and the batch's other rows)."""

    # -- objects and chunks (ingest) -------------------------------------------

    def stamp_forms(self, form: str) -> int:
        """Objects not yet done that were journaled before forms were (schema < 5) get `form`:
        from now on they keep it, whatever the configuration says at later starts."""
        with self.transaction():
            return self._conn.execute(
                f"UPDATE objects SET form = ? WHERE form IS NULL AND state != '{DONE}'", (form,)
            ).rowcount

    def open_objects(self, *, by_key: bool = False) -> list[ObjectRow]:
        """Objects still taking records, in journal order (or by key, timestamp, then id: status)."""
        order = "key, ts, id" if by_key else "id"
        rows = self._conn.execute(f"SELECT * FROM objects WHERE state = '{OPEN}' ORDER BY {order}")
        return [_object(r) for r in rows]

    def chunks_of(self, object_id: int) -> list[ChunkRow]:
        rows = self._conn.execute("SELECT * FROM chunks WHERE object_id = ? ORDER BY part", (object_id,))
        return [ChunkRow(**dict(r)) for r in rows]

    def max_object_id(self) -> int:
        return self._conn.execute("SELECT coalesce(max(id), 0) FROM objects").fetchone()[0]

    def newest_ts(self, key: str) -> str | None:
        return self._conn.execute("SELECT max(ts) FROM objects WHERE key = ?", (key,)).fetchone()[0]

    def sealed_pending(self) -> int:
        """Sealed chunks not yet uploaded: what max-pending-uploads caps."""
        return self._conn.execute(f"SELECT count(*) FROM chunks WHERE state = '{SEALED}'").fetchone()[0]

    def commit_batch(self, batch: Batch) -> None:
        c = self._conn
        with self.transaction():
            if batch.new_objects:
                c.executemany(
                    "INSERT INTO objects (id, key, ts, state, size, records, created, last_write, key_suffix, form) "
                    f"VALUES (?, ?, ?, '{OPEN}', ?, ?, ?, ?, ?, ?)",
                    [(o.id, o.key, o.ts, o.size, o.records, o.created, o.last_write, o.key_suffix, o.form)
                     for o in batch.new_objects],
                )
            if batch.chunks:
                c.executemany(
                    "INSERT INTO chunks (object_id, part, length, state, part_size) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (object_id, part) DO UPDATE SET length = excluded.length, "
                    "state = excluded.state, part_size = excluded.part_size",
                    [(oid, part, *v) for (oid, part), v in batch.chunks.items()],
                )
            if batch.objects:
                c.executemany(
                    "UPDATE objects SET size = ?, records = ?, last_write = ? WHERE id = ?",
                    [(*v, oid) for oid, v in batch.objects.items()],
                )
            if batch.closed:
                c.executemany(
                    f"UPDATE objects SET state = '{CLOSED}', close_reason = ?, closed_at = ? "
                    f"WHERE id = ? AND state = '{OPEN}'",
                    [(*v, oid) for oid, v in batch.closed.items()],
                )
            if batch.sources:
                now = time.time()
                c.executemany(
                    "UPDATE sources SET offset = ?, size = ?, mtime = ?, tail = ?, updated = ? WHERE id = ?",
                    [(off, size, mtime, tail, now, sid) for sid, (off, size, mtime, tail) in batch.sources.items()],
                )
            if batch.heads:
                c.executemany("UPDATE sources SET head = ? WHERE id = ?", [(h, sid) for sid, h in batch.heads.items()])
            if batch.ranges:
                self._commit_ranges(batch)
            for sid, offset in batch.skips_passed.items():
                self._passed_skips(sid, offset)
            if batch.source_objects:
                c.executemany(
                    "INSERT OR IGNORE INTO source_objects (source_id, object_id) VALUES (?, ?)",
                    list(batch.source_objects),
                )
            if batch.dead_letters:
                now = time.time()
                c.executemany(
                    "INSERT INTO dead_letters (source_id, path, records, bytes, last_at, last_reason) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source_id) DO UPDATE SET path = excluded.path, "
                    "records = records + excluded.records, bytes = bytes + excluded.bytes, "
                    "last_at = excluded.last_at, last_reason = excluded.last_reason",
                    [(sid, db_path(p), n, b, now, r) for sid, (p, n, b, r) in batch.dead_letters.items()],
                )
            if batch.counters:
                self.bump_counters(batch.counters)

    # -- uploads ---------------------------------------------------------------

    def claimable_with_context(self, limit: int = 256, skip: Iterable[int] = ()) -> list[tuple[ObjectRow, int | None, int]]:
        """Objects that need their final index now (they have a part to send, or are
        complete), whose earlier objects of the same (key, ts) are claimed; each with the
        previous index of its (key, ts) and its number of chunks.  `skip`: object ids the
        caller cannot take now (in flight, backing off), so they never fill the window."""
        rows = self._conn.execute(
            "SELECT o.*, "
            "(SELECT max(p.idx) FROM objects p WHERE p.key = o.key AND p.ts = o.ts AND p.id < o.id) AS prev_idx, "
            "(SELECT count(*) FROM chunks c WHERE c.object_id = o.id) AS n_chunks "
            f"FROM {NOT_DONE_ROWS} WHERE o.idx IS NULL AND {NOT_DONE} "
            f"AND (o.state = '{CLOSED}' "
            f"OR EXISTS (SELECT 1 FROM chunks c WHERE c.object_id = o.id AND c.state = '{SEALED}')) "
            "AND NOT EXISTS (SELECT 1 FROM objects p WHERE p.key = o.key AND p.ts = o.ts AND p.id < o.id AND p.idx IS NULL) "
            "AND o.id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY o.id LIMIT ?",
            (_ids(skip), limit),
        )
        return [(_object(r), r["prev_idx"], r["n_chunks"]) for r in rows]

    def indexes_in_use(self, key: str, ts: str, exclude_id: int) -> set[int]:
        rows = self._conn.execute(
            "SELECT idx FROM objects WHERE key = ? AND ts = ? AND idx IS NOT NULL AND id != ?", (key, ts, exclude_id)
        )
        return {r[0] for r in rows}

    def claim(self, object_id: int, idx: int, final_key: str, mode: UploadMode) -> None:
        with self.transaction():
            self._conn.execute(
                "UPDATE objects SET idx = ?, final_key = ?, mode = ?, claim_gen = claim_gen + 1, ledger_seq = NULL "
                "WHERE id = ? AND idx IS NULL",
                (idx, final_key, mode, object_id),
            )
            # counted in the claim's own transaction: the state dir's high-water mark
            # (spoolup/stateid.py) tells a journal that lost transactions by it
            self._conn.execute(
                "INSERT INTO meta (name, value) VALUES ('claims', '1') "
                "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )

    def claims(self) -> int:
        """Index claims this journal has made, ever (never decreases)."""
        return int(self.meta("claims") or 0)

    def unclaim(self, object_id: int) -> list[ObjectRow]:
        """Give up a claimed index (taken by someone else): claim again, re-upload every part.
        The later objects of the same (key, ts) that are claimed and not done give up theirs
        too, so that they claim after it: index order stays record order.  Returns those later
        objects as they were before (final key, mode, upload id, claim_gen): what they leave at
        the keys they give up is this journal's to clean up -- the uploads it created, now
        unused, and the orphans of a Create whose upload id it never journaled."""
        with self.transaction():
            row = self._conn.execute("SELECT key, ts FROM objects WHERE id = ?", (object_id,)).fetchone()
            later = [_object(r) for r in self._conn.execute(
                "SELECT * FROM objects WHERE key = ? AND ts = ? AND id > ? "
                f"AND idx IS NOT NULL AND state != '{DONE}' ORDER BY id", (row[0], row[1], object_id),
            )] if row else []
            ids = [object_id] + [o.id for o in later]
            self._conn.executemany(
                "UPDATE objects SET idx = NULL, final_key = NULL, mode = NULL, upload_id = NULL, "
                "claim_gen = claim_gen + 1, ledger_seq = NULL WHERE id = ?",
                [(i,) for i in ids],
            )
            self._conn.executemany(
                f"UPDATE chunks SET state = '{SEALED}', etag = NULL WHERE object_id = ? AND state = '{UPLOADED}'",
                [(i,) for i in ids],
            )
        return later

    def to_start(self, limit: int = 256, skip: Iterable[int] = ()) -> list[ObjectRow]:
        """Claimed multipart objects without an upload id whose start intent is in the bucket
        (ledger_seq < 0: Journal.intended_if), and claimed single-part objects not done whose
        earlier objects of the same (key, ts) are done and whose ledger record is in the bucket
        (a PutObject completes it: record before visible)."""
        rows = self._conn.execute(
            f"SELECT o.* FROM {CLAIMED_ROWS} WHERE {CLAIMED} AND o.upload_id IS NULL "
            f"AND o.ledger_seq IS NOT NULL AND (o.mode != '{SINGLE}' OR {_EARLIER_DONE}) "
            "AND o.id NOT IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
            (_ids(skip), limit),
        )
        return [_object(r) for r in rows]

    def set_upload_id(self, object_id: int, upload_id: str) -> None:
        with self.transaction():
            self._conn.execute("UPDATE objects SET upload_id = ? WHERE id = ?", (upload_id, object_id))

    def reset_upload(self, object_id: int) -> None:
        """The multipart upload is gone (aborted outside spoolup): start a new one, re-upload every part."""
        with self.transaction():
            self._conn.execute("UPDATE objects SET upload_id = NULL, claim_gen = claim_gen + 1, ledger_seq = NULL WHERE id = ?",
                               (object_id,))
            self._conn.execute(
                f"UPDATE chunks SET state = '{SEALED}', etag = NULL WHERE object_id = ? AND state = '{UPLOADED}'",
                (object_id,),
            )

    def parts_to_upload(self, limit: int = 256, skip: Iterable[tuple[int, int]] = ()) -> list[tuple[ObjectRow, ChunkRow]]:
        """Sealed parts of started uploads, round-robin across objects (every object's first
        pending part, then every object's second...), without the (object id, part) pairs in
        `skip` (in flight, backing off): no object can fill the window for the others."""
        rows = self._conn.execute(
            "SELECT * FROM (SELECT c.object_id AS c_object_id, c.part AS c_part, c.length AS c_length, "
            "c.state AS c_state, c.part_size AS c_part_size, c.md5 AS c_md5, c.etag AS c_etag, o.*, "
            "row_number() OVER (PARTITION BY c.object_id ORDER BY c.part) AS c_rank "
            f"FROM {CLAIMED_ROWS} CROSS JOIN chunks c ON c.object_id = o.id "
            f"WHERE {CLAIMED} AND c.state = '{SEALED}' AND o.mode = '{MULTIPART}' AND o.upload_id IS NOT NULL "
            "AND (c.object_id || ':' || c.part) NOT IN (SELECT value FROM json_each(?))) "
            "ORDER BY c_rank, c_object_id LIMIT ?",
            (json.dumps([f"{o}:{p}" for o, p in skip]), limit),
        )
        out = []
        for r in rows:
            d = dict(r)
            d.pop("c_rank")
            chunk = ChunkRow(**{k[2:]: d.pop(k) for k in list(d) if k.startswith("c_")})
            out.append((_object(d), chunk))
        return out

    def reseal_parts(self, object_id: int, parts: Iterable[int]) -> None:
        """S3 does not hold these parts as journaled: upload them again."""
        with self.transaction():
            self._conn.executemany(
                f"UPDATE chunks SET state = '{SEALED}', etag = NULL WHERE object_id = ? AND part = ?",
                [(object_id, p) for p in parts])
            # its ETag changes: a ledger record written for the old parts no longer describes it
            self._conn.execute("UPDATE objects SET ledger_seq = NULL WHERE id = ?", (object_id,))

    def record_parts(self, parts: Iterable[tuple[int, int, str, str]]) -> None:
        """(object_id, part, etag, md5) of parts whose UploadPart succeeded: invariant 2."""
        with self.transaction():
            self._conn.executemany(
                f"UPDATE chunks SET state = '{UPLOADED}', etag = ?, md5 = ? WHERE object_id = ? AND part = ?",
                [(etag, md5, oid, part) for oid, part, etag, md5 in parts],
            )

    def completable(self, limit: int = 256, skip: Iterable[int] = ()) -> list[ObjectRow]:
        """Closed multipart objects with every part uploaded and their ledger record in the bucket,
        whose earlier objects of the same (key, ts) are done: objects complete in record order, so a key race that moves one to
        a later index moves those after it too (unclaim), and index order stays record order."""
        rows = self._conn.execute(
            f"SELECT o.* FROM {CLAIMED_ROWS} WHERE {CLAIMED} AND o.state = '{CLOSED}' AND o.mode = '{MULTIPART}' "
            "AND o.upload_id IS NOT NULL AND o.ledger_seq > 0 "
            f"AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.object_id = o.id AND c.state != '{UPLOADED}') "
            f"AND {_EARLIER_DONE} AND o.id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY o.id LIMIT ?",
            (_ids(skip), limit),
        )
        return [_object(r) for r in rows]

    def complete(self, object_id: int, etag: str | None) -> None:
        """CompleteMultipartUpload (or PutObject) succeeded: invariant 3."""
        with self.transaction():
            self._conn.execute(
                f"UPDATE objects SET state = '{DONE}', done_at = ?, etag = ? WHERE id = ?",
                (time.time(), etag, object_id),
            )
            self._conn.execute(f"UPDATE chunks SET state = '{UPLOADED}' WHERE object_id = ? AND state != '{UPLOADED}'",
                              (object_id,))

    def prune_done(self, older_than: float) -> int:
        """Forget completed objects done before `older_than` (their chunk rows first)."""
        with self.transaction():
            self._conn.execute(
                f"DELETE FROM chunks WHERE object_id IN "
                f"(SELECT id FROM objects WHERE state = '{DONE}' AND done_at < ?)",
                (older_than,),
            )
            self._conn.execute(
                "DELETE FROM source_objects WHERE object_id IN "
                f"(SELECT id FROM objects WHERE state = '{DONE}' AND done_at < ?)",
                (older_than,),
            )
            self._prune_ranges(older_than)
            # keep, for every key, the last object of its newest timestamp: it carries that
            # timestamp (an older one arriving later is backfill, never a new "current" object)
            # and the highest index used for it
            cur = self._conn.execute(
                f"DELETE FROM objects WHERE state = '{DONE}' AND done_at < ? AND id NOT IN ("
                "WITH newest AS (SELECT key, max(ts) AS ts FROM objects GROUP BY key) "
                "SELECT max(o.id) FROM objects o JOIN newest n ON o.key = n.key AND o.ts = n.ts GROUP BY o.key)",
                (older_than,),
            )
        return cur.rowcount



    # -- compare-and-set verbs (upload-cas) ------------------------------------
    # The upload coordinator journals a worker's result only if the object is still in the
    # state the result was computed for (spoolup/work.py Basis: its claim_gen, final key and
    # upload id); each verb says whether it applied.  claim_gen is bumped by claim, unclaim
    # and reset_upload, so a result computed before any of them no longer matches.

    _SAME_CLAIM = f"id = ? AND claim_gen = ? AND state != '{DONE}'"

    def claim_if(self, object_id: int, claim_gen: int, prev_idx: int | None, idx: int, final_key: str,
                 mode: UploadMode) -> bool:
        """Claim `idx` if the object is unclaimed at `claim_gen`, every earlier object of its
        (key, ts) is claimed, the highest of their indexes is still `prev_idx` (the claim was
        computed after it), and no other object of the key holds `idx`: index order stays
        record order even when a KeyTaken moved the earlier objects meanwhile."""
        with self.transaction():
            cur = self._conn.execute(
                "UPDATE objects SET idx = ?, final_key = ?, mode = ?, claim_gen = claim_gen + 1, ledger_seq = NULL "
                f"WHERE {self._SAME_CLAIM} AND idx IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM objects p WHERE p.key = objects.key AND p.ts = objects.ts "
                "AND p.id < objects.id AND p.idx IS NULL) "
                "AND (SELECT max(p.idx) FROM objects p WHERE p.key = objects.key AND p.ts = objects.ts "
                "AND p.id < objects.id) IS ? "
                "AND NOT EXISTS (SELECT 1 FROM objects q WHERE q.key = objects.key AND q.ts = objects.ts "
                "AND q.idx = ? AND q.id != objects.id)",
                (idx, final_key, mode, object_id, claim_gen, prev_idx, idx),
            )
            if cur.rowcount:
                self._conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('claims', '1') "
                    "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                )
        return cur.rowcount > 0

    def set_upload_id_if(self, object_id: int, claim_gen: int, upload_id: str,
                         checksum_algorithm: str | None = None) -> bool:
        """Journal a new upload id (and the flexible-checksum algorithm it was created with) if the
        claim it was created for still holds (invariant 4)."""
        with self.transaction():
            cur = self._conn.execute(
                f"UPDATE objects SET upload_id = ?, upload_checksum = ? WHERE {self._SAME_CLAIM} AND upload_id IS NULL "
                f"AND mode = '{MULTIPART}'", (upload_id, checksum_algorithm, object_id, claim_gen))
        return cur.rowcount > 0

    def record_part_if(self, object_id: int, claim_gen: int, upload_id: str | None, part: int, etag: str,
                       md5: str, checksum: str | None = None) -> bool:
        """Journal an uploaded part (its ETag, MD5 and flexible checksum) if it was sent to the
        object's current upload (invariant 2)."""
        with self.transaction():
            cur = self._conn.execute(
                f"UPDATE chunks SET state = '{UPLOADED}', etag = ?, md5 = ?, checksum = ? WHERE object_id = ? AND part = ? "
                f"AND state = '{SEALED}' AND EXISTS (SELECT 1 FROM objects o WHERE o.id = chunks.object_id "
                f"AND o.claim_gen = ? AND o.upload_id IS ? AND o.state != '{DONE}')",
                (etag, md5, checksum, object_id, part, claim_gen, upload_id))
        return cur.rowcount > 0

    def complete_if(self, object_id: int, claim_gen: int, etag: str | None) -> bool:
        """complete() if the object still has the claim it was completed at (invariant 3)."""
        with self.transaction():
            if self._conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND idx IS NOT NULL",
                                  (object_id, claim_gen)).fetchone() is None:
                return False
            self.complete(object_id, etag)
        return True

    def unclaim_if(self, object_id: int, claim_gen: int) -> list[ObjectRow] | None:
        """unclaim() if the object still has that claim; None if it does not."""
        with self.transaction():
            if self._conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND idx IS NOT NULL",
                                  (object_id, claim_gen)).fetchone() is None:
                return None
            return self.unclaim(object_id)

    def reset_upload_if(self, object_id: int, claim_gen: int, upload_id: str | None) -> bool:
        """reset_upload() if the object still has that claim and upload."""
        with self.transaction():
            if self._conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND upload_id IS ?",
                                  (object_id, claim_gen, upload_id)).fetchone() is None:
                return False
            self.reset_upload(object_id)
        return True

    def reseal_parts_if(self, object_id: int, claim_gen: int, upload_id: str | None, parts: Iterable[int]) -> bool:
        """reseal_parts() if the object still has that claim and upload."""
        with self.transaction():
            if self._conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND upload_id IS ?",
                                  (object_id, claim_gen, upload_id)).fetchone() is None:
                return False
            self.reseal_parts(object_id, parts)
        return True


_EARLIER_DONE = ("NOT EXISTS (SELECT 1 FROM objects p WHERE p.key = o.key AND p.ts = o.ts AND p.id < o.id "
                 f"AND p.state != '{DONE}')")
