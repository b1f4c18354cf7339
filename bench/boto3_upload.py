"""The baseline uploader: plain boto3/s3transfer uploading files to a bucket,
run as its own process (`python -m bench.boto3_upload URL BUCKET THREADS FILE...`)
so that it is timed like `spoolup drain`: interpreter start-up included."""

from __future__ import annotations

import sys

from boto3.s3.transfer import TransferConfig
from s3transfer.manager import TransferManager

from bench.common import MiB, client


def main(argv: list[str]) -> int:
    url, bucket, threads, *files = argv
    s3 = client(url, int(threads))
    cfg = TransferConfig(max_concurrency=int(threads), multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    with TransferManager(s3, cfg) as tm:
        futures = [tm.upload(path, bucket, key) for path, key in (f.split("=", 1) for f in files)]
        for f in futures:
            f.result()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
