"""The Ceph RGW fixture itself (tests/localrgw.py): a cluster shared through
shared_rgw() serves S3, is stopped by its reaper when the process that owns it dies
without stopping it (a SIGKILLed pytest), and leaves no daemon and no data behind."""

from __future__ import annotations

import signal
import subprocess

import pytest

import localrgw
from helpers import ACCESS_KEY, SECRET_KEY, s3_client, wait_for


@pytest.mark.slow
def test_a_shared_cluster_is_stopped_and_wiped_when_its_owner_dies(tmp_path):
    localrgw.require()
    owner = subprocess.Popen(["sleep", "600"])
    try:
        info = localrgw.shared_rgw(tmp_path, ACCESS_KEY, SECRET_KEY, owner.pid)
        again = localrgw.shared_rgw(tmp_path, ACCESS_KEY, SECRET_KEY, owner.pid)
        assert again == info, "a second caller gets the same cluster"
        s3 = s3_client(info["url"])
        s3.create_bucket(Bucket="fixture-check")
        s3.put_object(Bucket="fixture-check", Key="k", Body=b"bytes\n")
        assert s3.get_object(Bucket="fixture-check", Key="k")["Body"].read() == b"bytes\n"
        cluster = localrgw.LocalRGW(tmp_path / "rgw", "", "")
        assert len(cluster.leftovers()) == 4, "mon, mgr, osd and radosgw run"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    wait_for(lambda: not cluster.leftovers() and not (tmp_path / "rgw").exists(), 120,
             what="the reaper to stop the cluster and delete its directory")
    assert not (tmp_path / "rgw.json").exists()
