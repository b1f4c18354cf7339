"""Health probes on metrics-listen beside /metrics: /healthz (liveness) and /readyz (readiness).

For Kubernetes' livenessProbe/readinessProbe and load balancers, which ask one HTTP
question and read the status code:

* /healthz: are the service and its upload process alive?  200 or 503.  "Alive" is what
  `spoolup status` says (status.processes(): a heartbeat in the journal within 10 s and
  the pid exists), for the main (ingest) process and the upload process.  The main
  process serves this very endpoint, but only its heartbeat says that its loop still
  turns.  Whether S3 works is not liveness: restarting spoolup does not bring S3 back.
* /readyz: can the service do its job now?  200 or 503, with every check and why.
  It reads `spoolup status`'s figures (status.collect(), the same read-only query as
  the metrics' gauges), so the probe, the metrics and `status --json` never disagree.

Both answer JSON: {"ok": bool, "checks": {name: {"ok": bool, "reason": str}}, ...}.  Nothing in
them comes from the configuration's secrets: only status's facts, which never hold any.
Each request reads the journal afresh (no cache to go stale, as for the metrics).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from spoolup import status

# A closed object, a quarantined spool entry or object, or an open object past its
# flush-grace-period counts as stalled past this many seconds.  Why 15 minutes: once an
# object is closed only its last parts remain to send (ingest pauses at max-pending-uploads
# sealed parts: 32 x 5 MiB by default), minutes at the slowest link spoolup is meant for,
# and a failed call is retried within retry-max-delay (30 s): 15 minutes is many times what
# a working service needs, yet short next to the flush-grace-period (60 min) an operator
# already waits for objects.  It is also the `for:` of the SpoolupS3Failing alert.
STALLED_AFTER = 900.0

PATHS = ("/healthz", "/readyz")


def _check(ok: bool, reason: str) -> dict[str, Any]:
    return {"ok": bool(ok), "reason": reason}


def _verdict(problems: list[str], fine: str) -> dict[str, Any]:
    """A check that collects several problems: failed with all of them, or passed with `fine`."""
    if problems:
        return _check(False, "; ".join(problems))
    return _check(True, fine)


def _result(checks: dict[str, dict[str, Any]], **extra) -> dict[str, Any]:
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks, **extra}


def _unreadable(e: Exception) -> dict[str, Any]:
    return _result({"journal": _check(False, f"the journal cannot be read: {type(e).__name__}: {e}")})


def _alive(procs: dict[str, dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """A check per process (ingest: the main process; upload), as `status` words it."""
    out = {}
    for name in ("ingest", "upload"):
        p = procs.get(name)
        out[name] = _check(p is not None and p["alive"], status._process(name, p, now) if p is not None
                           else f"{name}: no heartbeat in the journal yet")
    return out


def liveness(cfg) -> dict[str, Any]:
    """/healthz: both processes alive (status.processes())."""
    try:
        procs = status.processes(cfg)
    except Exception as e:  # noqa: BLE001 - a probe must answer: 503 and why
        return _unreadable(e)
    return _result(_alive(procs, time.time()))


def readiness(cfg) -> dict[str, Any]:
    """/readyz: every check of status.collect()'s figures."""
    try:
        st = status.collect(cfg)
    except Exception as e:  # noqa: BLE001
        return _unreadable(e)
    now = st["time"]
    procs = st["service"]["processes"]
    alive = _alive(procs, now)
    checks = {
        "processes": _check(all(c["ok"] for c in alive.values()), "; ".join(c["reason"] for c in alive.values())),
        "s3": _s3(st, procs),
        "journal": _journal(cfg, procs),
        "state_dir": _state_dir(st),
        "uploads": _uploads(st, now),
        "quarantine": _quarantine(st, now),
    }
    return _result(checks, stalled_after_seconds=STALLED_AFTER)


def _s3(st: dict[str, Any], procs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The upload process's S3 health (spoolup/health.py), as `status` says it."""
    h = st["s3_health"]
    upload_alive = procs.get("upload", {}).get("alive", False)
    return _check(h["state"] == "ok", status._health(h, upload_alive, st["time"]))


def _journal(cfg, procs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Readable (status read it), on a writable filesystem, and written recently: each
    process commits a heartbeat every 2 s, so the newest one is the age of the last commit."""
    try:
        readonly = bool(os.statvfs(cfg.state_dir).f_flag & os.ST_RDONLY)
    except OSError as e:
        return _check(False, f"the state dir cannot be examined: {e.strerror or e}")
    if readonly:
        return _check(False, "the state dir's filesystem is mounted read-only: the journal cannot be written")
    if cfg.journal_path.exists() and not os.access(cfg.journal_path, os.W_OK):
        return _check(False, f"the journal {cfg.journal_path} is not writable by this user")
    seen = [p["last_seen_seconds"] for p in procs.values()]
    if not seen:
        return _check(False, "no process has written the journal yet")
    last = min(seen)
    if last >= status.LIVENESS_SECONDS:
        return _check(False, f"no commit to the journal for {last:.0f}s (heartbeats are due every 2s): "
                             "writes fail or the service is stuck; see `spoolup status` and the log")
    return _check(True, f"last commit {last:.1f}s ago")


def _state_dir(st: dict[str, Any]) -> dict[str, Any]:
    space = st["state_dir_space"]
    if space is None:
        return _check(False, f"the state dir {st['state_dir']} does not exist")
    if space["low"]:
        return _check(False, space["advice"])
    return _check(True, f"{status.human_bytes(space['free_bytes'])} free of "
                        f"{status.human_bytes(space['total_bytes'])}")


def _uploads(st: dict[str, Any], now: float) -> dict[str, Any]:
    """Nothing waiting past STALLED_AFTER: the oldest closed object (waiting for its upload to
    complete), and open objects whose flush-grace-period passed (ingest closes them)."""
    problems = []
    closed = st["closed_objects_pending"]
    oldest = closed.get("oldest_age_seconds")
    if oldest is not None and oldest > STALLED_AFTER:
        problems.append(f"the oldest of {closed['count']} closed objects has waited {status._age(oldest)} to be "
                        f"completed in the bucket (bound {status._age(STALLED_AFTER)})")
    overdue = [o for o in st["open_objects"] if now - o["completes"]["grace_at"] > STALLED_AFTER]
    if overdue:
        o = overdue[0]
        problems.append(f"{len(overdue)} open object(s) still open {status._age(now - o['completes']['grace_at'])} "
                        f"after their flush-grace-period, e.g. {o['expected_key']}")
    return _verdict(problems, f"{closed['count']} closed object(s) waiting, none for longer than "
                              f"{status._age(STALLED_AFTER)}; {st['pending_parts']['count']} part(s) pending")


def _quarantine(st: dict[str, Any], now: float) -> dict[str, Any]:
    """Spool entries and objects quarantined for longer than STALLED_AFTER (a quarantine that
    clears by itself on its first retries does not count)."""
    entries = [s for s in st["sources_needing_attention"] if now - s["quarantine"]["since"] > STALLED_AFTER]
    objects = [q for q in st.get("quarantined_objects") or [] if now - q.get("since", now) > STALLED_AFTER]
    problems = []
    if entries:
        e = entries[0]
        problems.append(f"{len(entries)} spool entr{'y' if len(entries) == 1 else 'ies'} quarantined for longer "
                        f"than {status._age(STALLED_AFTER)}, e.g. {e['path']}: {e['quarantine']['reason']}: "
                        f"{e['quarantine']['what_to_do']}")
    if objects:
        q = objects[0]
        problems.append(f"{len(objects)} object(s) S3 refuses for longer than {status._age(STALLED_AFTER)}, e.g. "
                        f"{q.get('key')}: {q.get('operation')} {q.get('code')}: {q.get('message')}")
    return _verdict(problems, "nothing quarantined for longer than " + status._age(STALLED_AFTER))


# ---------------------------------------------------------------------------
# serving


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow client never holds up the service's stop


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - probes every few seconds: no access log
        pass


def app(cfg, metrics_app: Callable) -> Callable:
    """A WSGI app: the probes on their paths, every other request to prometheus_client's
    metrics app (as start_http_server served it: /metrics, and any other path)."""
    answers = {"/healthz": liveness, "/readyz": readiness}

    def application(environ, start_response):
        probe = answers.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics_app(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        result = probe(cfg)
        body = (json.dumps(result, indent=1) + "\n").encode()
        start_response("200 OK" if result["ok"] else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                        ("Content-Length", str(len(body)))])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return application


def start(cfg, registry, host: str, port: int) -> WSGIServer:
    """Serve /metrics (registry), /healthz and /readyz on host:port from a daemon thread;
    OSError if the address cannot be bound."""
    from prometheus_client import make_wsgi_app

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(_Server):
        address_family = family

    httpd = make_server(address[0], port, app(cfg, make_wsgi_app(registry)), Server, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
