"""The IAM permission each S3 request spoolup makes needs: named when S3 answers AccessDenied.

AccessDenied is a refusal that sending the request again cannot cure (protocol.PERMANENT_CODES):
only an operator granting the permission can.  S3's own message ("Access Denied") does not say
which permission is missing; a role or bucket policy written by hand often lacks one that a newer
spoolup needs (issue 22's ledger: PutObject, GetObject and ListObjectsV2 under
`<prefix>.spoolup/ledger/`).  So every AccessDenied spoolup reports -- in the log, `status`'s
`last_error` and quarantined objects, /readyz -- says which permission that request needs and on
what.  docs/operations.md ("IAM permissions") lists them all; tests/test_docs.py keeps the two
in step.
"""

from __future__ import annotations

# S3 operation (as spoolup names it in its errors) -> the IAM action it needs
NEEDS: dict[str, str] = {
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "ListParts": "s3:ListMultipartUploadParts",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject",
    "CreateBucket": "s3:CreateBucket",
    "PutObjectRetention": "s3:PutObjectRetention",
    "PutObjectLegalHold": "s3:PutObjectLegalHold",
    "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
}
# requests on the bucket itself (their `key`, if any, is a listing's prefix)
BUCKET_LEVEL = frozenset({"ListObjectsV2", "HeadBucket", "ListMultipartUploads", "CreateBucket",
                          "GetObjectLockConfiguration"})


def needed(op: str, key: str | None) -> str | None:
    """What request `op` on `key` needs, in words ("s3:ListBucket on the bucket (prefix
    'logs/.spoolup/ledger/a/')"); None for an operation not in the table."""
    action = NEEDS.get(op)
    if action is None:
        return None
    if op in BUCKET_LEVEL:
        where = "the bucket" + (f" (prefix {key!r})" if key else "")
    else:
        where = f"the key {key!r}" if key else "the bucket's objects"
    return f"{action} on {where}"


def explain(op: str, key: str | None, message: str) -> str:
    """S3's message for an AccessDenied, followed by the permission the request needs."""
    need = needed(op, key)
    return f"{message} (the credentials need {need})" if need else message
