"""Issue 20's figures: S3 requests per small object, one claim after a long history of a key,
CPU-seconds per byte (spoolup, both processes, against a bare boto3 uploader process), and
the delay-proxy figures (+30 ms per request on loopback: a remote region) against boto3
under the same delay.  Requests are counted by a proxy process in front of moto
(bench/s3proxy.py); CPU by getrusage of the waited-for child processes."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from bench.common import MiB, Moto, client, new_bucket, spoolup, spoolup_config, syslog_spool, workdir
from bench.e2e import baseline as boto3_upload


@contextmanager
def s3proxy(upstream: str, delay_ms: float = 0.0):
    """The counting (and delaying) proxy as a process of its own: yields its URL."""
    p = subprocess.Popen([sys.executable, "-m", "bench.s3proxy", upstream, str(delay_ms)], stdout=subprocess.PIPE,
                         text=True)
    try:
        port = int(p.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        p.kill()
        p.wait()


def counts(url: str, reset: bool = False) -> dict[str, int]:
    req = urllib.request.Request(f"{url}/__reset__" if reset else f"{url}/__counts__", method="POST" if reset else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def small_files(spool: Path, n: int, size: int = 2000, subdir: str = "k") -> int:
    """`n` spool files (n keys) of about `size` bytes of lines each."""
    total = 0
    for i in range(n):
        path = spool / subdir / f"f{i:05d}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = f"Nov 25 12:00:00 host app[42]: file {i:05d} ".ljust(99, "x") + "\n"
        data = (line * (size // len(line))).encode()
        path.write_bytes(data)
        total += len(data)
    return total


def drain(base: Path, url: str, bucket: str, **extra) -> float:
    cfg = spoolup_config(base, url, bucket, **extra)
    started = time.perf_counter()
    r = spoolup("drain", "--config", str(cfg), timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"drain failed: {r.stderr[-2000:]}")
    return time.perf_counter() - started


# ---------------------------------------------------------------------------
# requests per small object


def requests_per_object(keys: int = 500, one_key_objects: int = 200) -> dict:
    """Steady state (conditional writes known: a first drain journals the probe, as a running
    upload process has after its first seconds): `keys` keys of one small object each, then
    `one_key_objects` small objects of one key."""
    out = {}
    with workdir() as base, Moto(base) as moto, s3proxy(moto.url) as url:
        bucket = new_bucket()
        client(moto.url).create_bucket(Bucket=bucket)
        spool = base / "spool"
        small_files(spool, 1, subdir="warm")
        drain(base, url, bucket)  # the probe, journaled (reused for an hour)
        counts(url, reset=True)
        small_files(spool, keys)
        drain(base, url, bucket)
        got = counts(url)
        n = keys
        out["many_keys"] = {"objects": n, "requests": sum(v for k, v in got.items() if k != "probe"),
                            "by_op": got}
        counts(url, reset=True)
        line = "Nov 25 12:00:00 host app[42]: one key ".ljust(99, "x") + "\n"
        (spool / "one.log").write_bytes((line * 20 * one_key_objects).encode())  # 2000 B a object
        drain(base, url, bucket, **{"max-object-size": 2000})
        got = counts(url)
        listed = client(moto.url).list_objects_v2(Bucket=bucket, Prefix="one.log")
        n = listed.get("KeyCount", 0)
        out["one_key"] = {"objects": n, "requests": sum(v for k, v in got.items() if k != "probe"), "by_op": got}
    for v in out.values():
        v["per_object"] = round(v["requests"] / v["objects"], 3)
    return {"figure": "S3 requests per small object (steady state)", **out,
            "ratio": max(v["per_object"] for v in out.values()), "goal": "<= 1.1"}


# ---------------------------------------------------------------------------
# one claim after a long history of a key


def claim_after_history(history: int = 3000) -> dict:
    """In-process: the bucket holds `history` objects of a key and the journal its last one;
    one claim of the next object, then one more (the window listed by the first)."""
    from spoolup import config as config_mod
    from spoolup.journal import Batch, Journal, ObjectRow
    from spoolup.protocol import Protocol
    from spoolup.s3 import S3

    key = "app/x.log"
    with workdir() as base, Moto(base) as moto, s3proxy(moto.url) as url:
        bucket = new_bucket()
        raw = client(moto.url, 16)
        raw.create_bucket(Bucket=bucket)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: raw.put_object(Bucket=bucket, Key=key + (f"-{i}" if i else ""), Body=b"x\n"),
                          range(history)))
        cfg = config_mod.load(spoolup_config(base, url, bucket))
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal.open(cfg.journal_path)
        batch = Batch()
        now = time.time()
        for oid in (1, 2, 3):
            batch.new_objects.append(ObjectRow(oid, key, "", "open", None, None, None, None, 2, 1, now, now))
        journal.commit_batch(batch)
        journal.claim(1, history - 1, f"{key}-{history - 1}", "single")
        s3 = S3(cfg)
        work = Protocol(cfg, s3, cfg.chunk_dir, journal.journal_id)
        work.pending_upload_keys()  # (its own cache: listed every 2 s for all claims; not this figure)
        results = []
        for oid, prev in ((2, history - 1), (3, history)):
            counts(url, reset=True)
            started = time.perf_counter()
            c = work.claim(journal.object(oid), prev, set(), "single")
            seconds = time.perf_counter() - started
            got = counts(url)
            results.append({"idx": c.idx, "requests": sum(got.values()), "by_op": got, "seconds": round(seconds, 4)})
        s3.close()
        journal.close()
    first, second = results
    return {"figure": f"one claim after {history} objects of a key", "history": history, "first_claim": first,
            "next_claim": second, "ratio": first["requests"], "goal": "<= 1 request, flat in history"}


# ---------------------------------------------------------------------------
# CPU-seconds per byte, spoolup (both processes) against a bare boto3 uploader process


def cpu_per_byte(total: int = 64 * MiB, rounds: int = 3, threads: int = 8) -> dict:
    sp_cpu, b_cpu, sp_wall, b_wall = [], [], [], []
    with workdir() as base:
        files = syslog_spool(base / "spool", total, 4)
        size = sum(files.values())
        os.sync()
        for _ in range(rounds):
            with Moto(base) as moto:
                c0 = children_cpu()
                b_wall.append(boto3_upload(moto.url, base / "spool", files, threads))
                c1 = children_cpu()
                shutil.rmtree(base / "state", ignore_errors=True)
                bucket = new_bucket()
                client(moto.url).create_bucket(Bucket=bucket)
                sp_wall.append(drain(base, moto.url, bucket, **{"upload-threads": threads, "fsync": True}))
                c2 = children_cpu()
                b_cpu.append(c1 - c0)
                sp_cpu.append(c2 - c1)
    s, b = sum(sp_cpu) / rounds, sum(b_cpu) / rounds
    return {"figure": "CPU-seconds per byte, spoolup (both processes) / boto3 process", "bytes": size,
            "spoolup_cpu_s": [round(x, 3) for x in sp_cpu], "boto3_cpu_s": [round(x, 3) for x in b_cpu],
            "spoolup_wall_s": [round(x, 3) for x in sp_wall], "boto3_wall_s": [round(x, 3) for x in b_wall],
            "spoolup_cpu_ns_per_byte": s / size * 1e9, "boto3_cpu_ns_per_byte": b / size * 1e9,
            "ratio": s / b, "goal": "<= 1.2"}


# ---------------------------------------------------------------------------
# +30 ms per request


def raw_puts(url: str, bucket: str, spool: Path, rels: list[str], threads: int = 8) -> float:
    s3 = client(url, threads)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda rel: s3.put_object(Bucket=bucket, Key=rel, Body=(spool / rel).read_bytes()), rels))
    return time.perf_counter() - started


def raw_puts_process(url: str, bucket: str, spool: Path, rels: list[str], threads: int = 8) -> float:
    """The same PutObjects by a boto3 process of its own (bench/boto3_upload.py --put), timed
    from its start to its exit: interpreter start-up, imports and client included, as
    `spoolup drain` is timed (and as figure 1's and the 64 MiB figure's baselines are)."""
    args = [f"{spool / rel}={rel}" for rel in rels]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.boto3_upload", "--put", url, bucket, str(threads), *args], check=True)
    return time.perf_counter() - started


def delayed(delay_ms: float = 30.0, total: int = 64 * MiB, small: int = 500, threads: int = 8, rounds: int = 2) -> dict:
    # small: boto3_s is the boto3 process (the ratio's baseline); boto3_in_process_s the same
    # PutObjects from the bench's own process (imports done, client made: no start-up), the
    # baseline of rounds 1 and 2, kept for comparison
    out: dict = {"big": {"boto3_s": [], "spoolup_s": []},
                 "small": {"boto3_s": [], "boto3_in_process_s": [], "spoolup_s": [], "requests": []}}
    with workdir() as base:
        big = syslog_spool(base / "bigspool", total, 4)
        small_files(base / "smallspool", small)
        rels = sorted(str(p.relative_to(base / "smallspool")) for p in (base / "smallspool").rglob("*.log"))
        for _ in range(rounds):
            with Moto(base) as moto, s3proxy(moto.url, delay_ms) as url:
                out["big"]["boto3_s"].append(boto3_upload(url, base / "bigspool", big, threads))
                for label, spool in (("big", "bigspool"), ("small", "smallspool")):
                    shutil.rmtree(base / "state", ignore_errors=True)
                    bucket = new_bucket()
                    client(moto.url).create_bucket(Bucket=bucket)
                    counts(url, reset=True)
                    out[label]["spoolup_s"].append(drain(base, url, bucket, **{
                        "upload-threads": threads, "spool-dir": str(base / spool)}))
                    if label == "small":
                        out["small"]["requests"].append(counts(url))
                bucket = new_bucket()
                client(moto.url).create_bucket(Bucket=bucket)
                out["small"]["boto3_s"].append(raw_puts_process(url, bucket, base / "smallspool", rels, threads))
                bucket = new_bucket()
                client(moto.url).create_bucket(Bucket=bucket)
                out["small"]["boto3_in_process_s"].append(raw_puts(url, bucket, base / "smallspool", rels, threads))
    for v in out.values():
        v["ratio"] = min(v["boto3_s"]) / min(v["spoolup_s"])
    out["small"]["ratio_in_process"] = min(out["small"]["boto3_in_process_s"]) / min(out["small"]["spoolup_s"])
    return {"figure": f"+{delay_ms:g} ms per request: {total // MiB} MiB in 4 keys; {small} small keys, vs boto3",
            **out, "ratio": min(out["big"]["ratio"], out["small"]["ratio"]), "goal": ">= 0.9 both"}


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "requests"
    fn = {"requests": requests_per_object, "claim": claim_after_history, "cpu": cpu_per_byte, "delay": delayed}[what]
    print(json.dumps(fn(), indent=2))
