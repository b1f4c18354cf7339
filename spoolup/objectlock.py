"""Object Lock options against the bucket: refused (exit 2, naming the option) where the bucket
has no Object Lock, by check-config and at the start of run and drain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spoolup.config import Config, ConfigError

if TYPE_CHECKING:  # (imported when used: the main process of run/drain does not load botocore)
    from spoolup.s3 import S3


def check_bucket(cfg: Config, s3: S3) -> None:
    """ConfigError when spoolup is to lock its objects and the bucket cannot: S3 would refuse
    every object (InvalidRequest), which would only show as quarantined objects, later."""
    if not cfg.object_lock or s3.object_lock_enabled():
        return
    option = "object-lock-mode" if cfg.object_lock_mode else "object-lock-legal-hold"
    raise ConfigError(option, f"bucket {cfg.bucket} does not have Object Lock enabled (S3 would refuse every "
                      "object): enable it on the bucket (or create the bucket with Object Lock), or remove the "
                      "object-lock options")


def check_at_start(cfg: Config, log) -> None:
    """The check of `run` and `drain`: a bucket that exists without Object Lock is refused; one
    that does not exist yet is created with it; S3 not answering is no reason not to start
    (the upload process retries; a refused object is quarantined, and says why)."""
    if not cfg.object_lock:
        return
    from spoolup.s3 import S3, S3Error

    s3 = S3(cfg)
    try:
        if s3.bucket_exists():
            check_bucket(cfg, s3)
    except S3Error as e:
        log.warning("cannot check the bucket's Object Lock configuration; starting anyway", error=str(e))
    finally:
        s3.close()
