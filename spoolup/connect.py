"""How spoolup reaches S3 and STS: the boto3 session and its clients -- credentials (keys, a
profile, boto3's chain, an assumed role), TLS verification, proxy and addressing style.

Everything is a botocore setting (Session(profile_name=...), Config(proxies=..., s3=...),
verify=..., AssumeRole through botocore's own refresher): spoolup decides only which of them a
configuration sets.  The settings that matter for the connection (proxy, CA bundle) are also the
session's defaults, so the STS calls botocore makes inside its credential chain (a profile's
role, web identity) go through the same proxy and trust the same CA.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import DeferredRefreshableCredentials, create_assume_role_refresher

from spoolup.config import Config
from spoolup.logs import get as get_logger

ROLE_SESSION_NAME = "spoolup"
# A body held in memory up to this size is sent without `Expect: 100-continue` (the AWS SDK for
# Go v2's ContinueHeaderThresholdBytes): see no_continue_for_small_bodies
CONTINUE_ABOVE = 2 << 20


def addressing_style(cfg: Config) -> str | None:
    """The S3 addressing style botocore is given.  Unset: path style with a `url` (spoolup's
    behaviour before the option existed: MinIO and Ceph without wildcard DNS need it),
    botocore's own choice ("auto": virtual-hosted on AWS) without."""
    if cfg.addressing_style:
        return cfg.addressing_style
    return "path" if cfg.url else None


def verify(cfg: Config) -> bool | str | None:
    """botocore's verify=: False (tls-verify = false), the CA bundle (ca-file), or None: botocore's
    default (AWS_CA_BUNDLE, the profile's ca_bundle, else certifi's bundle)."""
    if not cfg.tls_verify:
        return False
    return cfg.ca_file or None


def proxies(cfg: Config) -> dict[str, str] | None:
    """One proxy for http:// and https:// endpoints alike; None: botocore reads HTTP_PROXY,
    HTTPS_PROXY and NO_PROXY from the environment."""
    return {"http": cfg.proxy, "https": cfg.proxy} if cfg.proxy else None


def client_config(cfg: Config, *, attempts: int = 3) -> BotoConfig:
    style = addressing_style(cfg)
    proxy_settings: dict[str, Any] = {}
    if cfg.proxy and cfg.proxy.startswith("https://") and cfg.ca_file:
        proxy_settings["proxy_ca_bundle"] = cfg.ca_file  # an https proxy signed by the same private CA
    return BotoConfig(
        connect_timeout=cfg.s3_timeout,
        read_timeout=cfg.s3_timeout,
        retries={"mode": "standard", "max_attempts": attempts},
        max_pool_connections=cfg.upload_threads + 4,
        # plain Content-MD5 integrity works with every S3-compatible store
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": style} if style else None,
        proxies=proxies(cfg),
        proxies_config=proxy_settings or None,
        user_agent_extra="spoolup",
    )


def sts_endpoint(cfg: Config) -> str | None:
    """Where `role` is assumed (and GetCallerIdentity asked): sts-endpoint, else url (a MinIO or
    Ceph with its own STS), else AWS's."""
    return cfg.sts_endpoint or cfg.url or None


def session(cfg: Config) -> boto3.session.Session:
    """The boto3 session S3 (and STS) clients are made from.  Credentials: access-key/secret-key
    when given, else the profile's (profile), else boto3's chain (environment, shared files,
    web identity, container and instance metadata); with `role`, those only sign AssumeRole."""
    core = botocore.session.Session(profile=cfg.profile or None)
    core.set_default_client_config(client_config(cfg))  # also the credential chain's STS clients
    if cfg.ca_file and cfg.tls_verify:
        core.set_config_variable("ca_bundle", cfg.ca_file)
    if not cfg.tls_verify:
        get_logger("spoolup.s3").warning(
            "TLS certificate verification is off (tls-verify = false): anyone on the path to S3 can "
            "read and change what is uploaded; give the CA with ca-file instead", url=cfg.url)
        # botocore would have urllib3 warn on every request: the warning above says it once
        import urllib3.exceptions

        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    s = boto3.session.Session(
        aws_access_key_id=cfg.access_key or None,
        aws_secret_access_key=cfg.secret_key or None,
        aws_session_token=cfg.session_token or None,
        region_name=cfg.region or None,
        botocore_session=core,
    )
    if cfg.role:
        # as s3(): assume the role through STS, refreshed before it expires
        sts = client(s, cfg, "sts")
        params = {"RoleArn": cfg.role, "RoleSessionName": ROLE_SESSION_NAME}
        if cfg.role_external_id:
            params["ExternalId"] = cfg.role_external_id
        core._credentials = DeferredRefreshableCredentials(
            refresh_using=create_assume_role_refresher(sts, params), method="sts-assume-role")
    return s


def no_continue_for_small_bodies(params: dict, **_) -> None:
    """botocore sends every PutObject and UploadPart body after `Expect: 100-continue`: it sends
    the headers and waits for the server's "100 Continue" before the body -- one more round trip
    per request, which on a remote S3 doubles a small object's time (its PutObject is the
    claim: one request, and then two round trips).  The go-ahead only saves sending a body the
    server refuses; for a body in memory of at most CONTINUE_ABOVE (a small object, a ledger
    segment) that is not worth a round trip.  Parts, streamed from their chunk files, keep it."""
    body = params.get("body")
    if isinstance(body, io.BytesIO):
        with body.getbuffer() as view:
            small = view.nbytes <= CONTINUE_ABOVE
        if small:
            params.get("headers", {}).pop("Expect", None)


def client(s: boto3.session.Session, cfg: Config, service: str, *, attempts: int = 3):
    """A client of `service` ("s3" or "sts") with spoolup's connection settings; `attempts`:
    botocore's own tries of each request."""
    endpoint = (cfg.url or None) if service == "s3" else sts_endpoint(cfg)
    c = s.client(service, endpoint_url=endpoint, config=client_config(cfg, attempts=attempts), verify=verify(cfg))
    if service == "s3":  # (last of the handlers of every S3 call: after botocore's, which adds the header)
        c.meta.events.register_last("before-call.s3", no_continue_for_small_bodies)
    return c


def credential_source(s: boto3.session.Session) -> str:
    """Where the session's credentials come from, in botocore's words ("explicit", "env",
    "shared-credentials-file", "assume-role-with-web-identity", "sts-assume-role", ...), without
    fetching them; "none" when no source has any."""
    creds = s.get_credentials()
    return (getattr(creds, "method", None) or "unknown") if creds is not None else "none"
