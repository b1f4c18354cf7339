"""The Config value (every option typed, plus derived values) and how it is loaded: read the
TOML file, parse each option with its parser, fill defaults, check across options."""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolup import keys, ledger
from spoolup.config.options import OPTIONS, OPTIONS_BY_NAME, REQUIRED, SECRET_OPTIONS, SIZE_OPTIONS, TABLE_OPTIONS
from spoolup.config.validate import ConfigError, check_cross_option, unknown_option
from spoolup.config.values import COMPRESSION_SUFFIXES, format_size, toml_value


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
    agent_id: str
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
        return keys.key_room(keys.timestamp_bytes(self.object_key_timestamp), self.object_key_suffix + self.key_suffix)

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
        return tuple(s for s in (self.secret_key, self.session_token) if s)

    def value(self, name: str) -> Any:
        return getattr(self, OPTIONS_BY_NAME[name].attr)

    def masked(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for check-config and status."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            v = self.value(opt.name)
            if opt.name in SECRET_OPTIONS and v:
                v = "********"
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
    check_cross_option(values)
    written = tuple((given.replace("_", "-"), value) for given, value in raw.items())
    return Config(**{OPTIONS_BY_NAME[n].attr: v for n, v in values.items()}, source=source, written=written)


def replace(cfg: Config, **changes: Any) -> Config:
    written = tuple((n, v) for n, v in cfg.written if OPTIONS_BY_NAME[n].attr not in changes)
    return dataclasses.replace(cfg, **{"written": written, **changes})
