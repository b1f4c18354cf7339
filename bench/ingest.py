"""Figure 2: ingest only. `spoolup run` with uploads impossible (the endpoint
refuses connections) and max-pending-uploads out of reach, so only the spool ->
chunk files -> journal path runs; timed until every byte is journaled.
Baseline: `cat` of the same spool to /dev/null."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from spoolup.journal import peek

from bench.common import MiB, free_port, kill_tree, spoolup_config, syslog_spool, workdir

LINE = 256


def journaled(journal) -> int:
    return peek(journal, "SELECT coalesce(sum(offset), 0) FROM sources", 0)


def spoolup_ingest(base, total: int, fsync: bool) -> float:
    shutil.rmtree(base / "state", ignore_errors=True)
    cfg = spoolup_config(base, f"http://127.0.0.1:{free_port()}", "bench-ingest",
                         **{"max-pending-uploads": 100000, "fsync": fsync})
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "spoolup", "run", "--config", str(cfg)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while journaled(base / "state" / "journal.sqlite") < total:
            if p.poll() is not None:
                raise RuntimeError("spoolup run exited")
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        kill_tree(p)


def _mkdir(path):
    path.mkdir(exist_ok=True)
    return path


def cat(paths) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def dd_direct(paths, scratch) -> float:
    """The floor for any design that makes a durable copy of the spool: dd straight to
    disk (O_DIRECT) and fdatasync, which is what spoolup's chunk files are."""
    start = time.perf_counter()
    for i, p in enumerate(paths):
        subprocess.run(["dd", f"if={p}", f"of={scratch}/{i}", "bs=4M", "oflag=direct", "conv=fdatasync"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(scratch, ignore_errors=True)
    return elapsed


def run(total: int = 1024 * MiB, repeats: int = 3) -> dict:
    with workdir() as base:
        files = syslog_spool(base / "spool", total, 4, line_len=LINE)
        size = sum(files.values())
        os.sync()  # steady state: the writer's pages are on disk already, as after writeback
        paths = [base / "spool" / rel for rel in files]
        cat_t = min(cat(paths) for _ in range(repeats))
        dd_t = min(dd_direct(paths, _mkdir(base / "dd")) for _ in range(repeats))
        fs_t = min(spoolup_ingest(base, size, True) for _ in range(repeats))
        nofs_t = min(spoolup_ingest(base, size, False) for _ in range(repeats))
    records = size // LINE
    return {
        "figure": "2 ingest only",
        "bytes": size,
        "cat_s": cat_t,
        "cat_MBps": size / cat_t / 1e6,
        "spoolup_s": fs_t,
        "spoolup_MBps": size / fs_t / 1e6,
        "spoolup_records_per_s": records / fs_t,
        "spoolup_nofsync_s": nofs_t,
        "spoolup_nofsync_MBps": size / nofs_t / 1e6,
        "dd_direct_s": dd_t,
        "dd_direct_MBps": size / dd_t / 1e6,
        "ratio": cat_t / fs_t,
        "ratio_vs_dd": dd_t / fs_t,
        "goal": ">= 0.5 x cat and >= 300 MB/s",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 1024 * MiB), indent=2))
