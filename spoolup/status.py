"""`spoolup status`: what is open, pending and wrong, read from the journal
(read-only: never blocks or changes the running service).

The JSON form is a stable contract, described by docs/status.schema.json.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from spoolup import __version__, health, keys, lock, statespace, verify
from spoolup import form as forms
from spoolup.config import Config
from spoolup.deadletter import REMOVED_STATE
from spoolup.journal import CAPABILITIES_META, REFUSED_OBJECTS_META, STOPPED, Journal, ObjectState, stored_version
from spoolup.scan import scan

SCHEMA_VERSION = 1
LIVENESS_SECONDS = 10.0  # a process whose heartbeat is older is reported dead


def _open(cfg: Config) -> Journal:
    if not cfg.journal_path.exists() or stored_version(cfg.journal_path) == 0:
        return Journal.in_memory()  # never ran with this state dir (or it is being created): all zero
    return Journal.open_readonly(cfg.journal_path)


def collect(cfg: Config) -> dict[str, Any]:
    journal = _open(cfg)
    try:
        return _collect(cfg, journal)
    finally:
        journal.close()


def processes(cfg: Config) -> dict[str, dict[str, Any]]:
    """Only `service.processes` of collect() (each process's liveness), without the rest:
    what the liveness probe (/healthz, spoolup/probes.py) reads, cheaply and often."""
    journal = _open(cfg)
    try:
        return _processes(cfg, journal, time.time())
    finally:
        journal.close()


def _processes(cfg: Config, j: Journal, now: float) -> dict[str, dict[str, Any]]:
    """Alive: a heartbeat within LIVENESS_SECONDS and the pid exists.  While the state dir's
    filesystem has less than the journal's reserve free, a heartbeat may not be journaled
    (the upload process logs "heartbeat not journaled"; the main process's fails with its
    batch): then the pid alone says it, rather than calling a waiting service dead (and
    having /healthz restart it, which frees no space)."""
    full = _journal_full(cfg)
    out = {}
    for p in j.processes():
        alive = (now - p["seen"] < LIVENESS_SECONDS or (full and p["info"] != STOPPED)) and _pid_alive(p["pid"])
        stopped = not alive and p["info"] == STOPPED
        out[p["name"]] = {"pid": p["pid"], "alive": alive, "last_seen_seconds": round(now - p["seen"], 3),
                          "started": p["started"], "info": p["info"],
                          "state": "alive" if alive else "stopped" if stopped else "dead",
                          "stopped_at": p["seen"] if stopped else None}
    return out


def _collect(cfg: Config, j: Journal) -> dict[str, Any]:
    now = time.time()
    open_objects = _open_objects(cfg, j, now)
    closed = j.object_totals(ObjectState.CLOSED)
    done = j.object_totals(ObjectState.DONE)
    sealed = j.sealed_totals()
    oldest = j.oldest_pending_created()

    backlog, with_backlog, attention = _sources(cfg, j)
    sources = [{k: v for k, v in a.items() if k != "source_id"} for a in attention]

    removed = (j.state(REMOVED_STATE) or {}).get("bytes") or {}  # by the operator (deadletter.py)
    dead = [
        {"path": r["path"], "records": r["records"], "bytes": r["bytes"], "last_at": r["last_at"],
         "last_reason": r["last_reason"], "removed_bytes": removed.get(str(r["source_id"]), 0)}
        for r in j.dead_letters()
    ]
    err = j.last_error()
    processes = _processes(cfg, j, now)
    counters = j.counters()
    space = statespace.report(cfg, len(open_objects))
    return {
        "schema_version": SCHEMA_VERSION,
        "spoolup_version": __version__,
        "time": now,
        "service": {"running": lock.is_held(cfg.state_dir), "processes": processes},
        "bucket": cfg.bucket,
        "spool_dir": str(cfg.spool_dir),
        "state_dir": str(cfg.state_dir),
        "open_objects": open_objects,
        "closed_objects_pending": {"count": closed[0], "bytes": closed[1],
                                   "oldest_age_seconds": round(now - closed[2], 3) if closed[2] else None},
        "completed_objects": {"count": done[0], "bytes": done[1]},
        "pending_parts": {"count": sealed[0], "bytes": sealed[1], "cap": cfg.max_pending_uploads},
        "backlog_bytes": backlog,
        "oldest_pending_age_seconds": round(now - oldest, 3) if oldest else None,
        "sources_needing_attention": sources,
        "sources_with_backlog": with_backlog,
        "leases": {"state": "unknown", "reason": None, "since": None, **(j.state("leases") or {})},
        "dead_letters": {"records": sum(d["records"] for d in dead), "bytes": sum(d["bytes"] for d in dead),
                         "removed_bytes": sum(d["removed_bytes"] for d in dead), "files": dead},
        "last_error": _last_error(err, space, now),
        "counters": counters,
        "s3_health": _s3_health(j, processes.get("upload"), now),
        "state_dir_space": space,
        **_s3_protocol(j),
        "last_verify": verify.last(j),
        # issue 22: the ledger in the bucket (segments before PutObject/Complete)
        "ledger": {"agent_id": cfg.agent, "seq": j.ledger_seq(), "objects_waiting_for_record": j.waiting_for_record()},
    }


def _last_error(err: Any, space: dict | None, now: float) -> dict[str, Any] | None:
    """The newest journaled error; while the state dir is low on space, that condition as
    measured now, unless the journaled error already says so: a filesystem that a foreign file
    fills to the last byte takes no journal write (ingest's record of it fails), yet status
    must name it."""
    if space is not None and space["low"] and (err is None or err["code"] != space["code"]):
        return {"time": now, "age_seconds": 0.0, "process": "ingest", "operation": "space", "code": space["code"],
                "message": space["advice"], "key": None}
    if err is None:
        return None
    return {"time": err["at"], "age_seconds": round(now - err["at"], 3), "process": err["process"],
            "operation": err["op"], "code": err["code"], "message": err["message"], "key": err["key"]}


def _open_objects(cfg: Config, j: Journal, now: float) -> list[dict[str, Any]]:
    """Each open object: the key it will get, what is uploaded of it, and when it completes."""
    # per open object: the parts uploaded and their bytes, and the sealed parts' stored
    # (compressed) bytes (what max-object-size counts with compression)
    uploaded: dict[int, tuple[int, int]] = {}
    stored: dict[int, int] = {}
    for oid, (n_up, up_bytes, sealed_bytes) in j.open_object_parts().items():
        if n_up:
            uploaded[oid] = (n_up, up_bytes)
        stored[oid] = sealed_bytes
    last_index = j.last_indexes()
    out = []
    configured = forms.Form.of_config(cfg)
    for r in j.open_objects(by_key=True):
        form = forms.parse(r.form, configured)  # an object finishes in the form it was opened in
        parts, part_bytes = uploaded.get(r.id, (0, 0))
        if r.final_key:
            expected = r.final_key
        else:  # claimed at the first upload: the next index after the last one, unless the bucket holds it
            prev = last_index.get((r.key, r.ts))
            expected = keys.final_key(r.key, r.ts, 0 if prev is None else prev + 1,
                                      (r.key_suffix or "") + form.compression_suffix)
        out.append({
            "key": r.key,
            "timestamp": r.ts,
            "index": r.idx,
            "final_key": r.final_key,
            "bytes": r.size,
            "records": r.records,
            "age_seconds": round(now - r.created, 3),
            "idle_seconds": round(now - r.last_write, 3),
            "expected_key": expected,
            "parts_uploaded": parts,
            "bytes_uploaded": part_bytes,
            "completes": {
                "grace_at": round(r.last_write + cfg.grace_seconds, 3),
                "max_object_size": form.max_object_size,
                "size_counts": "stored" if form.codec.compressed else "records",
                "size_remaining_bytes": max(form.max_object_size - (stored.get(r.id, 0) if form.codec.compressed
                                                                    else r.size), 0),
                "on_newer_timestamp": bool(r.ts),
                "age_at": None if cfg.max_age_seconds is None else round(r.created + cfg.max_age_seconds, 3),
            },
        })
    return out


def _sources(cfg: Config, j: Journal) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """Bytes in the spool not yet ingested, the spool files with a backlog, and the entries
    needing attention (quarantined; needing_attention()).  Files the journal does not know yet
    (new ones, or every file before the first run) count whole."""
    live = {(s.dev, s.ino): s for s in j.live_sources()}
    attention = needing_attention(j, {s.id: s for s in live.values()})
    held = {a["source_id"] for a in attention if a["source_id"] is not None}
    found, _odd = scan(cfg.spool_dir)
    by_id = {s.id: found.get((s.dev, s.ino)) for s in live.values()}
    for a in attention:  # the size now, as for the others
        entry = by_id.get(a["source_id"])
        if entry is not None:
            a["size"] = entry.st.st_size
            a["backlog_bytes"] = max(entry.st.st_size - a["offset"], 0)
    backlog = 0
    out = []
    for s in live.values():
        entry = found.get((s.dev, s.ino))
        size = entry.st.st_size if entry is not None else s.size
        pending = max(size - s.offset, 0)
        if s.id in held:
            continue
        backlog += pending
        if pending:
            out.append({"path": keys.printable(s.path), "offset": s.offset, "size": size, "backlog_bytes": pending})
    for ident, entry in sorted(found.items(), key=lambda kv: kv[1].path):
        if ident not in live and entry.st.st_size:
            backlog += entry.st.st_size
            out.append({"path": keys.printable(entry.path), "offset": 0, "size": entry.st.st_size,
                        "backlog_bytes": entry.st.st_size})
    return backlog, out, attention


def _s3_health(j: Journal, upload: dict | None, now: float) -> dict[str, Any]:
    """Whether the live upload process's S3 calls succeed (spoolup.health): "ok", "failing", or
    "unknown" while no upload process is alive or none of its calls has answered yet (then
    the rest is the last known state)."""
    h = {**health.empty(), **(j.health("upload") or {})}
    alive = bool(upload and upload["alive"])
    state = ("unknown" if not alive else "failing" if h["failing_since"] is not None
             else "ok" if h["last_success"] is not None else "unknown")
    fail = h["last_failure"]
    return {
        "state": state,
        "failing_since": h["failing_since"],
        "failing_seconds": round(now - h["failing_since"], 3) if h["failing_since"] is not None else None,
        "failures": h["failures"],
        "last_success": h["last_success"],
        "last_failure": None if fail is None else {
            "time": fail["at"], "operation": fail["operation"], "code": fail["code"], "message": fail["message"]},
    }


def needing_attention(j: Journal, live: dict | None = None) -> list[dict[str, Any]]:
    """The spool entries that need attention: the journal's quarantine rows (spoolup/quarantine.py),
    with their source's offsets.  `status` (human and JSON) and the metrics read this, and only this."""
    if live is None:
        live = {s.id: s for s in j.live_sources()}
    out = []
    for e in j.quarantined():
        src = live.get(e.source_id) if e.source_id is not None else None
        out.append({
            "path": keys.printable(e.path),
            "state": "quarantined",
            "offset": src.offset if src else 0,
            "size": src.size if src else 0,
            "backlog_bytes": max(src.size - src.offset, 0) if src else 0,
            "error": e.message,
            "since": e.since,
            "quarantine": {"reason": e.reason, "since": e.since, "next_retry": e.next_retry, "attempts": e.attempts,
                           "key": e.key, "what_to_do": e.rule.what_to_do},
            "source_id": e.source_id,
        })
    return out


def _s3_protocol(j: Journal) -> dict[str, Any]:
    """What the upload process detected about the server, and the objects S3 refuses
    (both journaled by the upload process; see spoolup/capabilities.py and spoolup/coordinator.py)."""
    try:
        caps = json.loads(j.meta(CAPABILITIES_META) or "null")
        refused = json.loads(j.meta(REFUSED_OBJECTS_META) or "[]")
    except ValueError:
        caps, refused = None, []
    return {"s3_capabilities": caps, "quarantined_objects": refused}  # (the public name of the refused objects)


def _journal_full(cfg: Config) -> bool:
    """Too little free space in the state dir's filesystem for the journal to grow for sure."""
    try:
        return statespace.free_bytes(cfg)[1] < statespace.RESERVE
    except OSError:
        return False


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


def human_bytes(n: float) -> str:
    """A byte count for people: 512B, 1.5KiB, 3.2GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}B"


def _clock(t: float | None, now: float) -> str:
    """A time as the operator's clock shows it: HH:MM:SS today, with the date otherwise."""
    if t is None:
        return "-"
    fmt = "%H:%M:%S" if time.strftime("%Y%m%d", time.localtime(t)) == time.strftime("%Y%m%d", time.localtime(now)) \
        else "%Y-%m-%d %H:%M:%S"
    return time.strftime(fmt, time.localtime(t))


def _process(name: str, p: dict[str, Any], now: float) -> str:
    if p["state"] == "alive" and p["last_seen_seconds"] >= LIVENESS_SECONDS:
        return (f"{name} pid {p['pid']} alive (no heartbeat journaled for {_age(p['last_seen_seconds'])}: "
                "state dir full)")
    if p["state"] == "alive":
        return f"{name} pid {p['pid']} alive"
    if p["state"] == "stopped":
        return f"{name} pid {p['pid']} stopped at {_clock(p['stopped_at'], now)}"
    return f"{name} pid {p['pid']} NOT RUNNING (last seen {_age(p['last_seen_seconds'])} ago, no clean stop)"


def _health(h: dict[str, Any], upload_alive: bool, now: float) -> str:
    fail = h["last_failure"]
    said = f"{fail['operation']}: {fail['code'] or 'error'}: {fail['message']}" if fail else ""
    if h["state"] == "failing":
        return (f"S3: FAILING since {_clock(h['failing_since'], now)} ({_age(h['failing_seconds'])}, "
                f"{h['failures']} failed calls, retrying): {said}")
    if h["state"] == "ok":
        return f"S3: ok (last success {_clock(h['last_success'], now)})"
    if upload_alive:
        return "S3: no answer yet to the upload process's first calls"
    if h["failing_since"] is not None:
        return (f"S3: unknown (no upload process running); it was failing since "
                f"{_clock(h['failing_since'], now)}: {said}")
    return "S3: unknown (no upload process running)"


def _completes(o: dict[str, Any], now: float) -> str:
    c = o["completes"]
    when = [f"at {_clock(c['grace_at'], now)} (flush-grace-period after the last record)",
            f"at {human_bytes(c['max_object_size'])}{' stored' if c['size_counts'] == 'stored' else ''} (max-object-size)"]
    if c.get("age_at") is not None:
        when.insert(1, f"at {_clock(c['age_at'], now)} (max-object-age after the first record)")
    if c["on_newer_timestamp"]:
        when.append("on a newer timestamp")
    return ", ".join(when[:-1]) + " or " + when[-1]


LIST_AT_MOST = 50


def render(st: dict[str, Any]) -> str:
    out = []
    now = st["time"]
    svc = st["service"]
    procs = ", ".join(_process(n, p, now) for n, p in svc["processes"].items()) or "none seen"
    out.append(f"spoolup {st['spoolup_version']}  bucket {st['bucket']}  service "
               f"{'running' if svc['running'] else 'stopped'} ({procs})")
    out.append(_health(st["s3_health"], svc["processes"].get("upload", {}).get("alive", False), now))
    out.append(f"backlog in spool: {human_bytes(st['backlog_bytes'])}   pending parts: {st['pending_parts']['count']}/"
               f"{st['pending_parts']['cap']} ({human_bytes(st['pending_parts']['bytes'])})   oldest pending: "
               f"{_age(st['oldest_pending_age_seconds'])}")
    out.append(f"objects: {len(st['open_objects'])} open, {st['closed_objects_pending']['count']} closed awaiting "
               f"upload, {st['completed_objects']['count']} completed")
    space = st.get("state_dir_space")
    if space:
        out.append(f"state dir: {human_bytes(space['free_bytes'])} free of {human_bytes(space['total_bytes'])}, chunk files "
                   f"{human_bytes(space['chunk_bytes'])}" + ("   LOW: ingest paused" if space["low"] else ""))
        if space["advice"]:
            out.append(f"  {space['advice']}")
    if st["open_objects"]:
        out.append("")
        out.append("open objects (each completes at whichever comes first):")
        for o in st["open_objects"][:LIST_AT_MOST]:
            parts = f"{o['parts_uploaded']} part{'' if o['parts_uploaded'] == 1 else 's'}"
            out.append(f"  {o['expected_key']}{'' if o['final_key'] else ' (index claimed at upload)'}: "
                       f"{human_bytes(o['bytes'])}, {o['records']} records, {parts} "
                       f"({human_bytes(o['bytes_uploaded'])}) uploaded, age {_age(o['age_seconds'])}, "
                       f"idle {_age(o['idle_seconds'])}; "
                       f"completes {_completes(o, now)}")
        if len(st["open_objects"]) > LIST_AT_MOST:
            out.append(f"  ... and {len(st['open_objects']) - LIST_AT_MOST} more (see --json)")
    waiting = st["sources_with_backlog"]
    if waiting:
        out.append("")
        out.append(f"spool files with a backlog ({len(waiting)}):")
        out.extend(f"  {s['path']}: {human_bytes(s['backlog_bytes'])} not read yet (of {human_bytes(s['size'])})"
                   for s in waiting[:LIST_AT_MOST])
        if len(waiting) > LIST_AT_MOST:
            out.append(f"  ... and {len(waiting) - LIST_AT_MOST} more (see --json)")
    leases = st["leases"]
    if leases["state"] == "unavailable":
        out.append("")
        out.append(f"write leases UNAVAILABLE since {_clock(leases['since'], now)}: deletions of shipped spool files "
                   f"rely on spool-reap alone ({leases['reason']}); give spoolup CAP_LEASE")
    bad = st["sources_needing_attention"]
    if bad:
        out.append("")
        out.append(f"spool entries needing attention ({len(bad)}; quarantined: not read, or not deleted; their "
                   "bytes stay in the spool):")
        for s in bad[:LIST_AT_MOST]:
            q = s["quarantine"]
            retry = "at the next start" if q["next_retry"] is None else f"at {_clock(q['next_retry'], now)}"
            out.append(f"  {s['path']}: {q['reason']} since {_clock(q['since'], now)}, {human_bytes(s['size'])} "
                       f"({q['attempts']} attempt(s), next retry {retry}): {s['error']}")
            out.append(f"    what to do: {q['what_to_do']}")
        if len(bad) > LIST_AT_MOST:
            out.append(f"  ... and {len(bad) - LIST_AT_MOST} more (see --json)")
    dl = st["dead_letters"]
    if dl["records"]:
        out.append("")
        out.append(f"dead letters: {dl['records']} records ({human_bytes(dl['bytes'])}) in {len(dl['files'])} file(s) "
                   f"under {st['state_dir']}/dead-letter")
        if dl.get("removed_bytes"):
            out.append(f"  {human_bytes(dl['removed_bytes'])} of them removed since (dead-letter files deleted), "
                       f"{human_bytes(dl['bytes'] - dl['removed_bytes'])} on disk")
    led = st.get("ledger")
    if led:
        out.append(f"ledger: agent {led['agent_id']}, last segment {led['seq']}, "
                   f"{led['objects_waiting_for_record']} object(s) waiting for their record")
    caps = st.get("s3_capabilities")
    if caps:
        out.append("")
        out.append(f"S3 server: If-None-Match: * on PutObject {caps['put_if_none_match']}, on "
                   f"CompleteMultipartUpload {caps['complete_if_none_match']} (HEAD check before writes "
                   "where not honoured)")
    if st.get("quarantined_objects"):
        out.append("")
        out.append("objects S3 refuses (quarantined, retried slowly; everything else ships):")
        out.extend(f"  {q['key']}: {q['operation']} {q['code']}: {q['message']}" for q in st["quarantined_objects"])
    err = st["last_error"]
    out.append("")
    if err:
        out.append(f"last error ({_age(err['age_seconds'])} ago, {err['process']}): {err['operation']}: "
                   f"{err['code'] or 'error'}: {err['message']}")
    else:
        out.append("last error: none")
    return "\n".join(out)


def to_json(st: dict[str, Any]) -> str:
    return json.dumps(st, indent=2, sort_keys=False)
