"""Health probes: /healthz and /readyz on metrics-listen, asked over real HTTP of a real
`spoolup run` while it is healthy, while S3 is unreachable, after its upload process is
killed, and while its state dir is full (issue 21, item 4).

/healthz answers whether both processes are alive (status's liveness); /readyz whether the
service can do its job, each check with a reason, from the same figures as `status --json`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from crashkit import assert_exact, fill_filesystem, write
from helpers import ACCESS_KEY, SECRET_KEY, free_port, mounted, syslog_lines, wait_for
from test_ops_metrics import scrape

pytestmark = pytest.mark.s3_servers("moto", "rgw")

READY_CHECKS = {"processes", "s3", "journal", "state_dir", "uploads", "quarantine"}


def probe(port: int, path: str) -> tuple[int | None, dict | None]:
    """(HTTP status, JSON body) of GET path; (None, None) while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            status, raw = r.status, r.read()
            kind = r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("Content-Type")
    except urllib.error.URLError:
        return None, None
    assert kind == "application/json", (status, kind, raw[:200])
    text = raw.decode()
    assert SECRET_KEY not in text and ACCESS_KEY not in text  # never a secret
    return status, json.loads(text)


def answers(port: int, path: str, code: int):
    """A predicate for wait_for: the body of `path` once it answers `code`."""
    def ask():
        status, body = probe(port, path)
        return body if status == code else None
    return ask


def upload_pid(run: subprocess.Popen) -> int:
    """The upload process: the child of `spoolup run` (read from /proc, not from spoolup)."""
    children = []
    for path in glob.glob(f"/proc/{run.pid}/task/*/children"):
        with open(path) as f:
            children += [int(pid) for pid in f.read().split()]
    assert len(children) == 1, children
    return children[0]


@contextlib.contextmanager
def past_the_first_object(sp):
    """sp running once the object of first.log (500 lines) completed: yields its process and
    first.log's bytes; stops the service on exit."""
    first = syslog_lines(500)
    write(sp.spool / "first.log", first)
    p = sp.start()
    try:
        wait_for(lambda: sp.status()["completed_objects"]["count"] == 1, 60, what="the first object")
        yield p, first
    finally:
        assert sp.stop(p) == 0


def test_healthy_service_is_live_and_ready(make_spoolup, s3):
    port = free_port()
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "metrics-listen": f"127.0.0.1:{port}"})
    files = {"a.log": syslog_lines(2000), "big.log": syslog_lines(30_000, width=256)}  # big: a multipart upload
    for name, data in files.items():
        write(sp.spool / name, data)
    p = sp.start()
    try:
        wait_for(lambda: sp.status()["completed_objects"]["count"] == 2, 60, what="both objects completed")
        assert_exact(s3, sp.bucket, files)
        live = wait_for(answers(port, "/healthz", 200), 30, what="/healthz 200")
        assert live["ok"] and set(live["checks"]) == {"ingest", "upload"}
        upload = sp.status()["service"]["processes"]["upload"]
        assert live["checks"]["upload"] == {"ok": True, "reason": f"upload pid {upload['pid']} alive"}
        ready = wait_for(answers(port, "/readyz", 200), 30, what="/readyz 200")
        assert ready["ok"] and set(ready["checks"]) == READY_CHECKS, ready
        assert all(c["ok"] for c in ready["checks"].values()), ready
        assert ready["checks"]["s3"]["reason"].startswith("S3: ok")  # as `spoolup status` says it
        assert ready["stalled_after_seconds"] == 900
        assert sp.status()["closed_objects_pending"] == {"count": 0, "bytes": 0, "oldest_age_seconds": None}
        # /metrics is served as before, from the same address
        m = scrape(port)
        assert m["spoolup_uploaded_objects_total"] == 2 and m["spoolup_upload_process_up"] == 1
        assert probe(port, "/healthz")[0] == 200  # still
    finally:
        assert sp.stop(p) == 0


@pytest.mark.s3_servers("moto")  # (the proxy drops every connection: what the server answers plays no part)
def test_s3_unreachable_is_not_ready_but_alive(make_spoolup, s3, proxy):
    port = free_port()
    sp = make_spoolup(**{"url": proxy.url, "object-key": "{name}", "flush-grace-period": "1s", "s3-timeout": 2,
                         "metrics-listen": f"127.0.0.1:{port}"})
    with past_the_first_object(sp) as (p, first):
        wait_for(answers(port, "/readyz", 200), 30, what="ready while S3 answers")
        proxy.add(action="reset")  # S3 unreachable: every connection dropped
        later = syslog_lines(500, start=1000)
        write(sp.spool / "later.log", later)  # the upload process has something to send
        ready = wait_for(answers(port, "/readyz", 503), 60, what="/readyz 503 while S3 is unreachable")
        assert not ready["ok"] and not ready["checks"]["s3"]["ok"], ready
        assert "S3: FAILING since" in ready["checks"]["s3"]["reason"], ready
        assert sp.status()["s3_health"]["state"] == "failing"  # as status says
        assert ready["checks"]["processes"]["ok"] and ready["checks"]["journal"]["ok"], ready
        st = wait_for(lambda: (s := sp.status())["closed_objects_pending"]["count"] == 1 and s, 30,
                      what="the object waiting in status")
        assert st["closed_objects_pending"]["oldest_age_seconds"] > 0
        assert ready["checks"]["uploads"]["ok"], ready  # waiting, not (yet) stalled past the bound
        status, live = probe(port, "/healthz")
        assert status == 200 and live["ok"], live  # S3 down is not a reason to restart spoolup
        proxy.clear()  # S3 is back
        wait_for(answers(port, "/readyz", 200), 60, what="ready again once S3 answers")
        wait_for(lambda: sp.status()["completed_objects"]["count"] == 2, 60, what="the object held back")
        assert_exact(s3, sp.bucket, {"first.log": first, "later.log": later})


@pytest.mark.s3_servers("moto")  # (the process's liveness: the server plays no part)
def test_killed_upload_process_is_not_alive_until_restarted(make_spoolup, s3):
    port = free_port()
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "metrics-listen": f"127.0.0.1:{port}"})
    with past_the_first_object(sp) as (p, first):
        wait_for(answers(port, "/healthz", 200), 30, what="alive")
        killed = upload_pid(p)
        # While the configuration file is away, every upload process the service restarts exits at
        # once (it reads the file): the window in which no upload process lives is the test's to
        # end, whatever the restart's timing.
        away = sp.config.with_suffix(".away")
        sp.config.rename(away)
        try:
            os.kill(killed, signal.SIGKILL)
            live = wait_for(answers(port, "/healthz", 503), 30, what="/healthz 503 with the upload process dead")
            assert not live["checks"]["upload"]["ok"] and live["checks"]["ingest"]["ok"], live
            assert f"upload pid {killed} NOT RUNNING" in live["checks"]["upload"]["reason"], live
            status, ready = probe(port, "/readyz")
            assert status == 503 and not ready["checks"]["processes"]["ok"], ready
            wait_for(lambda: "upload process exited; restarting it" in sp.log_text(), 30, what="a restart")
            assert probe(port, "/healthz")[0] == 503
        finally:
            away.rename(sp.config)
        live = wait_for(answers(port, "/healthz", 200), 60, what="/healthz 200 once the service restarted it")
        new = sp.status()["service"]["processes"]["upload"]["pid"]
        assert new != killed and new == upload_pid(p)
        assert live["checks"]["upload"]["reason"] == f"upload pid {new} alive"
        later = syslog_lines(500, start=1000)
        write(sp.spool / "later.log", later)
        wait_for(lambda: sp.status()["completed_objects"]["count"] == 2, 60, what="an object from the new process")
        assert_exact(s3, sp.bucket, {"first.log": first, "later.log": later})
        wait_for(answers(port, "/readyz", 200), 30, what="ready")


@pytest.mark.s3_servers("moto")  # (the state dir's filesystem: the server plays no part)
def test_state_dir_full_is_not_ready(make_spoolup, s3, tmp_path):
    port = free_port()
    with mounted("tmpfs", tmp_path / "tiny-state", "size=32m,mode=0700") as state:
        sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "shutdown-timeout": 5,
                             "metrics-listen": f"127.0.0.1:{port}"}, state_dir=state)
        with past_the_first_object(sp) as (p, first):
            wait_for(answers(port, "/readyz", 200), 30, what="ready")
            filler = fill_filesystem(state)
            later = syslog_lines(20_000, start=1000)
            write(sp.spool / "later.log", later)  # records keep coming: they wait in the spool
            ready = wait_for(answers(port, "/readyz", 503), 60, what="/readyz 503 with the state dir full")
            check = ready["checks"]["state_dir"]
            assert not check["ok"] and str(state) in check["reason"], ready
            assert "something else fills the filesystem" in check["reason"], ready
            assert check["reason"] == sp.status()["state_dir_space"]["advice"]  # as status says
            # a full disk is no reason to restart spoolup: alive, even once its heartbeats cannot be journaled
            st = wait_for(lambda: (s := sp.status())["service"]["processes"]["upload"]["last_seen_seconds"]
                          >= 10 and s, 60, what="the upload process's heartbeat older than 10s")
            assert st["service"]["processes"]["upload"]["alive"] and st["service"]["processes"]["ingest"]["alive"]
            status, live = probe(port, "/healthz")
            assert status == 200 and live["ok"], live
            assert "state dir full" in live["checks"]["upload"]["reason"], live
            filler.unlink()  # space returns
            wait_for(answers(port, "/readyz", 200), 60, what="ready again with space")
            wait_for(lambda: sp.status()["completed_objects"]["count"] == 2, 60, what="the next object")
            assert_exact(s3, sp.bucket, {"first.log": first, "later.log": later})


def test_every_readiness_check_is_documented():
    """docs/operations.md's table names each check /readyz answers (test_healthy_... pins the set)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = doc[doc.index("### Health probes"):]
    section = section[:section.index("\n### ")]
    assert [name for name in sorted(READY_CHECKS) if f"| `{name}` |" not in section] == []
    assert "livenessProbe" in section and "readinessProbe" in section and "/healthz" in section


def test_stalls_past_the_bound_are_not_ready(tmp_path):
    """The stall checks on status's figures (a real status of a state dir that never ran, with
    the ages a stalled service would show: waiting 15 minutes is not done in a test)."""
    from spoolup import config, probes, status

    path = tmp_path / "c.toml"
    path.write_text(f'bucket = "logs"\nspool-dir = "{tmp_path / "spool"}"\nstate-dir = "{tmp_path / "state"}"\n')
    (tmp_path / "spool").mkdir()
    st = status.collect(config.load(path))
    now, bound = st["time"], probes.STALLED_AFTER
    assert probes._uploads(st, now)["ok"] and probes._quarantine(st, now)["ok"]
    st["closed_objects_pending"].update(count=3, oldest_age_seconds=bound - 1)
    assert probes._uploads(st, now)["ok"]
    st["closed_objects_pending"]["oldest_age_seconds"] = bound + 1
    check = probes._uploads(st, now)
    assert not check["ok"] and "the oldest of 3 closed objects has waited 15m" in check["reason"], check
    st["closed_objects_pending"]["oldest_age_seconds"] = None
    st["open_objects"] = [{"expected_key": "web/app.log", "completes": {"grace_at": now - bound - 60}}]
    check = probes._uploads(st, now)
    assert not check["ok"] and "still open 16m after their flush-grace-period, e.g. web/app.log" in check["reason"]
    st["quarantined_objects"] = [{"key": "k-0", "operation": "PutObject", "code": "AccessDenied",
                                  "message": "Access Denied", "since": now - bound + 5}]
    assert probes._quarantine(st, now)["ok"]  # quarantined, not for long yet
    st["quarantined_objects"][0]["since"] = now - bound - 5
    check = probes._quarantine(st, now)
    assert not check["ok"] and "k-0: PutObject AccessDenied: Access Denied" in check["reason"], check
