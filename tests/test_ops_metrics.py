"""Prometheus metrics: scraped over HTTP from a running `spoolup run`.

Both processes' metrics come from one endpoint (the main process serves the
multiprocess files of both, plus gauges read from the journal at scrape time),
and counters survive a restart of the upload process.
"""

from __future__ import annotations

import os
import signal
import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from helpers import free_port, list_keys, syslog_lines, wait_for


def scrape(port: int) -> dict[str, float]:
    """'name{label="v",...}' (labels sorted) -> value, for every spoolup sample ({} before it listens)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            text = r.read().decode()
    except urllib.error.URLError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("spoolup_"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_of_both_processes_from_one_endpoint(make_spoolup, s3):
    port = free_port()
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "metrics-listen": f"127.0.0.1:{port}",
                         "max-pending-uploads": 7})
    files = {"small.log": syslog_lines(1000), "big.log": syslog_lines(30_000, width=256)}  # big: 5 MiB part + tail
    for name, data in files.items():
        (sp.spool / name).write_bytes(data)
    total = sum(len(d) for d in files.values())
    records = sum(d.count(b"\n") for d in files.values())
    p = sp.start()
    try:
        wait_for(lambda: sorted(list_keys(s3, sp.bucket)) == ["big.log", "small.log"], 60, what="both objects")
        m = wait_for(lambda: (m := scrape(port)).get("spoolup_uploaded_objects_total") == 2 and m, 30,
                     what="the objects counted")
        assert m["spoolup_ingested_bytes_total"] == total
        assert m["spoolup_ingested_records_total"] == records
        assert m["spoolup_uploaded_parts_total"] == 2  # big.log is a real multipart upload; small.log one PutObject
        assert m["spoolup_uploaded_bytes_total"] == total
        assert not [k for k in m if k.startswith("spoolup_upload_errors_total")]
        assert m["spoolup_upload_retries_total"] == 0
        # the journal commit latency histogram, from each process
        assert m['spoolup_journal_commit_seconds_count{process="ingest"}'] > 0
        assert m['spoolup_journal_commit_seconds_count{process="upload"}'] > 0
        assert m['spoolup_journal_commit_seconds_bucket{le="+Inf",process="upload"}'] == \
            m['spoolup_journal_commit_seconds_count{process="upload"}']
        # gauges read from the journal at scrape time
        assert m["spoolup_pending_parts_cap"] == 7
        assert m["spoolup_pending_parts"] == 0
        assert m["spoolup_backlog_bytes"] == 0
        assert m["spoolup_oldest_pending_age_seconds"] == 0
        assert m["spoolup_open_objects"] == 0
        assert m["spoolup_upload_process_up"] == 1
        assert m["spoolup_journal_readable"] == 1
        assert m["spoolup_dead_letter_records_total"] == 0

        # kill the upload process: it is restarted, and nothing it counted is lost
        upload_pid = sp.status()["service"]["processes"]["upload"]["pid"]
        os.kill(upload_pid, signal.SIGKILL)
        wait_for(lambda: scrape(port).get("spoolup_upload_process_restarts_total") == 1, 60, what="the restart")
        more = syslog_lines(500, start=10_000)
        (sp.spool / "after.log").write_bytes(more)
        wait_for(lambda: "after.log" in list_keys(s3, sp.bucket), 60, what="an object from the new upload process")
        m = wait_for(lambda: (m := scrape(port)).get("spoolup_uploaded_objects_total") == 3 and m, 30,
                     what="the counts of both upload processes")
        assert m["spoolup_ingested_bytes_total"] == total + len(more)
        assert m["spoolup_uploaded_bytes_total"] == total + len(more)
        assert m["spoolup_uploaded_parts_total"] == 2
        assert len(list((sp.state / "metrics").glob("counter_*.db"))) == 3  # main + two upload processes
        wait_for(lambda: scrape(port)["spoolup_upload_process_up"] == 1, 30, what="the new upload process alive")
    finally:
        assert sp.stop(p) == 0


def test_s3_errors_and_backlog_are_counted(make_spoolup):
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sp = make_spoolup(**{"object-key": "{name}", "url": dead, "s3-timeout": 1, "max-pending-uploads": 1,
                         "metrics-listen": f"127.0.0.1:{port}"})
    data = syslog_lines(50_000, width=256)  # ~12 MiB: one sealed part reaches the cap, the rest waits in the spool
    (sp.spool / "stuck.log").write_bytes(data)
    p = sp.start()
    try:
        m = wait_for(lambda: (m := scrape(port)).get("spoolup_upload_retries_total", 0) >= 1
                     and m["spoolup_pending_parts"] == 1 and m, 60, what="failures, retries and the cap")
        errors = {k: v for k, v in m.items() if k.startswith("spoolup_upload_errors_total")}
        assert errors and all('code="EndpointConnectionError"' in k for k in errors), errors
        assert m["spoolup_last_error_timestamp_seconds"] > 0
        assert m["spoolup_pending_parts_bytes"] == 5 * 1024 * 1024
        st = sp.status()
        assert m["spoolup_backlog_bytes"] == st["backlog_bytes"] > 0
        assert m["spoolup_ingested_bytes_total"] + st["backlog_bytes"] == len(data)
        assert m["spoolup_open_objects"] == 1 and m["spoolup_oldest_pending_age_seconds"] > 0
    finally:
        assert sp.stop(p) == 0


def test_metrics_port_in_use_is_a_clear_error(make_spoolup):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        sp = make_spoolup(**{"metrics-listen": f"127.0.0.1:{port}"})
        r = sp.cmd("run", timeout=60)
    assert r.returncode == 1
    assert f'cannot serve metrics on metrics-listen = "127.0.0.1:{port}"' in r.stderr
    assert "Address already in use" in r.stderr
