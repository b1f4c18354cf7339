"""Issue 20's scale figures: many keys (objects/s, peak RSS, journal size per object at N keys
against the same at N/10 keys, same run) and a day's history of many keys (one more object per
key: S3 requests and claim time against the same drain with no history, same run).

Both drain envelope spools (one small record per object, `object-key = "{key}"`) against moto
on loopback; the requests are counted by bench/s3proxy.py in front of it.  spoolup's CPU is
getrusage of the waited-for drain (both its processes), moto's its /proc stat: where objects/s
falls with scale, the CPU per object of each says whose work grew."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Moto, RssSampler, client, new_bucket, spoolup_config, workdir
from bench.cost import children_cpu, counts, s3proxy
from bench.sustained import cpu_seconds

MSG = "Nov 25 12:00:00 host app[42]: " + "x" * 120


def envelope_lines(path: Path, rows, files: int = 1) -> int:
    """Envelope records, one a (key, ts) of `rows`, into `files` spool files (round robin, so
    every key's records stay in one file, in order).  Returns the bytes written."""
    path.mkdir(parents=True, exist_ok=True)
    outs = [[] for _ in range(files)]
    for i, (key, ts) in enumerate(rows):
        outs[i % files].append(json.dumps({"key": key, "ts": ts, "msg": MSG}) + "\n")
    written = 0
    stamp = time.time_ns()
    for f, lines in enumerate(outs):
        if lines:
            data = "".join(lines).encode()
            (path / f"env-{stamp}-{f}.log").write_bytes(data)
            written += len(data)
    return written


def key_name(k: int) -> str:
    return f"h{k // 1000:03d}/app-{k % 1000:03d}"


def measured_drain(cfg: Path, moto_pid: int | None = None) -> dict:
    """`spoolup drain` as a subprocess: wall time, peak RSS of its process tree, CPU of both its
    processes (getrusage of the waited-for children) and of moto over the same time."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # (see bench.common.spoolup)
    c0, m0 = children_cpu(), cpu_seconds(moto_pid) if moto_pid else 0.0
    started = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "spoolup", "drain", "--config", str(cfg)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RssSampler(p.pid, interval=0.1) as rss:
        out, err = p.communicate(timeout=3600)
    wall = time.perf_counter() - started
    if p.returncode != 0:
        raise RuntimeError(f"drain failed ({p.returncode}): {err[-2000:]}")
    return {"seconds": wall, "peak_rss": rss.peak, "cpu_s": children_cpu() - c0,
            "moto_cpu_s": (cpu_seconds(moto_pid) - m0) if moto_pid else None}


def journal_stats(state: Path) -> dict:
    files = {p.name: p.stat().st_size for p in state.glob("journal.sqlite*")}
    c = sqlite3.connect(f"file:{state / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        done = c.execute("SELECT count(*) FROM objects WHERE state = 'done'").fetchone()[0]
        rows = c.execute("SELECT count(*) FROM objects").fetchone()[0]
    finally:
        c.close()
    return {"bytes": sum(files.values()), "files": files, "done_objects": done, "object_rows": rows}


# ---------------------------------------------------------------------------
# many keys: N keys against N/10 keys


def _keys_round(n: int) -> dict:
    with workdir() as base, Moto(base) as moto:
        bucket = new_bucket()
        client(moto.url).create_bucket(Bucket=bucket)
        size = envelope_lines(base / "spool", ((key_name(k), "") for k in range(n)), files=4)
        cfg = spoolup_config(base, moto.url, bucket, format="envelope", **{"object-key": "{key}"})
        got = measured_drain(cfg, moto.proc.pid)
        j = journal_stats(base / "state")
    if j["done_objects"] != n:
        raise RuntimeError(f"{j['done_objects']} objects done of {n}")
    return {"keys": n, "bytes": size, "seconds": round(got["seconds"], 2), "objects_per_s": n / got["seconds"],
            "peak_rss_MiB": got["peak_rss"] / 2**20, "rss_KiB_per_object": got["peak_rss"] / 1024 / n,
            "spoolup_cpu_s": round(got["cpu_s"], 2), "spoolup_cpu_ms_per_object": got["cpu_s"] * 1000 / n,
            "moto_cpu_s": round(got["moto_cpu_s"], 2), "moto_cpu_ms_per_object": got["moto_cpu_s"] * 1000 / n,
            "journal_bytes": j["bytes"], "journal_bytes_per_object": j["bytes"] / n, "journal_files": j["files"]}


def keys(small: int = 10_000, large: int = 100_000) -> dict:
    """One record (~190 B) per key, all keys in one drain from a fresh state dir and bucket; the
    small count first (its own moto), then the large one.  Flat: objects/s the same, RSS and
    journal bytes per object the same or falling (the fixed costs spread)."""
    lo, hi = _keys_round(small), _keys_round(large)
    return {"figure": f"{large:,} keys against {small:,} (one small object each)", "small": lo, "large": hi,
            "objects_per_s_ratio": hi["objects_per_s"] / lo["objects_per_s"],
            "peak_rss_ratio": hi["peak_rss_MiB"] / lo["peak_rss_MiB"],
            "journal_bytes_per_object_ratio": hi["journal_bytes_per_object"] / lo["journal_bytes_per_object"],
            "spoolup_cpu_per_object_ratio": hi["spoolup_cpu_ms_per_object"] / lo["spoolup_cpu_ms_per_object"],
            "moto_cpu_per_object_ratio": hi["moto_cpu_ms_per_object"] / lo["moto_cpu_ms_per_object"],
            "ratio": hi["objects_per_s"] / lo["objects_per_s"],
            "goal": "flat: objects/s ratio ~1 (>= 0.9), RSS and journal bytes per object not growing"}


# ---------------------------------------------------------------------------
# a day's history of many keys


def _rows(variant: str, keys_n: int, hours: int):
    """The history: `hours` objects of each key, hour by hour (every key's hour h before any
    key's hour h+1, as a day of logs arrives)."""
    for h in range(hours):
        for k in range(keys_n):
            yield key_name(k), (f"20261201{h:02d}" if variant == "hourly" else "")


def _claims_in_process(cfg_path: Path, url: str, variant: str, keys_n: int, hours: int) -> dict:
    """The S3 side of the next claim of every key, in a fresh process's Protocol (cold caches,
    as a drain's upload process has): requests and seconds for all `keys_n` claims, one after
    the other (a drain spreads the ones needing a listing over its workers)."""
    from spoolup import config as config_mod
    from spoolup.journal import Journal, ObjectRow
    from spoolup.protocol import Protocol
    from spoolup.s3 import S3

    cfg = config_mod.load(cfg_path)
    journal = Journal.open(cfg.journal_path)
    journal_id = journal.journal_id
    journal.close()
    s3 = S3(cfg)
    work = Protocol(cfg, s3, cfg.chunk_dir, journal_id)
    now = time.time()
    ts = "2026120200" if variant == "hourly" else ""
    prev = None if variant == "hourly" or hours == 0 else hours - 1
    counts(url, reset=True)
    started = time.perf_counter()
    idxs = set()
    for k in range(keys_n):
        obj = ObjectRow(10**9 + k, key_name(k), ts, "open", None, None, None, None, 200, 1, now, now)
        idxs.add(work.claim(obj, prev, set(), "single").idx)
    seconds = time.perf_counter() - started
    got = counts(url)
    s3.close()
    return {"seconds": round(seconds, 3), "ms_per_claim": seconds * 1000 / keys_n, "requests": sum(got.values()),
            "by_op": got, "indexes": sorted(idxs)}


def _history_round(variant: str, keys_n: int, hours: int) -> dict:
    extra = {"format": "envelope", "object-key": "{key}"}
    if variant == "indexes":
        extra["max-object-size"] = 1  # each record an object of its own: indexes 0, 1, ... of one key
    with workdir() as base, Moto(base) as moto, s3proxy(moto.url) as url:
        bucket = new_bucket()
        client(moto.url).create_bucket(Bucket=bucket)
        cfg = spoolup_config(base, url, bucket, **extra)
        out: dict = {"hours": hours}
        if hours:
            envelope_lines(base / "spool", _rows(variant, keys_n, hours))
            got = measured_drain(cfg)
            out["build_s"] = round(got["seconds"], 1)
        else:  # the probe journaled, as after any drain (the history's drains journal it too)
            envelope_lines(base / "spool", [("warm/x", "")])
            measured_drain(cfg)
        j = journal_stats(base / "state")
        out["history_objects"] = j["done_objects"]
        out["journal_bytes_before"] = j["bytes"]
        out["claims"] = _claims_in_process(cfg, url, variant, keys_n, hours)
        envelope_lines(base / "spool", ((key_name(k), "2026120200" if variant == "hourly" else "")
                                        for k in range(keys_n)))
        counts(url, reset=True)
        got = measured_drain(cfg, moto.proc.pid)
        req = counts(url)
        j2 = journal_stats(base / "state")
    if j2["done_objects"] - j["done_objects"] != keys_n:
        raise RuntimeError(f"{j2['done_objects'] - j['done_objects']} new objects done of {keys_n}")
    n = sum(v for k, v in req.items() if k != "probe")
    out.update({"drain_s": round(got["seconds"], 2), "objects_per_s": keys_n / got["seconds"],
                "spoolup_cpu_s": round(got["cpu_s"], 2), "moto_cpu_s": round(got["moto_cpu_s"], 2),
                "peak_rss_MiB": got["peak_rss"] / 2**20, "requests": n, "by_op": req,
                "requests_per_object": n / keys_n, "journal_bytes": j2["bytes"]})
    return out


def history(keys_n: int = 1000, hours: int = 24, variants: tuple[str, ...] = ("hourly", "indexes")) -> dict:
    """For each variant, the next drain of one new object per key after no history, one hour's
    and `hours` hours' worth of objects of every key (each in its own bucket and state dir).
    hourly: object-key-timestamp rotating hourly (each hour's object is index 0 of its (key,
    ts)), the new object is the next hour's; indexes: `hours` objects of one (key, ts),
    indexes 0..hours-1, the new object the next index."""
    out: dict = {"figure": f"one more object for each of {keys_n:,} keys after {hours} h of history "
                           f"({keys_n * hours:,} objects), against no history", "keys": keys_n, "hours": hours}
    worst = 0.0
    for variant in variants:
        rounds = {str(h): _history_round(variant, keys_n, h) for h in sorted({0, 1, hours})}
        none, day = rounds["0"], rounds[str(hours)]
        v = {"rounds": rounds,
             "requests_per_object": {h: r["requests_per_object"] for h, r in rounds.items()},
             "requests_ratio": day["requests_per_object"] / none["requests_per_object"],
             "requests_ratio_vs_1h": day["requests_per_object"] / rounds["1"]["requests_per_object"],
             "objects_per_s_ratio": day["objects_per_s"] / none["objects_per_s"],
             "claim_ms": {h: round(r["claims"]["ms_per_claim"], 3) for h, r in rounds.items()}}
        out[variant] = v
        worst = max(worst, v["requests_ratio"])
    out["ratio"] = worst
    out["goal"] = "requests per object ~1, flat in history (ratio to no history ~1)"
    return out


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "keys"
    args = [int(a) for a in sys.argv[2:] if a.isdigit()]
    names = tuple(a for a in sys.argv[2:] if not a.isdigit())  # history: the variants to run
    print(json.dumps(keys(*args) if what == "keys" else history(*args, **({"variants": names} if names else {})),
                     indent=2))
