"""The journal: one SQLite database (WAL) in the state dir, the only source of
truth shared by the ingest and upload processes.

This module holds the journal's verbs and nothing else; the schema lives in
numbered files in migrations/ applied in order at open (PRAGMA user_version).
Each process uses its own Journal from a single thread.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.resources
import json
import os
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from spoolup import journal_faults
from spoolup.files import fsync_dir, fsync_path
from spoolup.quarantine import Entry

if TYPE_CHECKING:
    import sqlite_utils

LIVE_SOURCE_STATES = ("active", "error", "refused")
KEEP_SOURCES = 1000  # spool files done with (reaped, gone) that the journal remembers (prune_sources)
MAX_ERRORS_KEPT = 500
STOPPED = "stopped"  # the info of a process's last heartbeat when it stopped cleanly
# meta keys the upload process writes and `spoolup status` reads (JSON)
CAPABILITIES_META = "s3-capabilities"  # the last capability probe's result (capabilities.Capabilities)
QUARANTINE_META = "quarantined-objects"  # the objects quarantined (coordinator.Uploader.quarantined)


# Observers of write transactions, called with the seconds each took (BEGIN IMMEDIATE to the
# end of COMMIT).  Metrics add theirs when enabled: cross-cutting concerns hook into the
# journal, the journal imports none of them (no import cycle journal -> metrics -> status).
_commit_hooks: list[Callable[[float], None]] = []


def add_commit_hook(hook: Callable[[float], None]) -> None:
    """Call `hook(seconds)` after every committed write transaction of this process."""
    if hook not in _commit_hooks:
        _commit_hooks.append(hook)


def remove_commit_hook(hook: Callable[[float], None]) -> None:
    with contextlib.suppress(ValueError):
        _commit_hooks.remove(hook)


class JournalError(Exception):
    """The journal cannot be used (corrupt, too new, unreadable); the message says what to do."""


# ---------------------------------------------------------------------------
# rows


@dataclass
class SourceRow:
    id: int
    dev: int
    ino: int
    path: str
    key_path: str
    offset: int
    size: int
    mtime: float
    state: str
    error: str | None
    tail: bytes | None = None  # digest of the consumed bytes just before offset (spoolup/identity.py)
    btime: int | None = None  # birth time (ns) where the filesystem records one


@dataclass
class ObjectRow:
    id: int
    key: str
    ts: str
    state: str
    idx: int | None
    final_key: str | None
    mode: str | None
    upload_id: str | None
    size: int
    records: int
    created: float
    last_write: float
    closed_at: float | None = None
    close_reason: str | None = None
    done_at: float | None = None
    etag: str | None = None
    key_suffix: str = ""  # object-key-suffix: after the index, before .gz/.zst
    form: str | None = None  # the options it was started with (JSON, spoolup/form.py)
    claim_gen: int = 0  # version of its claim: bumped by claim, unclaim, reset_upload (spoolup/work.py)


@dataclass
class ChunkRow:
    object_id: int
    part: int
    length: int
    state: str
    part_size: int | None
    md5: str | None
    etag: str | None


@dataclass
class Batch:
    """Everything one ingest batch changes, committed in one transaction.

    The chunk bytes it refers to are written (and with fsync, synced) before
    `Journal.commit_batch` is called: invariant 1."""

    # source id -> (offset, size, mtime, tail: the digest of the bytes before its offset)
    sources: dict[int, tuple[int, int, float, bytes | None]] = field(default_factory=dict)
    new_objects: list[ObjectRow] = field(default_factory=list)
    objects: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # id -> (size, records, last_write)
    closed: dict[int, tuple[str, float]] = field(default_factory=dict)  # id -> (reason, at)
    chunks: dict[tuple[int, int], tuple[int, str, int | None]] = field(default_factory=dict)  # -> (length, state, part_size)
    source_objects: set[tuple[int, int]] = field(default_factory=set)
    dead_letters: dict[int, tuple[str, int, int, str]] = field(default_factory=dict)  # source -> (path, n, bytes, reason)
    counters: dict[str, int] = field(default_factory=dict)
    heads: dict[int, bytes | None] = field(default_factory=dict)  # source -> first bytes (fingerprint)

    def __bool__(self) -> bool:
        return bool(
            self.sources or self.new_objects or self.objects or self.closed or self.chunks or self.dead_letters
        )

    @property
    def seals(self) -> int:
        return sum(1 for (_l, state, _p) in self.chunks.values() if state == "sealed")


# ---------------------------------------------------------------------------
# open and migrate


def _migrations_dir():
    """migrations/ beside the package in a source checkout (when `python -m spoolup` runs from
    the repository -- also a git worktree whose editable install maps spoolup.migrations to
    another checkout), else as installed (the package spoolup.migrations)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "migrations" / "0001_initial.sql").is_file():
        return checkout / "migrations"
    try:
        return importlib.resources.files("spoolup.migrations")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "migrations"


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration file, in order."""
    out = []
    for entry in _migrations_dir().iterdir():
        m = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if versions != list(range(1, len(out) + 1)):
        raise JournalError(f"migration files are not numbered 1..N without gaps: {versions}")
    return out


def schema_version() -> int:
    return len(migrations())


class Journal:
    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        self.migrated: list[str] = []
        self._db = None
        self._depth = 0  # nesting of transaction()

    @property
    def db(self) -> "sqlite_utils.Database":
        """sqlite-utils over the same connection.  Nothing in spoolup, its tests or its
        benchmarks uses it today (status reads with plain SQL).  Imported on first use: it pulls
        in numpy, which the service's hot processes do not need."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, fsync: bool = True, create: bool = True, migrate: bool = True,
             check: bool = False) -> "Journal":
        """Open (creating it whole if missing) and migrate the journal.  check: run SQLite's
        quick_check first and refuse a damaged journal (before any migration writes to it).
        The names of the migrations applied are in `journal.migrated`."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise JournalError(f"no journal at {path}: spoolup has not run with this state-dir yet")
            _create(path, fsync=fsync)
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
                # a journal is created complete (see _create): an existing one at
                # version 0 is an emptied or overwritten file, never a new one
                raise sqlite3.DatabaseError("it holds no spoolup journal (schema version 0)")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
            # FULL: the WAL is synced at every commit, so a journaled offset never
            # outlives a crash of the machine.  NORMAL is the documented fast mode.
            conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys = OFF")
            journal = cls(conn, path)
            if check:
                journal.check_integrity()
            if migrate:
                journal.migrated = journal.migrate()
                journal.probe_write()
            journal.conn.execute("SELECT count(*) FROM objects").fetchone()
        except sqlite3.DatabaseError as e:
            raise JournalError(journal_faults.message(path, e)) from None
        return journal

    @classmethod
    def in_memory(cls) -> "Journal":
        """An empty journal of the current schema in memory (status before the first run, tests)."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.row_factory = sqlite3.Row
        journal = cls(conn, Path(":memory:"))
        journal.migrate()
        return journal

    @classmethod
    def open_readonly(cls, path: Path) -> "Journal":
        """For status: never blocks or changes the writers' journal."""
        path = Path(path)
        if not path.exists():
            raise JournalError(f"no journal at {path}: spoolup has not run with this state-dir yet")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 10000")
            journal = cls(conn, path)
            version = journal.user_version()
            if version != schema_version():
                raise JournalError(
                    f"journal {path} has schema version {version}, this spoolup uses {schema_version()}: "
                    "run `spoolup recover` (or start the service) to migrate it"
                )
        except sqlite3.DatabaseError as e:
            raise JournalError(journal_faults.message(path, e)) from None
        return journal

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def shrink_wal(self, above: int) -> bool:
        """Give back the WAL's disk space when its file holds more than `above` bytes: the WAL
        keeps the size of its longest run between checkpoints (megabytes), which a small state
        dir needs for chunk files (statespace).  A checkpoint that truncates it; False when it
        could not (a transaction of ours is open, or another process's holds it)."""
        try:
            if self.conn.in_transaction or os.stat(f"{self.path}-wal").st_size <= above:
                return False
            busy, _frames, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except (OSError, sqlite3.Error):
            return False
        return not busy

    def user_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> list[str]:
        """Apply the migrations newer than the journal's version; returns their names."""
        version = self.user_version()
        known = migrations()
        if version > len(known):
            raise JournalError(
                f"journal {self.path} has schema version {version}, newer than this spoolup "
                f"(which knows up to {len(known)}): upgrade spoolup, or restore the matching version"
            )
        applied = []
        for number, name, sql in known:
            if number <= version:
                continue
            # executescript commits first; the whole migration is one transaction.
            self.conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\n;PRAGMA user_version = {number};\nCOMMIT;")
            applied.append(name)
        if version == 0:
            with self.transaction():
                self.set_meta("journal_id", uuid.uuid4().hex)
                self.set_meta("created", repr(time.time()))
        return applied

    def probe_write(self) -> None:
        """Take the write lock once: a journal held by another process (or on a read-only
        or full filesystem) is reported at open, as what it is, not later as an unexpected
        failure of the service loop."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("COMMIT")

    def check_integrity(self) -> None:
        """Raise sqlite3.DatabaseError when SQLite's quick_check finds damage (or cannot run)."""
        try:
            rows = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as e:
            rows = [str(e)]
        if rows != ["ok"]:
            raise sqlite3.DatabaseError(f"integrity check failed: {'; '.join(rows[:5])}")

    # -- transactions and small tables ---------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction.  Nested uses join the outermost one (the upload
        process journals a whole round of results with one commit)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        started = time.perf_counter()
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.conn
        except BaseException:
            self._depth = 0
            self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            # a COMMIT that failed (SQLITE_FULL: disk full) leaves the transaction
            # open; roll it back so the connection is usable again
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        if _commit_hooks:
            elapsed = time.perf_counter() - started
            for hook in _commit_hooks:
                hook(elapsed)

    def meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def state(self, name: str) -> dict | None:
        """A small JSON fact kept in meta under `state:NAME` (e.g. leases, clock), or None."""
        import json

        value = self.meta(f"state:{name}")
        try:
            return json.loads(value) if value else None
        except ValueError:
            return None

    def set_state(self, name: str, value: dict) -> None:
        import json

        with self.transaction():
            self.set_meta(f"state:{name}", json.dumps(value))

    @property
    def journal_id(self) -> str:
        return self.meta("journal_id") or ""

    def record_error(self, process: str, op: str, code: str | None, message: str, key: str | None = None) -> None:
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO errors (at, process, op, code, message, key) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), process, op, code, message, key),
            )
            self.conn.execute("DELETE FROM errors WHERE id <= ?", (cur.lastrowid - MAX_ERRORS_KEPT,))

    def last_error(self) -> dict | None:
        row = self.conn.execute("SELECT * FROM errors ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def bump_counters(self, counters: dict[str, int]) -> None:
        self.conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            list(counters.items()),
        )

    def counters(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT name, value FROM counters")}

    def heartbeat(self, name: str, pid: int, started: float, info: str = "") -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO processes (name, pid, started, seen, info) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET pid = excluded.pid, started = excluded.started, "
                "seen = excluded.seen, info = excluded.info",
                (name, pid, started, time.time(), info),
            )

    def stopped(self, name: str, pid: int, started: float) -> None:
        """A clean stop: the last heartbeat says so (status shows "stopped at ..." rather
        than a process that died)."""
        self.heartbeat(name, pid, started, STOPPED)

    def set_health(self, process: str, health: dict) -> None:
        """Whether `process`'s S3 calls succeed (spoolup.health), kept in meta as JSON."""
        with self.transaction():
            self.set_meta(f"health:{process}", json.dumps(health, sort_keys=True))

    def health(self, process: str) -> dict | None:
        raw = self.meta(f"health:{process}")
        return json.loads(raw) if raw else None

    def processes(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM processes ORDER BY name")]

    # -- sources (ingest) ------------------------------------------------------

    def live_sources(self) -> list[SourceRow]:
        rows = self.conn.execute(
            f"SELECT * FROM sources INDEXED BY sources_live WHERE state IN {LIVE_SOURCE_STATES!r} ORDER BY id"
        ).fetchall()
        return [_source(r) for r in rows]

    def source_heads(self) -> dict[int, bytes]:
        """The journaled fingerprint (first bytes) of each live source that has one."""
        return dict(self.conn.execute(
            f"SELECT id, head FROM sources INDEXED BY sources_live WHERE state IN {LIVE_SOURCE_STATES!r} "
            "AND head IS NOT NULL"
        ).fetchall())  # live ones only (the partial index sources_live): history costs nothing here

    def add_sources(self, new: list[tuple[int, int, str, float, int | None]], now: float) -> list[SourceRow]:
        """Journal newly found spool files, (dev, ino, path, mtime, btime) each, in one
        transaction (one sync however many there are)."""
        rows = []
        with self.transaction():
            for dev, ino, path, mtime, btime in new:
                cur = self.conn.execute(
                    "INSERT INTO sources (dev, ino, path, key_path, mtime, btime, first_seen, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (dev, ino, db_path(path), db_path(path), mtime, btime, now, now),
                )
                rows.append(SourceRow(cur.lastrowid, dev, ino, path, path, 0, 0, mtime, "active", None, None, btime))
        return rows

    def set_source(self, source_id: int, *, state: str | None = None, error: str | None = None,
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
            self.conn.execute(f"UPDATE sources SET {', '.join(sets)} WHERE id = ?", (*args, source_id))

    def source_pending_objects(self, source_id: int) -> int:
        """Objects holding bytes of this spool file that are not yet completed."""
        return self.conn.execute(
            "SELECT count(*) FROM source_objects so JOIN objects o ON o.id = so.object_id "
            "WHERE so.source_id = ? AND o.state != 'done'",
            (source_id,),
        ).fetchone()[0]

    def prune_sources(self, keep: int = KEEP_SOURCES) -> int:
        """Forget spool files that are done with (reaped, or gone from the spool), all but
        the newest `keep` of them: history never grows the journal, the start or a
        rollback.  Their objects are done or tracked by themselves; a recent set stays for
        the operator (and any check that looks back a little)."""
        with self.transaction():
            cut = self.conn.execute(
                f"SELECT id FROM sources WHERE state NOT IN {LIVE_SOURCE_STATES!r} ORDER BY id DESC "
                "LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
            if cut is None:
                return 0
            self.conn.execute(
                f"DELETE FROM source_objects WHERE source_id IN (SELECT id FROM sources WHERE id <= ? "
                f"AND state NOT IN {LIVE_SOURCE_STATES!r})", (cut[0],))
            return self.conn.execute(
                f"DELETE FROM sources WHERE id <= ? AND state NOT IN {LIVE_SOURCE_STATES!r}", (cut[0],)
            ).rowcount

    def mark_reaped(self, source_id: int) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE sources SET state = 'reaped', updated = ? WHERE id = ?", (time.time(), source_id)
            )
            self.conn.execute("DELETE FROM source_objects WHERE source_id = ?", (source_id,))

    # -- quarantine (spoolup/quarantine.py) -------------------------------------

    def quarantined(self) -> list[Entry]:
        rows = self.conn.execute("SELECT * FROM quarantine ORDER BY since, path").fetchall()
        return [Entry(fs_path(r["path"]), r["reason"], r["message"], r["since"], r["next_retry"], r["attempts"],
                      r["source_id"], r["key"]) for r in rows]

    def set_quarantine(self, e: Entry) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO quarantine (path, source_id, key, reason, message, since, next_retry, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET source_id = excluded.source_id, "
                "key = excluded.key, reason = excluded.reason, message = excluded.message, since = excluded.since, "
                "next_retry = excluded.next_retry, attempts = excluded.attempts",
                (db_path(e.path), e.source_id, e.key, e.reason, e.message, e.since, e.next_retry, e.attempts),
            )

    def clear_quarantine(self, path: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM quarantine WHERE path = ?", (db_path(path),))

    # -- objects and chunks (ingest) -------------------------------------------

    def stamp_forms(self, form: str) -> int:
        """Objects not yet done that were journaled before forms were (schema < 5) get `form`:
        from now on they keep it, whatever the configuration says at later starts."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE objects SET form = ? WHERE form IS NULL AND state != 'done'", (form,)
            ).rowcount

    def open_objects(self) -> list[ObjectRow]:
        return [_object(r) for r in self.conn.execute("SELECT * FROM objects WHERE state = 'open' ORDER BY id")]

    def chunks_of(self, object_id: int) -> list[ChunkRow]:
        rows = self.conn.execute("SELECT * FROM chunks WHERE object_id = ? ORDER BY part", (object_id,))
        return [ChunkRow(**dict(r)) for r in rows]

    def max_object_id(self) -> int:
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM objects").fetchone()[0]

    def newest_ts(self, key: str) -> str | None:
        return self.conn.execute("SELECT max(ts) FROM objects WHERE key = ?", (key,)).fetchone()[0]

    def sealed_pending(self) -> int:
        """Sealed chunks not yet uploaded: what max-pending-uploads caps."""
        return self.conn.execute("SELECT count(*) FROM chunks WHERE state = 'sealed'").fetchone()[0]

    def commit_batch(self, batch: Batch) -> None:
        c = self.conn
        with self.transaction():
            if batch.new_objects:
                c.executemany(
                    "INSERT INTO objects (id, key, ts, state, size, records, created, last_write, key_suffix, form) "
                    "VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?)",
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
                    "UPDATE objects SET state = 'closed', close_reason = ?, closed_at = ? WHERE id = ? AND state = 'open'",
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
        rows = self.conn.execute(
            "SELECT o.*, "
            "(SELECT max(p.idx) FROM objects p WHERE p.key = o.key AND p.ts = o.ts AND p.id < o.id) AS prev_idx, "
            "(SELECT count(*) FROM chunks c WHERE c.object_id = o.id) AS n_chunks "
            "FROM objects o WHERE o.idx IS NULL AND o.state != 'done' "
            "AND (o.state = 'closed' OR EXISTS (SELECT 1 FROM chunks c WHERE c.object_id = o.id AND c.state = 'sealed')) "
            "AND NOT EXISTS (SELECT 1 FROM objects p WHERE p.key = o.key AND p.ts = o.ts AND p.id < o.id AND p.idx IS NULL) "
            "AND o.id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY o.id LIMIT ?",
            (_ids(skip), limit),
        )
        return [(_object(r), r["prev_idx"], r["n_chunks"]) for r in rows]

    def indexes_in_use(self, key: str, ts: str, exclude_id: int) -> set[int]:
        rows = self.conn.execute(
            "SELECT idx FROM objects WHERE key = ? AND ts = ? AND idx IS NOT NULL AND id != ?", (key, ts, exclude_id)
        )
        return {r[0] for r in rows}

    def claim(self, object_id: int, idx: int, final_key: str, mode: str) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE objects SET idx = ?, final_key = ?, mode = ?, claim_gen = claim_gen + 1 "
                "WHERE id = ? AND idx IS NULL",
                (idx, final_key, mode, object_id),
            )
            # counted in the claim's own transaction: the state dir's high-water mark
            # (spoolup/stateid.py) tells a journal that lost transactions by it
            self.conn.execute(
                "INSERT INTO meta (name, value) VALUES ('claims', '1') "
                "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )

    def claims(self) -> int:
        """Index claims this journal has made, ever (never decreases)."""
        return int(self.meta("claims") or 0)

    def unclaim(self, object_id: int) -> list[tuple[str, str]]:
        """Give up a claimed index (taken by someone else): claim again, re-upload every part.
        The later objects of the same (key, ts) that are claimed and not done give up theirs
        too, so that they claim after it: index order stays record order.  Returns their
        (final key, upload id) pairs, uploads this journal created that are now unused."""
        with self.transaction():
            row = self.conn.execute("SELECT key, ts FROM objects WHERE id = ?", (object_id,)).fetchone()
            later = self.conn.execute(
                "SELECT id, final_key, upload_id FROM objects WHERE key = ? AND ts = ? AND id > ? "
                "AND idx IS NOT NULL AND state != 'done'", (row[0], row[1], object_id),
            ).fetchall() if row else []
            ids = [object_id] + [r[0] for r in later]
            self.conn.executemany(
                "UPDATE objects SET idx = NULL, final_key = NULL, mode = NULL, upload_id = NULL, "
                "claim_gen = claim_gen + 1 WHERE id = ?",
                [(i,) for i in ids],
            )
            self.conn.executemany(
                "UPDATE chunks SET state = 'sealed', etag = NULL WHERE object_id = ? AND state = 'uploaded'",
                [(i,) for i in ids],
            )
        return [(r[1], r[2]) for r in later if r[2]]

    def to_start(self, limit: int = 256, skip: Iterable[int] = ()) -> list[ObjectRow]:
        """Claimed multipart objects without an upload id, and claimed single-part objects not
        done whose earlier objects of the same (key, ts) are done (a PutObject completes it)."""
        rows = self.conn.execute(
            "SELECT * FROM objects o WHERE idx IS NOT NULL AND state != 'done' AND upload_id IS NULL "
            f"AND (mode != 'single' OR {_EARLIER_DONE}) "
            "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
            (_ids(skip), limit),
        )
        return [_object(r) for r in rows]

    def set_upload_id(self, object_id: int, upload_id: str) -> None:
        with self.transaction():
            self.conn.execute("UPDATE objects SET upload_id = ? WHERE id = ?", (upload_id, object_id))

    def reset_upload(self, object_id: int) -> None:
        """The multipart upload is gone (aborted outside spoolup): start a new one, re-upload every part."""
        with self.transaction():
            self.conn.execute("UPDATE objects SET upload_id = NULL, claim_gen = claim_gen + 1 WHERE id = ?",
                              (object_id,))
            self.conn.execute(
                "UPDATE chunks SET state = 'sealed', etag = NULL WHERE object_id = ? AND state = 'uploaded'",
                (object_id,),
            )

    def parts_to_upload(self, limit: int = 256, skip: Iterable[tuple[int, int]] = ()) -> list[tuple[ObjectRow, ChunkRow]]:
        """Sealed parts of started uploads, round-robin across objects (every object's first
        pending part, then every object's second...), without the (object id, part) pairs in
        `skip` (in flight, backing off): no object can fill the window for the others."""
        rows = self.conn.execute(
            "SELECT * FROM (SELECT c.object_id AS c_object_id, c.part AS c_part, c.length AS c_length, "
            "c.state AS c_state, c.part_size AS c_part_size, c.md5 AS c_md5, c.etag AS c_etag, o.*, "
            "row_number() OVER (PARTITION BY c.object_id ORDER BY c.part) AS c_rank "
            "FROM chunks c JOIN objects o ON o.id = c.object_id "
            "WHERE c.state = 'sealed' AND o.mode = 'multipart' AND o.upload_id IS NOT NULL "
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
            self.conn.executemany("UPDATE chunks SET state = 'sealed', etag = NULL WHERE object_id = ? AND part = ?",
                                  [(object_id, p) for p in parts])

    def record_parts(self, parts: Iterable[tuple[int, int, str, str]]) -> None:
        """(object_id, part, etag, md5) of parts whose UploadPart succeeded: invariant 2."""
        with self.transaction():
            self.conn.executemany(
                "UPDATE chunks SET state = 'uploaded', etag = ?, md5 = ? WHERE object_id = ? AND part = ?",
                [(etag, md5, oid, part) for oid, part, etag, md5 in parts],
            )

    def completable(self, limit: int = 256, skip: Iterable[int] = ()) -> list[ObjectRow]:
        """Closed multipart objects with every part uploaded, whose earlier objects of the same
        (key, ts) are done: objects complete in record order, so a key race that moves one to
        a later index moves those after it too (unclaim), and index order stays record order."""
        rows = self.conn.execute(
            "SELECT o.* FROM objects o WHERE o.state = 'closed' AND o.mode = 'multipart' AND o.upload_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.object_id = o.id AND c.state != 'uploaded') "
            f"AND {_EARLIER_DONE} AND o.id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY o.id LIMIT ?",
            (_ids(skip), limit),
        )
        return [_object(r) for r in rows]

    def complete(self, object_id: int, etag: str | None) -> None:
        """CompleteMultipartUpload (or PutObject) succeeded: invariant 3."""
        with self.transaction():
            self.conn.execute(
                "UPDATE objects SET state = 'done', done_at = ?, etag = ? WHERE id = ?",
                (time.time(), etag, object_id),
            )
            self.conn.execute("UPDATE chunks SET state = 'uploaded' WHERE object_id = ? AND state != 'uploaded'",
                              (object_id,))

    def object(self, object_id: int) -> ObjectRow | None:
        row = self.conn.execute("SELECT * FROM objects WHERE id = ?", (object_id,)).fetchone()
        return _object(row) if row else None

    def objects_where(self, where: str, args: tuple = ()) -> list[ObjectRow]:
        return [_object(r) for r in self.conn.execute(f"SELECT * FROM objects WHERE {where} ORDER BY id", args)]

    def pending_objects(self) -> int:
        return self.conn.execute("SELECT count(*) FROM objects WHERE state != 'done'").fetchone()[0]

    def prune_done(self, older_than: float) -> int:
        """Forget completed objects done before `older_than` (their chunk rows first)."""
        with self.transaction():
            self.conn.execute(
                "DELETE FROM chunks WHERE object_id IN (SELECT id FROM objects WHERE state = 'done' AND done_at < ?)",
                (older_than,),
            )
            self.conn.execute(
                "DELETE FROM source_objects WHERE object_id IN "
                "(SELECT id FROM objects WHERE state = 'done' AND done_at < ?)",
                (older_than,),
            )
            # keep, for every key, the last object of its newest timestamp: it carries that
            # timestamp (an older one arriving later is backfill, never a new "current" object)
            # and the highest index used for it
            cur = self.conn.execute(
                "DELETE FROM objects WHERE state = 'done' AND done_at < ? AND id NOT IN ("
                "WITH newest AS (SELECT key, max(ts) AS ts FROM objects GROUP BY key) "
                "SELECT max(o.id) FROM objects o JOIN newest n ON o.key = n.key AND o.ts = n.ts GROUP BY o.key)",
                (older_than,),
            )
        return cur.rowcount

    # -- requests (drain against a running service) -----------------------------

    def add_request(self, kind: str) -> int:
        with self.transaction():
            return self.conn.execute(
                "INSERT INTO requests (kind, at) VALUES (?, ?)", (kind, time.time())
            ).lastrowid

    def open_requests(self, kind: str) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM requests WHERE kind = ? AND done_at IS NULL ORDER BY id", (kind,)
        )]

    def finish_requests(self, ids: list[int], result: str) -> None:
        with self.transaction():
            self.conn.executemany(
                "UPDATE requests SET done_at = ?, result = ? WHERE id = ?", [(time.time(), result, i) for i in ids]
            )

    def request(self, request_id: int) -> dict | None:
        row = self.conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return dict(row) if row else None

    # --- compare-and-set verbs (upload-cas) ---
    # The upload coordinator journals a worker's result only if the object is still in the
    # state the result was computed for (spoolup/work.py Basis: its claim_gen, final key and
    # upload id); each verb says whether it applied.  claim_gen is bumped by claim, unclaim
    # and reset_upload, so a result computed before any of them no longer matches.

    _SAME_CLAIM = "id = ? AND claim_gen = ? AND state != 'done'"

    def claim_if(self, object_id: int, claim_gen: int, prev_idx: int | None, idx: int, final_key: str,
                 mode: str) -> bool:
        """Claim `idx` if the object is unclaimed at `claim_gen`, every earlier object of its
        (key, ts) is claimed, the highest of their indexes is still `prev_idx` (the claim was
        computed after it), and no other object of the key holds `idx`: index order stays
        record order even when a KeyTaken moved the earlier objects meanwhile."""
        with self.transaction():
            cur = self.conn.execute(
                "UPDATE objects SET idx = ?, final_key = ?, mode = ?, claim_gen = claim_gen + 1 "
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
                self.conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('claims', '1') "
                    "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                )
        return cur.rowcount > 0

    def set_upload_id_if(self, object_id: int, claim_gen: int, upload_id: str) -> bool:
        """Journal a new upload id if the claim it was created for still holds (invariant 4)."""
        with self.transaction():
            cur = self.conn.execute(
                f"UPDATE objects SET upload_id = ? WHERE {self._SAME_CLAIM} AND upload_id IS NULL "
                "AND mode = 'multipart'", (upload_id, object_id, claim_gen))
        return cur.rowcount > 0

    def record_part_if(self, object_id: int, claim_gen: int, upload_id: str | None, part: int, etag: str,
                       md5: str) -> bool:
        """Journal an uploaded part if it was sent to the object's current upload (invariant 2)."""
        with self.transaction():
            cur = self.conn.execute(
                "UPDATE chunks SET state = 'uploaded', etag = ?, md5 = ? WHERE object_id = ? AND part = ? "
                "AND state = 'sealed' AND EXISTS (SELECT 1 FROM objects o WHERE o.id = chunks.object_id "
                "AND o.claim_gen = ? AND o.upload_id IS ? AND o.state != 'done')",
                (etag, md5, object_id, part, claim_gen, upload_id))
        return cur.rowcount > 0

    def complete_if(self, object_id: int, claim_gen: int, etag: str | None) -> bool:
        """complete() if the object still has the claim it was completed at (invariant 3)."""
        with self.transaction():
            if self.conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND idx IS NOT NULL",
                                 (object_id, claim_gen)).fetchone() is None:
                return False
            self.complete(object_id, etag)
        return True

    def unclaim_if(self, object_id: int, claim_gen: int) -> list[tuple[str, str]] | None:
        """unclaim() if the object still has that claim; None if it does not."""
        with self.transaction():
            if self.conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND idx IS NOT NULL",
                                 (object_id, claim_gen)).fetchone() is None:
                return None
            return self.unclaim(object_id)

    def reset_upload_if(self, object_id: int, claim_gen: int, upload_id: str | None) -> bool:
        """reset_upload() if the object still has that claim and upload."""
        with self.transaction():
            if self.conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND upload_id IS ?",
                                 (object_id, claim_gen, upload_id)).fetchone() is None:
                return False
            self.reset_upload(object_id)
        return True

    def reseal_parts_if(self, object_id: int, claim_gen: int, upload_id: str | None, parts: Iterable[int]) -> bool:
        """reseal_parts() if the object still has that claim and upload."""
        with self.transaction():
            if self.conn.execute(f"SELECT 1 FROM objects WHERE {self._SAME_CLAIM} AND upload_id IS ?",
                                 (object_id, claim_gen, upload_id)).fetchone() is None:
                return False
            self.reseal_parts(object_id, parts)
        return True

    def part_count(self, object_id: int) -> int:
        """The highest part number of an object's chunks (0: none)."""
        return self.conn.execute("SELECT coalesce(max(part), 0) FROM chunks WHERE object_id = ?",
                                 (object_id,)).fetchone()[0]

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: what the block writes is undone if it raises (the rest of the
        transaction stays), so one result that fails to apply does not lose the others."""
        self.conn.execute("SAVEPOINT one_result")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO one_result")
            self.conn.execute("RELEASE one_result")
            raise
        self.conn.execute("RELEASE one_result")


def _create(path: Path, *, fsync: bool) -> None:
    """A new journal, created whole: built and migrated under a temporary name, then
    renamed into place (and the directory synced).  So a journal file that exists is
    always a complete journal, and an empty or schema-0 one is damage, not a fresh start."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
        leftover.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
            Journal(conn, tmp).migrate()
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        if fsync:
            fsync_path(tmp)
        os.rename(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except sqlite3.Error as e:
        if journal_faults.kind(e, tmp) != journal_faults.CORRUPT:
            raise JournalError(f"cannot create the journal: {journal_faults.message(tmp, e)}") from None
        raise JournalError(f"cannot create the journal {path}: {e}") from None


def peek(path: Path, sql: str, default=None):
    """One value from a journal file, read-only, without opening it as a Journal
    (no migration, no WAL set-up); `default` when it cannot be read."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            row = conn.execute(sql).fetchone()
            return default if row is None or row[0] is None else row[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return default


def db_path(path: str) -> str | bytes:
    """A spool path as the journal stores it: text, or (a name that is not UTF-8, which
    Python holds with surrogate escapes) its bytes as a BLOB."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def fs_path(value: str | bytes) -> str:
    """The journal's path back as Python's str for the filesystem (surrogate escapes)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _source(r: sqlite3.Row) -> SourceRow:
    return SourceRow(
        r["id"], r["dev"], r["ino"], fs_path(r["path"]), fs_path(r["key_path"]), r["offset"], r["size"], r["mtime"],
        r["state"], r["error"], r["tail"], r["btime"],
    )


def _object(r) -> ObjectRow:
    d = dict(r)
    return ObjectRow(**{k: d[k] for k in ObjectRow.__dataclass_fields__})


_EARLIER_DONE = ("NOT EXISTS (SELECT 1 FROM objects p WHERE p.key = o.key AND p.ts = o.ts AND p.id < o.id "
                 "AND p.state != 'done')")


def _ids(ids: Iterable[int]) -> str:
    return json.dumps(sorted(ids))


def disk_full(e: BaseException) -> bool:
    """Is this the state dir's filesystem full?  ENOSPC/EDQUOT from a write, or SQLITE_FULL
    from the journal."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)
    return False
