"""Figures of issue 21 item 5: `bandwidth` -- the upload rate `spoolup drain` achieves with
max-bandwidth set, against the cap (measured on the wire by a loopback TCP relay between
spoolup and moto: bytes sent upstream, over the middle 90 % of them); `slowdown` -- requests
per second and requests in flight at the fault proxy (tests/faultproxy.py) before, during and
after a SlowDown storm answered to every request while `spoolup run` uploads."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import MiB, Moto, client, kill_tree, new_bucket, spoolup, spoolup_config, syslog_spool, workdir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


class Relay:
    """A loopback TCP relay counting the bytes the client sends upstream, with their times."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sent: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self.lock:
                        self.sent.append((time.monotonic(), len(data)))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def rate(self, low: float = 0.05, high: float = 0.95) -> float:
        """Bytes per second between the moments `low` and `high` of all bytes had been sent."""
        with self.lock:
            sent = list(self.sent)
        total = sum(n for _, n in sent)
        acc, t0, b0 = 0, None, 0
        for t, n in sent:
            acc += n
            if t0 is None and acc >= low * total:
                t0, b0 = t, acc
            if acc >= high * total:
                return (acc - b0) / (t - t0) if t > t0 else 0.0
        return 0.0


def bandwidth(total: int = 96 * MiB, cap: int = 8 * MiB, threads: int = 8) -> dict:
    with workdir() as base:
        files = syslog_spool(base / "spool", total, 4)
        with Moto(base) as moto:
            relay = Relay(int(moto.url.rsplit(":", 1)[1]))
            bucket = new_bucket()
            client(moto.url).create_bucket(Bucket=bucket)
            cfg = spoolup_config(base, relay.url, bucket, **{"upload-threads": threads, "max-bandwidth": cap})
            start = time.perf_counter()
            r = spoolup("drain", "--config", str(cfg), timeout=3600)
            elapsed = time.perf_counter() - start
            if r.returncode != 0:
                raise RuntimeError(f"drain failed: {r.stderr[-2000:]}")
            achieved = relay.rate()
    ratio = achieved / cap
    print(f"max-bandwidth {cap / MiB:.0f} MiB/s: achieved {achieved / MiB:.2f} MiB/s on the wire, "
          f"ratio achieved/cap {ratio:.3f}", flush=True)
    return {"figure": "max-bandwidth", "bytes": sum(files.values()), "cap_Bps": cap, "achieved_Bps": achieved,
            "ratio": ratio, "drain_s": elapsed, "goal": "0.9 .. 1.1"}


def slowdown(before: float = 5.0, storm: float = 8.0, after: float = 8.0, threads: int = 8) -> dict:
    from faultproxy import FaultProxy

    with workdir() as base:
        files = {f"f{i:03d}.log": 20_000 for i in range(400)}
        syslog_spool(base / "spool", sum(files.values()), len(files))
        with Moto(base) as moto:
            proxy = FaultProxy(moto.url).start()
            bucket = new_bucket()
            client(moto.url).create_bucket(Bucket=bucket)
            cfg = spoolup_config(base, proxy.url, bucket, **{"upload-threads": threads, "flush-grace-period": "1s",
                                                              "retry-max-delay": 2.0, "conditional-writes": "off"})
            p = subprocess.Popen([sys.executable, "-m", "spoolup", "run", "--config", str(cfg)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 60
                while proxy.count() < 20 and time.monotonic() < deadline:
                    time.sleep(0.1)
                t0 = time.time()
                time.sleep(before)
                t1 = time.time()
                proxy.add(action="error", status=503, code="SlowDown")
                time.sleep(storm)
                proxy.clear()
                t2 = time.time()
                time.sleep(after)
                t3 = time.time()
            finally:
                kill_tree(p)
                proxy.stop()
            log = proxy.requests()

    def window(a: float, b: float) -> dict:
        rs = [r for r in log if a <= r.at < b]
        return {"requests_per_s": len(rs) / (b - a), "max_in_flight": max((r.concurrent for r in rs), default=0),
                "mean_in_flight": sum(r.concurrent for r in rs) / len(rs) if rs else 0.0}

    storm_w = window(t1, t2)
    # the last half of the storm: once the limit is down
    late = window(t1 + storm / 2, t2)
    out = {"figure": "SlowDown storm", "threads": threads, "before": window(t0, t1), "storm": storm_w,
           "storm_second_half": late, "after": window(t2, t3)}
    for name in ("before", "storm", "storm_second_half", "after"):
        w = out[name]
        print(f"{name}: {w['requests_per_s']:.1f} requests/s, in flight at the proxy: max {w['max_in_flight']}, "
              f"mean {w['mean_in_flight']:.2f}", flush=True)
    return out
