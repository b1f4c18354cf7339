"""Figure 8: a spool of many files picked up at start (issue 10 item 8).

`spoolup run` starts on a spool holding `files` small files (100 per directory);
the figure is the time from its start until every file is journaled as a source
(polled read-only in the journal).  Baseline, same tree, same run: `find -type f`
(a process that walks and stats every entry) -- spoolup walks the same tree once,
stats each file, reads its birth time and journals all of them in one transaction.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.common import Moto, client, kill_tree, new_bucket, spoolup_config, wait_for_count, workdir


def run(files: int = 100_000) -> dict:
    with workdir() as base, Moto(base) as moto:
        spool = base / "spool"
        for i in range(files):
            d = spool / f"h{i // 100:04d}"
            if i % 100 == 0:
                d.mkdir(parents=True, exist_ok=True)
            (d / f"app{i:06d}.log").write_bytes(b"Nov 25 12:00:00 host app: hello\n")
        started = time.perf_counter()
        out = subprocess.run(["find", str(spool), "-type", "f"], capture_output=True, check=True).stdout
        find_s = time.perf_counter() - started
        assert out.count(b"\n") == files
        bucket = new_bucket()
        client(moto.url).create_bucket(Bucket=bucket)
        cfg = spoolup_config(base, moto.url, bucket, **{"object-key": "all", "flush-grace-period": 600,
                                                         "log-level": "warning"})
        journal = base / "state" / "journal.sqlite"
        started = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "spoolup", "run", "--config", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_count(journal, "SELECT count(*) FROM sources", files, timeout=900, interval=0.02,
                           what="files journaled")
            spoolup_s = time.perf_counter() - started
        finally:
            kill_tree(p)
    return {"figure": "8 discovery of many spool files", "files": files, "spoolup_s": spoolup_s, "find_s": find_s,
            "ratio": spoolup_s / find_s, "goal": "100k files in <= 10 s"}


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=2))
