"""The journal: one SQLite database (WAL) in the state dir, the only source of truth shared
by the ingest and upload processes, and the only code that knows its schema.

The package is split along verbs: store (open, migrate, transactions, commit hooks, the small
tables), rows (row types and the typed batch), sources (spool files and their quarantine),
objects (batch commit, claim, part, complete), cleanups (what the bucket is owed), read (the
queries of status, progress, metrics and recovery).  Other modules import from here and use these verbs: none of them
runs SQL on the journal or touches its connection (tests/test_journal_boundary.py).
"""

from __future__ import annotations

from spoolup.journal.cleanups import CleanupRow
from spoolup.journal.objects import Objects
from spoolup.journal.read import Read, UnfinishedChunk
from spoolup.journal.rows import (
    LIVE_SOURCE_STATES,
    Batch,
    ChunkRow,
    ChunkState,
    ObjectRow,
    ObjectState,
    SourceRow,
    SourceState,
    UploadMode,
    db_path,
    fs_path,
)
from spoolup.journal.sources import Sources
from spoolup.journal.store import (
    CAPABILITIES_META,
    KEEP_SOURCES,
    MAX_ERRORS_KEPT,
    REFUSED_OBJECTS_META,
    REQUEST_REFUSED,
    STOPPED,
    JournalError,
    add_commit_hook,
    disk_full,
    migrations,
    peek,
    remove_commit_hook,
    schema_version,
    stored_version,
)


class Journal(Objects, Sources, Read):
    """One process's journal: every verb of the package over one connection."""


__all__ = [
    "CAPABILITIES_META", "KEEP_SOURCES", "LIVE_SOURCE_STATES", "MAX_ERRORS_KEPT", "REFUSED_OBJECTS_META",
    "REQUEST_REFUSED", "STOPPED",
    "Batch", "ChunkRow", "ChunkState", "CleanupRow", "Journal", "JournalError", "ObjectRow", "ObjectState",
    "SourceRow", "SourceState", "UnfinishedChunk", "UploadMode", "add_commit_hook", "db_path", "disk_full", "fs_path",
    "migrations", "peek", "remove_commit_hook", "schema_version", "stored_version",
]
