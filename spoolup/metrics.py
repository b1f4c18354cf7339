"""Prometheus metrics (`metrics-listen = "127.0.0.1:9464"`; off by default).

The same address serves the health probes /healthz and /readyz (spoolup/probes.py).

Both processes' metrics are served from one endpoint, by the main process:

* Counters and the commit-latency histogram (a commit hook of the journal, which
  imports nothing of metrics) live in the process that counts
  them and are written to prometheus_client's multiprocess files in
  `state-dir/metrics/` (one small mmap file per process and metric type).  The
  main process serves the sum of every file there.  A restarted upload process
  writes new files; the dead one's files stay, so counters never go backwards
  while `spoolup run` lives.  The directory is emptied when `spoolup run`
  starts (holding the state-dir lock): counters restart at zero with the
  service, which Prometheus' rate() and increase() handle.
* Gauges (backlog, oldest pending age, pending parts vs cap, liveness, dead
  letters, last error) are not kept by any process: they are read from the
  journal at scrape time with the same read-only query as `spoolup status`, so
  the endpoint and `spoolup status` always agree and a gauge can never be left
  stale by a process that died.

Nothing here imports prometheus_client unless metrics are enabled, and every
recording function is a cheap no-op when they are not (status, drain, recover).
Call sites record per batch or per S3 call, never per record.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from spoolup import journal

ENV = "PROMETHEUS_MULTIPROC_DIR"
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_m: Any = None  # the metric objects, once enabled
_process = ""
_ingested = {"bytes": 0, "records": 0}  # ingest.stats already counted


def directory(cfg) -> Path:
    return cfg.state_dir / "metrics"


def enabled() -> bool:
    return _m is not None


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()):
            return Counter(name, doc, labels, registry=None)

        self.ingested_bytes = counter(
            "spoolup_ingested_bytes", "Record bytes read from the spool and journaled into objects (before compression).")
        self.ingested_records = counter("spoolup_ingested_records", "Records read from the spool and journaled.")
        self.uploaded_parts = counter("spoolup_uploaded_parts", "Parts uploaded (UploadPart succeeded and journaled).")
        self.uploaded_bytes = counter("spoolup_uploaded_bytes", "Bytes of the parts and single-part objects uploaded.")
        self.uploaded_objects = counter("spoolup_uploaded_objects",
                                        "Objects completed in the bucket (multipart completed or single PutObject).")
        self.upload_errors = counter("spoolup_upload_errors", "Failed S3 calls, by S3 error code and operation.",
                                     ("code", "operation"))
        self.upload_retries = counter("spoolup_upload_retries", "S3 calls attempted again after a failure.")
        self.upload_restarts = counter("spoolup_upload_process_restarts",
                                       "Times the upload process died and was restarted by the main process.")
        self.commit_seconds = Histogram(
            "spoolup_journal_commit_seconds",
            "Journal transactions, from BEGIN IMMEDIATE to the end of COMMIT (write-lock wait and WAL sync included).",
            ("process",), buckets=COMMIT_BUCKETS, registry=None)
        self.commit = self.commit_seconds.labels(_process)


def _enable(process: str, path: Path) -> None:
    global _m, _process
    os.environ[ENV] = str(path)
    from prometheus_client import values

    # multiprocess values whatever imported prometheus_client first
    values.ValueClass = values.MultiProcessValue()
    _process = process
    _m = _Metrics()
    journal.add_commit_hook(_m.commit.observe)


# ---------------------------------------------------------------------------
# setting up


def serve(cfg, log) -> None:
    """Main process (`spoolup run`), holding the state-dir lock: empty the metrics
    directory, count in it from now on, and serve everything on metrics-listen.
    Must run before the upload process starts, which inherits the directory
    through PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from spoolup import probes

    path = directory(cfg)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    _enable("ingest", path)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    registry.register(JournalCollector(cfg))
    host, port = split_listen(cfg.metrics_listen)
    try:
        probes.start(cfg, registry, host, port)  # /metrics, and the health probes /healthz and /readyz
    except OSError as e:
        raise OSError(f"cannot serve metrics on metrics-listen = \"{cfg.metrics_listen}\": {e.strerror or e}") from None
    log.info("serving Prometheus metrics and health probes", url=f"http://{cfg.metrics_listen}/metrics",
             liveness=f"http://{cfg.metrics_listen}/healthz", readiness=f"http://{cfg.metrics_listen}/readyz")


def check_listen(cfg) -> None:
    """Fail (OSError, saying which option) if metrics-listen cannot be bound, before `spoolup run`
    creates or changes anything; serve() binds it for real once the state dir is locked."""
    import socket

    host, port = split_listen(cfg.metrics_listen)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        raise OSError(f"cannot serve metrics on metrics-listen = \"{cfg.metrics_listen}\": {e.strerror or e}") from None


def child(cfg) -> None:
    """Upload process: count into the directory the main process serves, if it does."""
    path = directory(cfg)
    if cfg.metrics_listen and os.environ.get(ENV) == str(path) and path.is_dir():
        _enable("upload", path)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


# ---------------------------------------------------------------------------
# recording (no-ops when metrics are off)


def ingested(stats: dict[str, int]) -> None:
    """Called after ingest committed: counts what `Ingest.stats` gained since the last call."""
    if _m is None:
        return
    db, dr = stats["bytes"] - _ingested["bytes"], stats["records"] - _ingested["records"]
    if db > 0:
        _m.ingested_bytes.inc(db)
    if dr > 0:
        _m.ingested_records.inc(dr)
    _ingested["bytes"], _ingested["records"] = stats["bytes"], stats["records"]


def uploaded(parts: int, nbytes: int) -> None:
    """An UploadPart (parts=1) or a single-part PutObject (parts=0) of `nbytes` succeeded."""
    if _m is not None:
        if parts:
            _m.uploaded_parts.inc(parts)
        _m.uploaded_bytes.inc(nbytes)


def object_uploaded() -> None:
    """An object was journaled done (completed in the bucket)."""
    if _m is not None:
        _m.uploaded_objects.inc()


def upload_error(code: str | None, operation: str | None) -> None:
    if _m is not None:
        _m.upload_errors.labels(code or "unknown", operation or "unknown").inc()


def upload_retry() -> None:
    if _m is not None:
        _m.upload_retries.inc()


def upload_restarted() -> None:
    if _m is not None:
        _m.upload_restarts.inc()


# ---------------------------------------------------------------------------
# gauges read from the journal at scrape time


class JournalCollector:
    """The `spoolup status` figures as gauges, read (read-only) at each scrape."""

    def __init__(self, cfg):
        self.cfg = cfg

    def describe(self):
        return []  # unchecked collector: registered without a trial collect()

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from spoolup import __version__, status

        def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None):
            g = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
            g.add_metric(list(labels.values()) if labels else [], value)
            return g

        yield gauge("spoolup_info", "spoolup's version.", 1, {"version": __version__})
        try:
            st = status.collect(self.cfg)
        except Exception:  # noqa: BLE001 - a scrape must answer; the log and `status` say why
            yield gauge("spoolup_journal_readable", "1 if the journal could be read for this scrape.", 0)
            return
        yield gauge("spoolup_journal_readable", "1 if the journal could be read for this scrape.", 1)
        yield gauge("spoolup_backlog_bytes", "Bytes in the spool not yet ingested.", st["backlog_bytes"])
        oldest = st["oldest_pending_age_seconds"]
        yield gauge("spoolup_oldest_pending_age_seconds",
                    "Age of the oldest object not yet completed in the bucket (0: none pending).", oldest or 0)
        pp = st["pending_parts"]
        yield gauge("spoolup_pending_parts", "Sealed parts waiting for upload.", pp["count"])
        yield gauge("spoolup_pending_parts_bytes", "Bytes of the sealed parts waiting for upload.", pp["bytes"])
        yield gauge("spoolup_pending_parts_cap", "max-pending-uploads: at this many pending parts ingest pauses.",
                    pp["cap"])
        yield gauge("spoolup_open_objects", "Objects open for new records.", len(st["open_objects"]))
        yield gauge("spoolup_open_objects_bytes", "Record bytes in open objects.",
                    sum(o["bytes"] for o in st["open_objects"]))
        yield gauge("spoolup_closed_objects_pending", "Closed objects not yet completed in the bucket.",
                    st["closed_objects_pending"]["count"])
        attention = st["sources_needing_attention"]
        yield gauge("spoolup_sources_needing_attention",
                    "Quarantined spool entries (not read, or not deleted): the entries of `spoolup status`'s "
                    "sources_needing_attention.", len(attention))
        q = GaugeMetricFamily("spoolup_quarantined", "Quarantined spool entries by reason (see docs/operations.md).",
                              labels=["reason"])
        by_reason: dict[str, int] = {}
        for a in attention:
            by_reason[a["quarantine"]["reason"]] = by_reason.get(a["quarantine"]["reason"], 0) + 1
        for reason, n in sorted(by_reason.items()):
            q.add_metric([reason], n)
        yield q
        yield gauge("spoolup_quarantined_objects", "Objects the upload process has quarantined (S3 refuses their "
                    "request, or working on them failed unexpectedly): status's quarantined_objects.",
                    len(st.get("quarantined_objects") or []))
        dl = CounterMetricFamily("spoolup_dead_letter_records", "Bad records written to dead-letter files "
                                 "(kept in the journal: survives restarts).")
        dl.add_metric([], st["dead_letters"]["records"])
        yield dl
        tr = CounterMetricFamily("spoolup_spool_truncations", "Spool files found truncated or rewritten in place "
                                 "and shipped again from byte 0 (kept in the journal: survives restarts).")
        tr.add_metric([], st["counters"].get("spool_truncations", 0))
        yield tr
        procs = st["service"]["processes"]
        up = procs.get("upload", {}).get("alive", False)
        yield gauge("spoolup_upload_process_up", "1 if the upload process is alive (recent heartbeat and its pid "
                    "exists), whether or not S3 works for it (spoolup_s3_healthy).", int(up))
        h = st["s3_health"]
        if h["state"] != "unknown":  # no live upload process: no S3 health to report (spoolup_upload_process_up)
            yield gauge("spoolup_s3_healthy", "1 if the upload process's last S3 call succeeded, 0 while they fail "
                        "(wrong credentials, endpoint unreachable, ...); absent while no upload process is alive or none of its calls answered yet.",
                        int(h["state"] == "ok"))
        yield gauge("spoolup_s3_failing_since_timestamp_seconds", "Unix time of the first failed S3 call after the "
                    "last success (0: not failing).", h["failing_since"] or 0)
        yield gauge("spoolup_s3_last_success_timestamp_seconds", "Unix time of the last successful S3 call (0: none).",
                    h["last_success"] or 0)
        space = st["state_dir_space"] or {"free_bytes": 0, "chunk_bytes": 0, "low": False}
        yield gauge("spoolup_state_dir_free_bytes", "Free bytes in the state dir's filesystem.", space["free_bytes"])
        yield gauge("spoolup_state_dir_chunk_bytes", "Bytes the chunk files take in the state dir.",
                    space["chunk_bytes"])
        yield gauge("spoolup_state_dir_low", "1 while the state dir has too little free space to ingest (the "
                    "backlog waits in the spool; see status's state_dir_space.advice).", int(space["low"]))
        checked = st.get("last_verify")
        if checked:  # absent until a `spoolup verify` kept its result in the journal
            yield gauge("spoolup_verify_ok", "1 if the last `spoolup verify` found everything shipped as the ledger "
                        "says, 0 if it named problems; absent until one ran.", int(bool(checked["ok"])))
            yield gauge("spoolup_verify_problems", "Problems the last `spoolup verify` named.", checked["problems"])
        yield gauge("spoolup_verify_timestamp_seconds", "Unix time of the last `spoolup verify` (0: none yet).",
                    checked["time"] if checked else 0)
        err = st["last_error"]
        yield gauge("spoolup_last_error_timestamp_seconds", "Unix time of the last error journaled (0: none).",
                    err["time"] if err else 0)
