"""End to end with a real syslog-ng: loggen -> syslog-ng (the shipped blocks of
contrib/syslog-ng/spoolup.conf) -> spool -> spoolup -> S3 (moto server).

Each test starts a private syslog-ng (own config, pid, persist and control files
in a temp dir, loopback TCP sources on free ports).  Where syslog-ng renders a
record, a plain file() destination with the same template writes a reference
copy: that is what s3() would have put into its objects, byte for byte.
"""

from __future__ import annotations

import gzip
import re
import socket
import subprocess
import time
from collections import Counter, defaultdict

import pytest

from crashkit import rows
from helpers import free_port, get, list_keys, start_running, wait_for
from sng import SHIPPED_CONF, SyslogNg, count_lines, finish, loggen, require, syntax_check, tcp_source

pytestmark = pytest.mark.e2e

TS = "${S_YEAR}${S_MONTH}${S_DAY}T${S_HOUR}${S_MIN}${S_SEC}"  # one object per second of the sender's clock
LOGGEN_MSG = re.compile(rb"^seq: (\d{10}), thread: (\d{4}), runid: \d+, stamp: \S+ [A-Z]*$")


@pytest.fixture(autouse=True)
def _needs_syslog_ng():
    require("syslog-ng", "loggen")


def host_sources(hosts: dict[str, int], destinations: str) -> str:
    """One TCP source per host; a rewrite gives its messages that HOST (as a relay would)."""
    body = ""
    for host, port in hosts.items():
        body += tcp_source(f"s_{host}", port)
        body += f'rewrite r_{host} {{ set("{host}" value("HOST")); }};\n'
        body += f"log {{ source(s_{host}); rewrite(r_{host}); {destinations} flags(flow-control); }};\n"
    return body


def wait_for_lines(directory, expected: int, sng: SyslogNg) -> None:
    wait_for(lambda: count_lines(directory) >= expected, 120, interval=0.5,
             what=f"{expected} lines from syslog-ng in {directory}\n{sng.log_text()[-2000:]}")
    assert count_lines(directory) == expected


def send_and_drain(sng: SyslogNg, port: int, lines: list[bytes], ref, sp) -> None:
    """Start sng, send `lines` (one syslog message each) over one connection to its TCP source
    on `port`, wait until both the reference file() in `ref` and the spool hold every one, stop
    sng, then drain the spool."""
    try:
        sng.start([port])
        with socket.create_connection(("127.0.0.1", port)) as c:
            for line in lines:
                c.sendall(line)
        wait_for_lines(ref, len(lines), sng)
        wait_for_lines(sp.spool, len(lines), sng)
    finally:
        sng.stop()
    sp.drain(check=True)


# ---------------------------------------------------------------------------


def test_shipped_blocks_parse_on_this_syslog_ng(tmp_path):
    conf = tmp_path / "check.conf"
    conf.write_text(f'@version: 3.38\n@include "{SHIPPED_CONF}"\n' + """
source s_net { network(ip(127.0.0.1) port(0) transport(tcp)); };
destination d_env { spoolup(spool-dir("/var/spool/spoolup") object-key("${HOST}/my-logs")
                            object-key-timestamp("${R_MONTH_ABBREV}${R_DAY}") template("${MESSAGE}\\n")); };
destination d_all { spoolup(spool-dir("/var/spool/spoolup2") file-name("${HOST}/${R_YEAR}${R_MONTH}${R_DAY}.jsonl")
                            object-key("logs/${PROGRAM}") template("$(format-json host='${HOST}' msg=${MESSAGE})\\n")
                            time-reap(30) flush-lines(10) perm(0600) dir-perm(0700) persist-name("spoolup2")); };
destination d_lines { spoolup_lines(spool-dir("/var/spool/spoolup-lines") path("${HOST}/${PROGRAM}.log")
                                    template("${ISODATE} ${HOST} ${MSGHDR}${MESSAGE}\\n")); };
log { source(s_net); destination(d_env); destination(d_all); destination(d_lines); flags(flow-control); };
""")
    r = syntax_check(conf)
    assert r.returncode == 0, r.stdout + r.stderr
    expanded = tmp_path / "expanded.conf"
    r = subprocess.run(["syslog-ng", f"--preprocess-into={expanded}", "-f", str(conf)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = expanded.read_text()
    assert ('template("$(format-json key=\\"${HOST}/my-logs\\" ts=\\"${R_MONTH_ABBREV}${R_DAY}\\" suffix=\\"\\" '
            'msg=$(substr \\"${MESSAGE}\\n\\" 0 -1))\\n")') in text
    for fixed in ("create-dirs(yes)", "time-reap(60)", "time-reap(30)", "fsync(no)", "overwrite-if-older(0)",
                  "mark-mode(none)", 'persist_name("spoolup2")', 'file("/var/spool/spoolup-lines/${HOST}/${PROGRAM}.log"'):
        assert fixed in text, fixed


def test_readme_migration_example_is_valid(tmp_path):
    """README's "Migrating from s3()": the syslog-ng side parses with the shipped blocks, and
    the spoolup.toml beside it loads with the same object-key/timestamp semantics."""
    import tomllib

    from spoolup import config

    readme = (SHIPPED_CONF.parent.parent.parent / "README.md").read_text()
    section = readme[readme.index("## Migrating from s3()"):]
    section = section[:section.index("\n## ", 10)] if "\n## " in section[10:] else section
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    assert [lang for lang, _ in blocks[:3]] == ["", "", "toml"]
    before, after, toml_text = (text for _, text in blocks[:3])
    assert "s3(" in before and "spoolup(" in after
    conf = tmp_path / "after.conf"
    conf.write_text("@version: 3.38\n" + after.replace('"/etc/syslog-ng/spoolup.conf"', f'"{SHIPPED_CONF}"')
                    .replace("log { source(s_net);", "source s_net { network(port(0)); };\nlog { source(s_net);"))
    r = syntax_check(conf)
    assert r.returncode == 0, r.stdout + r.stderr
    raw = tomllib.loads(toml_text)
    raw.update({"spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state")})
    cfg = config.from_mapping(raw)
    assert cfg.format == "envelope" and cfg.object_key == "{key}" and cfg.compression == "gzip"
    # every s3() option of the "before" side is either in the block or in spoolup.toml
    for option in re.findall(r"^\s+([a-z-]+)\(", before, re.M):
        if option == "s3":
            continue
        assert f"{option}(" in after or option in raw, option


def test_envelope_objects_hold_what_syslog_ng_renders(tmp_path, make_spoolup, s3):
    """Tricky messages: the objects hold exactly what syslog-ng's file() writes with the
    same template -- which is what s3() writes (spoolup.conf's substr/format-json chain)."""
    sp = make_spoolup(format="envelope", **{"object-key": "{key}"})
    ref = tmp_path / "ref"
    port = free_port()
    template = "${ISODATE} ${HOST} '${PROGRAM}' ${MESSAGE} end\\n"
    sng = SyslogNg(tmp_path / "sng", tcp_source("s_in", port) + f"""
destination d_spool {{ spoolup(spool-dir("{sp.spool}") object-key("${{HOST}}/${{PROGRAM}}") template("{template}")); }};
destination d_ref {{ file("{ref}/${{HOST}}_${{PROGRAM}}.txt" create-dirs(yes) template("{template}")); }};
log {{ source(s_in); destination(d_spool); destination(d_ref); flags(flow-control); }};
""")
    messages = [
        'quotes " and "" and \\ backslashes \\\\',
        "tab\there, carriage\rreturn, escape \x1b[1m, bell \x07",
        "ünïcödé ✓ 日本語 🚀",
        "",
        "   leading and trailing spaces   ",
        '{"json": "inside", "n": [1, 2]}',
        "$(not a template) ${NOR_THIS} `nor this`",
    ]
    send_and_drain(sng, port, [f"<13>Nov 25 12:00:{i:02d} web01 {'app' if i % 2 else 'db'}[42]: {msg}\n".encode()
                               for i, msg in enumerate(messages)], ref, sp)
    assert list_keys(s3, sp.bucket) == ["web01/app", "web01/db"]
    for prog in ("app", "db"):
        expected = (ref / f"web01_{prog}.txt").read_bytes()
        assert get(s3, sp.bucket, f"web01/{prog}") == expected
    assert sp.status()["dead_letters"]["records"] == 0


def test_object_key_suffix_and_oversize_records_as_s3_makes_them(tmp_path, make_spoolup, s3):
    """The block's object-key-suffix() goes after the index (and before .gz: test_pipeline); a
    record larger than max-object-size is written whole into the open object, which then
    completes (s3())."""
    sp = make_spoolup(format="envelope", **{"object-key": "{key}", "max-object-size": 2000})
    ref = tmp_path / "ref"
    port = free_port()
    sng = SyslogNg(tmp_path / "sng", tcp_source("s_in", port) + f"""
destination d_spool {{ spoolup(spool-dir("{sp.spool}") object-key("${{HOST}}/app") object-key-timestamp("${{S_YEAR}}")
                               object-key-suffix(".log")); }};
destination d_ref {{ file("{ref}/all.txt" create-dirs(yes) template("${{MESSAGE}}\\n")); }};
log {{ source(s_in); destination(d_spool); destination(d_ref); flags(flow-control); }};
""")
    messages = ["small", "B" * 6000, "after the big one", "C" * 3000]
    send_and_drain(sng, port, [f"<13>Nov 25 12:00:00 web01 app[42]: {msg}\n".encode() for msg in messages], ref, sp)
    year = re.match(rb"^\{.*\"ts\":\"(\d{4})\"", next(sp.spool.iterdir()).read_bytes())[1].decode()
    assert list_keys(s3, sp.bucket) == [f"web01/app-{year}-1.log", f"web01/app-{year}.log"]
    expected = (ref / "all.txt").read_bytes().splitlines(keepends=True)
    assert get(s3, sp.bucket, f"web01/app-{year}.log") == b"".join(expected[:2])
    assert get(s3, sp.bucket, f"web01/app-{year}-1.log") == b"".join(expected[2:])
    assert sp.status()["dead_letters"]["records"] == 0


HOSTS = ("web01", "web02", "db01")
CONNECTIONS = 2
ROUNDS = 2
PER_CONNECTION = 8_500  # 3 hosts x 2 rounds x 2 connections x 8,500 = 102,000 messages
LOGGEN_MSG_RUN = re.compile(rb"^seq: (\d{10}), thread: (\d{4}), runid: (\d+), stamp: \S+ [A-Z]*$")


def test_loggen_100k_exactly_once_per_key_with_timestamp_rotation(tmp_path, make_spoolup, s3):
    sp = make_spoolup(format="envelope", **{"object-key": "logs/{key}"})
    ref = tmp_path / "ref"
    hosts = {h: free_port() for h in HOSTS}
    template = f"{TS} ${{HOST}} ${{PROGRAM}} ${{MESSAGE}}\\n"
    sng = SyslogNg(tmp_path / "sng", host_sources(hosts, "destination(d_spool); destination(d_ref);") + f"""
destination d_spool {{ spoolup(spool-dir("{sp.spool}") object-key("${{HOST}}/${{PROGRAM}}")
                               object-key-timestamp("{TS}") template("{template}")); }};
destination d_ref {{ file("{ref}/${{HOST}}.txt" create-dirs(yes) template("{template}")); }};
""")
    total = len(HOSTS) * ROUNDS * CONNECTIONS * PER_CONNECTION
    proc = None
    try:
        sng.start(list(hosts.values()))
        proc = start_running(sp)  # spoolup ships while syslog-ng writes
        for _round in range(ROUNDS):
            # all hosts at once, two connections each (their timestamps interleave); the next
            # round starts in a later second, so every key sees at least two timestamps
            gens = [loggen(port, count=PER_CONNECTION, connections=CONNECTIONS, wait=False)
                    for port in hosts.values()]
            for g in gens:
                finish(g)
            done = int(time.time())
            wait_for(lambda: int(time.time()) > done, 5, interval=0.05, what="the next second")
        wait_for_lines(ref, total, sng)
        wait_for_lines(sp.spool, total, sng)
        r = sp.drain(timeout=180, check=True)  # the running service drains
        assert "drained by the running service" in r.stdout
    finally:
        if proc is not None:
            assert sp.stop(proc) == 0, sp.log_text()[-3000:]
        sng.stop()

    key_re = re.compile(r"^logs/(?P<host>[^/]+)/(?P<prog>prg\d{5})-(?P<ts>\d{8}T\d{6})(?:-(?P<idx>\d+))?$")
    line_re = re.compile(rb"^(\d{8}T\d{6}) (\S+) (prg\d{5}) (.*)$")
    indexes: dict[tuple, list[int]] = defaultdict(list)
    records: dict[str, list[bytes]] = defaultdict(list)
    seqs: dict[str, Counter] = defaultdict(Counter)
    keys = list_keys(s3, sp.bucket)
    for key in keys:
        m = key_re.match(key)
        assert m, f"unexpected key {key!r}"
        host, prog, ts = m["host"], m["prog"], m["ts"]
        assert host in HOSTS
        indexes[(host, prog, ts)].append(int(m["idx"] or 0))
        content = get(s3, sp.bucket, key)
        assert content.endswith(b"\n")
        for line in content.split(b"\n")[:-1]:
            lm = line_re.match(line)
            assert lm, line
            # the key was rendered from the very record it holds
            assert (lm[1].decode(), lm[2].decode(), lm[3].decode()) == (ts, host, prog), (key, line)
            msg = LOGGEN_MSG_RUN.match(lm[4])
            assert msg, line
            seqs[host][(int(msg[3]), int(msg[2]), int(msg[1]))] += 1  # (loggen run, connection, seq)
            records[host].append(line + b"\n")
    assert {h for h, _, _ in indexes} == set(HOSTS)
    for (host, _prog, ts), idx in indexes.items():
        assert sorted(idx) == list(range(len(idx))), (host, ts, idx)  # key, key-1, key-2, ... no gaps
    for host in HOSTS:
        runs = {run for run, _t, _s in seqs[host]}
        assert len(runs) == ROUNDS, (host, runs)
        expected = {(r, t, s) for r in runs for t in range(CONNECTIONS) for s in range(PER_CONNECTION)}
        assert set(seqs[host]) == expected, host  # every loggen sequence number ...
        assert max(seqs[host].values()) == 1, host  # ... exactly once
        assert len({ts for h, _p, ts in indexes if h == host}) >= 2, host  # rotation by timestamp happened
        # byte for byte what syslog-ng renders with the same template (what s3() writes)
        assert sorted(records[host]) == sorted((ref / f"{host}.txt").read_bytes().splitlines(keepends=True))
    assert sum(len(r) for r in records.values()) == total
    closed = Counter(o["close_reason"] for o in rows(sp, "objects"))
    assert closed.get("newer-timestamp", 0) >= len(HOSTS), closed
    assert sp.status()["dead_letters"]["records"] == 0


def test_loggen_gzip_drain_without_service_then_with_it(tmp_path, make_spoolup, s3):
    """Default template ("${MESSAGE}\\n"), compression, max-object-size: the objects of each
    key, in index order, gunzip to exactly syslog-ng's rendering, in order; and they end
    after the records s3() would end them, on the stored (compressed) size."""
    from test_s3_fidelity import s3_objects

    limit = 8 * 1024  # loggen's messages compress well: a few deflate blocks per key
    sp = make_spoolup(format="envelope", compression=True, **{"object-key": "{key}", "max-object-size": limit})
    ref = tmp_path / "ref"
    hosts = {"web01": free_port(), "web02": free_port()}
    per_host = 20_000
    sng = SyslogNg(tmp_path / "sng", host_sources(hosts, "destination(d_spool); destination(d_ref);") + f"""
destination d_spool {{ spoolup(spool-dir("{sp.spool}") object-key("${{HOST}}")); }};
destination d_ref {{ file("{ref}/${{HOST}}.txt" create-dirs(yes) template("${{MESSAGE}}\\n")); }};
""")
    try:
        sng.start(list(hosts.values()))
        gens = [loggen(port, count=per_host, wait=False) for port in hosts.values()]
        for g in gens:
            finish(g)
        wait_for_lines(ref, per_host * len(hosts), sng)
        wait_for_lines(sp.spool, per_host * len(hosts), sng)
        r = sp.drain(timeout=180, check=True)  # no service running: drain does it all itself
        assert "nothing pending" in r.stdout
    finally:
        sng.stop()

    keys = list_keys(s3, sp.bucket)
    for host in hosts:
        mine = [k for k in keys if k == f"{host}.gz" or re.fullmatch(rf"{host}-\d+\.gz", k)]
        n = len(mine)
        assert n >= 3  # max-object-size split the key
        ordered = [f"{host}.gz"] + [f"{host}-{i}.gz" for i in range(1, n)]
        assert sorted(mine) == sorted(ordered)
        stored = [get(s3, sp.bucket, k) for k in ordered]
        content = b"".join(gzip.decompress(b) for b in stored)
        assert content == (ref / f"{host}.txt").read_bytes()
        assert [gzip.decompress(b).splitlines(keepends=True) for b in stored] == s3_objects(
            content.splitlines(keepends=True), limit)
        assert all(len(b) >= limit for b in stored[:-1])
        seqs = [int(LOGGEN_MSG.match(line)[1]) for line in content.splitlines()]
        assert seqs == list(range(per_host))
    assert sorted(keys) == sorted(k for k in keys if k.startswith(tuple(hosts)))

    # the other order: a service runs, and a drain asks it -- nothing is shipped twice
    proc = start_running(sp)
    try:
        r = sp.drain(timeout=120, check=True)
        assert "drained by the running service" in r.stdout
    finally:
        assert sp.stop(proc) == 0
    assert list_keys(s3, sp.bucket) == keys


def test_spool_file_lifecycle_with_syslog_ng_time_reap(tmp_path, make_spoolup, s3):
    """spoolup deletes a spool file once it is shipped, idle for spool-reap AND closed by
    syslog-ng (time-reap); syslog-ng then creates the same path again: a new file, a new
    source, the key's next object.  A file syslog-ng still holds open is never deleted."""
    sp = make_spoolup(format="lines", **{"object-key": "{dir}/{name}", "flush-grace-period": "1s",
                                         "spool-reap": "2s"})
    ref = tmp_path / "ref"
    port_a, port_b = free_port(), free_port()
    sng = SyslogNg(tmp_path / "sng", tcp_source("s_a", port_a) + tcp_source("s_b", port_b) + f"""
rewrite r_web {{ set("web01" value("HOST")); }};
destination d_reaped {{ spoolup_lines(spool-dir("{sp.spool}") path("${{HOST}}/${{PROGRAM}}.log") time-reap(1)); }};
destination d_held {{ spoolup_lines(spool-dir("{sp.spool}") path("held/${{PROGRAM}}.log") time-reap(600)); }};
destination d_ref_b {{ file("{ref}/b.txt" create-dirs(yes) template("${{MESSAGE}}\\n")); }};
log {{ source(s_a); rewrite(r_web); destination(d_reaped); flags(flow-control); }};
log {{ source(s_b); destination(d_held); destination(d_ref_b); flags(flow-control); }};
""")
    reaped = sp.spool / "web01" / "prg00000.log"
    held = sp.spool / "held" / "prg00000.log"
    proc = None
    try:
        sng.start([port_a, port_b])
        proc = start_running(sp)

        # 1: both files written; objects complete after the grace period; web01's file is
        #    closed by syslog-ng after 1 s, and deleted once idle for spool-reap
        loggen(port_a, count=700)
        loggen(port_b, count=300)
        wait_for(lambda: {"web01/prg00000.log", "held/prg00000.log"} <= set(list_keys(s3, sp.bucket)), 60,
                 what="the first objects")
        first = get(s3, sp.bucket, "web01/prg00000.log")
        wait_for(lambda: not reaped.exists(), 60, what="the shipped, closed spool file to be deleted")

        # 2: syslog-ng writes the same path again: a new file, read from its start, shipped
        #    into the key's next object (the first is complete and never reopened)
        loggen(port_a, count=400)
        wait_for(lambda: "web01/prg00000.log-1" in list_keys(s3, sp.bucket), 60, what="the second object")
        wait_for(lambda: not reaped.exists(), 60, what="the second file to be deleted")
        # that reap pass found the held file shipped and idle for longer still; only the
        # write lease (syslog-ng still has it open, time-reap 600 s) kept it
        assert held.exists()

        # 3: syslog-ng closes everything when it stops; then the held file goes too
        sng.stop()
        wait_for(lambda: not held.exists(), 60, what="the held file, closed now, to be deleted")
    finally:
        if proc is not None:
            assert sp.stop(proc) == 0, sp.log_text()[-3000:]
        sng.stop()

    second = get(s3, sp.bucket, "web01/prg00000.log-1")
    assert [int(LOGGEN_MSG.match(x)[1]) for x in first.splitlines()] == list(range(700))
    assert [int(LOGGEN_MSG.match(x)[1]) for x in second.splitlines()] == list(range(400))
    assert get(s3, sp.bucket, "held/prg00000.log") == (ref / "b.txt").read_bytes()
    assert list_keys(s3, sp.bucket) == ["held/prg00000.log", "web01/prg00000.log", "web01/prg00000.log-1"]
    sources = [(s["path"], s["state"]) for s in rows(sp, "sources")]
    # the same path twice: two sources (two inodes), both shipped and deleted
    assert sorted(sources) == [("held/prg00000.log", "reaped"), ("web01/prg00000.log", "reaped"),
                            ("web01/prg00000.log", "reaped")]
    # each deletion came after the object holding the file's bytes was completed
    reaped_at = [s["updated"] for s in rows(sp, "sources", "path = ?", ("web01/prg00000.log",), order_by="id")]
    done_at = [o["done_at"] for o in rows(sp, "objects", "key = ?", ("web01/prg00000.log",), order_by="id")]
    assert len(reaped_at) == len(done_at) == 2
    assert done_at[0] < reaped_at[0] < done_at[1] < reaped_at[1]
