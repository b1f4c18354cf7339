"""The thin S3 client: every call spoolup makes to S3, and a small error hierarchy.

boto3/botocore do the HTTP, signing, credentials (including assume-role
refresh) and a first level of retries; callers above retry with their own
backoff and never drop an object.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import botocore.exceptions
import botocore.handlers
from botocore.config import Config as BotoConfig

from spoolup import checksums, flow
from spoolup import connect, permissions
from spoolup.config import Config
from spoolup.keys import static_prefix
from spoolup.logs import redact_text

_READ_BLOCK = 1 << 20
SMALL_BODY = 256 << 10  # a PutObject body up to this size is sent from memory (S3.put)


class S3Error(Exception):
    """An S3 call failed.  `code` is S3's error code (or a transport error name)."""

    def __init__(self, code: str, message: str, *, op: str = "", key: str | None = None, status: int | None = None):
        self.code = code
        self.op = op
        self.key = key
        self.status = status
        self.detail = redact_text(message)  # S3's own words, without the op/key/code prefix (journaled as is)
        where = f"{op} {key}" if key else op
        super().__init__(redact_text(f"{where}: {code}: {message}" if where else f"{code}: {message}"))

    @property
    def message(self) -> str:
        return str(self)


class NoSuchUpload(S3Error):
    pass


class PreconditionFailed(S3Error):
    pass


class NotImplementedByServer(S3Error):
    pass


class InvalidPart(S3Error):
    """InvalidPart, InvalidPartOrder, EntityTooSmall: the parts list does not match what S3 holds."""


_BY_CODE = {
    "NoSuchUpload": NoSuchUpload,
    "PreconditionFailed": PreconditionFailed,
    "NotImplemented": NotImplementedByServer,
    "InvalidPart": InvalidPart,
    "InvalidPartOrder": InvalidPart,
    "EntityTooSmall": InvalidPart,
}


def translate(e: Exception, op: str, key: str | None) -> S3Error:
    """The S3Error for an exception botocore raised (one of CLIENT_ERRORS) in call `op` on `key`."""
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if getattr(e, "operation_name", None) == "AssumeRole":
            # the role's credentials are fetched (and refreshed) inside whatever S3 call needs them
            return S3Error(code, f"cannot assume the configured role: {err.get('Message') or e}",
                           op=f"{op} (AssumeRole)", key=key, status=status)
        if code in ("412",) or status == 412:
            code = "PreconditionFailed"
        if status == 501 and code in ("501", "Unknown"):
            code = "NotImplemented"
        message = str(err.get("Message") or e)
        if code == "AccessDenied":  # (permanent: say which permission this request needs)
            message = permissions.explain(op, key, message)
        return _BY_CODE.get(code, S3Error)(code, message, op=op, key=key, status=status)
    if isinstance(e, botocore.exceptions.SSLError):
        return S3Error("SSLError", f"{e} (the server's TLS certificate is not trusted: give the CA that signed it "
                       "with ca-file)", op=op, key=key)
    if isinstance(e, _NOT_SENDABLE) or (isinstance(e, botocore.exceptions.HTTPClientError)
                                        and isinstance(e.kwargs.get("error"), ValueError)):
        # botocore (or http.client under it: "Invalid header name b'x-amz-meta-team\n'") refused to
        # build the request from what it was given: sending it again can never succeed.
        return S3Error(NOT_SENDABLE, f"the request cannot be sent: {e}", op=op, key=key)
    return S3Error(type(e).__name__, str(e), op=op, key=key)


# A request botocore refuses to build (a parameter it cannot send): a permanent error (protocol.permanent).
NOT_SENDABLE = "RequestNotSendable"
_NOT_SENDABLE = (botocore.exceptions.ParamValidationError, botocore.exceptions.ValidationError)
# what a botocore call raises: every call made on the client is wrapped in `except CLIENT_ERRORS`
# and re-raised as translate(...)
CLIENT_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)

# Characters XML 1.0 cannot carry (C0 controls but tab/LF/CR, U+FFFE, U+FFFF) yet an S3 key may
# hold.  Servers echo keys raw in replies (CreateMultipartUpload's <Key>, and RGW even the
# <NextKeyMarker> of a url-encoded listing), which no XML parser accepts: the reply was reported
# as "500" and retried forever.  Every reply body is made parseable before botocore parses it by
# swapping such characters for a sentinel; listings (which spoolup reads keys from) are requested
# url-encoded and their keys restored exactly (restore_key).
_XML_FORBIDDEN = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]|\xef\xbf[\xbe\xbf]")
_SENTINEL = "\ue000spoolup-xml-{:02x}\ue001"
_SENTINEL_RE = re.compile("\ue000spoolup-xml-([0-9a-f]{2,6})\ue001")


def _sentinel(m: re.Match) -> bytes:
    ch = m.group(0).decode("utf-8")
    return _SENTINEL.format(ord(ch)).encode("utf-8")


def _make_xml_parseable(response_dict=None, **_kw) -> None:
    body = response_dict.get("body") if response_dict else None
    if isinstance(body, (bytes, bytearray)) and _XML_FORBIDDEN.search(body):
        response_dict["body"] = _XML_FORBIDDEN.sub(_sentinel, bytes(body))


def _parseable_then_check_200(operation_model=None, response_dict=None, **kw) -> None:
    _make_xml_parseable(response_dict=response_dict)
    botocore.handlers._handle_200_error(operation_model=operation_model, response_dict=response_dict, **kw)


def restore_key(key: str, url_encoded: bool) -> str:
    """A key as S3 holds it, from a listing's <Key> (url-encoded when the server honoured
    encoding-type=url: moto does not) after _make_xml_parseable."""
    if url_encoded:
        key = urllib.parse.unquote_plus(key)  # as botocore decodes ListObjects (space: "+")
    return _SENTINEL_RE.sub(lambda m: chr(int(m.group(1), 16)), key) if "\ue000" in key else key


@dataclass(frozen=True)
class FileBody:
    """A part's bytes on disk with their MD5 (for Content-MD5 and the expected ETag)."""

    path: Path
    size: int
    md5_hex: str | None

    @classmethod
    def of(cls, path: Path, *, md5: bool = True) -> "FileBody":
        if not md5:
            return cls(path, os.stat(path).st_size, None)
        h = hashlib.md5()
        size = 0
        with open(path, "rb") as f:
            while block := f.read(_READ_BLOCK):
                h.update(block)
                size += len(block)
        return cls(path, size, h.hexdigest())

    @property
    def content_md5(self) -> str | None:
        return base64.b64encode(bytes.fromhex(self.md5_hex)).decode() if self.md5_hex else None

    def integrity_args(self) -> dict[str, str]:
        return {"ContentMD5": self.content_md5} if self.md5_hex else {}


def _epoch(when: Any) -> float:
    """A listing's timestamp (botocore gives a datetime) as seconds since the epoch; 0.0 when
    the server gave none (it then counts as old)."""
    try:
        return float(when.timestamp())
    except (AttributeError, TypeError, ValueError, OverflowError):
        return 0.0


def multipart_etag(part_etags: Iterable[str]) -> str:
    """The ETag S3 gives a completed multipart upload: md5 of the parts' binary MD5s, '-', count."""
    digests = [bytes.fromhex(e.strip('"')) for e in part_etags]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def same_etag(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and a.strip('"') == b.strip('"')


class S3:
    def __init__(self, cfg: Config, *, probe_prefix: str | None = None, attempts: int = 3):
        self.cfg = cfg
        self.bucket = cfg.bucket
        # credentials, TLS, proxy and addressing style: spoolup.connect
        self.session = connect.session(cfg)
        self.client = connect.client(self.session, cfg, "s3", attempts=attempts)
        # before botocore's own check of 200 replies, which would call an unparseable one a 500:
        # its handler is replaced by one that makes the body parseable, then runs it
        self.client.meta.events.unregister("before-parse.s3.*", botocore.handlers._handle_200_error)
        self.client.meta.events.register_first("before-parse.s3.*", _parseable_then_check_200)
        # scratch keys of the listing-encoding probe: the journal's own (capabilities.probe_key_prefix),
        # so that its reconcile aborts one a crash left behind; None: check-config's
        self.probe_prefix = probe_prefix
        self._listing_encodes: dict[str, bool] = {}  # listing operation -> keys come url-encoded
        # Over plain http botocore signs every body with SHA-256 (x-amz-content-sha256, which
        # the server checks): a Content-MD5 of parts would hash each byte a second time.
        # Over https botocore skips that signature when Content-MD5 is given, so parts carry it.
        # content-md5 = "always" (or Object Lock, whose buckets require it on each upload) over http too.
        self.part_md5 = (not (cfg.url or "https://").startswith("http://") or cfg.content_md5 == "always"
                         or cfg.object_lock)
        # flow control (spoolup/flow.py): adaptive concurrency for the upload threads, max-bandwidth
        self.flow = flow.install(self.client, cfg.upload_threads, cfg.max_bandwidth)

    @staticmethod
    def _boto_config(cfg: Config) -> BotoConfig:
        return connect.client_config(cfg)

    def identity(self) -> str:
        """The ARN S3 calls are made as (with `role`: the assumed role's session), as s3() logs it."""
        sts = connect.client(self.session, self.cfg, "sts")
        try:
            return str(sts.get_caller_identity().get("Arn", ""))
        except CLIENT_ERRORS as e:
            raise translate(e, "GetCallerIdentity", None) from None
        finally:
            sts.close()

    # -- object-creating calls ---------------------------------------------------

    def _object_args(self) -> dict[str, Any]:
        c = self.cfg
        args: dict[str, Any] = {"StorageClass": c.storage_class}
        if c.canned_acl:
            args["ACL"] = c.canned_acl
        if c.server_side_encryption:
            args["ServerSideEncryption"] = c.server_side_encryption
        if c.kms_key:
            args["SSEKMSKeyId"] = c.kms_key
        return args

    def create_multipart(self, key: str, metadata: dict[str, str], object_args: dict[str, str]) -> str:
        """`object_args`: the object's own (Form.object_args: ContentType, Tagging)."""
        return self.create_upload(key, metadata, object_args)[0]

    def create_upload(self, key: str, metadata: dict[str, str], object_args: dict[str, str],
                      checksum_algorithm: str | None = None) -> tuple[str, int]:
        """create_multipart, and how many times botocore sent the request again: a Create whose
        reply was lost and that botocore retried may have created an upload besides this one.
        checksum_algorithm: the parts then carry flexible checksums of it (composite type)."""
        extra: dict[str, str] = {"ChecksumAlgorithm": checksum_algorithm.upper()} if checksum_algorithm else {}
        try:
            r = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=metadata,
                                                    **self._object_args(), **object_args, **extra)
        except CLIENT_ERRORS as e:
            raise translate(e, "CreateMultipartUpload", key) from None
        return r["UploadId"], int(r.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)

    def upload_part(self, key: str, upload_id: str, part: int, body: FileBody, checksum: str | None = None) -> str:
        """checksum: the part's "<algo>:<base64>" (spoolup.checksums), sent for S3 to check."""
        try:
            with open(body.path, "rb") as f:
                r = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part, Body=f,
                    ContentLength=body.size, **body.integrity_args(), **checksums.request_args(checksum),
                )
        except CLIENT_ERRORS as e:
            raise translate(e, "UploadPart", key) from None
        return r["ETag"]

    def complete(self, key: str, upload_id: str, parts: list[tuple[int, str]], *, if_none_match: bool,
                 part_checksums: list[str | None] | None = None) -> str:
        """if_none_match: send If-None-Match: * (whether the server honours it is the caller's
        business: spoolup.capabilities); a server that does not implement it answers
        NotImplementedByServer.  part_checksums: each part's flexible checksum (an upload created
        with an algorithm), listed for S3 to compose the object's checksum from."""
        args: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        sums = part_checksums or [None] * len(parts)
        try:
            r = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e, **checksums.part_entry(c)}
                                           for (n, e), c in zip(parts, sums)]}, **args,
            )
        except CLIENT_ERRORS as e:
            raise translate(e, "CompleteMultipartUpload", key) from None
        return r.get("ETag", "")

    def put(self, key: str, body: FileBody, metadata: dict[str, str], object_args: dict[str, str], *,
            if_none_match: bool, checksum: str | None = None) -> str:
        """checksum: the body's "<algo>:<base64>" as its ledger record holds it, sent for S3 to
        check (with the Content-MD5 of the same pass: the ETag spoolup expects, and what keeps
        botocore from signing the body with SHA-256 over https)."""
        args: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        args.update(checksums.request_args(checksum))
        try:
            with open(body.path, "rb") as f:
                # a small body goes as bytes: botocore hashes (SigV4) and sends a file object with a
                # seek and tell around each pass, a measurable share of a small object's request
                data = f.read() if body.size <= SMALL_BODY else f
                r = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, ContentLength=body.size, ContentMD5=body.content_md5,
                    Metadata=metadata, **self._object_args(), **object_args, **args,
                )
        except CLIENT_ERRORS as e:
            raise translate(e, "PutObject", key) from None
        return r["ETag"]

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False, checksum: str | None = None) -> str:
        """A small object of spoolup's own (a ledger segment, the capability probe's scratch
        object).  With Content-MD5, as every PutObject (an Object Lock bucket's default retention
        refuses a body without it), and the encryption and ACL the bucket's policy may demand of
        every write -- not the storage class: a segment is read back at start-up, never archived."""
        args: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        args.update({k: v for k, v in self._object_args().items() if k != "StorageClass"})
        args.update(checksums.request_args(checksum))
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        try:
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5, **args)["ETag"]
        except CLIENT_ERRORS as e:
            raise translate(e, "PutObject", key) from None

    def lock_object(self, key: str, mode: str, until: Any, legal_hold: bool) -> None:
        """Object Lock on a completed object: its retention (extended: allowed in either mode) and legal hold."""
        try:
            if mode:
                self.client.put_object_retention(Bucket=self.bucket, Key=key,
                                                 Retention={"Mode": mode, "RetainUntilDate": until})
            if legal_hold:
                self.client.put_object_legal_hold(Bucket=self.bucket, Key=key, LegalHold={"Status": "ON"})
        except CLIENT_ERRORS as e:
            raise translate(e, "PutObjectRetention" if mode else "PutObjectLegalHold", key) from None

    def object_lock_enabled(self) -> bool:
        """Has the bucket Object Lock enabled (GetObjectLockConfiguration)?"""
        try:
            r = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except CLIENT_ERRORS as e:
            err = translate(e, "GetObjectLockConfiguration", None)
            if err.code in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"):
                return False
            raise err from None
        return (r.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except CLIENT_ERRORS as e:
            err = translate(e, "AbortMultipartUpload", key)
            if not isinstance(err, NoSuchUpload):
                raise err from None

    # -- reading calls -------------------------------------------------------------

    def head(self, key: str, *, checksum: bool = False) -> dict[str, Any] | None:
        """etag, size, metadata; with `checksum`: also the object's flexible checksum as
        "<algo>:<value>" (None: it has none) -- ChecksumMode=ENABLED."""
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key, **({"ChecksumMode": "ENABLED"} if checksum else {}))
        except botocore.exceptions.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise translate(e, "HeadObject", key) from None
        except botocore.exceptions.BotoCoreError as e:
            raise translate(e, "HeadObject", key) from None
        out = {"etag": r.get("ETag"), "size": r.get("ContentLength"), "metadata": r.get("Metadata", {})}
        if checksum:
            out["checksum"] = next((f"{a}:{r[f'Checksum{a.upper()}']}" for a in checksums.ALGORITHMS
                                    if r.get(f"Checksum{a.upper()}")), None)
        return out

    def list_keys(self, prefix: str) -> set[str]:
        return set(self.list_objects(prefix))

    def list_objects(self, prefix: str) -> dict[str, float]:
        """key -> LastModified (seconds since the epoch, by the server's clock) under `prefix`."""
        keys: dict[str, float] = {}
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "EncodingType": "url"}
        try:
            while True:
                page = self.client.list_objects_v2(**args)
                contents = page.get("Contents", []) or []
                listed = [o["Key"] for o in contents]
                encoded = self._encoded("ListObjectsV2", page, listed)
                keys.update((restore_key(o["Key"], encoded), _epoch(o.get("LastModified"))) for o in contents)
                if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                    return keys
                args["ContinuationToken"] = page["NextContinuationToken"]
        except CLIENT_ERRORS as e:
            raise translate(e, "ListObjectsV2", prefix) from None

    def list_pages(self, prefix: str) -> Iterator[list[tuple[str, int, str]]]:
        """(key, size, ETag without quotes) of the objects under `prefix`, one list per
        ListObjectsV2 page (one request each: `spoolup verify` counts them)."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "EncodingType": "url"}
        try:
            while True:
                page = self.client.list_objects_v2(**args)
                contents = page.get("Contents", []) or []
                encoded = self._encoded("ListObjectsV2", page, [o["Key"] for o in contents])
                yield [(restore_key(o["Key"], encoded), int(o.get("Size") or 0), str(o.get("ETag") or "").strip('"'))
                       for o in contents]
                if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                    return
                args["ContinuationToken"] = page["NextContinuationToken"]
        except CLIENT_ERRORS as e:
            raise translate(e, "ListObjectsV2", prefix) from None

    def get_bytes(self, key: str) -> bytes | None:
        """The whole body of a (small) object; None when there is none at the key."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise translate(e, "GetObject", key) from None
        except CLIENT_ERRORS as e:
            raise translate(e, "GetObject", key) from None

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of the multipart uploads in progress under `prefix`."""
        return [(k, u) for k, u, _ in self.list_uploads_initiated(prefix)]

    def list_uploads_initiated(self, prefix: str) -> list[tuple[str, str, float]]:
        """(key, upload id, Initiated) of the multipart uploads in progress under `prefix`
        (Initiated: seconds since the epoch by the server's clock; moto says 2010 for every
        upload).  Requested url-encoded; paged by the last key and upload id seen, not by the
        server's NextKeyMarker, which RGW sends raw (not url-encoded)."""
        out: list[tuple[str, str, float]] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "EncodingType": "url"}
        try:
            while True:
                page = self.client.list_multipart_uploads(**args)
                listed = page.get("Uploads", []) or []
                encoded = self._encoded("ListMultipartUploads", page, [u["Key"] for u in listed])
                uploads = [(restore_key(u["Key"], encoded), u["UploadId"], _epoch(u.get("Initiated"))) for u in listed]
                out.extend(uploads)
                if not page.get("IsTruncated") or not uploads:
                    return out
                args["KeyMarker"], args["UploadIdMarker"] = uploads[-1][:2]
        except CLIENT_ERRORS as e:
            raise translate(e, "ListMultipartUploads", prefix) from None

    def _encoded(self, op: str, page: dict, listed: list[str]) -> bool:
        """Are the keys of this listing url-encoded?  AWS says so (EncodingType); RGW encodes
        them without saying so; moto does not encode them.  Where no listed key holds a '%' or
        a '+', decoding would change nothing, so it does not matter (most keys: no request).
        Otherwise, when the reply does not say, a scratch key with a space in it is listed
        once per process to find out."""
        if page.get("EncodingType") == "url":
            return True
        if not any("%" in k or "+" in k for k in listed):
            return False  # (not remembered: it says nothing about the server)
        if op not in self._listing_encodes:
            prefix = self.probe_prefix or f"{static_prefix(self.cfg.object_key)}.spoolup-probe-check-"
            key = f"{prefix}{uuid.uuid4().hex[:12]}-a b"  # (moto with IAM refuses non-ASCII)
            if op == "ListMultipartUploads":
                upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
                others: list[str] = []
                try:
                    reply = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key, EncodingType="url")
                    got = [u["Key"] for u in reply.get("Uploads", []) or []]
                    # every upload at the scratch key is this probe's (a random suffix): a Create whose
                    # reply was lost or late, sent again by botocore, left one whose id it never got
                    others = [u["UploadId"] for u in reply.get("Uploads", []) or [] if u["UploadId"] != upload_id]
                finally:
                    for other in others:  # (best effort: the next start's reconcile aborts what is left)
                        with contextlib.suppress(*CLIENT_ERRORS):
                            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=other)
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
                try:
                    reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, EncodingType="url")
                    got = [o["Key"] for o in reply.get("Contents", []) or []]
                finally:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
            self._listing_encodes[op] = bool(got) and got[0] != key and urllib.parse.unquote_plus(got[0]) == key
        return self._listing_encodes[op]

    def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        """part number -> (ETag, size) of the parts S3 holds for an upload.  NoSuchUpload when
        the upload does not exist (any more): RGW says NoSuchKey (404) for a completed, aborted
        or unknown upload where AWS and moto say NoSuchUpload."""
        out: dict[int, tuple[str, int]] = {}
        try:
            for page in self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                for p in page.get("Parts", []) or []:
                    out[p["PartNumber"]] = (p["ETag"], p["Size"])
        except CLIENT_ERRORS as e:
            err = translate(e, "ListParts", key)
            if err.code == "NoSuchKey" and err.status == 404:
                raise NoSuchUpload("NoSuchUpload", f"the upload does not exist (the server said {err.code})",
                                   op="ListParts", key=key, status=404) from None
            raise err from None
        return out

    def upload_exists(self, key: str, upload_id: str) -> bool:
        try:
            self.list_parts(key, upload_id)
        except NoSuchUpload:
            return False
        return True

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except CLIENT_ERRORS as e:
            raise translate(e, "DeleteObject", key) from None

    def bucket_exists(self) -> bool:
        """HeadBucket: True if the bucket is there, False if it does not exist; an S3Error in
        S3's own words otherwise.  A HEAD reply has no body, so an error to it carries only the
        HTTP status ("403"): it is followed by a GET (ListObjectsV2 of one key), whose error
        body says why (InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, ...)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except botocore.exceptions.ClientError as e:
            err = translate(e, "HeadBucket", None)
        except botocore.exceptions.BotoCoreError as e:
            raise translate(e, "HeadBucket", None) from None
        if err.status == 404 or err.code in ("404", "NoSuchBucket"):
            return False
        if err.code.isdigit():
            err = self._why(err)
            if err.code == "NoSuchBucket":
                return False
        raise err

    def _why(self, head_error: S3Error) -> S3Error:
        """The error of a GET on the bucket, which has a body with S3's code, for a HEAD error without one."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except botocore.exceptions.ClientError as e:
            why = translate(e, "ListObjectsV2", None)
            if not why.code.isdigit():
                return S3Error(why.code, why.detail, op="HeadBucket", status=head_error.status)
        except botocore.exceptions.BotoCoreError:
            pass
        hint = {403: "HTTP 403 Forbidden without an error code: wrong access-key/secret-key, a clock more "
                     "than 15 minutes off, or a policy that denies s3:ListBucket on the bucket",
                400: "HTTP 400 Bad Request without an error code: often the wrong region for this bucket"}
        return S3Error(head_error.code, hint.get(head_error.status or 0, head_error.detail), op="HeadBucket",
                       status=head_error.status)

    def ensure_bucket(self) -> bool:
        """True if the bucket had to be created (as s3() does when it is missing)."""
        if self.bucket_exists():
            return False
        args: dict[str, Any] = {"ObjectLockEnabledForBucket": True} if self.cfg.object_lock else {}
        region = self.client.meta.region_name
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **args)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou",):
                return False
            raise translate(e, "CreateBucket", None) from None
        except botocore.exceptions.BotoCoreError as e:
            raise translate(e, "CreateBucket", None) from None
        return True

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
