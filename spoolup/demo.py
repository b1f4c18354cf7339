"""`spoolup demo`: see objects appear without an AWS account.

Starts a local S3 endpoint (moto server) on a free loopback port, writes a
small demo spool, runs the real service (`spoolup run`, as a subprocess) until
the demo objects are complete, stops it with SIGTERM, and lists the bucket the
way `aws s3 ls --recursive` does, checking every byte against the spool.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUCKET = "spoolup-demo"
HOSTS = {"web01/nginx.log": 3000, "web02/nginx.log": 2500, "db01/postgres.log": 2000, "app/api.log": 110000}


def _write_spool(spool: Path) -> dict[str, bytes]:
    rnd = random.Random(42)
    contents = {}
    for rel, lines in HOSTS.items():
        host, prog = rel.split("/")[0], rel.split("/")[1].split(".")[0]
        buf = []
        for i in range(lines):
            ts = time.strftime("%b %d %H:%M:%S", time.gmtime(1_764_000_000 + i))
            words = " ".join(rnd.choice(("GET", "POST", "ok", "slow", "cache", "miss", "user", "login", "200",
                                         "404", "query", "commit")) for _ in range(rnd.randint(8, 30)))
            buf.append(f"{ts} {host} {prog}[{1000 + i % 97}]: seq={i} {words}\n")
        data = "".join(buf).encode()
        path = spool / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        contents[rel] = data
    return contents


def main(workdir: str | None) -> int:
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        print("spoolup demo needs moto's server: pip install 'spoolup[demo]'", file=sys.stderr)
        return 1

    if workdir is None:  # a temporary work dir, removed afterwards (--dir keeps one)
        with tempfile.TemporaryDirectory(prefix="spoolup-demo-") as scratch:
            code = _run(Path(scratch), keep=False)
        print("work dir removed (spoolup demo --dir DIR keeps it)")
        return code
    return _run(Path(workdir), keep=True)


def _run(base: Path, *, keep: bool) -> int:
    import boto3

    from spoolup.locals3 import LocalS3

    base.mkdir(parents=True, exist_ok=True)
    spool, state = base / "spool", base / "state"
    if spool.exists():
        shutil.rmtree(spool)
    if state.exists():
        shutil.rmtree(state)
    server = LocalS3(base / "moto.log").start()
    try:
        url = server.url
        print(f"local S3 (moto server, pid {server.proc.pid}) listening on {url}")
        contents = _write_spool(spool)
        total = sum(len(v) for v in contents.values())
        print(f"demo spool: {len(contents)} files, {total} bytes in {spool}")
        config = base / "spoolup.toml"
        config.write_text(
            f'url = "{url}"\nbucket = "{BUCKET}"\naccess-key = "demo"\nsecret-key = "demo-secret"\n'
            f'region = "us-east-1"\nspool-dir = "{spool}"\nstate-dir = "{state}"\n'
            'object-key = "logs/{path}"\nmax-object-size = "7MiB"\nchunk-size = "5MiB"\n'
            'flush-grace-period = "3s"\nspool-reap = "1h"\nlog-format = "console"\nlog-level = "info"\n'
        )
        print(f"configuration: {config}")
        print("starting `spoolup run` ...\n")
        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="demo", aws_secret_access_key="demo-secret",
                          region_name="us-east-1")
        proc = subprocess.Popen([sys.executable, "-m", "spoolup", "run", "--config", str(config)])
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    print(f"spoolup run exited early with {proc.returncode}", file=sys.stderr)
                    return 1
                listing = _listing(s3)
                if _verify(listing, contents, s3, quiet=True):
                    break
                time.sleep(0.5)
            else:
                print("timed out waiting for the demo objects", file=sys.stderr)
                return 1
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        listing = _listing(s3)
        print(f"\n$ aws s3 ls --recursive s3://{BUCKET}   (endpoint {url})")
        for key, size, modified in listing:
            print(f"{modified:%Y-%m-%d %H:%M:%S} {size:>10} {key}")
        ok = _verify(listing, contents, s3, quiet=False)
        print(f"\nspoolup run exited with {proc.returncode}" + (f"; work dir {base}" if keep else ""))
        return 0 if ok and proc.returncode == 0 else 1
    finally:
        server.stop()


def _listing(s3) -> list[tuple[str, int, object]]:
    out = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            out.extend((o["Key"], o["Size"], o["LastModified"]) for o in page.get("Contents", []))
    except s3.exceptions.NoSuchBucket:
        return []  # spoolup creates it when it starts
    return sorted(out)


def _index(key: str, base: str) -> int:
    return 0 if key == base else int(key[len(base) + 1:])


def _verify(listing, contents: dict[str, bytes], s3, *, quiet: bool) -> bool:
    ok = True
    keys = [k for k, _, _ in listing]
    for rel, data in contents.items():
        base = f"logs/{rel}"
        mine = sorted((k for k in keys if k == base or k.startswith(base + "-")), key=lambda k: _index(k, base))
        if sum(size for k, size, _ in listing if k in mine) != len(data):
            if not quiet:
                print(f"MISMATCH {rel}: sizes differ")
            ok = False
            continue
        if quiet:
            continue
        got = b"".join(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in mine)
        same = got == data
        ok &= same
        records = data.count(b"\n")
        print(f"{'verified' if same else 'MISMATCH'}: {rel} -> {', '.join(mine)} "
              f"({len(data)} bytes, {records} records{', byte-exact' if same else ''})")
    return ok
