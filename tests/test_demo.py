"""The README's first command: `spoolup demo` runs the real service against an
embedded moto server and checks every object against the demo spool."""

import subprocess
import sys


def test_demo_ships_the_demo_spool_byte_exact(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spoolup", "demo", "--dir", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "aws s3 ls --recursive s3://spoolup-demo" in out
    for rel in ("web01/nginx.log", "web02/nginx.log", "db01/postgres.log", "app/api.log"):
        assert f"verified: {rel} ->" in out and "MISMATCH" not in out
    assert out.count("byte-exact") == 4
    assert "logs/app/api.log-1" in out  # max-object-size made the big file several objects
    assert "spoolup run exited with 0" in out


def test_demo_without_dir_leaves_nothing_in_tmp(tmp_path):
    """Issue 14, item 9: each demo run left its work dir (16 MB) in /tmp."""
    import os

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run([sys.executable, "-m", "spoolup", "demo"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("byte-exact") == 4
    assert "work dir removed" in r.stdout
    assert sorted(p.name for p in tmp.iterdir()) == []
