"""Figure 4: peak RSS of all spoolup processes while draining a 1 GiB and a
4 GiB backlog.  Goal: <= 150 MiB and flat in the backlog size.  A janitor
deletes completed objects from moto as they appear, so that moto's own RAM
(it keeps objects in memory) does not limit the test."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from bench.common import MiB, Moto, RssSampler, client, new_bucket, spoolup_config, syslog_spool, workdir


def janitor(url: str, bucket: str, stop: threading.Event) -> None:
    s3 = client(url)
    while not stop.wait(0.5):
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for o in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=o["Key"])
        except Exception:  # noqa: BLE001 - best effort
            pass


def peak_rss(total: int) -> tuple[int, float]:
    with workdir() as base, Moto(base) as moto:
        syslog_spool(base / "spool", total, 4)
        bucket = new_bucket()
        client(moto.url).create_bucket(Bucket=bucket)
        cfg = spoolup_config(base, moto.url, bucket, **{"max-object-size": "256MiB"})
        stop = threading.Event()
        jt = threading.Thread(target=janitor, args=(moto.url, bucket, stop), daemon=True)
        jt.start()
        start = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "spoolup", "drain", "--config", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with RssSampler(p.pid) as sampler:
            _, err = p.communicate(timeout=3600)
        elapsed = time.perf_counter() - start
        stop.set()
        jt.join()
        if p.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
        return sampler.peak, elapsed


def run(sizes=(1024 * MiB, 4096 * MiB)) -> dict:
    results = {}
    for size in sizes:
        peak, elapsed = peak_rss(size)
        results[f"{size // MiB}MiB"] = {"peak_rss_MiB": peak / MiB, "drain_s": elapsed}
    peaks = [r["peak_rss_MiB"] for r in results.values()]
    return {"figure": "4 peak RSS", "backlogs": results, "max_peak_MiB": max(peaks),
            "growth_ratio": max(peaks) / min(peaks), "goal": "<= 150 MiB, flat"}


if __name__ == "__main__":
    sizes = tuple(int(a) * MiB for a in sys.argv[1:]) or (1024 * MiB, 4096 * MiB)
    print(json.dumps(run(sizes), indent=2))
