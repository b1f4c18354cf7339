"""Figure 1: end to end. A 256 MiB spool (256-byte syslog-like lines, 4 keys)
-> completed objects via `spoolup drain`, against plain boto3 (s3transfer,
same thread count) uploading the same bytes to the same moto server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import MiB, Moto, client, new_bucket, spoolup, spoolup_config, syslog_spool, workdir


def multipart_etag(path: Path, chunk: int) -> str:
    digests, size = [], path.stat().st_size
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digests.append(hashlib.md5(block).digest())
    if size <= chunk:  # spoolup writes a one-chunk object with a single PutObject
        return digests[0].hex()
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def baseline(url: str, spool: Path, files: dict[str, int], threads: int) -> float:
    """plain boto3/s3transfer, same thread count, as a process of its own."""
    bucket = new_bucket()
    client(url).create_bucket(Bucket=bucket)
    args = [f"{spool / rel}={rel}" for rel in files]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.boto3_upload", url, bucket, str(threads), *args], check=True)
    return time.perf_counter() - start


def spoolup_drain(url: str, base: Path, files: dict[str, int], threads: int, fsync: bool = True) -> float:
    bucket = new_bucket()
    client(url).create_bucket(Bucket=bucket)  # both sides start with an existing bucket
    cfg = spoolup_config(base, url, bucket, **{"upload-threads": threads, "fsync": fsync})
    start = time.perf_counter()
    r = spoolup("drain", "--config", str(cfg), timeout=1800)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"drain failed: {r.stderr[-2000:]}")
    s3 = client(url)
    for rel in files:
        etag = s3.head_object(Bucket=bucket, Key=rel)["ETag"].strip('"')
        if etag != multipart_etag(base / "spool" / rel, 5 * MiB):
            raise RuntimeError(f"{rel}: object differs from the spool file")
    return elapsed


def run(total: int = 256 * MiB, keys: int = 4, threads: int = 8, repeats: int = 2) -> dict:
    with workdir() as base:
        files = syslog_spool(base / "spool", total, keys)
        os.sync()  # steady state: the writer's pages were written back long ago
        size = sum(files.values())
        base_times, spool_times = [], []
        for _ in range(repeats):
            with Moto(base) as moto:  # a fresh server per round: moto keeps every object in RAM
                base_times.append(baseline(moto.url, base / "spool", files, threads))
                import shutil

                shutil.rmtree(base / "state", ignore_errors=True)
                spool_times.append(spoolup_drain(moto.url, base, files, threads))
    b, s = min(base_times), min(spool_times)
    return {
        "figure": "1 end-to-end drain",
        "bytes": size,
        "baseline_s": b,
        "spoolup_s": s,
        "baseline_MBps": size / b / 1e6,
        "spoolup_MBps": size / s / 1e6,
        "ratio": b / s,
        "goal": ">= 0.9",
        "runs": {"baseline": base_times, "spoolup": spool_times},
    }


if __name__ == "__main__":
    import json

    total = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 256 * MiB
    print(json.dumps(run(total), indent=2))
