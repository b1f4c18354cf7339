"""The state dir's own identity: it knows it was used before, even without its journal.

`state-dir/state-id` (JSON) is written when the journal is created and names it
(journal id, creation time).  The main process also keeps in it a high-water
mark of the journal: how many index claims the journal had made (`claims`, a
counter in the journal's meta, bumped in the claim's own transaction), rewritten
atomically when it changed, at most every heartbeat.

These are fast first checks; the guard against shipping a record twice is the
ledger in the bucket (spoolup/catchup.py): before ingest or upload starts, the
journal is compared with its agent's ledger segments and brought forward when the
bucket knows more.  Everything the state dir can lose -- its -wal file, newer
transactions (an older copy restored), the whole directory -- the bucket settles.
So, before a writer opens the journal (`spoolup run`, `drain`, `recover`):
  - journal missing, but the state dir was used (state-id, chunk files, dead
    letters, the upload process's lock): refuse, and say to rebuild it with
    `spoolup recover --from-bucket` -- a lost journal is rebuilt on purpose, with a
    report of what was found, not as a side effect of a start (a wholly wiped state
    dir carries no trace: the start-up check of the ledger brings the new journal
    forward);
  - journal present but its write-ahead log gone (SQLite's -shm index still counts
    frames that were never copied into the database file): said (lost_commits),
    not refused: SQLite opens the journal as it was at its last checkpoint and the
    start-up check brings it forward from the bucket;
after opening it:
  - another journal than state-id names: refuse (two journals' records are never
    mixed);
  - fewer claims than the mark (behind_mark): said, and settled by the bucket; the
    journal's count is then raised to the mark.
Each refusal says what happened and what to do (docs/operations.md, "When the
journal is lost").
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from spoolup.files import fsync_dir, fsync_path

if TYPE_CHECKING:
    from spoolup.config import Config
    from spoolup.journal import Journal

NAME = "state-id"
_WAL_HEADER, _FRAME_HEADER = 32, 24


def path_of(cfg: "Config") -> Path:
    return cfg.state_dir / NAME


def read(cfg: "Config") -> dict | None:
    try:
        return json.loads(path_of(cfg).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # present but unreadable: still proof that the state dir was used


def save(cfg: "Config", identity: dict) -> None:
    """Atomically (write, sync, rename, sync the directory)."""
    target = path_of(cfg)
    tmp = target.with_name(NAME + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(identity, sort_keys=True) + "\n")
    if cfg.fsync:
        fsync_path(tmp)
    os.replace(tmp, target)
    if cfg.fsync:
        fsync_dir(cfg.state_dir)


def _fresh_start_advice(cfg: "Config") -> str:
    return ("Rebuild the journal from the ledger in the bucket: `spoolup recover --from-bucket --dry-run` says what "
            "it would rebuild, `spoolup recover --from-bucket` does it (the old chunk and dead-letter files are kept "
            "aside in the state dir); then start spoolup: it continues with the records the bucket does not hold, "
            "exactly once. Or restore the whole state dir from a backup (any age: spoolup brings an old journal "
            "forward from the bucket)")


def before_open(cfg: "Config") -> str | None:
    """Why the journal must not be opened (None: it may)."""
    journal = cfg.journal_path
    if not journal.exists():
        used = _signs_of_use(cfg)
        if not used:
            return None
        return (f"the state dir {cfg.state_dir} was used by spoolup before ({'; '.join(used)}) but its journal "
                f"{journal.name} is gone (deleted or moved). spoolup will not start a new journal over it on its own: "
                f"its chunk files hold records of objects not yet shipped. {_fresh_start_advice(cfg)}")
    return None


def lost_commits(cfg: "Config") -> str | None:
    """What the journal lost, when its write-ahead log is gone after a crash (None: nothing
    known).  Not a refusal: the bucket's ledger settles it (spoolup/catchup.py)."""
    journal = cfg.journal_path
    lost = _lost_wal(journal) if journal.exists() else None
    if lost:
        return (f"the journal's write-ahead log {journal.name}-wal is gone ({lost}): the journal is its state at an "
                "earlier checkpoint, and the transactions since (offsets, claims, completed objects) are lost. The "
                "bucket's ledger decides what was shipped: the journal is brought forward from it before anything "
                "is shipped. Never delete the -wal and -shm files")
    return None


def _signs_of_use(cfg: "Config") -> list[str]:
    out = []
    identity = read(cfg)
    if identity is not None:
        out.append(f"{NAME} names journal {identity.get('journal_id', '?')}")
    for what, directory in (("chunk file(s)", cfg.chunk_dir), ("dead-letter file(s)", cfg.deadletter_dir)):
        try:
            n = sum(1 for e in os.scandir(directory) if e.is_file())
        except OSError:
            n = 0
        if n:
            out.append(f"it holds {n} {what}")
    if (cfg.state_dir / "upload.lock").exists():
        out.append("it holds the upload process's lock file")
    return out


def _lost_wal(journal: Path) -> str | None:
    """SQLite's wal-index (-shm) counts frames in the -wal file that are not yet copied
    into the database (mxFrame > nBackfill); if that -wal file is missing or shorter, those
    commits are gone.  (A clean close removes both files; a crash leaves both.)"""
    try:
        with open(f"{journal}-shm", "rb") as f:
            head = f.read(136)
    except OSError:
        return None
    if len(head) < 136 or head[0:48] != head[48:96]:
        return None  # no complete, consistent header: nothing to go by
    version, _unused, _change, is_init, _big_end, page = struct.unpack_from("=IIIBBH", head, 0)
    (max_frame,) = struct.unpack_from("=I", head, 16)
    (backfilled,) = struct.unpack_from("=I", head, 96)
    if version != 3007000 or not is_init or max_frame <= backfilled:
        return None
    page = 65536 if page == 1 else page
    need = _WAL_HEADER + max_frame * (_FRAME_HEADER + page)
    try:
        size = os.stat(f"{journal}-wal").st_size
    except FileNotFoundError:
        return f"missing, while {journal.name}-shm counts {max_frame - backfilled} commit frame(s) in it"
    except OSError:
        return None
    if size < need:
        return f"{size} bytes, while {journal.name}-shm counts {max_frame} frame(s) ({need} bytes)"
    return None


def after_open(cfg: "Config", journal: "Journal", *, record: bool = True) -> str | None:
    """Why this journal must not be used in this state dir (None: it may); with `record`,
    writes the identity when the state dir has none yet (a new journal, or one from
    before state-id existed)."""
    identity = read(cfg)
    claims = journal.claims()
    if identity is None:
        if record:
            save(cfg, {"journal_id": journal.journal_id, "created": time.time(), "claims": claims})
        return None
    if identity.get("journal_id") and identity["journal_id"] != journal.journal_id:
        return (f"the journal {cfg.journal_path} is journal {journal.journal_id}, but this state dir belongs to "
                f"journal {identity['journal_id']} ({NAME}): it was replaced by another state dir's journal. "
                "Put the right journal back; spoolup will not mix two journals' records. If this state dir's "
                "journal is lost, move this one aside and rebuild it from the ledger in the bucket: "
                "`spoolup recover --from-bucket`")
    return None


def behind_mark(cfg: "Config", journal: "Journal") -> int:
    """The state dir's mark when the journal made fewer claims than it saw (0: not behind):
    the journal lost transactions (its -wal file deleted, or an older copy restored).  Not a
    refusal: the start-up check brings it forward from the bucket, then raises its count."""
    identity = read(cfg) or {}
    mark = int(identity.get("claims", 0) or 0)
    return mark if journal.claims() < mark else 0


def behind_mark_message(cfg: "Config", journal: "Journal", mark: int) -> str:
    return (f"the journal {cfg.journal_path} is behind this state dir: it records {journal.claims()} claimed object "
            f"index(es), the state dir saw {mark} ({NAME}). It lost transactions (its -wal file deleted, or an older "
            "copy restored); the bucket's ledger decides what was shipped: the journal is brought forward from it "
            "before anything is shipped")


def update_mark(cfg: "Config", journal: "Journal", identity_cache: dict) -> None:
    """Raise the mark to the journal's claims (the journal is ahead or equal by then: the
    mark is read from it after its commits)."""
    claims = journal.claims()
    if identity_cache.get("claims") == claims:
        return
    identity = read(cfg) or {"journal_id": journal.journal_id, "created": time.time()}
    if int(identity.get("claims", 0) or 0) >= claims:
        identity_cache["claims"] = claims
        return
    identity["claims"] = claims
    save(cfg, identity)
    identity_cache["claims"] = claims
