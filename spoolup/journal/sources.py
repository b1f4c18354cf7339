"""The journal's spool files: the sources ingest reads (found, offsets, reaped, pruned) and
the quarantine of spool entries (spoolup/quarantine.py)."""

from __future__ import annotations

import time

from spoolup.journal.rows import (DONE, LIVE_SOURCE_STATES_SQL, REAPED, SourceRow, SourceState, _source, db_path,
                                  fs_path)
from spoolup.journal.store import KEEP_SOURCES, Store
from spoolup.quarantine import Entry


class Sources(Store):
    """Verbs on the sources, source_objects and quarantine tables."""

    # -- sources (ingest) ------------------------------------------------------

    def live_sources(self) -> list[SourceRow]:
        rows = self._conn.execute(
            f"SELECT * FROM sources INDEXED BY sources_live WHERE state IN {LIVE_SOURCE_STATES_SQL} ORDER BY id"
        ).fetchall()
        return [_source(r) for r in rows]

    def source_heads(self) -> dict[int, bytes]:
        """The journaled fingerprint (first bytes) of each live source that has one."""
        return dict(self._conn.execute(
            f"SELECT id, head FROM sources INDEXED BY sources_live WHERE state IN {LIVE_SOURCE_STATES_SQL} "
            "AND head IS NOT NULL"
        ).fetchall())  # live ones only (the partial index sources_live): history costs nothing here

    def add_sources(self, new: list[tuple[int, int, str, float, int | None]], now: float) -> list[SourceRow]:
        """Journal newly found spool files, (dev, ino, path, mtime, btime) each, in one
        transaction (one sync however many there are)."""
        rows = []
        with self.transaction():
            for dev, ino, path, mtime, btime in new:
                cur = self._conn.execute(
                    "INSERT INTO sources (dev, ino, path, key_path, mtime, btime, first_seen, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (dev, ino, db_path(path), db_path(path), mtime, btime, now, now),
                )
                rows.append(SourceRow(cur.lastrowid, dev, ino, path, path, 0, 0, mtime, SourceState.ACTIVE, None, None,
                                      btime))
        return rows

    def set_source(self, source_id: int, *, state: SourceState | None = None, error: str | None = None,
                   path: str | None = None) -> None:
        sets, args = ["updated = ?"], [time.time()]
        if state is not None:
            sets.append("state = ?")
            args.append(state)
            sets.append("error = ?")
            args.append(error)
        if path is not None:
            sets.append("path = ?")
            args.append(db_path(path))
        with self.transaction():
            self._conn.execute(f"UPDATE sources SET {', '.join(sets)} WHERE id = ?", (*args, source_id))

    def source_pending_objects(self, source_id: int) -> int:
        """Objects holding bytes of this spool file that are not yet completed."""
        return self._conn.execute(
            "SELECT count(*) FROM source_objects so JOIN objects o ON o.id = so.object_id "
            f"WHERE so.source_id = ? AND o.state != '{DONE}'",
            (source_id,),
        ).fetchone()[0]

    def prune_sources(self, keep: int = KEEP_SOURCES) -> int:
        """Forget spool files that are done with (reaped, or gone from the spool), all but
        the newest `keep` of them: history never grows the journal, the start or a
        rollback.  Their objects are done or tracked by themselves; a recent set stays for
        the operator (and any check that looks back a little)."""
        with self.transaction():
            cut = self._conn.execute(
                f"SELECT id FROM sources WHERE state NOT IN {LIVE_SOURCE_STATES_SQL} ORDER BY id DESC "
                "LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
            if cut is None:
                return 0
            self._conn.execute(
                f"DELETE FROM source_objects WHERE source_id IN (SELECT id FROM sources WHERE id <= ? "
                f"AND state NOT IN {LIVE_SOURCE_STATES_SQL})", (cut[0],))
            return self._conn.execute(
                f"DELETE FROM sources WHERE id <= ? AND state NOT IN {LIVE_SOURCE_STATES_SQL}", (cut[0],)
            ).rowcount

    def mark_reaped(self, source_id: int) -> None:
        with self.transaction():
            self._conn.execute(
                f"UPDATE sources SET state = '{REAPED}', updated = ? WHERE id = ?", (time.time(), source_id)
            )
            self._conn.execute("DELETE FROM source_objects WHERE source_id = ?", (source_id,))

    # -- quarantine (spoolup/quarantine.py) -------------------------------------

    def quarantined(self) -> list[Entry]:
        rows = self._conn.execute("SELECT * FROM quarantine ORDER BY since, path").fetchall()
        return [Entry(fs_path(r["path"]), r["reason"], r["message"], r["since"], r["next_retry"], r["attempts"],
                      r["source_id"], r["key"]) for r in rows]

    def set_quarantine(self, e: Entry) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO quarantine (path, source_id, key, reason, message, since, next_retry, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET source_id = excluded.source_id, "
                "key = excluded.key, reason = excluded.reason, message = excluded.message, since = excluded.since, "
                "next_retry = excluded.next_retry, attempts = excluded.attempts",
                (db_path(e.path), e.source_id, e.key, e.reason, e.message, e.since, e.next_retry, e.attempts),
            )

    def clear_quarantine(self, path: str) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM quarantine WHERE path = ?", (db_path(path),))
