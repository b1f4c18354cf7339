"""The journal's store: opening, creating and migrating the SQLite file, write transactions
and their commit hooks, and the small tables (meta, state, errors, counters, processes, requests).

The journal is one SQLite database (WAL) in the state dir, the only source of truth shared
by the ingest and upload processes.  The schema lives in numbered files in migrations/
applied in order at open (PRAGMA user_version).  Each process uses its own Journal from a
single thread.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.resources
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Self

from spoolup import journal_faults
from spoolup.files import fsync_dir, fsync_path


KEEP_SOURCES = 1000  # spool files done with (reaped, gone) that the journal remembers (prune_sources)
MAX_ERRORS_KEPT = 500
STOPPED = "stopped"  # the info of a process's last heartbeat when it stopped cleanly
# meta keys the upload process writes and `spoolup status` reads (JSON)
CAPABILITIES_META = "s3-capabilities"  # the last capability probe's result (capabilities.Capabilities)
REFUSED_OBJECTS_META = "quarantined-objects"  # the refused objects (coordinator.Uploader.refused; key predates the name)


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


# a drain request's result when S3 refuses what it waits for: followed by the refused requests
# (the service writes it, the `drain` that asked reads it)
REQUEST_REFUSED = "refused: "
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's lock before the journal is "locked"


def busy_timeout() -> float:
    """BUSY_TIMEOUT; the tests lower it (SPOOLUP_TEST_BUSY_TIMEOUT) rather than wait it out."""
    override = os.environ.get("SPOOLUP_TEST_BUSY_TIMEOUT")
    return float(override) if override else BUSY_TIMEOUT


class JournalError(Exception):
    """The journal cannot be used (corrupt, too new, unreadable); the message says what to do."""


# ---------------------------------------------------------------------------
# open and migrate


def _migrations_dir():
    """migrations/ beside the package in a source checkout (when `python -m spoolup` runs from
    the repository -- also a git worktree whose editable install maps spoolup.migrations to
    another checkout), else as installed (the package spoolup.migrations)."""
    checkout = Path(__file__).resolve().parent.parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "migrations" / "0001_initial.sql").is_file():
        return checkout / "migrations"
    try:
        return importlib.resources.files("spoolup.migrations")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent.parent / "migrations"


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


class Store:
    """The connection, its transactions and the small tables; the other verbs are mixins
    (spoolup/journal/sources.py, objects.py) combined into Journal (spoolup/journal/__init__.py)."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._conn = conn  # private: every statement on the journal is a verb of this package
        self.path = path
        self.migrated: list[str] = []
        self._depth = 0  # nesting of transaction()

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, fsync: bool = True, create: bool = True, migrate: bool = True,
             check: bool = False) -> Self:
        """Open (creating it whole if missing) and migrate the journal.  check: run SQLite's
        quick_check first and refuse a damaged journal (before any migration writes to it).
        The names of the migrations applied are in `journal.migrated`."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise JournalError(f"no journal at {path}: spoolup has not run with this state-dir yet")
            _create(path, fsync=fsync)
        try:
            wait = busy_timeout()
            conn = sqlite3.connect(path, isolation_level=None, timeout=wait, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
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
            journal._conn.execute("SELECT count(*) FROM objects").fetchone()
        except sqlite3.DatabaseError as e:
            raise JournalError(journal_faults.message(path, e)) from None
        return journal

    @classmethod
    def in_memory(cls) -> Self:
        """An empty journal of the current schema in memory (status before the first run, tests)."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.row_factory = sqlite3.Row
        journal = cls(conn, Path(":memory:"))
        journal.migrate()
        return journal

    @classmethod
    def open_readonly(cls, path: Path) -> Self:
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

    @classmethod
    def copy_in_memory(cls, path: Path) -> tuple[Self, int, list[str]]:
        """The journal (with its write-ahead log, if a crash left one) copied into memory and
        migrated there (`spoolup recover --dry-run`): the journal, its schema version before,
        and the migrations applied to the copy.  SQLite is pointed at a scratch copy of the
        files, never at the journal itself: even a read-only connection may create the -wal
        and -shm files, or rebuild the -shm."""
        path = Path(path)
        try:
            with tempfile.TemporaryDirectory(prefix="spoolup-recover-") as scratch:
                copy = Path(scratch) / path.name
                shutil.copyfile(path, copy)
                wal = Path(f"{path}-wal")
                if wal.exists():
                    shutil.copyfile(wal, Path(f"{copy}-wal"))
                disk = sqlite3.connect(copy)
                mem = sqlite3.connect(":memory:", isolation_level=None)
                disk.backup(mem)
                disk.close()
            mem.row_factory = sqlite3.Row
            journal = cls(mem, path)
            before = journal.user_version()
            if before == 0:
                raise sqlite3.DatabaseError("it holds no spoolup journal (schema version 0)")
            journal.check_integrity()
            applied = journal.migrate()
            journal._conn.execute("SELECT count(*) FROM objects").fetchone()
        except sqlite3.DatabaseError as e:
            raise JournalError(journal_faults.message(path, e)) from None
        return journal, before, applied

    def trace(self, callback: Callable[[str], None] | None) -> None:
        """Call `callback(statement)` for every SQL statement this connection runs (None: stop).
        For tests that count transactions."""
        self._conn.set_trace_callback(callback)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def shrink_wal(self, above: int) -> bool:
        """Give back the WAL's disk space when its file holds more than `above` bytes: the WAL
        keeps the size of its longest run between checkpoints (megabytes), which a small state
        dir needs for chunk files (statespace).  A checkpoint that truncates it; False when it
        could not (a transaction of ours is open, or another process's holds it)."""
        try:
            if self._conn.in_transaction or os.stat(f"{self.path}-wal").st_size <= above:
                return False
            busy, _frames, _done = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except (OSError, sqlite3.Error):
            return False
        return not busy

    def user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

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
            self._conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\n;PRAGMA user_version = {number};\nCOMMIT;")
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
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("COMMIT")

    def check_integrity(self) -> None:
        """Raise sqlite3.DatabaseError when SQLite's quick_check finds damage (or cannot run)."""
        try:
            rows = [r[0] for r in self._conn.execute("PRAGMA quick_check")]
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
                yield self._conn
            finally:
                self._depth -= 1
            return
        started = time.perf_counter()
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self._conn
        except BaseException:
            self._depth = 0
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            # a COMMIT that failed (SQLITE_FULL: disk full) leaves the transaction
            # open; roll it back so the connection is usable again
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        if _commit_hooks:
            elapsed = time.perf_counter() - started
            for hook in _commit_hooks:
                hook(elapsed)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: what the block writes is undone if it raises (the rest of the
        transaction stays), so one result that fails to apply does not lose the others."""
        self._conn.execute("SAVEPOINT one_result")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK TO one_result")
            self._conn.execute("RELEASE one_result")
            raise
        self._conn.execute("RELEASE one_result")

    def meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self._conn.execute(
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
            cur = self._conn.execute(
                "INSERT INTO errors (at, process, op, code, message, key) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), process, op, code, message, key),
            )
            self._conn.execute("DELETE FROM errors WHERE id <= ?", (cur.lastrowid - MAX_ERRORS_KEPT,))

    def last_error(self) -> dict | None:
        row = self._conn.execute("SELECT * FROM errors ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def bump_counters(self, counters: dict[str, int]) -> None:
        self._conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            list(counters.items()),
        )

    def counters(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._conn.execute("SELECT name, value FROM counters")}

    def heartbeat(self, name: str, pid: int, started: float, info: str = "") -> None:
        with self.transaction():
            self._conn.execute(
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
        return [dict(r) for r in self._conn.execute("SELECT * FROM processes ORDER BY name")]

    # -- requests (drain against a running service) -----------------------------

    def add_request(self, kind: str) -> int:
        with self.transaction():
            return self._conn.execute(
                "INSERT INTO requests (kind, at) VALUES (?, ?)", (kind, time.time())
            ).lastrowid

    def open_requests(self, kind: str) -> list[int]:
        return [r[0] for r in self._conn.execute(
            "SELECT id FROM requests WHERE kind = ? AND done_at IS NULL ORDER BY id", (kind,)
        )]

    def finish_requests(self, ids: list[int], result: str) -> None:
        with self.transaction():
            self._conn.executemany(
                "UPDATE requests SET done_at = ?, result = ? WHERE id = ?", [(time.time(), result, i) for i in ids]
            )

    def request(self, request_id: int) -> dict | None:
        row = self._conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return dict(row) if row else None


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
            Store(conn, tmp).migrate()
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



def stored_version(path: Path) -> int | None:
    """The schema version of a journal file (0: empty, being created), read-only without
    opening it as a Journal; None when it cannot be read."""
    return peek(path, "PRAGMA user_version")


def disk_full(e: BaseException) -> bool:
    """Is this the state dir's filesystem full?  ENOSPC/EDQUOT from a write, or SQLITE_FULL
    from the journal."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)
    return False
