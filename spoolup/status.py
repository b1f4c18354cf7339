"""`spoolup status`: what is open, pending and wrong, read from the journal
(read-only: never blocks or changes the running service).

The JSON form is a stable contract, described by docs/status.schema.json.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from spoolup import __version__, lock
from spoolup.config import Config
from spoolup.journal import Journal, peek

SCHEMA_VERSION = 1
LIVENESS_SECONDS = 10.0  # a process whose heartbeat is older is reported dead


def collect(cfg: Config) -> dict[str, Any]:
    if not cfg.journal_path.exists() or peek(cfg.journal_path, "PRAGMA user_version") == 0:
        journal = Journal.in_memory()  # never ran with this state dir (or it is being created): all zero
    else:
        journal = Journal.open_readonly(cfg.journal_path)
    try:
        return _collect(cfg, journal)
    finally:
        journal.close()


def _collect(cfg: Config, j: Journal) -> dict[str, Any]:
    now = time.time()
    q = j.conn.execute
    open_objects = [
        {
            "key": r["key"],
            "timestamp": r["ts"],
            "index": r["idx"],
            "final_key": r["final_key"],
            "bytes": r["size"],
            "records": r["records"],
            "age_seconds": round(now - r["created"], 3),
            "idle_seconds": round(now - r["last_write"], 3),
        }
        for r in q("SELECT * FROM objects WHERE state = 'open' ORDER BY key, ts, id")
    ]
    closed = q("SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE state = 'closed'").fetchone()
    done = q("SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE state = 'done'").fetchone()
    sealed = q("SELECT count(*), coalesce(sum(part_size), 0) FROM chunks WHERE state = 'sealed'").fetchone()
    oldest = q("SELECT min(created) FROM objects WHERE state != 'done'").fetchone()[0]

    backlog = 0
    sources = []
    for s in j.live_sources():
        try:
            size = os.stat(cfg.spool_dir / s.path).st_size
        except OSError:
            size = s.size
        pending = max(size - s.offset, 0) if s.state == "active" else 0
        backlog += pending
        if s.state != "active" or pending:
            sources.append({"path": s.path, "state": s.state, "offset": s.offset, "size": size,
                            "backlog_bytes": pending, "error": s.error})

    dead = [
        {"path": r["path"], "records": r["records"], "bytes": r["bytes"], "last_at": r["last_at"],
         "last_reason": r["last_reason"]}
        for r in q("SELECT * FROM dead_letters ORDER BY path")
    ]
    err = j.last_error()
    processes = {}
    for p in j.processes():
        alive = now - p["seen"] < LIVENESS_SECONDS and _pid_alive(p["pid"])
        processes[p["name"]] = {"pid": p["pid"], "alive": alive, "last_seen_seconds": round(now - p["seen"], 3),
                                "started": p["started"], "info": p["info"]}
    counters = j.counters()
    return {
        "schema_version": SCHEMA_VERSION,
        "spoolup_version": __version__,
        "time": now,
        "service": {"running": lock.is_held(cfg.state_dir), "processes": processes},
        "bucket": cfg.bucket,
        "spool_dir": str(cfg.spool_dir),
        "state_dir": str(cfg.state_dir),
        "open_objects": open_objects,
        "closed_objects_pending": {"count": closed[0], "bytes": closed[1]},
        "completed_objects": {"count": done[0], "bytes": done[1]},
        "pending_parts": {"count": sealed[0], "bytes": sealed[1], "cap": cfg.max_pending_uploads},
        "backlog_bytes": backlog,
        "oldest_pending_age_seconds": round(now - oldest, 3) if oldest else None,
        "sources_needing_attention": sources,
        "dead_letters": {"records": sum(d["records"] for d in dead), "bytes": sum(d["bytes"] for d in dead),
                         "files": dead},
        "last_error": None if err is None else {
            "time": err["at"], "age_seconds": round(now - err["at"], 3), "process": err["process"],
            "operation": err["op"], "code": err["code"], "message": err["message"], "key": err["key"],
        },
        "counters": counters,
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped by its parent is a zombie: dead
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}B"


def render(st: dict[str, Any]) -> str:
    out = []
    svc = st["service"]
    procs = ", ".join(f"{n} pid {p['pid']} {'alive' if p['alive'] else 'NOT RUNNING'}" for n, p in
                      svc["processes"].items()) or "none seen"
    out.append(f"spoolup {st['spoolup_version']}  bucket {st['bucket']}  service "
               f"{'running' if svc['running'] else 'stopped'} ({procs})")
    out.append(f"backlog in spool: {_bytes(st['backlog_bytes'])}   pending parts: {st['pending_parts']['count']}/"
               f"{st['pending_parts']['cap']} ({_bytes(st['pending_parts']['bytes'])})   oldest pending: "
               f"{_age(st['oldest_pending_age_seconds'])}")
    out.append(f"objects: {len(st['open_objects'])} open, {st['closed_objects_pending']['count']} closed awaiting "
               f"upload, {st['completed_objects']['count']} completed")
    if st["open_objects"]:
        out.append("")
        out.append(f"{'KEY':<48} {'TS':<12} {'INDEX':>5} {'BYTES':>10} {'RECORDS':>9} {'AGE':>6} {'IDLE':>6}")
        for o in st["open_objects"][:50]:
            idx = "-" if o["index"] is None else str(o["index"])
            out.append(f"{o['key'][:48]:<48} {o['timestamp'][:12]:<12} {idx:>5} {_bytes(o['bytes']):>10} "
                       f"{o['records']:>9} {_age(o['age_seconds']):>6} {_age(o['idle_seconds']):>6}")
        if len(st["open_objects"]) > 50:
            out.append(f"... and {len(st['open_objects']) - 50} more (see --json)")
    if st["sources_needing_attention"]:
        bad = [s for s in st["sources_needing_attention"] if s["state"] != "active"]
        if bad:
            out.append("")
            out.append("spool files needing attention:")
            out.extend(f"  {s['path']}: {s['state']}: {s['error']}" for s in bad)
    dl = st["dead_letters"]
    if dl["records"]:
        out.append("")
        out.append(f"dead letters: {dl['records']} records ({_bytes(dl['bytes'])}) in {len(dl['files'])} file(s) "
                   f"under {st['state_dir']}/dead-letter")
    err = st["last_error"]
    out.append("")
    if err:
        out.append(f"last error ({_age(err['age_seconds'])} ago, {err['process']}): {err['operation']} "
                   f"{err['code'] or ''}: {err['message']}")
    else:
        out.append("last error: none")
    return "\n".join(out)


def to_json(st: dict[str, Any]) -> str:
    return json.dumps(st, indent=2, sort_keys=False)
