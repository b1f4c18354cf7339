"""Progress an operator can see (issue 14, item 5): one info line per completed object,
and `drain`'s progress -- a line rewritten in place on a terminal (a real pty here),
JSON events otherwise."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

from helpers import get, log_events, syslog_lines
from spoolup.status import human_bytes  # the same units as the progress line

MiB = 1024 * 1024


def spool_two_files(sp) -> dict[str, bytes]:
    files = {"big.log": syslog_lines(60_000, width=200), "small.log": syslog_lines(100, host="s")}  # 12 MiB: 3 parts
    for name, data in files.items():
        (sp.spool / name).write_bytes(data)
    return files


def test_each_completed_object_is_logged_with_key_bytes_parts_seconds(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}"})
    files = spool_two_files(sp)
    r = sp.drain()
    assert r.returncode == 0, r.stderr[-3000:]
    done = {e["key"]: e for e in log_events(r.stderr, "object completed")}
    assert set(done) == set(files)
    assert done["big.log"]["level"] == "info"
    assert (done["big.log"]["bytes"], done["big.log"]["parts"]) == (len(files["big.log"]), 3)
    assert (done["small.log"]["bytes"], done["small.log"]["parts"]) == (len(files["small.log"]), 1)
    assert all(isinstance(e["seconds"], float) and e["seconds"] >= 0 for e in done.values())
    assert all(get(s3, sp.bucket, k) == v for k, v in files.items())


def test_drain_without_a_terminal_reports_progress_as_json_events(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}"})
    files = spool_two_files(sp)
    total = sum(len(d) for d in files.values())
    r = sp.drain()
    assert r.returncode == 0, r.stderr[-3000:]
    progress = log_events(r.stderr, "drain progress")
    assert progress and progress[-1]["done"] is True
    last = progress[-1]
    assert last["shipped_bytes"] == last["total_bytes"] == total
    assert last["eta_seconds"] == 0 and last["bytes_per_second"] > 0
    assert all(e["total_bytes"] == total and 0 <= e["shipped_bytes"] <= total for e in progress)
    assert "\r" not in r.stderr
    assert all(get(s3, sp.bucket, k) == v for k, v in files.items())


def test_drain_on_a_terminal_shows_a_progress_line(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}"})
    sp.write_config(**{"log-format": "auto"})  # console on a terminal, as a user gets it
    files = spool_two_files(sp)
    total = sum(len(d) for d in files.values())
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "spoolup", "drain", "--config", str(sp.config)],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=sp.env())
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(120) == 0, seen.decode(errors="replace")[-3000:]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = seen.decode(errors="replace")
    lines = [seg for seg in text.split("\r\x1b[K")[1:]]
    assert lines, text[-3000:]
    assert all(seg.startswith("drain: ") for seg in lines)
    final = lines[-1].splitlines()[0]
    assert final.startswith(f"drain: {human_bytes(total)} of {human_bytes(total)} shipped (100%), ")
    assert final.endswith("ETA 0s")
    assert "drain progress" not in text  # the line, not JSON events
    assert "drained: nothing pending" in text
    assert all(get(s3, sp.bucket, k) == v for k, v in files.items())


def test_drain_through_a_running_service_reports_progress_too(make_spoolup, s3):
    from helpers import wait_for

    sp = make_spoolup(**{"object-key": "{name}"})  # flush-grace-period 60 min: the objects stay open
    files = spool_two_files(sp)
    p = sp.start()
    try:
        wait_for(lambda: sum(o["bytes"] for o in sp.status()["open_objects"]) == sum(map(len, files.values())),
                 60, what="the spool ingested by the service")
        r = sp.drain()
        assert r.returncode == 0, r.stderr[-3000:]
        assert "drained by the running service" in r.stdout
        progress = log_events(r.stderr, "drain progress")
        assert progress and progress[-1]["done"] is True
        assert progress[-1]["shipped_bytes"] == progress[-1]["total_bytes"] > 0
        assert all(get(s3, sp.bucket, k) == v for k, v in files.items())
    finally:
        assert sp.stop(p) == 0


def test_the_drain_loop_asks_for_the_bytes_left_only_when_a_line_is_due():
    """The bytes left are a journal query over every chunk not uploaded; the drain's loop turns
    20 times a second and shows a line every half second (terminal) or 5 s (log): it asks
    due() first and computes them only then (and for the final line)."""
    import io

    from spoolup import logs
    from spoolup.progress import DrainProgress

    out = io.StringIO()
    p = DrainProgress(logs.get("test"), stream=out, tty=True)
    assert p.due()  # the first line at once
    p.update(100)
    assert out.getvalue().startswith("\r\x1b[Kdrain: ")
    assert not p.due()  # right after a line: the next one is not due
    p.update(0, final=True)  # the final line whatever the time
    assert out.getvalue().endswith("ETA 0s\n")
