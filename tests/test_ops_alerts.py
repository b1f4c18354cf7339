"""Liveness and S3 health are two facts (issue 14, item 1), and the alert rules of
docs/operations.md, evaluated against what a real `spoolup run` exports in each
situation, fire for what is wrong and only for that."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from helpers import free_port, list_keys, syslog_lines, wait_for
from promql import Scrape, firing
from spoolup.status import LIVENESS_SECONDS

ROOT = Path(__file__).resolve().parent.parent
NOT_EVALUATED = {"SpoolupBacklogGrowing", "SpoolupJournalSlow"}  # node_exporter's metrics; histogram_quantile


def alert_rules() -> list[dict]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("### Alert rules"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)["groups"][0]["rules"]


def two_scrapes(port: int) -> tuple[Scrape, Scrape]:
    before = Scrape.of(port, time.time())
    assert before.samples is not None
    time.sleep(1.0)  # increase() needs two points in time
    return before, Scrape.of(port, time.time())


def failing_but_alive(sp) -> dict:
    """Wait until the upload process has been failing for longer than liveness allows a
    silent process (the lie was: a process in S3 retries looked dead after 10 s)."""
    def ready():
        st = sp.status()
        up = st["service"]["processes"].get("upload")
        return up and st["time"] - up["started"] > LIVENESS_SECONDS + 2 and st["last_error"] and st
    return wait_for(ready, 90, what="the upload process failing for more than the liveness window")


def test_wrong_credentials_are_s3_failing_not_a_dead_upload_process(make_spoolup, checking_moto):
    port = free_port()
    sp = make_spoolup(url=checking_moto.url, **{"metrics-listen": f"127.0.0.1:{port}"})
    (sp.spool / "a.log").write_bytes(syslog_lines(100))
    p = sp.start()
    try:
        st = failing_but_alive(sp)
        up = st["service"]["processes"]["upload"]
        assert up["alive"] is True and up["state"] == "alive"
        health = st["s3_health"]
        assert health["state"] == "failing"
        assert health["last_failure"]["operation"] == "HeadBucket"
        assert health["last_failure"]["code"] == "InvalidAccessKeyId"  # S3's code, not the HEAD's bare "403"
        assert "does not exist in our records" in health["last_failure"]["message"]
        err = st["last_error"]
        assert (err["operation"], err["code"]) == ("HeadBucket", "InvalidAccessKeyId")
        assert "HeadBucket" not in err["message"] and "403" not in err["message"]  # said once, not repeated

        table = sp.cmd("status", check=True).stdout
        assert f"upload pid {up['pid']} alive" in table and "NOT RUNNING" not in table
        assert "S3: FAILING since " in table and "HeadBucket: InvalidAccessKeyId: The AWS Access Key Id" in table

        before, now = two_scrapes(port)
        m = {name: list(v.values())[0] for name, v in now.samples.items() if len(v) == 1}
        assert m["spoolup_upload_process_up"] == 1
        assert m["spoolup_s3_healthy"] == 0
        assert 0 < m["spoolup_s3_failing_since_timestamp_seconds"] <= time.time()
        fired, skipped = firing(alert_rules(), before, now)
        assert skipped == NOT_EVALUATED
        assert fired == {"SpoolupS3Failing"}
    finally:
        assert sp.stop(p) == 0


def test_unreachable_endpoint_is_s3_failing_not_a_dead_upload_process(make_spoolup):
    port = free_port()
    sp = make_spoolup(url=f"http://127.0.0.1:{free_port()}", **{"metrics-listen": f"127.0.0.1:{port}",
                                                                  "s3-timeout": 1})
    (sp.spool / "a.log").write_bytes(syslog_lines(100))
    p = sp.start()
    try:
        st = failing_but_alive(sp)
        assert st["service"]["processes"]["upload"]["alive"] is True
        assert st["s3_health"]["last_failure"]["code"] == "EndpointConnectionError"
        fired, _ = firing(alert_rules(), *two_scrapes(port))
        assert fired == {"SpoolupS3Failing"}
    finally:
        assert sp.stop(p) == 0


def test_healthy_service_fires_nothing_and_a_stopped_one_is_down(make_spoolup, s3):
    port = free_port()
    sp = make_spoolup(**{"object-key": "{name}", "flush-grace-period": "1s", "metrics-listen": f"127.0.0.1:{port}"})
    (sp.spool / "a.log").write_bytes(syslog_lines(100))
    p = sp.start()
    try:
        wait_for(lambda: list_keys(s3, sp.bucket) == ["a.log"], 60, what="the object")
        st = wait_for(lambda: (s := sp.status())["s3_health"]["state"] == "ok" and s, 30, what="S3 health ok")
        assert st["s3_health"]["failing_since"] is None and st["s3_health"]["last_success"] <= st["time"]
        before, now = two_scrapes(port)
        assert list(now.samples["spoolup_s3_healthy"].values()) == [1]
        fired, skipped = firing(alert_rules(), before, now)
        assert skipped == NOT_EVALUATED
        assert fired == set()
    finally:
        assert sp.stop(p) == 0
    gone = Scrape.of(port, time.time())
    fired, _ = firing(alert_rules(), before, gone)
    assert fired == {"SpoolupDown"}
