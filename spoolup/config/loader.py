"""The Config value (every option typed, plus derived values) and how it is loaded: read the
TOML file, parse each option with its parser, fill defaults, check across options."""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolup import keys, keytime, ledger
from spoolup.config.options import (MASKED_OPTIONS, OPTIONS, OPTIONS_BY_NAME, REQUIRED, SECRET_OPTIONS, SIZE_OPTIONS,
                                    TABLE_OPTIONS)
from spoolup.config.validate import ConfigError, check_cross_option, unknown_option
from spoolup.config.values import COMPRESSION_SUFFIXES, format_size, split_proxy, toml_value


@dataclass(frozen=True)
class Config:
    url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    role: str
    object_key: str
    object_key_timestamp: str
    object_key_suffix: str
    template: str
    compression: str
    compresslevel: int
    chunk_size: int
    max_object_size: int
    upload_threads: int
    max_pending_uploads: int
    flush_grace_period: float
    storage_class: str
    canned_acl: str
    server_side_encryption: str
    kms_key: str
    content_type: str
    metadata: dict
    tags: dict
    max_object_age: float | None
    key_timezone: str
    spool_dir: Path
    state_dir: Path
    format: str
    fsync: bool
    spool_reap: float
    session_token: str
    poll_interval: float
    s3_timeout: float
    retry_max_delay: float
    quarantine_retry: float
    max_record_size: int
    max_open_files: int
    shutdown_timeout: float
    conditional_writes: str
    log_level: str
    log_format: str
    log_file: str
    metrics_listen: str
    # connection settings (issue 21 item 3)
    ca_file: str
    tls_verify: bool
    proxy: str
    addressing_style: str
    profile: str
    role_external_id: str
    sts_endpoint: str
    agent_id: str
    # opts-flow (issue 21 items 5, 6)
    max_bandwidth: int = 0
    object_lock_mode: str = ""
    object_lock_retain: float = 0.0
    object_lock_legal_hold: bool = False
    content_md5: str = "auto"
    checksum_algorithm: str = "auto"  # issue 22 item 6
    source: Path | None = None
    written: tuple[tuple[str, Any], ...] = ()  # (option, value) as written in the file, for check-config

    # ---- derived values ----
    @property
    def key_suffix(self) -> str:
        return COMPRESSION_SUFFIXES[self.compression]

    @functools.cached_property
    def key_room(self) -> int:
        """lines: the bytes a final key can add to the key rendered from a spool file's path
        (timestamp, index, object-key-suffix, .gz/.zst); envelope: index and .gz/.zst."""
        if self.format == "envelope":
            return keys.key_room(0, self.key_suffix)
        zone = self.timestamp_zone
        ts_bytes = (keys.timestamp_bytes(self.object_key_timestamp) if zone == "local"
                    else keytime.longest(self.object_key_timestamp, zone))
        # the rendered key is checked with its strftime fields as written: room for what they can add
        return (keys.key_room(ts_bytes, self.object_key_suffix + self.key_suffix)
                + max(0, keytime.growth(self.object_key, self.key_timezone)[1]))

    @property
    def max_age_seconds(self) -> float | None:
        """max-object-age in seconds (None: off)."""
        return None if self.max_object_age is None else self.max_object_age * 60.0

    @property
    def timestamp_zone(self) -> str:
        """The zone object-key-timestamp is rendered in: key-timezone when the file sets it, else
        local time, as before key-timezone existed (keys already written keep their form)."""
        return self.key_timezone if any(n == "key-timezone" for n, _ in self.written) else "local"

    @functools.cached_property
    def agent(self) -> str:
        """The agent id the ledger is written under (agent-id, else one derived from the host
        name and spool-dir: it survives the loss of the state dir)."""
        return self.agent_id or ledger.default_agent_id(self.spool_dir)

    @property
    def grace_seconds(self) -> float:
        return self.flush_grace_period * 60.0

    @property
    def spool_reap_seconds(self) -> float:
        return self.spool_reap * 60.0

    @property
    def object_lock(self) -> bool:
        """Does spoolup put Object Lock settings on its objects (the bucket must have Object Lock)?"""
        return bool(self.object_lock_mode or self.object_lock_legal_hold)

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite"

    @property
    def chunk_dir(self) -> Path:
        return self.state_dir / "chunks"

    @property
    def deadletter_dir(self) -> Path:
        return self.state_dir / "dead-letter"

    @property
    def secrets(self) -> tuple[str, ...]:
        proxy_credentials = split_proxy(self.proxy)[1] if self.proxy else ""
        password = proxy_credentials.partition(":")[2]
        return tuple(s for s in (self.secret_key, self.session_token, proxy_credentials, password,
                                 urllib.parse.unquote(password)) if s)

    def value(self, name: str) -> Any:
        return getattr(self, OPTIONS_BY_NAME[name].attr)

    def masked(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for check-config and status."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            v = self.value(opt.name)
            if opt.name in SECRET_OPTIONS and v:
                v = "********"
            elif opt.name in MASKED_OPTIONS and v:
                v = MASKED_OPTIONS[opt.name](v)
            elif isinstance(v, Path):
                v = str(v)
            out[opt.name] = v
        return out

    def as_written(self) -> dict[str, str]:
        """Each option as TOML text the way the file wrote it ("5GiB", "20s"), defaults as the
        reference shows them; secrets masked.  For check-config."""
        written = dict(self.written)
        out: dict[str, str] = {}
        for opt in OPTIONS:
            if opt.name in SECRET_OPTIONS and self.value(opt.name):
                out[opt.name] = toml_value("********")
            elif opt.name in MASKED_OPTIONS and self.value(opt.name):
                out[opt.name] = toml_value(MASKED_OPTIONS[opt.name](self.value(opt.name)))
            elif opt.name in written:
                out[opt.name] = toml_value(written[opt.name])
            elif opt.name in SIZE_OPTIONS and opt.default is not REQUIRED:
                out[opt.name] = toml_value(format_size(self.value(opt.name)))
            else:
                v = self.value(opt.name)
                out[opt.name] = toml_value(str(v) if isinstance(v, Path) else v)
        return out

    def __repr__(self) -> str:  # never show secrets, whatever prints a Config
        return f"Config({self.masked()!r})"

    __str__ = __repr__


def load(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(None, f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(None, f"cannot read config file {p}: {e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(None, f"config file {p} is not valid TOML: {e}") from None
    return from_mapping(raw, source=p.absolute())


def from_mapping(raw: dict[str, Any], source: Path | None = None) -> Config:
    values: dict[str, Any] = {}
    seen_as: dict[str, str] = {}
    for given, value in raw.items():
        name = given.replace("_", "-")  # syslog-ng treats - and _ alike; so do we
        if isinstance(value, dict) and name not in TABLE_OPTIONS:
            raise ConfigError(given, "spoolup's config is flat: put options at the top level, not in a [table]")
        if name not in OPTIONS_BY_NAME:
            raise ConfigError(given, unknown_option(name))
        if name in seen_as:
            raise ConfigError(given, f"given twice (also as '{seen_as[name]}')")
        seen_as[name] = given
        try:
            values[name] = OPTIONS_BY_NAME[name].parse(value)
        except ValueError as e:
            raise ConfigError(name, str(e)) from None

    for opt in OPTIONS:
        if opt.name not in values:
            if opt.default is REQUIRED:
                raise ConfigError(opt.name, "is required")
            values[opt.name] = opt.default

    fmt = values["format"]
    if values["object-key"] is None:
        values["object-key"] = "{path}" if fmt == "lines" else "{key}"
    written = tuple((given.replace("_", "-"), value) for given, value in raw.items())
    check_cross_option(values, frozenset(n for n, _ in written))
    return Config(**{OPTIONS_BY_NAME[n].attr: v for n, v in values.items()}, source=source, written=written)


def replace(cfg: Config, **changes: Any) -> Config:
    written = tuple((n, v) for n, v in cfg.written if OPTIONS_BY_NAME[n].attr not in changes)
    return dataclasses.replace(cfg, **{"written": written, **changes})
