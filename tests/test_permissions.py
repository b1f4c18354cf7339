"""The permission named with an AccessDenied (spoolup/permissions.py): one for every S3 request
spoolup makes, and every one of them in docs/operations.md's "IAM permissions"."""

from __future__ import annotations

import ast
from pathlib import Path

import botocore.exceptions

from spoolup import permissions
from spoolup.s3 import translate

ROOT = Path(__file__).resolve().parent.parent
NEEDS_NOTHING = {"GetCallerIdentity"}  # (sts:GetCallerIdentity is allowed to every caller)


def operations_translated() -> set[str]:
    """Every operation name spoolup's code gives translate() (the S3 requests it makes)."""
    ops: set[str] = set()
    for path in (ROOT / "spoolup").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "translate" and len(node.args) > 1:
                ops.update(c.value for c in ast.walk(node.args[1])
                           if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return ops


def test_every_request_spoolup_makes_has_its_permission():
    ops = operations_translated()
    assert {"PutObject", "ListObjectsV2", "GetObject", "CompleteMultipartUpload"} <= ops, ops  # (the scan works)
    assert ops - NEEDS_NOTHING - set(permissions.NEEDS) == set()


def test_operations_md_lists_every_permission():
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("### IAM permissions"):text.index("## Run it under systemd")]
    for action in set(permissions.NEEDS.values()):
        assert f"`{action}`" in section, action


def test_access_denied_says_what_the_request_needs():
    def denied(op: str, key: str | None):
        e = botocore.exceptions.ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
            op)
        return translate(e, op, key)

    e = denied("PutObject", "logs/.spoolup/ledger/a/000000000001.json")
    assert e.code == "AccessDenied" and e.detail == (
        "Access Denied (the credentials need s3:PutObject on the key 'logs/.spoolup/ledger/a/000000000001.json')")
    assert str(e).startswith("PutObject logs/.spoolup/ledger/a/000000000001.json: AccessDenied: Access Denied (")
    assert denied("ListObjectsV2", "logs/.spoolup/ledger/a/").detail == (
        "Access Denied (the credentials need s3:ListBucket on the bucket (prefix 'logs/.spoolup/ledger/a/'))")
    assert denied("ListMultipartUploads", None).detail.endswith("need s3:ListBucketMultipartUploads on the bucket)")
    # other errors keep S3's words as they are
    other = botocore.exceptions.ClientError(
        {"Error": {"Code": "SlowDown", "Message": "Reduce your request rate."}}, "PutObject")
    assert translate(other, "PutObject", "k").detail == "Reduce your request rate."
