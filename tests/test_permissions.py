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


def test_a_drain_ends_on_refusals_only_when_they_hold_back_everything_left(tmp_path):
    """Journal.refusals_holding, which ends a foreground drain: the refusals made since the drain
    started, when every object it waits for is held by one (or one of object 0 holds them all);
    none while anything left may still ship, or when the refusals are older than the drain."""
    import json
    import time

    from spoolup.journal import REFUSED_OBJECTS_META, Batch, Journal, ObjectRow

    j = Journal.open(tmp_path / "journal.sqlite", fsync=False)
    now = time.time()
    batch = Batch()
    for oid in (1, 2, 3):
        batch.new_objects.append(ObjectRow(oid, f"k{oid}", "", "open", None, None, None, None, 10, 1, now, now))
        batch.closed[oid] = ("test", now)
    j.commit_batch(batch)

    def refused(*entries):
        with j.transaction():
            j.set_meta(REFUSED_OBJECTS_META, json.dumps([{"object_id": oid, "key": f"k{oid}", "operation": "PutObject",
                                                          "code": "AccessDenied", "message": "m", "since": since}
                                                         for oid, since in entries]))

    assert j.refusals_holding(3, now - 1) == []  # nothing refused
    refused((1, now), (2, now))
    assert j.refusals_holding(3, now - 1) == []  # object 3 may still ship
    assert [q["object_id"] for q in j.refusals_holding(2, now - 1)] == [1, 2]  # the drain waits for 1 and 2 only
    refused((1, now), (2, now), (3, now))
    assert len(j.refusals_holding(3, now - 1)) == 3
    assert j.refusals_holding(3, now + 1) == []  # refusals older than the drain (a previous process's)
    refused((0, now))  # the ledger's segment, or the reconcile before any upload: holds back all
    assert [q["object_id"] for q in j.refusals_holding(3, now - 1)] == [0]
    j.close()
