"""End-to-end integrity (issue 22 item 6): the checksum of each object's bytes as spoolup wrote
them into its chunk files, in S3's flexible-checksum form, computed in the one pass that also
takes the body's MD5 (its ETag) -- never from bytes read back from S3.

A single PutObject sends the value its ledger record holds (x-amz-checksum-<algo>), so a chunk
file changed after the record was written is refused by a server that checks it; a multipart
upload is created with the algorithm, each UploadPart sends its part's value (journaled with
the part's ETag), the Complete lists them, and the object's checksum is S3's composite:
the checksum of the parts' binary checksums, "-<parts>" (ledger: "<algo>:<base64>-<n>").

crc32c and crc64nvme need the awscrt package (botocore[crt]), which spoolup does not require;
without it they are refused by the configuration (exit 2) and "auto" picks among the others.
crc64nvme multipart objects would need S3's full-object type (a combined CRC, not a composite):
spoolup records and sends crc64nvme for single-part objects only (docs/operations.md).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from pathlib import Path
from typing import Iterable

try:  # optional: botocore[crt]
    from awscrt import checksums as _crt  # type: ignore
except ImportError:  # pragma: no cover - depends on the installation
    _crt = None

ALGORITHMS = ("crc64nvme", "crc32c", "sha256", "sha1", "crc32")  # "auto" tries them in this order
NEED_CRT = frozenset({"crc64nvme", "crc32c"})
CHOICES = ("auto", *ALGORITHMS, "none")
COMPOSITE = frozenset({"crc32c", "sha256", "sha1", "crc32"})  # multipart objects get "<b64>-N"
_READ_BLOCK = 1 << 20


def available(algorithm: str) -> bool:
    return algorithm in ALGORITHMS and (algorithm not in NEED_CRT or _crt is not None)


def unavailable_reason(algorithm: str) -> str | None:
    """Why this value cannot be used on this installation (None: it can)."""
    if algorithm in NEED_CRT and _crt is None:
        return (f"\"{algorithm}\" needs the awscrt package, which is not installed (pip install awscrt, "
                "or botocore[crt]); use \"auto\" (the strongest available), \"sha256\", \"sha1\", \"crc32\" or \"none\"")
    return None


def preferred(configured: str) -> str | None:
    """The algorithm a configuration asks for: "auto" -> the strongest available here, "none" -> None."""
    if configured == "none":
        return None
    if configured == "auto":
        return next(a for a in ALGORITHMS if available(a))
    return configured


class _Crc:
    def __init__(self, fn, width: int):
        self.fn, self.width, self.value = fn, width, 0

    def update(self, data: bytes) -> None:
        self.value = self.fn(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self.width, "big")


def hasher(algorithm: str):
    """An object with update(bytes) and digest() for `algorithm`."""
    if algorithm == "crc32":
        return _Crc(zlib.crc32, 4)
    if algorithm == "crc32c":
        return _Crc(_crt.crc32c, 4)
    if algorithm == "crc64nvme":
        return _Crc(_crt.crc64nvme, 8)
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "sha1":
        return hashlib.sha1(usedforsecurity=False)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def hash_file(path: Path, algorithm: str | None, md5: bool = True) -> tuple[int, str | None, str | None]:
    """(size, MD5 hex or None, checksum "<algo>:<base64>" or None) of a file, in one read pass --
    none when nothing is to be hashed (a part over plain http without a flexible checksum, where
    botocore's SigV4 hashes the body): its size is the file's, and reading every byte of it only
    to count them was a tenth of the upload process's CPU (bench/RESULTS.md, stop 27)."""
    if not md5 and not algorithm:
        return path.stat().st_size, None, None
    m = hashlib.md5() if md5 else None
    c = hasher(algorithm) if algorithm else None
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            size += len(block)
            if m is not None:
                m.update(block)
            if c is not None:
                c.update(block)
    return size, (m.hexdigest() if m is not None else None), (tag(algorithm, c.digest()) if c is not None else None)


def tag(algorithm: str, digest: bytes) -> str:
    return f"{algorithm}:{base64.b64encode(digest).decode()}"


def split(checksum: str | None) -> tuple[str, str] | None:
    """("crc32", "<base64>") of a ledger checksum "crc32:<base64>"; None for none."""
    if not checksum or ":" not in checksum:
        return None
    algo, value = checksum.split(":", 1)
    return algo, value


def composite(algorithm: str, parts: Iterable[str | None]) -> str | None:
    """S3's checksum of a multipart object (COMPOSITE type) from its parts' ledger checksums, in
    part order: the algorithm over the concatenated binary part checksums, "-<parts>".  None when
    a part has none (journaled before the option, or of another algorithm) or the algorithm has
    no composite form."""
    if algorithm not in COMPOSITE:
        return None
    digests = []
    for p in parts:
        s = split(p)
        if s is None or s[0] != algorithm:
            return None
        digests.append(base64.b64decode(s[1]))
    if not digests:
        return None
    h = hasher(algorithm)
    h.update(b"".join(digests))
    return f"{tag(algorithm, h.digest())}-{len(digests)}"


def request_args(checksum: str | None) -> dict[str, str]:
    """The PutObject / UploadPart arguments carrying a precomputed checksum: the value itself
    (botocore then computes none of its own) and the algorithm (which moto needs to store it)."""
    s = split(checksum)
    if s is None:
        return {}
    algo, value = s
    return {"ChecksumAlgorithm": algo.upper(), f"Checksum{algo.upper()}": value}


def part_entry(checksum: str | None) -> dict[str, str]:
    """A Complete's part-list entry's checksum field."""
    s = split(checksum)
    return {f"Checksum{s[0].upper()}": s[1]} if s else {}
