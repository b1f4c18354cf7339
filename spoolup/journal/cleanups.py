"""The journal's cleanups: uploads and objects of this journal's own that no claim holds any
more, owed to the bucket until S3 confirms they are gone (migrations/0009_cleanups.sql).

Each is journaled in the transaction that lets its upload or object go (an unclaim, the
bring-forward's unclaims and discards, a result harvested for a claim given up meanwhile),
so a crash between that commit and the S3 call forgets nothing: the next upload process
carries out what is left (spoolup/coordinator.py), and deletes the row only once S3 says
it is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from spoolup.journal.store import Store

UPLOAD = "upload"  # abort upload_id at key: an upload this journal created
ORPHANS = "orphans"  # abort the uploads at key that are provably object_id's (Protocol.abort_orphans)
DISCARD = "discard"  # delete the object at key if it is object_id's with etag (Protocol.discard)
KINDS = (UPLOAD, ORPHANS, DISCARD)


@dataclass(frozen=True)
class CleanupRow:
    id: int
    kind: str
    key: str
    upload_id: str | None
    object_id: int | None
    etag: str | None
    created: float


class Cleanups(Store):
    """Verbs on the cleanups table."""

    def owe_cleanup(self, kind: str, key: str, *, upload_id: str | None = None, object_id: int | None = None,
                    etag: str | None = None) -> int:
        """Journal a cleanup (in the caller's transaction, when there is one: the commit that
        lets the upload or object go is the commit that owes its cleanup).  Returns its id."""
        if kind not in KINDS:
            raise ValueError(f"unknown cleanup kind {kind!r}")
        with self.transaction():
            return self._conn.execute(
                "INSERT INTO cleanups (kind, key, upload_id, object_id, etag, created) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, key, upload_id, object_id, etag, time.time())).lastrowid

    def cleanups_owed(self) -> list[CleanupRow]:
        return [CleanupRow(**dict(r)) for r in self._conn.execute("SELECT * FROM cleanups ORDER BY id")]

    def cleanup_done(self, cleanup_id: int) -> None:
        """S3 confirmed it (the upload is aborted or gone, the object removed or not ours)."""
        with self.transaction():
            self._conn.execute("DELETE FROM cleanups WHERE id = ?", (cleanup_id,))
