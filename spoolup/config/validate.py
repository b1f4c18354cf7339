"""Configuration checks across options (key template and length, credentials, encryption,
compression level, nested directories), the unknown-option hint and check-config's warnings.
Every problem is a ConfigError naming the option; the CLI turns it into exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spoolup import keys, keytime
from spoolup.config.options import OPTIONS_BY_NAME
from spoolup.config.values import COMPRESSION_SUFFIXES

if TYPE_CHECKING:
    from spoolup.config.loader import Config


def _resolved(path: Path) -> Path:
    """The path with every symlink of its existing part followed (a loop: as written)."""
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        return path


class ConfigError(Exception):
    """A configuration problem; `option` names the offending option."""

    def __init__(self, option: str | None, message: str):
        self.option = option
        self.message = message
        super().__init__(f"option '{option}': {message}" if option else message)


def unknown_option(name: str) -> str:
    """The message for an option that does not exist: the likely one it was meant to be."""
    import difflib

    ratio = {o: difflib.SequenceMatcher(None, name, o).ratio() for o in OPTIONS_BY_NAME}
    best = max(ratio.values())
    close = sorted((o for o, r in ratio.items() if r >= 0.6 and r >= best - 0.15), key=lambda o: -ratio[o])[:3]
    if close:
        return f"unknown option; did you mean {' or '.join(repr(c) for c in close)}?"
    return ("unknown option; every option is in the README's configuration reference and in "
            "contrib/spoolup.toml.example")


def check_cross_option(v: dict[str, Any], written: frozenset[str] = frozenset()) -> None:
    """`written`: the options the file sets (key-timezone applies to object-key-timestamp only then)."""
    try:
        keys.check_template(v["object-key"], v["format"])
        keys.check_not_own(v["object-key"])
    except ValueError as e:
        raise ConfigError("object-key", str(e)) from None
    if v["format"] == "lines":
        for literal in keytime.literals(v["object-key"]):
            try:
                keytime.check_fields(literal)
            except ValueError as e:
                raise ConfigError("object-key", str(e)) from None
    if v["format"] == "lines" and v["object-key-timestamp"]:
        try:
            keys.check_strftime(v["object-key-timestamp"])
        except ValueError as e:
            raise ConfigError("object-key-timestamp", str(e)) from None
    if v["format"] == "envelope" and v["object-key-timestamp"]:
        raise ConfigError("object-key-timestamp", "with format = \"envelope\" each record carries its rendered "
                          "timestamp (the spoolup() block's object-key-timestamp() in syslog-ng): leave it out here")
    if v["format"] == "envelope" and v["object-key-suffix"]:
        raise ConfigError("object-key-suffix", "with format = \"envelope\" each record carries its suffix (the "
                          "spoolup() block's object-key-suffix() in syslog-ng): leave it out here")
    _check_key_length(v, written)
    if bool(v["access-key"]) != bool(v["secret-key"]):
        missing = "secret-key" if v["access-key"] else "access-key"
        raise ConfigError(missing, "access-key and secret-key go together: give both, or neither to use boto3's credential chain")
    if v["kms-key"] and not v["server-side-encryption"].startswith("aws:kms"):
        raise ConfigError("kms-key", "needs server-side-encryption = \"aws:kms\" (or \"aws:kms:dsse\")")
    if v["compression"] != "zstd" and not 0 <= v["compresslevel"] <= 9:
        raise ConfigError("compresslevel", f"expected 0 to 9 (gzip; 1 to 22 with zstd); got {v['compresslevel']}")
    if v["compression"] == "zstd" and not 1 <= v["compresslevel"] <= 22:
        raise ConfigError("compresslevel", f"expected 1 to 22 for zstd; got {v['compresslevel']}")
    _check_object_lock(v)
    spool, state = v["spool-dir"], v["state-dir"]
    # compared as resolved (symlinks followed, as far as the paths exist): a state-dir that
    # reaches into spool-dir through a link would have spoolup ship its own journal
    real_spool, real_state = _resolved(spool), _resolved(state)
    if real_spool == real_state or real_state.is_relative_to(real_spool):
        via = "" if state.is_relative_to(spool) else f" (it resolves to {real_state}, inside {real_spool})"
        raise ConfigError("state-dir", f"must not be inside spool-dir ({spool}){via}: spoolup would ship its own "
                                       "journal")
    if real_spool.is_relative_to(real_state):
        via = "" if spool.is_relative_to(state) else f" (it resolves to {real_spool}, inside {real_state})"
        raise ConfigError("spool-dir", f"must not be inside state-dir ({state}){via}")
    if spool.exists() and not spool.is_dir():
        raise ConfigError("spool-dir", f"{spool} exists and is not a directory")
    if state.exists() and not state.is_dir():
        raise ConfigError("state-dir", f"{state} exists and is not a directory")
    _check_connection(v)


def _check_connection(v: dict[str, Any]) -> None:
    """The connection settings (issue 21 item 3) against each other and the shared AWS files."""
    if v["ca-file"] and not v["tls-verify"]:
        raise ConfigError("tls-verify", "false turns certificate checks off, yet ca-file names a CA to check "
                          "against: give one or the other")
    if v["role-external-id"] and not v["role"]:
        raise ConfigError("role-external-id", "is sent with role's AssumeRole: it needs role")
    if v["sts-endpoint"] and not v["role"]:
        raise ConfigError("sts-endpoint", "is where role is assumed: it needs role (boto3's own STS calls, for "
                          "web identity or a profile's role, follow AWS_ENDPOINT_URL_STS)")
    if v["profile"]:
        if v["access-key"]:
            raise ConfigError("profile", "access-key/secret-key and profile both give credentials: give one")
        import botocore.exceptions
        import botocore.session

        core = botocore.session.Session()
        try:
            profiles = core.available_profiles
        except botocore.exceptions.BotoCoreError as e:
            raise ConfigError("profile", f"cannot read the shared AWS config files: {e}") from None
        if v["profile"] not in profiles:
            files = " and ".join(str(Path(core.get_config_variable(var)).expanduser())
                                 for var in ("config_file", "credentials_file"))
            raise ConfigError("profile", f"no profile named {v['profile']!r} in {files} (AWS_CONFIG_FILE and "
                              "AWS_SHARED_CREDENTIALS_FILE name other files)")


def _check_object_lock(v: dict[str, Any]) -> None:
    """S3 takes a retention mode only with a retain-until date, and the other way round."""
    if v["object-lock-retain"] and not v["object-lock-mode"]:
        raise ConfigError("object-lock-retain", "needs object-lock-mode (\"GOVERNANCE\" or \"COMPLIANCE\")")
    if v["object-lock-mode"] and not v["object-lock-retain"]:
        raise ConfigError("object-lock-mode", "needs object-lock-retain: how long each object is retained "
                          "from its completion (e.g. \"365d\")")


def _check_key_length(v: dict[str, Any], written: frozenset[str]) -> None:
    """Refuse a configuration where no file (lines) or no record (envelope) could get a key S3
    accepts: the shortest key the template renders, with the longest timestamp, index and
    suffixes its objects can get, is over S3's 1024 bytes.  Names the option that tips it over."""
    compressed = COMPRESSION_SUFFIXES[v["compression"]]
    shortest = len(keys.shortest_render(v["object-key"]).encode("utf-8", "surrogatepass"))
    ts_bytes = 0
    if v["format"] == "lines":  # strftime fields in object-key: at their shortest
        shortest += keytime.growth(v["object-key"], v["key-timezone"])[0]
        ts_bytes = (keytime.longest(v["object-key-timestamp"], v["key-timezone"]) if "key-timezone" in written
                    else keys.timestamp_bytes(v["object-key-timestamp"]))
    steps = (("object-key", keys.key_room(0, compressed)),
             ("object-key-timestamp", keys.key_room(ts_bytes, compressed)),
             ("object-key-suffix", keys.key_room(ts_bytes, v["object-key-suffix"] + compressed)))
    for option, room in steps:
        if shortest + room > keys.MAX_KEY_BYTES:
            raise ConfigError(option, f"no object key could fit: the shortest key object-key renders takes {shortest} "
                              f"bytes, and timestamp, index and suffixes add up to {room} more; S3 allows "
                              f"{keys.MAX_KEY_BYTES} bytes")


def warnings(cfg: Config) -> list[str]:
    """What check-config points out about a valid configuration."""
    out = []
    if cfg.format == "lines" and cfg.object_key_timestamp:
        problem = keys.timestamp_sort_problem(cfg.object_key_timestamp)
        if problem:
            out.append(f"object-key-timestamp: {problem}")
    if not cfg.tls_verify:
        out.append("tls-verify: false: S3's TLS certificate is not checked; anyone on the path can read and change "
                   "the uploads (give the CA with ca-file instead)")
    unbounded = unbounded_life(cfg)
    if unbounded:
        out.append(f"max-object-age: {unbounded}")
    return out


def unbounded_life(cfg: Config) -> str | None:
    """Why nothing bounds how long an object of a busy spool file stays open (None: something
    does).  flush-grace-period completes an object only once no record came for that long; a
    file written continuously keeps one object open -- invisible in the bucket -- until
    max-object-size, unless time rotates it: object-key-timestamp, a strftime field in
    object-key, or max-object-age.  lines only: with envelope, time comes with each record
    (syslog-ng's object-key-timestamp() or a ${R_...} in its object-key()), which the config
    cannot see."""
    from spoolup.config.options import OPTIONS_BY_NAME

    if cfg.format != "lines" or cfg.max_object_age is not None or cfg.object_key_timestamp:
        return None
    if keytime.has_fields(cfg.object_key) or cfg.max_object_size != OPTIONS_BY_NAME["max-object-size"].default:
        return None
    return ("nothing bounds how long an object of a busy spool file stays open: no object-key-timestamp, no time "
            "field in object-key, no max-object-age, and max-object-size is its default of 5TiB. flush-grace-period "
            "completes an object only once its file is idle, so a file written continuously keeps one object open, "
            "invisible in the bucket, until it reaches 5TiB. Set max-object-age (e.g. \"1h\"), or "
            "object-key-timestamp = \"%Y%m%d%H\"")
