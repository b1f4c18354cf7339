"""The journal's side of the ledger (spoolup/ledger.py is the format): which spool bytes each
object holds (object_ranges), which bytes beyond a source's offset the bucket already holds
(skip_ranges), and the ledger segment numbers (meta `ledger_seq`, objects.ledger_seq)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from spoolup.journal.rows import (CLAIMED, CLAIMED_ROWS, CLOSED, DONE, MULTIPART, NOT_DONE, NOT_DONE_ROWS, SEALED,
                                  SINGLE, UPLOADED, Batch, ObjectRow, SourceState, _ids, _object, db_path, fs_path)
from spoolup.journal.cleanups import UPLOAD, Cleanups

LEDGER_SEQ_META = "ledger_seq"  # the highest segment number this agent wrote or has seen
AGENT_META = "agent_id"  # the agent id the journal writes its ledger under
# A source truncated in place and read again from byte 0 (SourceReader.restart) can give an
# object that is still open a span starting where one of its spans of the old content did:
# the two are one row (their union), never an error that stops ingest.
_INSERT_RANGE = ('INSERT INTO object_ranges (object_id, source_id, start, "end") VALUES (?, ?, ?, ?) '
                 'ON CONFLICT (object_id, source_id, start) DO UPDATE SET "end" = max("end", excluded."end")')


class Ledger(Cleanups):
    """Verbs on object_ranges, skip_ranges and the ledger's segment numbers."""

    # -- spans of each object (written with the ingest batch) ----------------------------

    def _commit_ranges(self, batch: Batch) -> None:
        """Inside commit_batch's transaction: the batch's spans, each pair's first one merged
        into the span it continues (one row per (object, source) in format = "lines")."""
        c = self._conn
        for (object_id, source_id), spans in batch.ranges.items():
            start, end = spans[0]
            if not c.execute('UPDATE object_ranges SET "end" = ? WHERE object_id = ? AND source_id = ? AND "end" = ?',
                             (end, object_id, source_id, start)).rowcount:
                c.execute(_INSERT_RANGE, (object_id, source_id, start, end))
            if len(spans) > 1:
                c.executemany(_INSERT_RANGE, [(object_id, source_id, a, b) for a, b in spans[1:]])

    def ranges_of(self, object_id: int) -> dict[int, list[tuple[int, int]]]:
        """source id -> the object's spans of it, in order."""
        out: dict[int, list[tuple[int, int]]] = {}
        for r in self._conn.execute('SELECT source_id, start, "end" FROM object_ranges WHERE object_id = ? '
                                    "ORDER BY source_id, start", (object_id,)):
            out.setdefault(r[0], []).append((r[1], r[2]))
        return out

    def ranges_of_source(self, source_id: int) -> list[tuple[int, int, int]]:
        """(object id, start, end) of every journaled object holding bytes of the source, by start."""
        return [tuple(r) for r in self._conn.execute(
            'SELECT object_id, start, "end" FROM object_ranges WHERE source_id = ? ORDER BY start', (source_id,))]

    def _prune_ranges(self, older_than: float) -> None:
        """Inside prune_done's transaction: the spans of the done objects it forgets."""
        self._conn.execute(f"DELETE FROM object_ranges WHERE object_id IN "
                           f"(SELECT id FROM objects WHERE state = '{DONE}' AND done_at < ?)", (older_than,))

    # -- bytes to skip (the bucket holds them already) -----------------------------------

    def skip_ranges(self) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for r in self._conn.execute('SELECT source_id, start, "end" FROM skip_ranges ORDER BY source_id, start'):
            out.setdefault(r[0], []).append((r[1], r[2]))
        return out

    def skip_timestamps(self) -> dict[int, list[tuple[int, str]]]:
        """source id -> (start of a skip span, the object-key-timestamp of the records read again
        before it), by start: the bring-forward's timestamps for bytes it rewound before bytes the
        bucket holds (spoolup/catchup.py); deleted with their spans."""
        out: dict[int, list[tuple[int, str]]] = {}
        for r in self._conn.execute("SELECT source_id, start, ts FROM skip_ranges WHERE ts IS NOT NULL "
                                    "ORDER BY source_id, start"):
            out.setdefault(r[0], []).append((r[1], r[2]))
        return out

    def set_skip_ranges(self, source_id: int, spans: Iterable[tuple[int, int]]) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM skip_ranges WHERE source_id = ?", (source_id,))
            self._conn.executemany('INSERT INTO skip_ranges (source_id, start, "end") VALUES (?, ?, ?)',
                                   [(source_id, a, b) for a, b in spans])

    def _passed_skips(self, source_id: int, offset: int) -> None:
        """Inside a transaction: the source's skip spans that its offset has passed."""
        self._conn.execute('DELETE FROM skip_ranges WHERE source_id = ? AND "end" <= ?', (source_id, offset))

    # -- segment numbers -------------------------------------------------------------------

    def lowest_unfinished_record(self) -> int | None:
        """The lowest segment number recording one of this journal's objects that is not done
        (None: there is none).  Such an object may be in the bucket already (record before
        visible: its PutObject or Complete may have been sent), by a future this journal lost."""
        return self._conn.execute(
            f"SELECT min(ledger_seq) FROM objects WHERE state != '{DONE}' AND ledger_seq > 0").fetchone()[0]

    def ledger_seq(self) -> int:
        return int(self.meta(LEDGER_SEQ_META) or 0)

    def next_ledger_seq(self) -> int:
        """Allocate a segment number (journaled before the segment is written, so that no two
        segments of this journal ever share one, whatever crashes)."""
        with self.transaction():
            seq = self.ledger_seq() + 1
            self.set_meta(LEDGER_SEQ_META, str(seq))
        return seq

    def saw_ledger_seq(self, seq: int) -> None:
        """The bucket holds segment `seq` of this agent: never allocate it (or one below) again."""
        with self.transaction():
            if seq > self.ledger_seq():
                self.set_meta(LEDGER_SEQ_META, str(seq))

    def recorded_if(self, object_id: int, claim_gen: int, final_key: str, seq: int, checksum: str | None,
                    md5: str | None = None) -> bool:
        """Segment `seq` records the object at `final_key`: journaled if its claim still holds.
        md5: a single-part object's body MD5 as the record gives it (its ETag), journaled as its
        part's md5 so that the PutObject sends it (Content-MD5) without hashing the file again."""
        with self.transaction():
            done = bool(self._conn.execute(
                f"UPDATE objects SET ledger_seq = ?, checksum = ? WHERE id = ? AND claim_gen = ? AND final_key = ? "
                f"AND state != '{DONE}'", (seq, checksum, object_id, claim_gen, final_key)).rowcount)
            if done and md5 is not None:
                self._conn.execute("UPDATE chunks SET md5 = ? WHERE object_id = ? AND part = 1", (md5, object_id))
            return done

    def intended_if(self, object_id: int, claim_gen: int, final_key: str, seq: int) -> bool:
        """Segment `seq` holds the object's start intent at `final_key` (its CreateMultipartUpload
        may be sent now): journaled as ledger_seq = -seq if its claim still holds and it has no
        upload yet.  (Negative: the record its Complete needs is still to be written; a claim
        that moves, an upload that vanishes, clear it like any record.)"""
        with self.transaction():
            return bool(self._conn.execute(
                f"UPDATE objects SET ledger_seq = ? WHERE id = ? AND claim_gen = ? AND final_key = ? "
                f"AND state != '{DONE}' AND mode = '{MULTIPART}' AND upload_id IS NULL AND ledger_seq IS NULL",
                (-seq, object_id, claim_gen, final_key)).rowcount)

    # -- what the ledger stage records (spoolup/ledgerstage.py) ---------------------------

    # ledger_seq: NULL = nothing recorded at the current claim; < 0 = a multipart object's start
    # intent only (its Create may be sent); > 0 = its record (its PutObject/Complete may be sent)
    _TO_RECORD = (f"{CLAIMED} AND ("
                  f"(o.mode = '{SINGLE}' AND o.ledger_seq IS NULL) OR (o.mode = '{MULTIPART}' AND o.state = '{CLOSED}' "
                  "AND o.upload_id IS NOT NULL AND (o.ledger_seq IS NULL OR o.ledger_seq < 0) "
                  f"AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.object_id = o.id AND c.state != '{UPLOADED}')))")
    _TO_INTEND = (f"{CLAIMED} AND o.mode = '{MULTIPART}' AND o.upload_id IS NULL "
                  "AND o.ledger_seq IS NULL")

    def to_intend(self, limit: int = 1000, skip: Iterable[int] = ()) -> list[ObjectRow]:
        """Claimed multipart objects without an upload and without a start intent at their claim:
        their CreateMultipartUpload waits for one (record before visible, for uploads)."""
        rows = self._conn.execute(f"SELECT o.* FROM {CLAIMED_ROWS} WHERE {self._TO_INTEND} "
                                  "AND o.id NOT IN (SELECT value FROM json_each(?)) ORDER BY o.id LIMIT ?",
                                  (_ids(skip), limit))
        return [_object(r) for r in rows]

    def lost_starts(self) -> list[ObjectRow]:
        """Claimed multipart objects of this journal whose start intent is journaled and whose
        upload id is not: a Create may have been sent for them -- by this journal before a crash
        (an empty orphan, adopted), or, after this journal went back in time, by its lost future
        (an upload with parts, that nothing else would ever abort: spoolup/catchup.py)."""
        return [_object(r) for r in self._conn.execute(
            f"SELECT * FROM objects o WHERE o.state != '{DONE}' AND o.idx IS NOT NULL AND o.mode = '{MULTIPART}' "
            "AND o.upload_id IS NULL AND o.ledger_seq < 0 ORDER BY o.id")]

    def to_record(self, limit: int = 1000, skip: Iterable[int] = ()) -> list[ObjectRow]:
        """Objects ready to finish but for their ledger record (rule 1: record before visible):
        claimed single-part objects (a PutObject finishes them) and closed multipart objects with
        every part uploaded (a Complete does), without a record at their current claim.  Earlier
        objects of their key need not be done: one segment then serves a whole run of a key."""
        rows = self._conn.execute(f"SELECT o.* FROM {CLAIMED_ROWS} WHERE {self._TO_RECORD} "
                                  "AND o.id NOT IN (SELECT value FROM json_each(?)) ORDER BY o.id LIMIT ?",
                                  (_ids(skip), limit))
        return [_object(r) for r in rows]

    def single_claims_waiting(self, upto: int | None = None, first: int = 1000) -> dict[int, int]:
        """The claims still to come before a segment could record a wave of small objects (rule
        2): per (key, ts) with an unclaimed single-part object (closed, one chunk: recordable
        as soon as it is claimed) whose id is at most `upto`, the id of the chain's first
        unclaimed object (its claim is the one that can go now: the others follow it) ->
        the highest such single-part id.  Chains whose first object cannot claim yet (open,
        nothing sealed) are left out: nothing of them is coming.

        Only the `first` unclaimed objects (by id) are looked at: a segment records at most a
        segment's worth (ledgerstage.MAX_RECORDS), so a wave never waits for more claims than
        that, and the query reads that many rows however many objects wait behind them (a
        drain of 50,000 new keys: it read all 50,000 at every turn).  A chain's head is among
        them whenever any object of its chain is (heads have the lowest ids)."""
        rows = self._conn.execute(
            f"SELECT min(w.id) AS head, max(CASE WHEN w.state = '{CLOSED}' AND "
            "(SELECT count(*) FROM chunks c WHERE c.object_id = w.id) = 1 THEN w.id END) AS last "
            f"FROM (SELECT o.id, o.key, o.ts, o.state FROM {NOT_DONE_ROWS} WHERE {NOT_DONE} AND o.idx IS NULL "
            "AND o.id <= ? ORDER BY o.id LIMIT ?) w GROUP BY w.key, w.ts",
            (upto if upto is not None else 2 ** 62, first))
        heads = {r[0]: r[1] for r in rows if r[1] is not None}
        ready = {r[0] for r in self._conn.execute(
            f"SELECT o.id FROM objects o WHERE o.id IN (SELECT value FROM json_each(?)) AND (o.state = '{CLOSED}' "
            f"OR EXISTS (SELECT 1 FROM chunks c WHERE c.object_id = o.id AND c.state = '{SEALED}'))",
            (_ids(heads),))}
        return {h: last for h, last in heads.items() if h in ready}

    def claimed_in_flight(self, at_most: int) -> int:
        """How many claimed objects are not done, counted up to `at_most` (the partial index
        objects_claimed: the count reads no more entries than that)."""
        return self._conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {CLAIMED_ROWS} WHERE {CLAIMED} LIMIT ?)",
                                  (at_most,)).fetchone()[0]

    def waiting_for_record(self) -> int:
        """How many objects wait for their ledger record (status)."""
        return self._conn.execute(f"SELECT count(*) FROM {CLAIMED_ROWS} WHERE {self._TO_RECORD}").fetchone()[0]

    def ledger_sources(self, ids: Iterable[int]) -> dict[int, tuple[int, int, int | None, bytes | None, str]]:
        """source id -> (dev, ino, btime, head, key_path): a spool file as a ledger record names it."""
        return {r[0]: (r[1], r[2], r[3], r[4], fs_path(r[5])) for r in self._conn.execute(
            "SELECT id, dev, ino, btime, head, key_path FROM sources WHERE id IN (SELECT value FROM json_each(?))",
            (_ids(ids),))}

    # -- what `spoolup verify` reads (spoolup/verify.py) -----------------------------------

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """One read transaction: the reads inside see one state of the journal, whatever the
        running service commits meanwhile (WAL), also on a read-only connection."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    def done_objects(self) -> list[ObjectRow]:
        """Every object the journal has as completed in the bucket (at its final key)."""
        return [_object(r) for r in self._conn.execute(
            f"SELECT * FROM objects WHERE state = '{DONE}' AND final_key IS NOT NULL ORDER BY id")]

    def pending_ranges(self) -> dict[int, list[tuple[int, int, int]]]:
        """source id -> (object id, start, end) of the spans held by objects not done yet."""
        out: dict[int, list[tuple[int, int, int]]] = {}
        for r in self._conn.execute(
                'SELECT r.source_id, r.object_id, r.start, r."end" FROM object_ranges r JOIN objects o '
                f"ON o.id = r.object_id WHERE o.state != '{DONE}' ORDER BY r.source_id, r.start"):
            out.setdefault(r[0], []).append((r[1], r[2], r[3]))
        return out

    def verify_sources(self) -> list[dict]:
        """Every spool file the journal knows (live or done with), with what identifies it to the
        ledger (dev, ino, btime, head) and how far it was consumed (offset)."""
        return [{"id": r["id"], "dev": r["dev"], "ino": r["ino"], "btime": r["btime"], "head": r["head"],
                 "path": fs_path(r["path"]), "key_path": fs_path(r["key_path"]), "offset": r["offset"],
                 "state": r["state"], "first_seen": r["first_seen"]}
                for r in self._conn.execute("SELECT * FROM sources ORDER BY id")]


    # -- bringing the journal forward from the ledger (spoolup/catchup.py) ------------------

    def done_final_keys(self, final_keys: Iterable[str]) -> dict[str, tuple[int, str | None, str | None]]:
        """final key -> (object id, etag, origin) of the done objects at these keys."""
        keys = list(final_keys)
        out: dict[str, tuple[int, str | None, str | None]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            for r in self._conn.execute(
                    f"SELECT final_key, id, etag, origin FROM objects WHERE state = '{DONE}' AND final_key IN "
                    f"({','.join('?' * len(part))})", part):
                out[r[0]] = (r[1], r[2], r[3])
        return out

    def sources_updated(self) -> dict[int, float]:
        """source id -> when its row last changed (its offset last moved at or before it)."""
        return dict(self._conn.execute("SELECT id, updated FROM sources").fetchall())

    def unfinished_ranges(self) -> dict[int, dict[int, list[tuple[int, int]]]]:
        """object id -> source id -> spans, of every object not done (an object without spans:
        an empty dict)."""
        out: dict[int, dict[int, list[tuple[int, int]]]] = {}
        for r in self._conn.execute(
                f'SELECT o.id, r.source_id, r.start, r."end" FROM objects o LEFT JOIN object_ranges r '
                f"ON o.id = r.object_id WHERE o.state != '{DONE}' ORDER BY o.id, r.source_id, r.start"):
            spans = out.setdefault(r[0], {})
            if r[1] is not None:
                spans.setdefault(r[1], []).append((r[2], r[3]))
        return out

    def bring_forward(self, fw: "Forward") -> dict[int, int]:
        """Apply a bring-forward (spoolup/catchup.py) in ONE transaction: the not-done objects it
        discards go (rows, chunks, spans), the spool files it found get source rows, sources move
        to their new offsets, the objects the bucket holds are inserted as done (with their spans),
        skip spans are set, claims at keys now taken are given up (and the uploads they and the
        discarded objects had are owed to the bucket: Forward.aborts, cleanups), and the segment
        number and the claims counter are raised.  Returns the ids of the new sources
        (Forward.new_sources index -> id).  A crash before the commit changes nothing; the chunk files are the caller's to
        remove after it."""
        c = self._conn
        new_ids: dict[int, int] = {}
        with self.transaction():
            for oid in fw.discard:
                for table, column in (("chunks", "object_id"), ("source_objects", "object_id"),
                                      ("object_ranges", "object_id")):
                    c.execute(f"DELETE FROM {table} WHERE {column} = ?", (oid,))
                c.execute(f"DELETE FROM objects WHERE id = ? AND state != '{DONE}'", (oid,))
            now = time.time()
            for gone in fw.retire:  # (before the new rows: one live row per inode)
                c.execute("UPDATE sources SET state = ?, error = ?, updated = ? WHERE id = ?",
                          (SourceState.GONE, "its inode holds another file now (found by the ledger's bring-forward)",
                           now, gone))
            for i, s in enumerate(fw.new_sources):
                new_ids[i] = c.execute(
                    "INSERT INTO sources (dev, ino, path, key_path, offset, size, mtime, head, tail, btime, "
                    "first_seen, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (s.dev, s.ino, db_path(s.path), db_path(s.key_path), s.offset, s.size, s.mtime, s.head,
                     s.tail, s.btime, now, now)).lastrowid

            def sid(ref: int) -> int:
                return new_ids[-1 - ref] if ref < 0 else ref

            for ref, (offset, tail, head) in fw.moves.items():
                c.execute("UPDATE sources SET offset = ?, tail = ?, updated = ? WHERE id = ?",
                          (offset, tail, now, sid(ref)))
                if head is not None:
                    c.execute("UPDATE sources SET head = ? WHERE id = ? AND head IS NULL", (head, sid(ref)))
            for o in fw.done:
                c.execute(
                    "INSERT INTO objects (id, key, ts, state, idx, final_key, mode, size, records, created, "
                    "last_write, closed_at, close_reason, done_at, etag, ledger_seq, checksum, origin) "
                    f"VALUES (?, ?, ?, '{DONE}', ?, ?, ?, ?, ?, ?, ?, ?, 'ledger', ?, ?, ?, ?, ?)",
                    (o.id, o.key, o.ts, o.idx, o.final_key, o.mode, o.raw, o.records, now, now, now, now,
                     f'"{o.etag}"', o.seq, o.checksum, o.origin))
                c.executemany('INSERT INTO object_ranges (object_id, source_id, start, "end") VALUES (?, ?, ?, ?)',
                              [(o.id, sid(ref), a, b) for ref, spans in o.ranges.items() for a, b in spans])
            for ref, spans in fw.skips.items():
                c.execute("DELETE FROM skip_ranges WHERE source_id = ?", (sid(ref),))
                stamps = fw.skip_ts.get(ref, {})
                c.executemany('INSERT INTO skip_ranges (source_id, start, "end", ts) VALUES (?, ?, ?, ?)',
                              [(sid(ref), a, b, stamps.get(a)) for a, b in spans])
            for oid in fw.unclaim:
                c.execute("UPDATE objects SET idx = NULL, final_key = NULL, mode = NULL, upload_id = NULL, "
                          f"claim_gen = claim_gen + 1, ledger_seq = NULL WHERE id = ? AND state != '{DONE}'", (oid,))
                c.execute(f"UPDATE chunks SET state = '{SEALED}', etag = NULL WHERE object_id = ? "
                          f"AND state = '{UPLOADED}'", (oid,))
            for key, upload_id, oid in fw.aborts:  # (owe_cleanup joins this transaction)
                self.owe_cleanup(UPLOAD, key, upload_id=upload_id, object_id=oid)
            if fw.seq > self.ledger_seq():
                self.set_meta(LEDGER_SEQ_META, str(fw.seq))
            if fw.claims > int(self.meta("claims") or 0):
                self.set_meta("claims", str(fw.claims))
        return new_ids

    def raise_claims(self, mark: int) -> None:
        """The bucket settled a journal that made fewer claims than the state dir's mark
        (spoolup/stateid.py): the mark's claims are accounted for."""
        with self.transaction():
            if mark > int(self.meta("claims") or 0):
                self.set_meta("claims", str(mark))


@dataclass
class NewSource:
    """A spool file the journal did not know that the ledger's spans name (found in the spool)."""

    dev: int
    ino: int
    path: str
    key_path: str
    size: int
    mtime: float
    btime: int | None
    head: bytes
    offset: int
    tail: bytes | None


@dataclass
class DoneObject:
    """An object the bucket holds (its ledger record matched), inserted as done."""

    id: int
    key: str
    ts: str
    idx: int
    final_key: str
    mode: str
    raw: int
    records: int
    etag: str
    checksum: str | None
    origin: str
    seq: int
    ranges: dict[int, list[tuple[int, int]]]  # source ref (id; -1 - i: new_sources[i]) -> spans


@dataclass
class Forward:
    """Everything a bring-forward changes in the journal (Ledger.bring_forward)."""

    discard: list[int] = field(default_factory=list)
    new_sources: list[NewSource] = field(default_factory=list)
    moves: dict[int, tuple[int, bytes | None, bytes | None]] = field(default_factory=dict)  # ref -> offset, tail, head
    done: list[DoneObject] = field(default_factory=list)
    skips: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # ref -> spans
    # ref -> start of a skip span -> object-key-timestamp of the records read again before it
    skip_ts: dict[int, dict[int, str]] = field(default_factory=dict)
    unclaim: list[int] = field(default_factory=list)
    retire: list[int] = field(default_factory=list)  # source ids whose inode holds another file now: gone
    # (final key, upload id, object id) of the uploads of the objects it unclaims or discards: this
    # journal's own, used by no claim any more -- owed to the bucket (the cleanups table) in the
    # same transaction, aborted after it commits
    aborts: list[tuple[str, str, int]] = field(default_factory=list)
    seq: int = 0
    claims: int = 0
