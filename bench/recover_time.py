"""Figure 5: `spoolup recover` after kill -9 with 10,000 open objects."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from bench.common import Moto, client, kill_tree, new_bucket, spoolup, spoolup_config, wait_for_count, workdir


def run(objects: int = 10_000) -> dict:
    with workdir() as base, Moto(base) as moto:
        spool = base / "spool"
        for i in range(objects):
            d = spool / f"h{i // 1000:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"host{i:05d}.log").write_bytes(f"Nov 25 12:00:00 host{i:05d} app: hello {i}\n".encode() * 20)
        bucket = new_bucket()
        client(moto.url).create_bucket(Bucket=bucket)
        cfg = spoolup_config(base, moto.url, bucket, **{"flush-grace-period": 600})
        p = subprocess.Popen([sys.executable, "-m", "spoolup", "run", "--config", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        journal = base / "state" / "journal.sqlite"
        wait_for_count(journal, "SELECT count(*) FROM objects WHERE state = 'open'", objects, timeout=600,
                       interval=0.2, what="objects opened")
        for pid in [p.pid]:
            p.send_signal(signal.SIGKILL)
        kill_tree(p)
        time.sleep(0.5)
        start = time.perf_counter()
        r = spoolup("recover", "--config", str(cfg), timeout=600)
        elapsed = time.perf_counter() - start
        if r.returncode != 0:
            raise RuntimeError(r.stdout[-2000:] + r.stderr[-2000:])
    return {"figure": "5 recover after kill -9", "open_objects": objects, "recover_s": elapsed, "goal": "<= 2 s"}


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000), indent=2))
