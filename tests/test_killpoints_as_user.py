"""Kill-point tests of tests/test_killpoints.py once more, with spoolup running as an
unprivileged user without capabilities (tests/helpers.py TestUser), as the shipped systemd
unit runs it: its state dir is its own, the spool is shared with it as syslog-ng would set
it up (root's files, group-readable, in a setgid group-writable directory).  Every
invariant must hold there too: crash, restart, each spool byte exactly once.

Permissions are this file's point, not the kill points (test_killpoints runs every one):
here run the points where a file changes hands after a crash -- chunk files truncated and
re-read (invariant 1), an upload adopted, a part's ETag and the ledger's records journaled,
chunk files of completed objects removed (the upload points test_killpoints also runs on
ramfs), the upload process restarted by the service, a foreign object at the claimed key,
and the reaper deleting a shipped spool file on either side of the kill."""

from __future__ import annotations

import pytest

import test_killpoints as kp

pytestmark = pytest.mark.s3_servers("moto")
STATE_FILESYSTEMS = ("disk",)

INGEST_POINTS = [("after-chunk-write", "multipart"), ("after-batch-commit", "gzip")]


@pytest.fixture
def make_spoolup(make_spoolup, test_user):
    """Every spoolup of these tests runs as the test user."""

    def make(**options):
        return make_spoolup(user=test_user, **options)

    return make


@pytest.mark.parametrize("point,shape", INGEST_POINTS, ids=[f"{p}-{s}" for p, s in INGEST_POINTS])
def test_invariant1_ingest_killed_as_the_user(make_spoolup, s3, point, shape):
    kp.test_invariant1_ingest_killed_between_chunk_write_and_commit(make_spoolup, s3, point, shape)


@pytest.mark.parametrize("point,shape", kp.RAMFS_UPLOAD_POINTS, ids=[f"{p}-{s}" for p, s in kp.RAMFS_UPLOAD_POINTS])
def test_upload_killed_with_the_service_as_the_user(make_spoolup, s3, point, shape):
    kp.upload_killed_with_the_service(make_spoolup, s3, point, shape)


def test_upload_process_killed_and_restarted_as_the_user(make_spoolup, s3):
    kp.test_upload_process_killed_and_restarted_by_the_service(make_spoolup, s3, "after-upload-part")


def test_foreign_object_at_the_claimed_key_as_the_user(make_spoolup, s3):
    kp.test_invariant5_foreign_object_at_the_claimed_key(make_spoolup, s3, "multipart")


@pytest.mark.parametrize("point", ["before-reap-unlink", "after-reap-unlink"])
def test_killed_around_deleting_a_shipped_spool_file_as_the_user(make_spoolup, s3, point):
    kp.test_invariant6_killed_around_deleting_a_shipped_spool_file(make_spoolup, s3, point)
