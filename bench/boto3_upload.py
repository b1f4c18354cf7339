"""The baseline uploader: plain boto3/s3transfer uploading files to a bucket,
run as its own process (`python -m bench.boto3_upload [--put] URL BUCKET THREADS FILE=KEY...`)
so that it is timed like `spoolup drain`: interpreter start-up included.  `--put`: one plain
PutObject per file on a pool of THREADS threads (the small-keys baseline), not s3transfer."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from s3transfer.manager import TransferManager

from bench.common import MiB, client


def main(argv: list[str]) -> int:
    put = argv[:1] == ["--put"]
    url, bucket, threads, *files = argv[1:] if put else argv
    s3 = client(url, int(threads))
    pairs = [f.split("=", 1) for f in files]
    if put:
        with ThreadPoolExecutor(int(threads)) as pool:
            list(pool.map(lambda pk: s3.put_object(Bucket=bucket, Key=pk[1], Body=Path(pk[0]).read_bytes()), pairs))
        return 0
    cfg = TransferConfig(max_concurrency=int(threads), multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    with TransferManager(s3, cfg) as tm:
        futures = [tm.upload(path, bucket, key) for path, key in pairs]
        for f in futures:
            f.result()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
