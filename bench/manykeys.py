"""Figure 3: many keys. 100 MiB of envelope records spread over 10,000 distinct
keys, drained to completed objects, against the same bytes in 4 keys.
Both sides are `spoolup drain` on the same moto server; the ratio is what
10,000 keys cost compared with 4."""

from __future__ import annotations

import json
import shutil
import sys
import time

from bench.common import MiB, Moto, client, new_bucket, spoolup, spoolup_config, workdir

LINE = 256


def envelope_spool(spool, total: int, keys: int, files: int = 4) -> int:
    """`files` spool files of envelope lines cycling over `keys` keys."""
    spool.mkdir(parents=True, exist_ok=True)
    per_file = total // files
    written = 0
    for f in range(files):
        lines = []
        size = 0
        i = 0
        while size < per_file:
            key = f"host-{(i * files + f) % keys:05d}/app"
            msg = f"Nov 25 12:00:00 host app[42]: seq={i:010d} "
            doc = json.dumps({"key": key, "ts": "", "msg": msg})
            pad = LINE - len(doc) - 1
            line = json.dumps({"key": key, "ts": "", "msg": msg + "x" * max(pad, 0)}) + "\n"
            lines.append(line)
            size += len(line)
            i += 1
        data = "".join(lines).encode()
        (spool / f"envelope-{f}.log").write_bytes(data)
        written += len(data)
    return written


def drain(url: str, base, **extra) -> tuple[float, int]:
    bucket = new_bucket()
    client(url).create_bucket(Bucket=bucket)
    shutil.rmtree(base / "state", ignore_errors=True)
    cfg = spoolup_config(base, url, bucket, format="envelope", **{"object-key": "{key}"}, **extra)
    start = time.perf_counter()
    r = spoolup("drain", "--config", str(cfg), timeout=3600)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    s3 = client(url)
    n = sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))
    return elapsed, n


def raw_puts(url: str, objects: int, size: int, threads: int = 8) -> float:
    """What any client needs for `objects` small objects: one PutObject each, 8 threads."""
    from concurrent.futures import ThreadPoolExecutor

    s3 = client(url, threads)
    bucket = new_bucket()
    s3.create_bucket(Bucket=bucket)
    body = b"x" * size
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"host-{i:05d}/app", Body=body), range(objects)))
    return time.perf_counter() - start


def run(total: int = 100 * MiB, keys: int = 10_000) -> dict:
    out = {}
    for label, k in (("few", 4), ("many", keys)):
        with workdir() as base, Moto(base) as moto:
            size = envelope_spool(base / "spool", total, k)
            out[label] = drain(moto.url, base) + (size,)
            if label == "many":
                raw = raw_puts(moto.url, k, size // k)
    (few_t, few_n, size), (many_t, many_n, _) = out["few"], out["many"]
    return {
        "figure": "3 many keys",
        "bytes": size,
        "keys": keys,
        "few_keys_s": few_t,
        "few_keys_objects": few_n,
        "many_keys_s": many_t,
        "many_keys_objects": many_n,
        "many_keys_objects_per_s": many_n / many_t,
        "raw_put_s": raw,
        "ratio_vs_raw_put": raw / many_t,
        "ratio": few_t / many_t,
        "goal": ">= 0.5",
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 100 * MiB,
                         int(sys.argv[2]) if len(sys.argv) > 2 else 10_000), indent=2))
