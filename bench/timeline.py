"""A timeline of one `spoolup drain` through the delaying proxy (bench/s3proxy.py): when each
request ran, by operation, and how many were in flight over time against upload-threads --
where a drain's sequential round trips are (`python -m bench.timeline small|big [DELAY_MS]`)."""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from collections import defaultdict

from bench.common import MiB, Moto, client, new_bucket, spoolup, spoolup_config, syslog_spool, workdir
from bench.cost import counts, s3proxy, small_files


def fetch_log(url: str) -> list:
    with urllib.request.urlopen(f"{url}/__log__", timeout=30) as r:
        return json.loads(r.read())


def analyse(log: list, t0: float, t_end: float, threads: int, step: float = 0.005) -> dict:
    """In flight over time, the phases by operation, the idle gaps."""
    log = sorted(log)
    by_op: dict[str, list] = defaultdict(list)
    for a, b, op, _key, _port in log:
        by_op[op].append((a - t0, b - t0))
    phases = {op: {"n": len(v), "first": round(min(a for a, _ in v), 3), "last_end": round(max(b for _, b in v), 3)}
              for op, v in sorted(by_op.items(), key=lambda kv: min(a for a, _ in kv[1]))}
    first = min(a for a, *_ in log) - t0
    last = max(b for _, b, *_ in log) - t0
    hist: dict[int, float] = defaultdict(float)
    t = first
    while t < last:
        n = sum(1 for a, b, *_ in log if a - t0 <= t < b - t0)
        hist[n] += step
        t += step
    busy = sum(n * s for n, s in hist.items())
    return {
        "drain_s": round(t_end - t0, 3),
        "first_request_s": round(first, 3),
        "last_answer_s": round(last, 3),
        "after_last_answer_s": round(t_end - t0 - last, 3),
        "requests": len(log),
        "connections": len({p for *_, p in log}),
        "mean_in_flight": round(busy / max(last - first, 1e-9), 2),
        "time_at_in_flight": {n: round(s, 3) for n, s in sorted(hist.items())},
        "time_below_threads_s": round(sum(s for n, s in hist.items() if n < threads), 3),
        "phases": phases,
    }


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(what: str = "small", delay_ms: float = 30.0, threads: int = 8, small: int = 500,
        total: int = 64 * MiB, code_env: dict | None = None) -> dict:
    with workdir() as base, Moto(base) as moto, s3proxy(moto.url, delay_ms) as url:
        spool = base / "spool"
        if what == "small":
            small_files(spool, small)
        else:
            syslog_spool(spool, total, 4)
        bucket = new_bucket()
        client(moto.url).create_bucket(Bucket=bucket)
        shutil.rmtree(base / "state", ignore_errors=True)
        cfg = spoolup_config(base, url, bucket, **{"upload-threads": threads, "log-level": "info"})
        counts(url, reset=True)
        t0 = time.time()
        r = spoolup("drain", "--config", str(cfg), timeout=3600, env=code_env)
        t_end = time.time()
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        out = analyse(fetch_log(url), t0, t_end, threads)
        marks = {}
        for line in r.stderr.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            ev = rec.get("event", "")
            if ev in ("upload process started", "S3 capabilities detected", "upload process stopping") \
                    and ev not in marks and "timestamp" in rec:
                marks[ev] = rec["timestamp"]
        out["log_marks"] = {k: round(_epoch(v) - t0, 3) for k, v in marks.items()}
        if what == "small":  # boto3 under the same delay, same run
            from bench.cost import raw_puts

            rels = sorted(str(p.relative_to(spool)) for p in spool.rglob("*.log"))
            b2 = new_bucket()
            client(moto.url).create_bucket(Bucket=b2)
            counts(url, reset=True)
            t1 = time.time()
            took = raw_puts(url, b2, spool, rels, threads)
            out["boto3"] = {"s": round(took, 3), **{k: v for k, v in analyse(fetch_log(url), t1, time.time(), threads)
                                                     .items() if k in ("mean_in_flight", "first_request_s")}}
        return out


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "small"
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    print(json.dumps(run(what, delay), indent=1))
