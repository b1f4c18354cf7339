"""The remaining s3() options: validated with s3()'s value sets (exit 2 on anything
else), and what they set reaches S3 -- storage class, canned ACL, server-side
encryption, KMS key, content type -- on single-part and multipart objects alike.
`role` is checked against a moto server that enforces IAM: the configured keys
may only call sts:AssumeRole, so an upload can only succeed with the assumed
role's credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import boto3
import pytest

from helpers import ACCESS_KEY, SECRET_KEY, IAMMoto, Spoolup, free_port, get, list_keys, syslog_lines, toml, wait_for
from spoolup import config

# transcribed from syslog-ng's modules/python-modules/syslogng/modules/s3/s3_destination.py
S3_STORAGE_CLASSES = ["STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                      "GLACIER", "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR", "SNOW"]
S3_CANNED_ACLS = ["private", "public-read", "public-read-write", "aws-exec-read", "authenticated-read",
                  "bucket-owner-read", "bucket-owner-full-control", "log-delivery-write"]
MiB = 1024 * 1024




def base(tmp_path, **options):
    return {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"),
            **options}


def check_config(tmp_path, *extra: str, **options) -> subprocess.CompletedProcess:
    path = tmp_path / "c.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in base(tmp_path, **options).items()))
    return subprocess.run([sys.executable, "-m", "spoolup", "check-config", *extra, "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                                           if not k.startswith("AWS_")})


# ---------------------------------------------------------------------------
# validation


def test_value_sets_are_those_of_s3(tmp_path):
    assert config.STORAGE_CLASSES == frozenset(S3_STORAGE_CLASSES)
    assert config.CANNED_ACLS == frozenset(S3_CANNED_ACLS)
    for value in S3_STORAGE_CLASSES:
        # s3() normalizes with .upper().replace("-", "_"): so does spoolup
        for spelling in (value, value.lower().replace("_", "-")):
            assert config.from_mapping(base(tmp_path, **{"storage-class": spelling})).storage_class == value
    for value in S3_CANNED_ACLS:
        for spelling in (value, value.upper().replace("-", "_")):  # s3(): .lower().replace("_", "-")
            assert config.from_mapping(base(tmp_path, **{"canned-acl": spelling})).canned_acl == value
    assert config.from_mapping(base(tmp_path)).canned_acl == ""
    for sse in ("", "aws:kms", "AES256", "aws:kms:dsse"):
        assert config.from_mapping(base(tmp_path, **{"server-side-encryption": sse})).server_side_encryption == sse
    for value, codec in ((True, "gzip"), (False, "none"), ("yes", "gzip"), ("no", "none"), ("zstd", "zstd")):
        assert config.from_mapping(base(tmp_path, compression=value)).compression == codec
    arn = "arn:aws:iam::123456789012:role/path/log-writer"
    assert config.from_mapping(base(tmp_path, role=arn)).role == arn
    assert config.from_mapping(base(tmp_path, role="arn:aws-cn:iam::123456789012:role/w")).role


INVALID = [
    ("storage-class", "EXPRESS_ONEZONE", "GLACIER_IR"),  # valid for AWS directory buckets, not for s3()
    ("storage-class", "PLATINUM", "STANDARD"),
    ("canned-acl", "public", "public-read"),
    ("canned-acl", "bucket-owner-write", "bucket-owner-full-control"),
    ("server-side-encryption", "aes256", "AES256"),
    ("server-side-encryption", "aws:kms:foo", "aws:kms"),
    ("server-side-encryption", True, "string"),
    ("compression", "lz4", "zstd"),
    ("compression", 1, "gzip"),
    ("compresslevel", 10, "0 to 9"),
    ("compresslevel", -1, "from 0 to 22"),
    ("compresslevel", "9", "integer"),
    ("role", "log-writer", "IAM role ARN"),
    ("role", "arn:aws:iam::123:role/w", "IAM role ARN"),
    ("role", "arn:aws:sts::123456789012:assumed-role/w/s", "IAM role ARN"),
    ("region", 5, "string"),
    ("template", 5, "string"),
]


@pytest.mark.parametrize("option,value,hint", INVALID, ids=[f"{o}={v!r}" for o, v, _ in INVALID])
def test_invalid_s3_option_values_exit_2(tmp_path, option, value, hint):
    r = check_config(tmp_path, "--no-s3", **{option: value})
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"'{option}'" in r.stderr and hint in r.stderr, r.stderr


@pytest.mark.parametrize("options,named,hint", [
    ({"compression": "zstd", "compresslevel": 23}, "compresslevel", "22"),
    ({"compression": "zstd", "compresslevel": 0}, "compresslevel", "1 to 22"),
    ({"kms-key": "alias/logs"}, "kms-key", "aws:kms"),
    ({"format": "envelope", "object-key-timestamp": "${R_DAY}"}, "object-key-timestamp", "spoolup() block"),
    ({"kms-key": "alias/logs", "server-side-encryption": "AES256"}, "kms-key", "aws:kms"),
])
def test_inconsistent_s3_options_exit_2(tmp_path, options, named, hint):
    r = check_config(tmp_path, "--no-s3", **options)
    assert r.returncode == 2 and f"'{named}'" in r.stderr and hint in r.stderr, r.stderr


def test_template_is_accepted_and_left_to_syslog_ng(tmp_path):
    r = check_config(tmp_path, "--no-s3", template="${ISODATE} ${HOST} ${MESSAGE}\n")
    assert r.returncode == 0, r.stderr
    assert 'template = "${ISODATE} ${HOST} ${MESSAGE}\\n"' in r.stdout
    assert "applied by syslog-ng" in r.stdout


# ---------------------------------------------------------------------------
# what reaches S3


def write_files(sp) -> dict[str, bytes]:
    files = {"small.log": syslog_lines(50), "large.log": syslog_lines(30_000, width=220)}  # ~6.3 MiB: multipart
    for name, data in files.items():
        (sp.spool / name).write_bytes(data)
    return files


def grants(s3, bucket, key) -> set[tuple[str, str]]:
    acl = s3.get_object_acl(Bucket=bucket, Key=key)
    return {(g["Grantee"].get("URI") or g["Grantee"].get("ID") or "", g["Permission"]) for g in acl["Grants"]}


ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def test_storage_class_acl_and_sse_s3_reach_s3(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "storage-class": "standard-ia", "canned-acl": "public-read",
                         "server-side-encryption": "AES256"})
    files = write_files(sp)
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == sorted(files)
    for name, data in files.items():
        assert get(s3, sp.bucket, name) == data
        head = s3.head_object(Bucket=sp.bucket, Key=name)
        assert head["StorageClass"] == "STANDARD_IA", name
        assert head["ServerSideEncryption"] == "AES256", name
        assert head["ContentType"] == "text/plain; charset=utf-8", name
        assert head["Metadata"]["spoolup-object"]  # spoolup's own marker rides along
        assert (ALL_USERS, "READ") in grants(s3, sp.bucket, name), name
    assert s3.head_object(Bucket=sp.bucket, Key="large.log")["ETag"].strip('"').endswith("-2")  # multipart
    assert "-" not in s3.head_object(Bucket=sp.bucket, Key="small.log")["ETag"]  # one PutObject


def test_sse_kms_key_and_private_acl_reach_s3(make_spoolup, s3, moto):
    kms = boto3.client("kms", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                       aws_secret_access_key=SECRET_KEY)
    key_id = kms.create_key(Description="spoolup test")["KeyMetadata"]["KeyId"]
    sp = make_spoolup(**{"object-key": "{name}", "storage-class": "GLACIER_IR", "canned-acl": "private",
                         "server-side-encryption": "aws:kms", "kms-key": key_id, "compression": "gzip",
                         "compresslevel": 1})
    files = write_files(sp)
    sp.drain(check=True)
    assert list_keys(s3, sp.bucket) == sorted(n + ".gz" for n in files)
    import gzip

    for name, data in files.items():
        head = s3.head_object(Bucket=sp.bucket, Key=name + ".gz")
        assert head["ServerSideEncryption"] == "aws:kms", name
        assert key_id in head["SSEKMSKeyId"], name
        assert head["StorageClass"] == "GLACIER_IR", name
        assert head["ContentType"] == "application/gzip", name
        assert all(uri != ALL_USERS for uri, _ in grants(s3, sp.bucket, name + ".gz"))
        assert gzip.decompress(get(s3, sp.bucket, name + ".gz")) == data


# ---------------------------------------------------------------------------
# role: STS assume-role against a moto server that enforces IAM


class AuthMoto:
    """A moto server whose first SETUP_CALLS requests are unauthenticated (IAM set-up);
    every later request is checked against the IAM users, roles and policies made then."""

    SETUP_CALLS = 11

    def __init__(self, log_dir):
        self.server = IAMMoto(log_dir / "moto-auth.log", self.SETUP_CALLS).start()
        self.port, self.url, self.proc = self.server.port, self.server.url, self.server.proc
        iam = self.client("iam", "setup", "setup")
        account = "123456789012"
        self.role_arn = f"arn:aws:iam::{account}:role/log-writer"
        # roles the keys may assume whose policies lack what spoolup needs: writing the ledger's
        # segments (PutObject under .spoolup/ledger/), listing the bucket (ListObjectsV2)
        self.no_ledger_arn = f"arn:aws:iam::{account}:role/no-ledger"
        self.no_list_arn = f"arn:aws:iam::{account}:role/no-list"
        iam.create_user(UserName="shipper")  # 1
        key = iam.create_access_key(UserName="shipper")["AccessKey"]  # 2
        self.user_key, self.user_secret = key["AccessKeyId"], key["SecretAccessKey"]
        iam.put_user_policy(UserName="shipper", PolicyName="assume-only", PolicyDocument=json.dumps({  # 3
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                           "Resource": [self.role_arn, self.no_ledger_arn, self.no_list_arn]}]}))
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {
            "AWS": f"arn:aws:iam::{account}:user/shipper"}, "Action": "sts:AssumeRole"}]}
        iam.create_role(RoleName="log-writer", AssumeRolePolicyDocument=json.dumps(trust))  # 4
        iam.put_role_policy(RoleName="log-writer", PolicyName="s3", PolicyDocument=json.dumps({  # 5
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        iam.create_role(RoleName="other", AssumeRolePolicyDocument=json.dumps(trust))  # 6
        iam.put_role_policy(RoleName="other", PolicyName="s3", PolicyDocument=json.dumps({  # 7
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        iam.create_role(RoleName="no-ledger", AssumeRolePolicyDocument=json.dumps(trust))  # 8
        iam.put_role_policy(RoleName="no-ledger", PolicyName="s3", PolicyDocument=json.dumps({  # 9
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::*/.spoolup/ledger/*"}]}))
        iam.create_role(RoleName="no-list", AssumeRolePolicyDocument=json.dumps(trust))  # 10
        iam.put_role_policy(RoleName="no-list", PolicyName="s3", PolicyDocument=json.dumps({  # 11
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:ListBucket", "Resource": "*"}]}))

    def client(self, service: str, key: str, secret: str, token: str | None = None):
        from botocore.config import Config as BotoConfig

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret, aws_session_token=token,
                            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def as_role(self, service: str):
        c = self.client("sts", self.user_key, self.user_secret).assume_role(
            RoleArn=self.role_arn, RoleSessionName="test-reader")["Credentials"]
        return self.client(service, c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])

    def stop(self):
        self.server.stop()


@pytest.fixture(scope="module")
def auth_moto(tmp_path_factory):
    server = AuthMoto(tmp_path_factory.mktemp("moto-auth"))
    yield server
    server.stop()


def test_role_is_assumed_through_sts_and_used_for_every_upload(tmp_path, auth_moto):
    m = auth_moto
    # the configured keys alone may not touch S3
    with pytest.raises(Exception, match="AccessDenied|Access Denied"):
        m.client("s3", m.user_key, m.user_secret).list_buckets()

    sp = Spoolup(tmp_path / "sp", m.url, "role-bucket", **{
        "access-key": m.user_key, "secret-key": m.user_secret, "role": m.role_arn, "object-key": "{name}"})
    try:
        r = sp.cmd("check-config", check=True)
        assert "assumed-role/log-writer/spoolup" in r.stdout  # the identity S3 calls are made as
        files = {"a.log": syslog_lines(2000), "b.log": syslog_lines(28_000, width=220)}  # b: multipart
        for name, data in files.items():
            (sp.spool / name).write_bytes(data)
        r = sp.drain(timeout=120, check=True)
        s3 = m.as_role("s3")
        assert list_keys(s3, "role-bucket") == sorted(files)
        for name, data in files.items():
            assert get(s3, "role-bucket", name) == data
        assert m.user_secret not in r.stdout + r.stderr + sp.cmd("status", "--json").stdout

        # without the role the same keys are refused: the uploads above used the role's credentials
        sp.write_config(role="")
        r = sp.cmd("check-config")
        assert r.returncode == 1 and ("403" in r.stderr or "AccessDenied" in r.stderr), r.stderr
    finally:
        sp.cleanup()


@pytest.mark.parametrize("role, refused, permission", [
    ("no-ledger", "PutObject .spoolup/ledger/", "s3:PutObject on the key '.spoolup/ledger/"),  # segments
    ("no-list", "ListObjectsV2 .spoolup/ledger/", "s3:ListBucket on the bucket (prefix '.spoolup/ledger/"),  # start-up check
])
def test_a_role_without_a_permission_the_ledger_needs_is_refused_clearly_and_loses_nothing(
        tmp_path, auth_moto, role, refused, permission):
    """A role policy written before the ledger (issue 22) may lack what it needs: writing segments
    under .spoolup/ledger/, listing that prefix at start.  AccessDenied is no transient failure:
    spoolup names the refused request and the permission (log, status, /readyz), makes nothing
    visible without its record, and a drain ends (exit 1) instead of waiting; with the permission
    granted everything ships, exactly once."""
    m = auth_moto
    arn = m.role_arn.replace("log-writer", role)
    bucket = f"{role}-bucket"
    sp = Spoolup(tmp_path / "sp", m.url, bucket, **{
        "access-key": m.user_key, "secret-key": m.user_secret, "role": arn, "object-key": "{name}"})
    try:
        files = {"a.log": syslog_lines(2000), "b.log": syslog_lines(28_000, width=220)}  # b: multipart
        for name, data in files.items():
            (sp.spool / name).write_bytes(data)
        r = sp.drain(timeout=120)  # (no --timeout: it ends by itself)
        assert r.returncode == 1, r.stderr[-3000:]
        assert "drain cannot finish: S3 refuses requests" in r.stderr, r.stderr[-3000:]
        assert refused in r.stderr and f"AccessDenied: Access Denied (the credentials need {permission}" in r.stderr
        st = sp.status()
        (q,) = st["quarantined_objects"]
        assert q["code"] == "AccessDenied" and permission in q["message"] and q["key"].startswith(".spoolup/ledger/"), q
        assert permission in st["last_error"]["message"], st["last_error"]
        assert list_keys(m.as_role("s3"), bucket) == []  # nothing visible without its record
        assert m.user_secret not in r.stdout + r.stderr + json.dumps(st)

        # the service says so in /readyz, at once, and keeps it all
        port = free_port()
        sp.write_config(**{"metrics-listen": f"127.0.0.1:{port}"})
        p = sp.start()
        try:
            def not_ready():
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
                except urllib.error.HTTPError as e:
                    body = json.loads(e.read())
                    return body if e.code == 503 and permission in body["checks"]["s3"]["reason"] else None
                except urllib.error.URLError:
                    return None
                return None
            wait_for(not_ready, 60, what="/readyz naming the permission")
            # a drain asked of the running service ends on the refusals too, naming them
            r = sp.drain(timeout=120)
            assert r.returncode == 1, r.stdout + r.stderr[-3000:]
            operation, key = refused.split()
            assert "drain cannot finish: S3 refuses requests" in r.stderr, r.stderr[-3000:]
            assert f": {operation} AccessDenied" in r.stderr and key in r.stderr, r.stderr[-3000:]
            assert permission in r.stderr and m.user_secret not in r.stdout + r.stderr
            assert p.poll() is None, "the service keeps running"
        finally:
            assert sp.stop(p) == 0

        sp.write_config(role=m.role_arn)  # the permission granted (a role that has it)
        r = sp.drain(timeout=120, check=True)
        s3 = m.as_role("s3")
        assert list_keys(s3, bucket) == sorted(files)
        for name, data in files.items():
            assert get(s3, bucket, name) == data, name
    finally:
        sp.cleanup()


def test_role_that_cannot_be_assumed_fails_clearly(tmp_path, auth_moto):
    m = auth_moto
    other = m.role_arn.replace("log-writer", "other")  # exists, but the keys may not assume it
    sp = Spoolup(tmp_path / "sp", m.url, "never-bucket", **{
        "access-key": m.user_key, "secret-key": m.user_secret, "role": other, "object-key": "{name}"})
    try:
        r = sp.cmd("check-config")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "cannot assume the configured role" in r.stderr and "AccessDenied" in r.stderr, r.stderr
        (sp.spool / "x.log").write_bytes(syslog_lines(10))
        r = sp.cmd("drain", "--timeout", "4", timeout=60)
        assert r.returncode == 1
        # the upload process says why (an AccessDenied: refused, retried slowly), the drain ends on it
        # rather than wait, and nothing is dropped
        assert "cannot assume the configured role" in r.stderr and "AccessDenied" in r.stderr, r.stderr[-3000:]
        st = sp.status()
        assert st["last_error"] is not None and st["backlog_bytes"] + st["closed_objects_pending"]["bytes"] > 0
        assert m.user_secret not in json.dumps(st) + r.stdout + r.stderr
    finally:
        sp.cleanup()
