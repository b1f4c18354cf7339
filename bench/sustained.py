"""Figure 6: sustained load. syslog-ng fed by loggen at its maximum rate writes
the spool for N seconds while `spoolup run` ships it to moto; against loggen's
own rate with no spoolup running (same syslog-ng, same duration, same run).
Goal: spoolup keeps up (backlog bounded) and costs loggen <= 5 % of its rate.
`compressions`: one shipping round per compression setting of spoolup ("none", "zstd", "zstd:3"
for compresslevel 3, ...),
each against the same loggen-alone round (issue 20: the figure with compression = "zstd")."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import MiB, Moto, children, client, free_port, kill_tree, new_bucket, spoolup_config, workdir

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "contrib" / "syslog-ng" / "spoolup.conf"


def syslog_ng(base: Path, spool: Path, port: int) -> subprocess.Popen:
    conf = base / "syslog-ng.conf"
    conf.write_text(
        f'@version: 3.38\n@include "{SHIPPED}"\n'
        "options { keep-hostname(yes); use-dns(no); dns-cache(no); stats-freq(0); };\n"
        f"source s_net {{ network(ip(127.0.0.1) port({port}) transport(tcp) log-iw-size(20000) max-connections(10)); }};\n"
        f'destination d_spool {{ spoolup_lines(spool-dir("{spool}") path("${{HOST}}/${{PROGRAM}}.log") '
        'template("${ISODATE} ${HOST} ${MSGHDR}${MESSAGE}\\n")); };\n'
        "log { source(s_net); destination(d_spool); flags(flow-control); };\n"
    )
    p = subprocess.Popen(["syslog-ng", "-F", "--no-caps", "-f", str(conf), "-R", str(base / "persist"),
                          "-p", str(base / "pid"), "-c", str(base / "ctl")],
                         stdout=open(base / "syslog-ng.log", "ab"), stderr=subprocess.STDOUT)
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return p
        except OSError:
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError((base / "syslog-ng.log").read_text())
            time.sleep(0.05)


def loggen(port: int, seconds: int) -> float:
    r = subprocess.run(["loggen", "--inet", "--stream", "--rate=10000000", "--size=200", f"--interval={seconds}",
                        "--active-connections=2", "127.0.0.1", str(port)], capture_output=True, text=True)
    m = re.search(r"average rate = ([\d.]+) msg/sec, count=(\d+)", r.stdout + r.stderr)
    if not m:
        raise RuntimeError(r.stdout + r.stderr)
    return float(m.group(1))


def backlog(spool: Path, journal: Path) -> int:
    """Bytes written by syslog-ng and not yet shipped: still in the spool, or in sealed
    chunks waiting for upload."""
    total = sum(p.stat().st_size for p in spool.rglob("*") if p.is_file())
    try:
        c = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
        consumed = c.execute("SELECT coalesce(sum(offset), 0) FROM sources WHERE state = 'active'").fetchone()[0]
        sealed = c.execute("SELECT coalesce(sum(part_size), 0) FROM chunks WHERE state = 'sealed'").fetchone()[0]
        c.close()
    except sqlite3.Error:
        consumed = sealed = 0
    return max(total - consumed, 0) + sealed


def cpu_seconds(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def compression_options(compression: str) -> dict:
    """"zstd" -> compression = "zstd" (its compresslevel the default, 9 as s3()'s); "zstd:3" ->
    the same at compresslevel 3."""
    name, _, level = compression.partition(":")
    return {"compression": name, **({"compresslevel": int(level)} if level else {})}


def one_round(base: Path, seconds: int, with_spoolup: bool, url: str | None, moto_pid: int | None = None,
              compression: str = "none") -> dict:
    spool = base / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    shutil.rmtree(base / "state", ignore_errors=True)
    spool.mkdir()
    port = free_port()
    sng = syslog_ng(base, spool, port)
    run = None
    samples: list[tuple[float, int]] = []
    try:
        if with_spoolup:
            bucket = new_bucket()
            client(url).create_bucket(Bucket=bucket)
            cfg = spoolup_config(base, url, bucket, **{"object-key": "{dir}/{name}",
                                                      "flush-grace-period": "10s", "spool-reap": "1h",
                                                      **compression_options(compression)})
            run = subprocess.Popen([sys.executable, "-m", "spoolup", "run", "--config", str(cfg)],
                                   stdout=subprocess.DEVNULL, stderr=open(base / "spoolup.log", "ab"))
            time.sleep(1.0)
        import threading

        stop = threading.Event()

        def sample():
            t0 = time.monotonic()
            while not stop.wait(1.0):
                samples.append((time.monotonic() - t0, backlog(spool, base / "state" / "journal.sqlite")))

        sampler = threading.Thread(target=sample, daemon=True)
        if with_spoolup:
            sampler.start()
        watched = {"syslog-ng": [sng.pid]}
        if run is not None:
            watched["spoolup"] = [run.pid, *children(run.pid)]
        if moto_pid:
            watched["moto"] = [moto_pid]
        cpu0 = {k: sum(cpu_seconds(p) for p in pids) for k, pids in watched.items()}
        rate = loggen(port, seconds)
        cpu = {k: round(sum(cpu_seconds(p) for p in pids) - cpu0[k], 1) for k, pids in watched.items()}
        stop.set()
        final = None
        if with_spoolup:
            sampler.join()
            final = backlog(spool, base / "state" / "journal.sqlite")
            run.send_signal(signal.SIGTERM)
            run.wait(120)
        return {"rate": rate, "samples": samples, "final": final, "cpu_seconds": cpu}
    finally:
        if run is not None and run.poll() is None:
            kill_tree(run)
        sng.send_signal(signal.SIGTERM)
        sng.wait(30)


def _shipped(shipped: dict, alone: dict) -> dict:
    backlogs = [b for _, b in shipped["samples"]]
    half = backlogs[len(backlogs) // 2:] or [0]
    bounded = max(half) <= max(backlogs[: max(len(backlogs) // 2, 1)] or [0]) * 1.5 + 64 * MiB
    return {
        "with_spoolup_rate": shipped["rate"],
        "ratio": shipped["rate"] / alone["rate"],
        "max_backlog_MiB": max(backlogs or [0]) / MiB,
        "final_backlog_MiB": (shipped["final"] or 0) / MiB,
        "backlog_samples_MiB": [round(b / MiB, 1) for b in backlogs],
        "backlog_bounded": bounded,
        "cpu_seconds_with_spoolup": shipped["cpu_seconds"],
    }


def run(seconds: int = 60, compressions: tuple[str, ...] = ("none",)) -> dict:
    """Backlog: bytes in the spool not yet ingested plus sealed chunks not yet uploaded (with
    compression the chunks count their compressed bytes).  Each shipping round has a moto of
    its own (moto's cost grows with the objects it holds); "ratio" is the last compression's."""
    shipped = {}
    with workdir() as base:
        alone = one_round(base, seconds, False, None)
        for c in compressions:
            with Moto(base) as moto:
                shipped[c] = one_round(base, seconds, True, moto.url, moto.proc.pid, c)
    first = _shipped(shipped[compressions[0]], alone)
    out = {
        "figure": "6 sustained syslog-ng + loggen" + ("" if compressions == ("none",)
                                                     else f", compression {' / '.join(compressions)}"),
        "seconds": seconds,
        "alone_rate": alone["rate"],
        **first,
        "cpu_seconds_alone": alone["cpu_seconds"],
        "goal": ">= 0.95, backlog bounded",
    }
    if len(compressions) > 1 or compressions != ("none",):
        out["by_compression"] = {c: _shipped(r, alone) for c, r in shipped.items()}
        out.update({k: v for k, v in out["by_compression"][compressions[-1]].items()})
    return out


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 60, tuple(sys.argv[2:]) or ("none",)), indent=2))
