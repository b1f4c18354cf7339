"""Time in object keys (spoolup/keytime.py, issue 21 item 2): strftime fields in a lines
object-key, rendered at ingest time in key-timezone; the static prefix every key starts with;
the option checks (exit 2 naming the option) and check-config's warning about objects whose
life nothing bounds."""

from __future__ import annotations

import calendar
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from spoolup import config, keys, keytime
from spoolup.scan import Source

NOV_25_2026_2330_UTC = calendar.timegm((2026, 11, 25, 23, 30, 5, 0, 0, 0))


def _src(path: str, ident: int = 1) -> Source:
    return Source(id=ident, dev=1, ino=ident, path=path, key_path=path, offset=0, size=0, mtime=0.0,
                  state="active", error=None)


def _cfg(tmp_path, **options):
    return config.from_mapping({"bucket": "logs", "spool-dir": str(tmp_path / "spool"),
                                "state-dir": str(tmp_path / "state"), **options})


def test_fields_render_in_key_timezone_and_paths_are_never_strftime_input():
    template = "logs/dt=%Y-%m-%d/hour=%H/{name}"
    utc = keytime.KeyTime(template, "UTC", "", "local")
    berlin = keytime.KeyTime(template, "Europe/Berlin", "", "local")
    assert utc.key(_src("web01/app.log"), NOV_25_2026_2330_UTC) == "logs/dt=2026-11-25/hour=23/app.log"
    assert berlin.key(_src("web01/app.log"), NOV_25_2026_2330_UTC) == "logs/dt=2026-11-26/hour=00/app.log"
    # a file name holding "%" is text, not a field; "%%" in the template is one literal %
    odd = keytime.KeyTime("100%%/%Y/{path}", "UTC", "", "local")
    assert odd.key(_src("a/%Y-%d.log"), NOV_25_2026_2330_UTC) == "100%/2026/a/%Y-%d.log"
    # the key of a file follows the clock: the next hour is another key
    assert utc.key(_src("web01/app.log"), NOV_25_2026_2330_UTC + 1800) == "logs/dt=2026-11-26/hour=00/app.log"
    # without fields, the key rendered when the file was found (src.key) is used as it is
    plain = keytime.KeyTime("logs/{name}", "UTC", "", "local")
    src = _src("x.log")
    src.key = "logs/x.log"
    assert not plain.timed and plain.key(src, NOV_25_2026_2330_UTC) == "logs/x.log"


FIELD = st.sampled_from(["%Y", "%m", "%d", "%H", "%M", "%j", "%B", "%a", "%%", "%-d", "%Z", "%s", "%D"])
TEXT = st.text(st.sampled_from("abz/=-_.% "), min_size=0, max_size=6).map(lambda t: t.replace("%", "%%"))
PLACEHOLDER = st.sampled_from(["{path}", "{dir}", "{name}"])
TEMPLATE = st.lists(st.one_of(FIELD, TEXT, PLACEHOLDER), min_size=1, max_size=8).map("".join)
PATHS = st.text(st.sampled_from("ab%Y/._-é"), min_size=1, max_size=12).filter(lambda p: not p.startswith("/"))
ZONES = st.sampled_from(["UTC", "local", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu"])


@settings(max_examples=300, deadline=None)
@given(TEMPLATE, PATHS, st.integers(1_000_000_000, 4_000_000_000), ZONES)  # 2001 to 2096
def test_every_key_starts_with_the_static_prefix(template, path, t, zone):
    """spoolup lists pending uploads, and makes its own scratch keys, under static_prefix(): it
    stops at the first placeholder or strftime field, so every key rendered at any time, for
    any path, starts with it (a prefix holding "%Y" would list nothing and miss uploads)."""
    kt = keytime.KeyTime(template, zone, "", "local")
    src = _src(path)
    src.key = keys.render_lines(template, path)
    key = kt.key(src, float(t))
    assert key.startswith(keys.static_prefix(template))
    if kt.timed:
        least, most = keytime.growth(template, zone)
        assert len(src.key.encode()) + least <= len(key.encode()) <= len(src.key.encode()) + most


def test_static_prefix_stops_at_the_first_field():
    assert keys.static_prefix("logs/dt=%Y-%m-%d/hour=%H/{name}") == "logs/dt="
    assert keys.static_prefix("logs/{name}/%Y") == "logs/"
    assert keys.static_prefix("%Y/{name}") == ""
    assert keys.static_prefix("logs/{name}") == "logs/"


def test_timestamp_stays_in_local_time_unless_key_timezone_is_set(tmp_path):
    cfg = _cfg(tmp_path, **{"object-key-timestamp": "%Y%m%d%H"})
    assert cfg.key_timezone == "UTC" and cfg.timestamp_zone == "local"  # keys of earlier versions unchanged
    set_ = _cfg(tmp_path, **{"object-key-timestamp": "%Y%m%d%H", "key-timezone": "Asia/Kathmandu"})
    assert set_.timestamp_zone == "Asia/Kathmandu"
    kt = keytime.KeyTime(set_.object_key, set_.key_timezone, set_.object_key_timestamp, set_.timestamp_zone)
    assert kt.timestamp(NOV_25_2026_2330_UTC) == "2026112605"  # +05:45


def test_key_length_rule_counts_fields_at_their_longest_and_shortest(tmp_path):
    # %B is up to 9 bytes ("September"): the room a found file's key must leave grows by 7
    cfg = _cfg(tmp_path, **{"object-key": "logs/%B/{name}"})
    assert cfg.key_room == keys.INDEX_ROOM + 7
    # the shortest key is the one with the fields at their shortest ("May": 3 bytes)
    name = "x" * (keys.MAX_KEY_BYTES - keys.INDEX_ROOM - len("/May/") - 1)
    _cfg(tmp_path, **{"object-key": name + "/%B/{name}"})  # one byte of {name}: fits
    with pytest.raises(config.ConfigError) as e:
        _cfg(tmp_path, **{"object-key": name + "/%B/%B{name}"})
    assert e.value.option == "object-key"


@pytest.mark.parametrize("options, option, says", [
    ({"max-object-age": 0}, "max-object-age", "more than 0"),
    ({"max-object-age": -5}, "max-object-age", "more than 0"),
    ({"max-object-age": "-1h"}, "max-object-age", "expected minutes"),
    ({"max-object-age": "soon"}, "max-object-age", "expected minutes"),
    ({"key-timezone": "Mars/Olympus_Mons"}, "key-timezone", "IANA"),
    ({"key-timezone": ""}, "key-timezone", "IANA"),
    ({"object-key": "logs/%Q/{name}"}, "object-key", "'%Q'"),
    ({"object-key": "logs/100%/{name}"}, "object-key", "'%/'"),
    ({"object-key": "logs/{name}%"}, "object-key", "a literal % is written %%"),
    ({"object-key": "logs/%n{name}"}, "object-key", "'%n'"),
    ({"object-key": "logs/%f/{name}"}, "object-key", "'%f'"),
])
def test_bad_values_exit_2_naming_the_option(tmp_path, options, option, says):
    path = tmp_path / "spoolup.toml"
    lines = {"bucket": "logs", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"), **options}
    path.write_text("".join(f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {v}\n"
                            for k, v in lines.items()))
    r = subprocess.run([sys.executable, "-m", "spoolup", "check-config", "--no-s3", "--config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"option '{option}'" in r.stderr and says in r.stderr, r.stderr


def test_good_values(tmp_path):
    assert _cfg(tmp_path, **{"max-object-age": "90s"}).max_age_seconds == 90.0
    assert _cfg(tmp_path, **{"max-object-age": 1.5}).max_age_seconds == 90.0
    assert _cfg(tmp_path, **{"max-object-age": ""}).max_age_seconds is None
    assert _cfg(tmp_path).max_age_seconds is None  # off by default, as in s3()
    assert _cfg(tmp_path, **{"key-timezone": "local"}).key_timezone == "local"
    assert _cfg(tmp_path, **{"key-timezone": "utc"}).key_timezone == "UTC"
    # in envelope a % in object-key is literal text (the key is syslog-ng's template)
    assert _cfg(tmp_path, format="envelope", **{"object-key": "100%/{key}"}).object_key == "100%/{key}"


def _check_config(tmp_path, **options) -> subprocess.CompletedProcess:
    path = tmp_path / "spoolup.toml"
    lines = {"bucket": "logs", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"), **options}
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in lines.items()))
    return subprocess.run([sys.executable, "-m", "spoolup", "check-config", "--no-s3", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


UNBOUNDED = "# warning: max-object-age: nothing bounds how long an object of a busy spool file stays open"


@pytest.mark.parametrize("options, warned", [
    ({}, True),  # flush-grace-period bounds idle objects only
    ({"flush-grace-period": "1m"}, True),
    ({"max-object-age": "1h"}, False),
    ({"object-key-timestamp": "%Y%m%d%H"}, False),
    ({"object-key": "logs/%Y%m%d/{name}"}, False),
    ({"max-object-size": "1GiB"}, False),
    ({"format": "envelope"}, False),  # time comes with each record, rendered by syslog-ng
])
def test_check_config_warns_when_nothing_bounds_an_objects_life(tmp_path, options, warned):
    r = _check_config(tmp_path, **options)
    assert r.returncode == 0, r.stderr
    assert (UNBOUNDED in r.stdout) is warned, r.stdout
