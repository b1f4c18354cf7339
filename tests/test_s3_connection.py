"""Connection settings (issue 21 item 3): ca-file and tls-verify against a TLS-terminating
proxy with a private test CA, proxy through a real HTTP proxy on loopback that records what
passes through it, addressing-style seen on the wire, profile from temporary shared AWS files
against a moto that checks credentials, role-external-id and sts-endpoint against moto's STS,
and web identity (IRSA) through boto3's credential chain.  Secrets (keys, proxy credentials)
never show in logs, status, check-config or errors; bad values exit 2 naming the option.

The network pieces are real (tests/connkit.py); nothing is mocked.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import urllib.parse

import pytest

from connkit import PrivateCA, RecordingProxy, TLSTerminator
from helpers import Spoolup, free_port, get, list_keys, log_events, syslog_lines, toml

pytestmark = pytest.mark.s3_servers("moto", "rgw")

PROXY_USER, PROXY_PASSWORD = "shipper", "pr0xy-Pa55-d41d8cd9"




class EnvSpoolup(Spoolup):
    """A Spoolup whose commands run with `extra_env` on top of the usual environment (which
    drops every AWS_ variable): the shared-file and web-identity tests set their own."""

    def __init__(self, *args, extra_env: dict[str, str] | None = None, **kw):
        self.extra_env = dict(extra_env or {})
        super().__init__(*args, **kw)

    def env(self, crash_at=None):
        return {**super().env(crash_at), "AWS_EC2_METADATA_DISABLED": "true", **self.extra_env}


def write_files(sp) -> dict[str, bytes]:
    files = {"small.log": syslog_lines(300), "large.log": syslog_lines(28_000, width=220)}  # ~6 MiB: multipart
    for name, data in files.items():
        (sp.spool / name).write_bytes(data)
    return files


def assert_shipped(s3, bucket: str, files: dict[str, bytes]) -> None:
    assert list_keys(s3, bucket) == sorted(files)
    for name, data in files.items():
        assert get(s3, bucket, name) == data, name


def outputs(sp, *results) -> str:
    """Everything spoolup printed or logged: the given results, status, check-config."""
    text = "".join(r.stdout + r.stderr for r in results)
    return text + sp.cmd("status", "--json").stdout + sp.log_text()


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> PrivateCA:
    return PrivateCA.make(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls(ca, s3server):
    """https://127.0.0.1:<port> with the private CA's certificate, in front of the test's S3 server."""
    port = urllib.parse.urlsplit(s3server.url).port
    t = TLSTerminator(ca, port)
    yield t
    t.close()


def s3_port(s3server) -> int:
    return urllib.parse.urlsplit(s3server.url).port


# ---------------------------------------------------------------------------
# ca-file / tls-verify


# TLS ends at the test's proxy, whatever server is behind it: moto only
@pytest.mark.s3_servers("moto")
def test_private_ca_refused_without_ca_file_and_trusted_with_it(make_spoolup, s3, s3server, tls, ca):
    sp = make_spoolup(url=tls.url, **{"object-key": "{name}"})
    # without ca-file: the certificate is not trusted; check-config says so and how to fix it
    r = sp.cmd("check-config")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in r.stderr and "ca-file" in r.stderr, r.stderr
    assert tls.refused > 0 and tls.handshakes == 0
    files = write_files(sp)
    r = sp.cmd("drain", "--timeout", "5", timeout=90)
    assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr[-3000:]
    assert list_keys(s3, sp.bucket) == []  # nothing went anywhere else
    assert sp.options["secret-key"] not in outputs(sp, r)

    # with it: trusted, and every byte arrives
    sp.write_config(**{"ca-file": str(ca.ca_pem)})
    r = sp.cmd("check-config", check=True)
    assert f'ca-file = "{ca.ca_pem}"' in r.stdout and "tls-verify = true" in r.stdout
    r = sp.drain(check=True)
    assert tls.handshakes > 0
    assert_shipped(s3, sp.bucket, files)
    assert sp.options["secret-key"] not in outputs(sp, r)


def test_tls_verify_false_works_and_warns(make_spoolup, s3, tls):
    sp = make_spoolup(url=tls.url, **{"object-key": "{name}", "tls-verify": False})
    r = sp.cmd("check-config", check=True)
    assert "# warning: tls-verify: false" in r.stdout, r.stdout
    files = write_files(sp)
    r = sp.drain(check=True)
    assert tls.handshakes > 0
    assert_shipped(s3, sp.bucket, files)
    warned = [e for e in log_events(r.stderr, "TLS certificate verification is off (tls-verify = false): anyone on "
                                              "the path to S3 can read and change what is uploaded; give the CA "
                                              "with ca-file instead")]
    assert warned and all(e["level"] == "warning" for e in warned), r.stderr[-3000:]
    assert "InsecureRequestWarning" not in r.stderr  # said once, by spoolup, not on every request


# ---------------------------------------------------------------------------
# proxy


@pytest.fixture
def http_proxy(s3server):
    p = RecordingProxy(s3_port(s3server), credentials=f"{PROXY_USER}:{PROXY_PASSWORD}")
    yield p
    p.close()


def test_requests_go_through_the_proxy_with_its_credentials(make_spoolup, s3, http_proxy):
    # the url's port has nothing listening: S3 is reachable only through the proxy
    proxy_url = http_proxy.url(f"{PROXY_USER}:{PROXY_PASSWORD}")
    sp = make_spoolup(url=f"http://127.0.0.1:{free_port()}", proxy=proxy_url, **{"object-key": "{name}"})
    r = sp.cmd("check-config", check=True)
    assert f'proxy = "http://********@127.0.0.1:{http_proxy.port}"' in r.stdout, r.stdout
    files = write_files(sp)
    r = sp.drain(check=True)
    assert_shipped(s3, sp.bucket, files)
    seen = http_proxy.requests()
    wanted = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    assert len(seen) >= 6 and all(s.headers.get("proxy-authorization") == wanted for s in seen)
    assert {s.method for s in seen} >= {"PUT", "POST", "GET"}  # PutObject, multipart, listings
    assert sum(1 for s in seen if "partNumber=" in s.target) >= 2  # every part of large.log
    assert all(s.target.startswith(f"http://127.0.0.1:{sp.url.rsplit(':', 1)[1]}/") for s in seen)
    assert PROXY_PASSWORD not in outputs(sp, r)

    # the proxy down: the error names it without its credentials
    http_proxy.close()
    r = sp.cmd("check-config")
    assert r.returncode == 1 and "proxy" in r.stderr.lower(), r.stderr
    assert PROXY_PASSWORD not in r.stdout + r.stderr and f"{PROXY_USER}:" not in r.stderr


def test_https_through_the_proxy_is_tunnelled(make_spoolup, s3, s3server, tls, ca):
    p = RecordingProxy(s3_port(s3server), tunnel_port=tls.port)
    try:
        # the url names a port with nothing on it: the proxy's CONNECT tunnel reaches the TLS server
        sp = make_spoolup(url=f"https://127.0.0.1:{free_port()}", proxy=p.url(), **{
            "object-key": "{name}", "ca-file": str(ca.ca_pem)})
        files = write_files(sp)
        sp.drain(check=True)
        assert_shipped(s3, sp.bucket, files)
        assert p.requests("CONNECT") and p.requests() == p.requests("CONNECT")  # all of it encrypted
        assert tls.handshakes > 0
    finally:
        p.close()


# ---------------------------------------------------------------------------
# addressing-style: what the request line says, seen at the proxy


@pytest.mark.s3_servers("moto")  # virtual-hosted buckets on RGW need rgw_dns_name, which the test cluster lacks
@pytest.mark.parametrize("style", [None, "path", "virtual"])
def test_addressing_style_on_the_wire(make_spoolup, s3, s3server, style):
    p = RecordingProxy(s3_port(s3server))
    try:
        port = free_port()  # nothing there: the proxy takes every request to moto, whatever the host
        options = {"object-key": "{name}", "proxy": p.url()}
        if style:
            options["addressing-style"] = style
        sp = make_spoolup(url=f"http://localhost:{port}", **options)
        files = write_files(sp)
        sp.drain(check=True)
        assert_shipped(s3, sp.bucket, files)
        hosts = {s.host for s in p.requests()}
        if style == "virtual":
            assert hosts == {f"{sp.bucket}.localhost:{port}"}, hosts
        else:  # unset keeps spoolup's old behaviour with a url: path style
            assert hosts == {f"localhost:{port}"}, hosts
            assert all(urllib.parse.urlsplit(s.target).path.startswith(f"/{sp.bucket}") for s in p.requests())
    finally:
        p.close()


# ---------------------------------------------------------------------------
# profile: the shared AWS files


def test_profile_of_the_shared_files_is_used(tmp_path, checking_moto, bucket):
    m = checking_moto
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "config").write_text("[default]\nregion = us-east-1\n[profile shipper]\nregion = us-east-1\n")
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAWRONGWRONGWRONG1\naws_secret_access_key = wrong-secret\n"
        f"[shipper]\naws_access_key_id = {m.access_key}\naws_secret_access_key = {m.secret_key}\n")
    env = {"AWS_CONFIG_FILE": str(aws / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials")}
    sp = EnvSpoolup(tmp_path / "sp", m.url, bucket, extra_env=env, **{
        "access-key": None, "secret-key": None, "region": None, "profile": "shipper", "object-key": "{name}"})
    try:
        r = sp.cmd("check-config", check=True)
        assert 'profile = "shipper"' in r.stdout and "# credentials: shared-credentials-file (profile shipper)" \
            in r.stdout, r.stdout
        files = write_files(sp)
        r = sp.drain(check=True)
        from helpers import s3_client

        assert_shipped(s3_client(m.url, m.access_key, m.secret_key), bucket, files)
        assert m.secret_key not in outputs(sp, r)

        # the default profile's keys are refused: the uploads above used the profile's
        sp.write_config(profile=None)
        r = sp.cmd("check-config")
        assert r.returncode == 1 and "InvalidAccessKeyId" in r.stderr, r.stderr
        # a profile the files do not have: exit 2 naming the option and the files
        sp.write_config(profile="nobody")
        r = sp.cmd("check-config", "--no-s3")
        assert r.returncode == 2 and "'profile'" in r.stderr and str(aws / "credentials") in r.stderr, r.stderr
    finally:
        sp.cleanup()


# ---------------------------------------------------------------------------
# role-external-id and sts-endpoint: AssumeRole as moto's STS receives it


def test_role_is_assumed_at_sts_endpoint_with_the_external_id(tmp_path, auth_moto):
    m = auth_moto
    sts = RecordingProxy(m.port)  # an STS endpoint of its own (a reverse proxy to moto's STS)
    try:
        sp = Spoolup(tmp_path / "sp", m.url, "ext-id-bucket", **{
            "access-key": m.user_key, "secret-key": m.user_secret, "role": m.role_arn,
            "role-external-id": "spoolup-ext-7d2f", "sts-endpoint": sts.url(), "object-key": "{name}"})
        r = sp.cmd("check-config", check=True)
        assert 'role-external-id = "spoolup-ext-7d2f"' in r.stdout and f'sts-endpoint = "{sts.url()}"' in r.stdout
        assert "assumed-role/log-writer/spoolup" in r.stdout
        files = write_files(sp)
        r = sp.drain(check=True)
        assert_shipped(m.as_role("s3"), "ext-id-bucket", files)
        calls = [urllib.parse.parse_qs(s.body.decode()) for s in sts.requests("POST")]
        assume = [c for c in calls if c.get("Action") == ["AssumeRole"]]
        assert assume and all(c["ExternalId"] == ["spoolup-ext-7d2f"] and c["RoleArn"] == [m.role_arn]
                              for c in assume), calls
        assert m.user_secret not in outputs(sp, r)
    finally:
        sp.cleanup()
        sts.close()


@pytest.fixture(scope="module")
def auth_moto(tmp_path_factory):
    from test_s3_options import AuthMoto

    server = AuthMoto(tmp_path_factory.mktemp("moto-auth"))
    yield server
    server.stop()


# ---------------------------------------------------------------------------
# web identity (IRSA): AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN through boto3's chain


@pytest.mark.s3_servers("moto")
def test_web_identity_credentials_through_boto3s_chain(tmp_path, bucket, s3, s3server):
    front = RecordingProxy(s3_port(s3server))  # S3 and STS at one recorded endpoint (moto serves both)
    sp = None
    try:
        token = tmp_path / "token"
        token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bG9nczpzcG9vbHVwIn0.c2ln")
        role = "arn:aws:iam::123456789012:role/irsa-log-writer"
        env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_ROLE_ARN": role,
               "AWS_ROLE_SESSION_NAME": "spoolup-irsa", "AWS_ENDPOINT_URL_STS": front.url(),
               "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        sp = EnvSpoolup(tmp_path / "sp", front.url(), bucket, extra_env=env, **{
            "access-key": None, "secret-key": None, "object-key": "{name}"})
        r = sp.cmd("check-config", check=True)
        assert "# credentials: assume-role-with-web-identity" in r.stdout, r.stdout
        files = write_files(sp)
        r = sp.drain(check=True)
        assert_shipped(s3, sp.bucket, files)

        calls = [(urllib.parse.parse_qs(s.body.decode()), s) for s in front.requests("POST") if b"Action=" in s.body]
        web = [(c, s) for c, s in calls if c.get("Action") == ["AssumeRoleWithWebIdentity"]]
        assert web and all(c["RoleArn"] == [role] and c["WebIdentityToken"] == [token.read_text()] for c, _ in web)
        issued = set(re.findall(rb"<AccessKeyId>([^<]+)</AccessKeyId>", b"".join(s.response for _, s in web)))
        used = {re.search(r"Credential=([^/]+)/", s.headers.get("authorization", "")).group(1)
                for s in front.requests() if s.headers.get("authorization")}
        # every signed request (S3's) was signed with the keys STS issued for the web identity
        assert issued and used and {k.encode() for k in used} <= issued, (issued, used)
        secrets = re.findall(rb"<SecretAccessKey>([^<]+)</SecretAccessKey>", b"".join(s.response for _, s in web))
        assert secrets and all(s.decode() not in outputs(sp, r) for s in secrets)
    finally:
        if sp is not None:
            sp.cleanup()
        front.close()


# ---------------------------------------------------------------------------
# validation: exit 2 naming the option, no secret echoed


def base(tmp_path, **options):
    return {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"),
            **options}


def check_config(tmp_path, *extra: str, env: dict | None = None, **options) -> subprocess.CompletedProcess:
    path = tmp_path / "c.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in base(tmp_path, **options).items()))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "spoolup", "check-config", *extra, "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


@pytest.mark.parametrize("options,named,hint", [
    ({"ca-file": "/nonexistent/ca.pem"}, "ca-file", "does not exist"),
    ({"ca-file": "NOT-PEM"}, "ca-file", "not a PEM bundle"),
    ({"ca-file": "CA", "tls-verify": False}, "tls-verify", "give one or the other"),
    ({"tls-verify": "maybe"}, "tls-verify", "true or false"),
    ({"proxy": f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example:99999"}, "proxy", "does not parse"),
    ({"proxy": f"{PROXY_USER}:{PROXY_PASSWORD}@proxy.example:3128"}, "proxy", "http:// or https://"),
    ({"proxy": f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example:1080"}, "proxy", "http:// or https://"),
    ({"proxy": f"http://{PROXY_USER}:{PROXY_PASSWORD} @proxy.example:3128"}, "proxy", "spaces"),
    ({"proxy": "http://proxy.example:3128/path"}, "proxy", "no path"),
    ({"addressing-style": "vhost"}, "addressing-style", "'virtual'"),
    ({"role-external-id": "x"}, "role-external-id", "2 to 1224"),
    ({"role-external-id": "abc"}, "role-external-id", "needs role"),
    ({"sts-endpoint": "sts.example"}, "sts-endpoint", "http://"),
    ({"sts-endpoint": "https://sts.example"}, "sts-endpoint", "needs role"),
    ({"profile": "a b"}, "profile", "name of a profile"),
    ({"profile": "shipper", "access-key": "AK", "secret-key": "SK"}, "profile", "give one"),
    ({"profile": "nobody"}, "profile", "no profile named 'nobody'"),
])
def test_bad_connection_values_exit_2(tmp_path, ca, options, named, hint):
    (tmp_path / "not.pem").write_text("this is not a certificate\n")
    options = {k: (str(ca.ca_pem) if v == "CA" else str(tmp_path / "not.pem") if v == "NOT-PEM" else v)
               for k, v in options.items()}
    r = check_config(tmp_path, "--no-s3", env={"AWS_CONFIG_FILE": str(tmp_path / "none"),
                                                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}, **options)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"'{named}'" in r.stderr and hint in r.stderr, r.stderr
    assert PROXY_PASSWORD not in r.stdout + r.stderr


def test_check_config_prints_the_connection_settings_masked(tmp_path, ca):
    r = check_config(tmp_path, "--no-s3", **{
        "ca-file": str(ca.ca_pem), "proxy": f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example:3128",
        "addressing-style": "virtual", "role": "arn:aws:iam::123456789012:role/w", "role-external-id": "ext-1",
        "sts-endpoint": "https://sts.example"})
    assert r.returncode == 0, r.stderr
    for line in (f'ca-file = "{ca.ca_pem}"', "tls-verify = true", 'proxy = "http://********@proxy.example:3128"',
                 'addressing-style = "virtual"', 'profile = ""', 'role-external-id = "ext-1"',
                 'sts-endpoint = "https://sts.example"'):
        assert line in r.stdout.splitlines(), line
    assert PROXY_PASSWORD not in r.stdout + r.stderr and PROXY_USER not in r.stdout
