"""An object's form: the options that decide how its bytes are staged and uploaded,
journaled with the object when ingest creates it.

Every option may change between two runs.  An object that is open or waiting for
S3 when the configuration changes finishes in the form it was started in: its
chunk files keep their codec and names (recovery never takes them for strays),
its parts keep their size, its final key keeps its compression suffix, and it
completes at the max-object-size it was opened with.  New objects take the new
configuration.

The form is stored as JSON in `objects.form`.  To add an option to it, add a
field here (and to `of_config`): objects journaled before the field existed take
that option from the configuration they run under, as they did before.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from spoolup.chunks import Codec
from spoolup.journal import SourceState

if TYPE_CHECKING:
    from spoolup.config import Config

SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}
DEFAULT_CONTENT_TYPES = {"none": "text/plain; charset=utf-8", "gzip": "application/gzip", "zstd": "application/zstd"}


@dataclass(frozen=True)
class Form:
    compression: str  # "none", "gzip", "zstd"
    compresslevel: int
    chunk_size: int  # bytes of a part (after compression)
    max_object_size: int
    # what the object is created with (PutObject / CreateMultipartUpload)
    content_type: str = ""  # "": by compression (DEFAULT_CONTENT_TYPES)
    metadata: tuple[tuple[str, str], ...] = ()  # user metadata (x-amz-meta-*), spoolup's own apart
    tags: tuple[tuple[str, str], ...] = ()
    # Object Lock (WORM): a retention mode with its length in minutes from completion, a legal hold
    object_lock_mode: str = ""
    object_lock_retain: float = 0.0
    object_lock_legal_hold: bool = False

    @classmethod
    def of_config(cls, cfg: "Config") -> "Form":
        return cls(cfg.compression, cfg.compresslevel, cfg.chunk_size, cfg.max_object_size,
                   cfg.content_type, tuple(cfg.metadata.items()), tuple(cfg.tags.items()),
                   cfg.object_lock_mode, cfg.object_lock_retain, cfg.object_lock_legal_hold)

    def object_args(self) -> dict[str, Any]:
        """The object's own arguments of PutObject and CreateMultipartUpload.  Content-Encoding
        is never set: a .gz/.zst object is a compressed file, which browsers, curl --compressed
        and HTTP libraries would otherwise unpack on download (README, "Object options").
        Object Lock's retain-until date is counted from now: a PutObject is the object's
        completion; a multipart object gets it again, from its completion, once completed
        (Protocol.complete: extending a retention is allowed in either mode)."""
        args: dict[str, Any] = {"ContentType": self.content_type or DEFAULT_CONTENT_TYPES[self.compression]}
        if self.tags:
            args["Tagging"] = urllib.parse.urlencode(self.tags, quote_via=urllib.parse.quote)
        args.update(self.lock_args())
        return args

    @property
    def object_lock(self) -> bool:
        return bool(self.object_lock_mode or self.object_lock_legal_hold)

    def retain_until(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=self.object_lock_retain)

    def lock_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.object_lock_mode:
            args["ObjectLockMode"] = self.object_lock_mode
            args["ObjectLockRetainUntilDate"] = self.retain_until()
        if self.object_lock_legal_hold:
            args["ObjectLockLegalHoldStatus"] = "ON"
        return args

    @property
    def codec(self) -> Codec:
        return Codec(self.compression, self.compresslevel)

    @property
    def compression_suffix(self) -> str:
        return SUFFIXES[self.compression]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def differences(self, other: "Form") -> list[str]:
        """The option names (as in the config file) whose values differ."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]


@lru_cache(maxsize=1024)
def parse(text: str | None, fallback: Form) -> Form:
    """The form journaled as `text`; what it does not say (an object journaled before the
    form existed, or before a field was added) is taken from `fallback`."""
    if not text:
        return fallback
    given = json.loads(text)
    known = {f.name for f in dataclasses.fields(Form)}
    values = {k: v for k, v in given.items() if k in known}
    for pairs in ("metadata", "tags"):  # JSON lists of pairs back into (hashable) tuples
        if pairs in values:
            values[pairs] = tuple((str(k), str(v)) for k, v in values[pairs])
    return dataclasses.replace(fallback, **values)


def check_run_config(cfg: "Config", journal) -> None:
    """Refuse (ConfigError: exit 2, naming the option) a configuration change that cannot be
    honoured for work already under way, and remember what this run uses.

    The one such option is `format`: a spool file partly read in one format cannot be
    read on in the other (its remaining lines would all be dead letters, or shipped as
    envelopes' raw JSON).  Everything else is per object (Form) or per run."""
    from spoolup.config import ConfigError

    before = journal.meta("format")
    if before and before != cfg.format:
        partly = []
        for src in journal.live_sources():
            if src.state != SourceState.ACTIVE or src.offset == 0:
                continue
            try:
                size = os.stat(cfg.spool_dir / src.path).st_size
            except OSError:
                continue
            if size > src.offset:
                partly.append(src.path)
        if partly:
            shown = ", ".join(partly[:5]) + (" ..." if len(partly) > 5 else "")
            raise ConfigError("format", (
                f"changed from {before!r} to {cfg.format!r} while {len(partly)} spool file(s) are partly read "
                f"in the {before!r} format ({shown}). Ship them with the old format first: set "
                f"format = \"{before}\" again and run `spoolup drain`, then change it; or move those files "
                "out of the spool dir"))
    if before != cfg.format:
        with journal.transaction():
            journal.set_meta("format", cfg.format)
