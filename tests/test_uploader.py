"""In-process tests of the upload process's coordinator (spoolup/upload.py Uploader) and of
the object protocol's steps, against a real journal file and a real S3 server (moto, Ceph
RGW): no mocks.  The tests choose the order in which results are harvested, so the
interleavings of issue 18 (key races, stale results) are reproduced deterministically.
"""

from __future__ import annotations

import pytest

from helpers import get, pending_uploads
from uploadkit import Rig, drive, lines, settle

pytestmark = pytest.mark.s3_servers("moto", "rgw")

MiB = 1 << 20
KEY = "app/x.log"


# ---------------------------------------------------------------------------
# issue 18 item 1: KeyTaken with a later object of the key already started


def test_key_taken_while_a_later_object_has_an_upload_moves_both_in_order(make_spoolup, s3, bucket):
    """An object meets a foreign object at its claimed key while the next object of the key
    already has an upload id: both move on (in record order), the later one's upload is
    aborted, nothing else stops.  Before: `contextlib.suppress(S3Error)(abort)` raised
    TypeError inside harvest's transaction -- the process died, and again after every restart."""
    rig = Rig(make_spoolup)
    a_parts = [lines(5 * MiB, "a"), lines(3000, "a-tail")]
    b_parts = [lines(5 * MiB, "b"), lines(2000, "b-tail")]
    a = rig.add(KEY, a_parts)
    b = rig.add(KEY, b_parts)
    up = rig.uploader()
    j = rig.journal
    # claim a; start a + claim b; a's parts + start b
    drive(up, lambda: j.object(b).upload_id is not None
          and all(c.state == "uploaded" for c in j.chunks_of(a)), what="a's parts sent and b started")
    assert j.object(a).final_key == KEY and j.object(a).state == "closed"
    foreign = b"someone else's object\n"
    s3.put_object(Bucket=bucket, Key=KEY, Body=foreign)  # between a's claim and its Complete
    settle(up)  # a's Complete finds it: KeyTaken
    drive(up, lambda: j.object(b).state == "done", what="both objects done")
    assert get(s3, bucket, KEY) == foreign
    assert j.object(a).final_key == f"{KEY}-1" and j.object(b).final_key == f"{KEY}-2"
    assert get(s3, bucket, f"{KEY}-1") == b"".join(a_parts)
    assert get(s3, bucket, f"{KEY}-2") == b"".join(b_parts)
    assert pending_uploads(s3, bucket) == []
    up.close()
