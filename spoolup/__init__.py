"""spoolup: a crash-safe spool-to-S3 shipper with syslog-ng s3() semantics."""

__version__ = "0.1.0"
