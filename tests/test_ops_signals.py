"""Signals, sent for real to real spoolup processes.

SIGTERM/SIGINT stop ingest, let in-flight parts finish, journal them and exit 0;
a second stop signal exits at once and is still crash-safe; SIGHUP reopens the
log file (logrotate); a drain stopped by a signal says so (exit 1).

In-flight parts are made certain, not hoped for: the S3 endpoint is reached
through a loopback proxy (netproxy.StallProxy) that holds UploadPart requests
until the test releases them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import content_of, get, list_keys, pending_uploads, syslog_lines, wait_for
from crashkit import ask
from netproxy import StallProxy

MiB = 1024 * 1024


def events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def event(sp, name: str, process: str | None = None, text: str | None = None) -> dict | None:
    for e in events(sp.log_text() if text is None else text):
        if e.get("event") == name and (process is None or e.get("process") == process):
            return e
    return None


def start(sp, *args: str) -> subprocess.Popen:
    """`spoolup run` (or drain) as the leader of its own process group, like a shell job."""
    log = open(sp.base / "run.log", "ab")
    p = subprocess.Popen([sys.executable, "-m", "spoolup", *(args or ("run",)), "--config", str(sp.config)],
                         stdout=log, stderr=log, env=sp.env(), start_new_session=True)
    sp.procs.append(p)
    return p


def journal_parts(sp) -> dict[str, dict[int, str]]:
    """final key -> {part: etag} of the parts the journal records as uploaded, per open upload."""
    return ask(sp, lambda j: {o.final_key: {c.part: c.etag for c in j.chunks_of(o.id) if c.state == "uploaded"}
                              for o in j.claimed_unfinished() if o.upload_id is not None})


def s3_parts(s3, bucket: str) -> dict[str, dict[int, str]]:
    out = {}
    for key, upload_id in pending_uploads(s3, bucket):
        parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", [])
        out[key] = {p["PartNumber"]: p["ETag"] for p in parts}
    return out


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


@pytest.fixture
def proxy(moto):
    p = StallProxy(moto.port)
    yield p
    p.close()


@pytest.mark.parametrize("how", ["SIGTERM to the main process", "SIGINT to the process group (Ctrl-C)"])
def test_stop_signal_finishes_inflight_parts_and_exits_0(make_spoolup, s3, moto, proxy, how):
    sp = make_spoolup(**{"object-key": "{name}", "url": proxy.url, "upload-threads": 2, "s3-timeout": 120})
    data = syslog_lines(70_000, width=256)  # ~17 MiB: three sealed 5 MiB parts and an open tail
    (sp.spool / "big.log").write_bytes(data)
    proxy.hold()
    p = start(sp)
    wait_for(lambda: proxy.held >= 1, 60, what="an UploadPart in flight")
    if how.startswith("SIGTERM"):
        os.kill(p.pid, signal.SIGTERM)
    else:
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: both processes get it
    stopping = wait_for(lambda: event(sp, "upload process stopping"), 60, what="the upload process to stop")
    # the main process forwards SIGTERM too: after a Ctrl-C the upload process has had two signals
    wait_for(lambda: event(sp, "asked the upload process to stop", "run"), 60, what="the forwarded SIGTERM")
    proxy.release()
    assert p.wait(120) == 0, sp.log_text()
    stopped = event(sp, "upload process stopped")
    assert stopping["inflight"] >= 1
    assert stopped is not None, "the upload process did not finish its in-flight parts:\n" + sp.log_text()
    assert (stopped["finished"], stopped["unfinished"]) == (stopping["inflight"], 0)
    assert event(sp, "spoolup stopped", "run") is not None
    # journaled state is exact: every part S3 holds is journaled with its ETag, and nothing more
    journaled = journal_parts(sp)
    assert journaled and any(journaled.values())
    assert journaled == s3_parts(s3, sp.bucket)
    # and a drain (straight to S3 now) completes everything, byte for byte
    sp.write_config(url=moto.url)
    r = sp.drain(check=True)
    assert "nothing pending" in r.stdout
    assert get(s3, sp.bucket, "big.log") == data
    assert pending_uploads(s3, sp.bucket) == []


def test_second_stop_signal_exits_at_once_and_stays_crash_safe(make_spoolup, s3, moto, proxy):
    # with shutdown-timeout an hour and the part held, only the second signal can end this quickly
    sp = make_spoolup(**{"object-key": "{name}", "url": proxy.url, "upload-threads": 2, "s3-timeout": 3600,
                         "shutdown-timeout": 3600})
    data = syslog_lines(50_000, width=256)  # ~12 MiB
    (sp.spool / "twice.log").write_bytes(data)
    proxy.hold()
    p = start(sp)
    wait_for(lambda: proxy.held >= 1, 60, what="an UploadPart in flight")
    upload_pid = wait_for(lambda: (e := event(sp, "upload process started", "upload")) and e["pid"], 30,
                          what="the upload process")
    os.kill(p.pid, signal.SIGTERM)
    wait_for(lambda: event(sp, "upload process stopping"), 60, what="the graceful stop to begin")
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(60) == 1
    assert event(sp, "second stop signal: exiting at once (crash-safe; resumed at next start)") is not None
    assert event(sp, "upload process stopped") is None  # it did not wait for the held part
    wait_for(lambda: pid_gone(upload_pid), 30, what="the upload process to be gone too")
    proxy.close()
    sp.write_config(url=moto.url)
    sp.drain(check=True)
    assert content_of(s3, sp.bucket, "twice.log") == data
    assert pending_uploads(s3, sp.bucket) == []


def test_drain_stopped_by_a_signal_says_so(make_spoolup, s3, moto, proxy):
    sp = make_spoolup(**{"object-key": "{name}", "url": proxy.url, "s3-timeout": 120})
    data = syslog_lines(30_000, width=256)  # ~7 MiB: one sealed part
    (sp.spool / "d.log").write_bytes(data)
    proxy.hold()
    out = sp.base / "drain.out"
    with open(out, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "spoolup", "drain", "--config", str(sp.config)],
                             stdout=f, stderr=open(sp.base / "run.log", "ab"), env=sp.env())
    sp.procs.append(p)
    wait_for(lambda: proxy.held >= 1, 60, what="an UploadPart in flight")
    p.send_signal(signal.SIGTERM)
    wait_for(lambda: event(sp, "upload process stopping"), 60, what="the drain to begin stopping")
    proxy.release()
    assert p.wait(120) == 1, sp.log_text()
    assert "nothing pending" not in out.read_text()
    assert event(sp, "drain interrupted by a stop signal; what was not shipped yet is shipped by the next run "
                     "or drain", "drain") is not None
    sp.write_config(url=moto.url)
    sp.drain(check=True)
    assert content_of(s3, sp.bucket, "d.log") == data


def test_sighup_reopens_the_log_file_in_both_processes(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s"})
    log = sp.base / "spoolup.log"
    sp.write_config(**{"log-file": str(log)})
    p = start(sp)
    lines = lambda path: path.read_text() if path.exists() else ""  # noqa: E731
    wait_for(lambda: event(sp, "upload process started", "upload", text=lines(log)), 60, what="both processes up")
    rotated = sp.base / "spoolup.log.1"
    os.rename(log, rotated)  # what logrotate does (without copytruncate)
    os.kill(p.pid, signal.SIGHUP)
    for process in ("run", "upload"):
        wait_for(lambda: event(sp, "log file reopened", process, text=lines(log)), 60,
                 what=f"the {process} process to reopen its log file")
    data = syslog_lines(10)
    (sp.spool / "after-hup.log").write_bytes(data)
    wait_for(lambda: "after-hup.log" in list_keys(s3, sp.bucket), 60, what="the object")
    wait_for(lambda: event(sp, "object completed", "upload", text=lines(log)), 30, what="upload's log line")
    new = lines(log)
    assert event(sp, "new spool file", "run", text=new)["path"] == "after-hup.log"
    assert "after-hup.log" not in rotated.read_text()
    assert p.poll() is None, "SIGHUP must not stop the service"
    assert sp.stop(p) == 0
    assert event(sp, "spoolup stopped", "run", text=lines(log)) is not None
    assert get(s3, sp.bucket, "after-hup.log") == data


IGNORED = ("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR")


def test_other_signals_are_logged_and_ignored_by_both_processes(make_spoolup, s3):
    """Issue 18, item 10: SIGUSR1 ended the main process (exit -10), silently.  Each signal an
    operator may send that means nothing to spoolup is logged by the process that got it and
    ignored; the service keeps shipping and stops cleanly."""
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s"})
    p = start(sp)
    wait_for(lambda: event(sp, "upload process started", "upload"), 60, what="both processes up")
    upload_pid = event(sp, "upload process started", "run")["pid"]  # the main process says which
    assert upload_pid != p.pid and not pid_gone(upload_pid)
    for name in IGNORED:
        os.kill(p.pid, getattr(signal, name))
        os.kill(upload_pid, getattr(signal, name))
    for process in ("run", "upload"):
        for name in IGNORED:
            wait_for(lambda: any(e.get("event") == "signal received and ignored" and e.get("signal") == name
                                 and e.get("process") == process for e in events(sp.log_text())), 60,
                     what=f"the {process} process to log {name}")
    data = syslog_lines(10)
    (sp.spool / "after.log").write_bytes(data)
    wait_for(lambda: "after.log" in list_keys(s3, sp.bucket), 60, what="the object")
    assert get(s3, sp.bucket, "after.log") == data
    assert p.poll() is None and not pid_gone(upload_pid), "an ignored signal must not stop either process"
    assert event(sp, "upload process exited; restarting it") is None
    assert sp.stop(p) == 0
