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
