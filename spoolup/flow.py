"""Flow control of the upload process's S3 requests: a bandwidth cap (max-bandwidth) and
adaptive concurrency (fewer requests in flight while S3 says SlowDown, more as they succeed).

Both act per HTTP attempt, through botocore's events on the S3 client, so that botocore's
own retries are seen and shaped too: `before-send` takes a slot (and, with a cap, wraps the
request body), `response-received` gives the slot back with what S3 answered.  A throttle
retried by botocore is thus seen by spoolup even when the retry succeeds, and a slot is not
held while botocore sleeps between attempts.

Only the threads of the upload coordinator's pool take slots (`worker_thread`, its pool
initializer): the upload process's main thread (reconcile, capability probe) is never
held behind its own workers, and with no throttle every worker always finds a slot.

With the options at their defaults nothing here is on the path of a body byte: there is no
bandwidth limiter and bodies are sent as botocore gives them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# what S3 (and S3-compatible stores) answer when they want fewer requests
THROTTLE_STATUS = frozenset({429, 503})
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                            "TooManyRequests", "RequestThrottled", "ServiceUnavailable"})

_local = threading.local()


def worker_thread() -> None:
    """Pool initializer: requests made on this thread take a concurrency slot."""
    _local.gated = True


class TokenBucket:
    """`rate` bytes per second shared by every thread, with a burst of `burst` bytes.

    take(n) charges n bytes and sleeps until the bucket has paid them: tokens may go into
    debt, and a caller sleeps until its debt is repaid at `rate`, so the bytes sent over any
    long period are rate * time + burst, whatever the number of threads and block sizes."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else min(max(rate / 20, 64 * 1024), 1 << 20))
        self.tokens = 0.0  # starts empty: a catch-up begins at the cap, not with a burst
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class LimitedBody:
    """A request body whose reads are paid for from a TokenBucket (what urllib3 reads is
    what goes on the wire); seek/tell go to the file, so botocore can rewind it for a retry."""

    def __init__(self, raw: Any, bucket: TokenBucket):
        self._raw = raw
        self._bucket = bucket

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._bucket.take(len(data))
        return data

    def seek(self, *args: Any) -> int:
        return self._raw.seek(*args)

    def tell(self) -> int:
        return self._raw.tell()

    def __getattr__(self, name: str) -> Any:  # anything else a file has (name, mode, fileno...)
        return getattr(self._raw, name)


class Concurrency:
    """AIMD on the number of requests in flight: at most `limit` at a time; a throttle halves
    the limit (at least 1), `limit` successes in a row add 1, up to `ceiling` (upload-threads).

    A throttle lowers the limit only once per generation: the answers to requests sent
    before the last decrease say nothing about the lowered limit (several requests in
    flight throttled together halve once, not once each)."""

    def __init__(self, ceiling: int):
        self.ceiling = max(1, int(ceiling))
        self.limit = self.ceiling
        self.inflight = 0
        self.generation = 0
        self.successes = 0
        self.throttles = 0  # in total (tests, logs)
        self.cond = threading.Condition()

    def acquire(self) -> int:
        """Wait for a slot; returns the generation it was taken in."""
        with self.cond:
            while self.inflight >= self.limit:
                self.cond.wait()
            self.inflight += 1
            return self.generation

    def release(self, generation: int, outcome: str) -> None:
        """outcome: "throttled", "ok", or "other" (an error or a transport failure: neither)."""
        with self.cond:
            self.inflight -= 1
            if outcome == "throttled":
                self.throttles += 1
                self.successes = 0
                if generation == self.generation and self.limit > 1:
                    self.limit = max(1, self.limit // 2)
                    self.generation += 1
            elif outcome == "ok" and self.limit < self.ceiling:
                self.successes += 1
                if self.successes >= self.limit:
                    self.successes = 0
                    self.limit += 1
                    self.generation += 1
            self.cond.notify_all()


def outcome_of(response_dict: dict | None, parsed: dict | None, exception: BaseException | None) -> str:
    if exception is not None or response_dict is None:
        return "other"
    status = int(response_dict.get("status_code") or 0)
    code = str(((parsed or {}).get("Error") or {}).get("Code") or "")
    if status in THROTTLE_STATUS or code in THROTTLE_CODES:
        return "throttled"
    return "ok" if status < 300 else "other"


class Flow:
    """The flow control of one S3 client: installed on its events by `install`."""

    def __init__(self, ceiling: int, max_bandwidth: int = 0):
        self.concurrency = Concurrency(ceiling)
        self.bandwidth = TokenBucket(max_bandwidth) if max_bandwidth else None

    def before_send(self, request: Any = None, **_kw: Any) -> None:
        if getattr(_local, "gated", False):
            held = getattr(_local, "held", None)
            if held is not None:  # the last attempt ended without response-received (botocore raised)
                self.concurrency.release(held, "other")
            _local.held = self.concurrency.acquire()
        if self.bandwidth is not None and request is not None:
            body = getattr(request, "body", None)
            if body is not None and hasattr(body, "read") and not isinstance(body, LimitedBody):
                request.body = LimitedBody(body, self.bandwidth)

    def response_received(self, response_dict: dict | None = None, parsed_response: dict | None = None,
                          exception: BaseException | None = None, **_kw: Any) -> None:
        self._release(outcome_of(response_dict, parsed_response, exception))

    def call_failed(self, **_kw: Any) -> None:
        self._release("other")

    def _release(self, outcome: str) -> None:
        held = getattr(_local, "held", None)
        if held is not None:
            _local.held = None
            self.concurrency.release(held, outcome)


def install(client: Any, ceiling: int, max_bandwidth: int = 0) -> Flow:
    """Shape the requests `client` (a botocore S3 client) sends: see the module's docstring."""
    flow = Flow(ceiling, max_bandwidth)
    events = client.meta.events
    events.register("before-send.s3", flow.before_send)
    events.register("response-received.s3", flow.response_received)
    events.register("after-call-error.s3", flow.call_failed)
    return flow
