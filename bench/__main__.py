"""`python -m bench [figure ...] [--quick]`: run the benchmarks, print a table,
and write bench/RESULTS.md (machine, date, versions, every figure).

Every figure is a ratio against a baseline measured in the same run on the
same machine; absolute numbers are shown, the ratio is the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import common

FIGURES = ("e2e", "ingest", "manykeys", "memory", "recover", "sustained", "history", "discovery",
           "bandwidth", "slowdown", "requests", "claim", "cpu", "delay", "verify",
           "scale", "history24h", "sustained-zstd")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RAW = Path(__file__).resolve().parent / "results.json"


def run_figure(name: str, quick: bool) -> dict:
    MiB = common.MiB
    if name == "e2e":
        from bench import e2e

        return e2e.run(total=(64 if quick else 256) * MiB)
    if name == "ingest":
        from bench import ingest

        return ingest.run(total=(256 if quick else 1024) * MiB)
    if name == "manykeys":
        from bench import manykeys

        return manykeys.run(total=(10 if quick else 100) * MiB, keys=1000 if quick else 10_000)
    if name == "memory":
        from bench import memory

        return memory.run(sizes=(128 * MiB, 512 * MiB) if quick else (1024 * MiB, 4096 * MiB))
    if name == "recover":
        from bench import recover_time

        return recover_time.run(objects=1000 if quick else 10_000)
    if name == "sustained":
        from bench import sustained

        return sustained.run(seconds=10 if quick else 60)
    if name == "history":
        from bench import start_history

        return start_history.run(history=20_000 if quick else 1_000_000)
    if name == "discovery":
        from bench import discovery

        return discovery.run(files=5_000 if quick else 100_000)
    if name == "bandwidth":
        from bench import flow

        return flow.bandwidth(total=(24 if quick else 96) * MiB, cap=(4 if quick else 8) * MiB)
    if name == "slowdown":
        from bench import flow

        return flow.slowdown(before=3.0, storm=4.0, after=4.0) if quick else flow.slowdown()
    if name in ("requests", "claim", "cpu", "delay"):  # issue 20 (bench/cost.py)
        from bench import cost

        if name == "requests":
            return cost.requests_per_object(keys=100 if quick else 500, one_key_objects=50 if quick else 200)
        if name == "claim":
            return cost.claim_after_history(history=300 if quick else 3000)
        if name == "cpu":
            return cost.cpu_per_byte(total=(32 if quick else 256) * MiB, rounds=1 if quick else 3)
        return cost.delayed(total=(16 if quick else 64) * MiB, small=100 if quick else 500, rounds=1 if quick else 2)
    if name == "scale":  # issue 20's scale figures (bench/scale.py)
        from bench import scale

        return scale.keys(small=1000 if quick else 10_000, large=10_000 if quick else 100_000)
    if name == "history24h":
        from bench import scale

        return scale.history(keys_n=100 if quick else 1000, hours=24)
    if name == "sustained-zstd":
        from bench import sustained

        return sustained.run(seconds=10 if quick else 60, compressions=("none", "zstd:3", "zstd"))
    if name == "verify":
        from bench import verify

        n = 10_000 if quick else 100_000
        return verify.run(objects=n, files=n // 100, rounds=1)
    raise SystemExit(f"unknown figure {name}; known: {', '.join(FIGURES)}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("figures", nargs="*", default=list(FIGURES), help=f"any of {', '.join(FIGURES)}")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to record")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch bench/RESULTS.md")
    args = ap.parse_args(argv)
    previous = json.loads(RAW.read_text()) if RAW.exists() else {}
    results = dict(previous.get("figures", {}))
    for name in args.figures:
        print(f"== {name} ...", flush=True)
        started = time.perf_counter()
        results[name] = run_figure(name, args.quick)
        results[name]["bench_wall_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps(results[name], indent=2), flush=True)
    if args.no_write or args.quick:
        return 0
    info = common.machine()
    RAW.write_text(json.dumps({"machine": info, "figures": results}, indent=2) + "\n")
    from bench import report

    report.write(RESULTS, info, results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
