"""The option table: every option declared once (name, parser, default, help), from which the
loader, `check-config`, the README table and contrib/spoolup.toml.example all come."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from spoolup.config.values import (CANNED_ACLS, CONDITIONAL_WRITES, FORMATS, GiB, LOG_FORMATS, LOG_LEVELS,
                                   MAX_CHUNK_SIZE, MAX_OBJECT_SIZE, MIN_CHUNK_SIZE, SERVER_SIDE_ENCRYPTIONS,
                                   STORAGE_CLASSES, MiB, int_range, one_of, parse_bool, parse_bucket,
                                   parse_compression, parse_content_type, parse_header_text, parse_listen,
                                   parse_key_timezone, parse_metadata, parse_minutes, parse_optional_minutes, parse_path, parse_role, parse_seconds, parse_str,
                                   parse_suffix, parse_tags, parse_url, size_range)
from spoolup.config.values import (CONTENT_MD5, OBJECT_LOCK_MODES, parse_bandwidth,  # opts-flow
                                   parse_retain)
from spoolup.config.values import (ADDRESSING_STYLES, mask_proxy, parse_ca_file, parse_external_id, parse_profile,
                                   parse_proxy)
from spoolup.config.values import parse_agent_id
from spoolup.config.values import parse_checksum_algorithm  # checksums (issue 22 item 6)

SECRET_OPTIONS = frozenset({"secret-key", "session-token"})
# options shown with their secret part masked (a proxy URL's user:password@)
MASKED_OPTIONS = {"proxy": mask_proxy}
SIZE_OPTIONS = frozenset({"chunk-size", "max-object-size", "max-record-size"})  # byte sizes ("8MiB")


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    group: str = "spoolup"  # "s3()" for options that mirror the s3() destination
    required: bool = False

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


REQUIRED = object()

OPTIONS: tuple[Option, ...] = (
    # --- the s3() destination's options ---
    Option("url", parse_url, "", "S3 endpoint URL (MinIO, Ceph, moto...); empty means AWS.", "s3()"),
    Option("bucket", parse_bucket, REQUIRED, "Bucket to write to; created if it does not exist.", "s3()", True),
    Option("access-key", parse_header_text, "", "Access key id; empty means boto3's default credential chain.", "s3()"),
    Option("secret-key", parse_header_text, "", "Secret access key (never logged or shown).", "s3()"),
    Option("region", parse_header_text, "", "Region name; empty means boto3's default.", "s3()"),
    Option(
        "role",
        parse_role,
        "",
        "IAM role ARN to assume through STS (at url when set, else AWS's), refreshed before it expires.",
        "s3()",
    ),
    Option(
        "object-key",
        parse_str,
        None,
        "Object key template. lines: {path}, {dir}, {name} of the spool file, and strftime fields rendered at "
        "ingest in key-timezone (\"logs/dt=%Y-%m-%d/{name}\"; a literal % is %%); envelope: {key}. "
        "Default \"{path}\" (lines) or \"{key}\" (envelope). Must not contain \".spoolup\" (spoolup's own keys "
        "are <static prefix>.spoolup…: exit 2).",
        "s3()",
    ),
    Option(
        "object-key-timestamp",
        parse_str,
        "",
        "Timestamp appended to the key (\"-\" + value). lines: strftime codes evaluated at ingest "
        "(e.g. \"%Y%m%d%H\" for hourly objects); envelope: taken from the record's ts field. Empty: none.",
        "s3()",
    ),
    Option(
        "object-key-suffix",
        parse_suffix,
        "",
        "Appended to the key after the index, before .gz/.zst (s3() of syslog-ng 4.8.2+, whose default is "
        "\".log\"). lines only; envelope: the spoolup() block's object-key-suffix(). Empty: none.",
        "s3()",
    ),
    Option(
        "template",
        parse_str,
        "",
        "Accepted for s3() compatibility only: the record template is applied by syslog-ng (the "
        "template() of the spoolup() block in contrib/syslog-ng/spoolup.conf); spoolup copies records verbatim.",
        "s3()",
    ),
    Option("compression", parse_compression, "none", "false/true (gzip, as s3()), \"gzip\" or \"zstd\".", "s3()"),
    Option("compresslevel", int_range(0, 22), 9, "Compression level: 0-9 for gzip, 1-22 for zstd.", "s3()"),
    Option(
        "chunk-size",
        size_range(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
        5 * MiB,
        "Part size of multipart uploads (measured after compression); at least 5MiB.",
        "s3()",
    ),
    Option(
        "max-object-size",
        size_range(1, MAX_OBJECT_SIZE),
        5120 * GiB,
        "An object is completed once it reaches this size (with compression: its stored, compressed size, as s3() "
        "counts it); the next one gets the next index (-1, -2, ...).",
        "s3()",
    ),
    Option("upload-threads", int_range(1, 256), 8, "Parallel part uploads in the upload process.", "s3()"),
    Option(
        "max-pending-uploads",
        int_range(1, 100_000),
        32,
        "Cap on sealed chunks waiting for upload; at the cap ingest pauses and the backlog stays in the spool.",
        "s3()",
    ),
    Option(
        "flush-grace-period",
        parse_minutes,
        60.0,
        "Minutes without a new record after which an object is completed (fractional allowed, or \"30s\").",
        "s3()",
    ),
    Option(
        "storage-class",
        one_of(STORAGE_CLASSES, lambda s: s.upper().replace("-", "_")),
        "STANDARD",
        "S3 storage class, as s3(): STANDARD, REDUCED_REDUNDANCY, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, "
        "GLACIER, DEEP_ARCHIVE, OUTPOSTS, GLACIER_IR, SNOW.",
        "s3()",
    ),
    Option(
        "canned-acl",
        one_of(CANNED_ACLS | {""}, lambda s: s.lower().replace("_", "-")),
        "",
        "Canned ACL for new objects, as s3(): private, public-read, public-read-write, aws-exec-read, "
        "authenticated-read, bucket-owner-read, bucket-owner-full-control, log-delivery-write; empty for none.",
        "s3()",
    ),
    Option(
        "server-side-encryption",
        one_of(SERVER_SIDE_ENCRYPTIONS),
        "",
        "\"\" (none), \"aws:kms\" (as s3()), or spoolup's additions \"AES256\" (SSE-S3) and \"aws:kms:dsse\".",
        "s3()",
    ),
    Option(
        "kms-key",
        parse_header_text,
        "",
        "KMS key id, alias/... or ARN for server-side-encryption = \"aws:kms\"; empty: the bucket's AWS managed key.",
        "s3()",
    ),
    Option(
        "content-type",
        parse_content_type,
        "",
        "Content-Type of the objects (s3()). Empty: by compression, \"text/plain; charset=utf-8\", "
        "\"application/gzip\" or \"application/zstd\". Content-Encoding is never set (see README).",
        "s3()",
    ),
    # --- spoolup's own ---
    Option(
        "metadata",
        parse_metadata,
        {},
        "User metadata for every object, a table: {team = \"web\"} gives x-amz-meta-team: web. Names in "
        "lowercase, not starting with \"spoolup-\" (spoolup's own); printable ASCII values; at most 1920 bytes.",
    ),
    Option(
        "tags",
        parse_tags,
        {},
        "Object tags for every object, a table: {retention = \"90d\"}. At most 10; keys up to 128 and values "
        "up to 256 letters, digits, spaces and + - = . _ : / @; no \"aws:\" keys.",
    ),
    # --- time: objects that appear in time, time in the key (issue 21) ---
    Option(
        "max-object-age",
        parse_optional_minutes,
        None,
        "An object is completed this long after its first record, however busy its file; the next records go to "
        "the next index. Fluent Bit's upload_timeout (and what flush-grace-period means in s3() of syslog-ng "
        "4.8.2+). Minutes (fractional allowed) or \"30s\", \"1h\". Empty: off, as in s3() 4.4-4.8.1.",
    ),
    Option(
        "key-timezone",
        parse_key_timezone,
        "UTC",
        "Time zone of the strftime fields of a lines object-key (\"logs/dt=%Y-%m-%d/{name}\"; a literal % is %%), "
        "rendered at ingest: \"UTC\" (as Fluent Bit's s3_key_format), \"local\" or an IANA name (\"Europe/Berlin\"); "
        "Vector's and Kafka Connect's timezone. object-key-timestamp follows it only when set, else stays in local time.",
    ),
    Option("spool-dir", parse_path, REQUIRED, "Directory that syslog-ng's file() destination writes into.", required=True),
    Option("state-dir", parse_path, REQUIRED, "Journal, chunk files and dead letters (created 0700).", required=True),
    Option("format", one_of(FORMATS), "lines", "Spool format: \"lines\" or \"envelope\" (JSON from format-json)."),
    Option("fsync", parse_bool, True, "Make chunk data and the journal durable before a spool offset is consumed."),
    Option(
        "spool-reap",
        parse_minutes,
        10.0,
        "A fully shipped spool file is deleted after this many idle minutes; must exceed syslog-ng's time-reap().",
    ),
    Option("session-token", parse_header_text, "", "Session token for temporary credentials (never logged)."),
    # --- connection settings (issue 21 item 3): TLS, proxy, addressing, profile, STS ---
    Option(
        "ca-file",
        parse_ca_file,
        "",
        "PEM bundle of the CA certificates S3's TLS certificate must chain to (a private CA: MinIO, Ceph RGW); "
        "also trusted for STS and an https proxy. Must exist when the config is loaded. Empty: boto3's default "
        "(AWS_CA_BUNDLE, else certifi's bundle). Peers: Fluent Bit tls.ca_file, Vector tls.ca_file.",
    ),
    Option(
        "tls-verify",
        parse_bool,
        True,
        "false: S3's TLS certificate is not checked at all (logged as a warning at start, and by check-config); "
        "for tests only, prefer ca-file. Peers: Fluent Bit tls.verify, Vector tls.verify_certificate.",
    ),
    Option(
        "proxy",
        parse_proxy,
        "",
        "HTTP(S) proxy for every S3 and STS request: \"http://host:3128\", or \"http://user:password@host:3128\" "
        "(credentials masked in check-config and logs). Empty: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the "
        "environment, as boto3. Peers: Vector proxy.http / proxy.https, Kafka Connect S3 sink s3.proxy.url "
        "(with s3.proxy.user / s3.proxy.password); Fluent Bit and the OTel awss3exporter: HTTPS_PROXY.",
    ),
    Option(
        "addressing-style",
        one_of(ADDRESSING_STYLES, str.lower),
        "",
        "\"path\" (host/bucket/key), \"virtual\" (bucket.host/key) or \"auto\" (botocore decides: virtual where the "
        "bucket name allows). Empty: \"path\" with a url (spoolup's behaviour before this option: MinIO and Ceph "
        "without wildcard DNS need it), \"auto\" on AWS. Peers: Vector force_path_style, OTel awss3exporter "
        "s3uploader.s3_force_path_style, Kafka Connect S3 sink s3.path.style.access.enabled.",
    ),
    Option(
        "profile",
        parse_profile,
        "",
        "Named profile of the shared AWS config files (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE; "
        "~/.aws/config and ~/.aws/credentials): its credentials, region and role settings. Must exist; not with "
        "access-key. Empty: boto3's default (AWS_PROFILE, else \"default\"). Peers: Fluent Bit profile, "
        "Vector auth.profile.",
    ),
    Option(
        "role-external-id",
        parse_external_id,
        "",
        "ExternalId sent with role's AssumeRole (a trust policy's sts:ExternalId condition; not a secret, "
        "shown by check-config). Needs role. Peers: Fluent Bit external_id, Vector auth.external_id, Kafka "
        "Connect S3 sink sts.role.external.id.",
    ),
    Option(
        "sts-endpoint",
        parse_url,
        "",
        "STS endpoint URL where role is assumed (and check-config asks GetCallerIdentity). Empty: url when set, "
        "else AWS's. Web identity and a profile's role are assumed by boto3's chain (AWS_ENDPOINT_URL_STS). "
        "Peers: Fluent Bit sts_endpoint.",
    ),
    Option("poll-interval", parse_seconds, 1.0, "Seconds between spool rescans (watchdog events come sooner)."),
    Option("s3-timeout", parse_seconds, 60.0, "Seconds before an S3 connection or read times out (then retried)."),
    Option("retry-max-delay", parse_seconds, 30.0, "Longest backoff in seconds between retries of a failed S3 call."),
    Option(
        "quarantine-retry",
        parse_seconds,
        300.0,
        "Longest delay in seconds between retries of a quarantined spool entry (unreadable, not a regular "
        "file, cannot be deleted); the first retry is after 1 s, then the delay doubles.",
    ),
    Option(
        "max-record-size",
        size_range(1 << 20, 1 << 30),
        16 * MiB,
        "Longest record kept in memory (1MiB to 1GiB). A longer one (bytes up to its newline) is not shipped: "
        "it goes, verbatim and read in 1MiB blocks, to the spool file's dead-letter file (counted in status), "
        "so memory stays bounded by this for any record size.",
    ),
    Option(
        "max-open-files",
        int_range(16, 1_000_000),
        1024,
        "Descriptors the main process keeps open for spool, chunk and dead-letter files together (least "
        "recently used closed first), whatever the number of files and keys; never within 64 of RLIMIT_NOFILE "
        "(at most half of a small limit). The unit's LimitNOFILE is 65536.",
    ),
    Option("shutdown-timeout", parse_seconds, 30.0, "Seconds in-flight uploads get to finish on SIGTERM."),
    Option(
        "conditional-writes",
        one_of(CONDITIONAL_WRITES),
        "auto",
        "Send If-None-Match: * on completion: \"auto\" (use when the server supports it), \"on\", \"off\".",
    ),
    # --- flow control and Object Lock (issue 21 items 5, 6) ---
    Option(
        "max-bandwidth",
        parse_bandwidth,
        0,
        "Cap on upload body bytes per second across all upload threads (\"10MiB\", \"500kB\"; at least 64KiB), "
        "so a catch-up after an outage cannot saturate a shared link; 0: no cap (as s3()). Fluent Bit and "
        "Vector have no byte cap of their own (Vector: a throttle transform counts events).",
    ),
    Option(
        "object-lock-mode",
        one_of(OBJECT_LOCK_MODES, str.upper),
        "",
        "S3 Object Lock retention mode of every object: \"GOVERNANCE\" or \"COMPLIANCE\" (with object-lock-retain; "
        "the bucket must have Object Lock enabled); empty: none (as s3()).",
    ),
    Option(
        "object-lock-retain",
        parse_retain,
        0.0,
        "How long each object is retained from its completion (minutes, or \"30d\", \"12h\"): its "
        "RetainUntilDate; needs object-lock-mode. 0: none.",
    ),
    Option(
        "object-lock-legal-hold",
        parse_bool,
        False,
        "Put an Object Lock legal hold on every object (the bucket must have Object Lock enabled).",
    ),
    Option(
        "content-md5",
        one_of(CONTENT_MD5),
        "auto",
        "\"auto\": PutObject always carries Content-MD5, parts over https (and with Object Lock options); "
        "\"always\": parts over http too (buckets with a default Object Lock retention require it).",
    ),
    # --- the ledger (issue 22) ---
    Option(
        "agent-id",
        parse_agent_id,
        "",
        "Name this spoolup's ledger records are kept under in the bucket (<object-key's static prefix>"
        ".spoolup/ledger/<agent-id>/): 1-64 letters, digits, '.', '_', '-'. Empty: the short host name and a "
        "digest of spool-dir's real path. It must survive the loss of the state dir and differ between "
        "spoolups writing to one bucket.",
    ),
    Option(
        "checksum-algorithm",
        parse_checksum_algorithm,
        "auto",
        "Checksum of each object's bytes as spoolup wrote them, sent with S3 flexible checksums "
        "(checked by S3) and kept in the object's ledger record: \"auto\" (the strongest the server "
        "takes: crc64nvme, crc32c, sha256, ...; none where it takes none), \"crc32c\", \"crc64nvme\" "
        "(these two need the awscrt package), \"sha256\", \"sha1\", \"crc32\", \"none\".",
    ),
    Option("log-level", one_of(LOG_LEVELS, str.lower), "info", "\"debug\", \"info\", \"warning\" or \"error\"."),
    Option("log-format", one_of(LOG_FORMATS), "auto", "\"auto\" (console on a TTY, else JSON lines), \"json\", \"console\"."),
    Option("log-file", parse_str, "", "Write logs to this file instead of stderr; SIGHUP reopens it (logrotate)."),
    Option("metrics-listen", parse_listen, "", "Prometheus endpoint \"host:port\" (e.g. \"127.0.0.1:9464\"), serving /metrics "
           "and the health probes /healthz (liveness) and /readyz (readiness; docs/operations.md); empty: off."),
)

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
TABLE_OPTIONS = frozenset({"metadata", "tags"})  # the only options whose value is a TOML table
