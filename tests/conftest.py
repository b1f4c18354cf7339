"""pytest fixtures; the machinery lives in helpers.py and localrgw.py.

S3 endpoints: `moto` (a moto server per worker) and `rgw` (one Ceph RGW cluster
per test session, shared by all pytest-xdist workers).  `s3server` is the one a
test talks to through `s3` and `make_spoolup`: moto, unless the test (or its
module) is marked `s3_servers("moto", "rgw")`; then it runs once per server, as
test[moto] and test[rgw].  `xfail_rgw(reason, **params)` marks the rgw run of
such a test (only for the given parameter values, if any) as a strict xfail: a
known spoolup bug on RGW, visible until it is fixed (`strict=False`: one that does
not fail every time, named in the closing note that left it open).

A module that sets STATE_FILESYSTEMS (e.g. helpers.STATE_FILESYSTEMS) runs each
of its spoolup tests once per filesystem of the state dir; with s3_servers too,
moto runs on every filesystem and the other servers on the first ("disk") only.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

import localrgw
from faultproxy import FaultProxy
from helpers import ACCESS_KEY, SECRET_KEY, IAMMoto, MotoServer, S3Server, Spoolup, TestUser, mounted

SERVERS = ("moto", "rgw")


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the main process; xdist workers inherit the variable
        os.environ["RGW_FIXTURE_OWNER_PID"] = str(os.getpid())
        compile_spoolup()


def compile_spoolup() -> None:
    """Byte-compile the spoolup the tests' subprocesses run (`python -m spoolup` from the
    checkout): where PYTHONDONTWRITEBYTECODE is set (CI's machine sets it), no process ever
    writes __pycache__, and each of the suite's thousands of spoolup processes compiled every
    module of its own again (a fifth of a short drain's CPU).  compileall writes the caches
    all the same; Python still checks each against its source's mtime."""
    import spoolup

    compileall.compile_dir(Path(spoolup.__file__).parent, quiet=1)


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    marker = metafunc.definition.get_closest_marker("s3_servers")
    servers = tuple(marker.args or SERVERS) if marker is not None and "s3server" in names else ()
    assert set(servers) <= set(SERVERS), f"s3_servers: unknown server in {servers}"
    kinds = tuple(getattr(metafunc.module, "STATE_FILESYSTEMS", None) or ()) if "state_fs" in names else ()
    only = metafunc.definition.get_closest_marker("state_filesystems")  # a test's own choice over its module's
    if only is not None and "state_fs" in names:
        kinds = tuple(only.args)
    if servers and kinds:
        combos = [(server, kinds[0]) for server in servers] + [(servers[0], kind) for kind in kinds[1:]]
        metafunc.parametrize(("s3server", "state_fs"), combos, indirect=True, ids=[f"{s}-{k}" for s, k in combos])
    elif servers:
        metafunc.parametrize("s3server", servers, indirect=True)
    elif kinds:
        metafunc.parametrize("state_fs", kinds, indirect=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("s3server") != "rgw":
            continue
        for marker in item.iter_markers("xfail_rgw"):
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            when = {k: v for k, v in marker.kwargs.items() if k not in ("reason", "strict")}
            if all(callspec.params.get(k) == v for k, v in when.items()):
                item.add_marker(pytest.mark.xfail(strict=marker.kwargs.get("strict", True), reason=reason))
                break
    # the longest tests first (the same order on every xdist worker: a stable sort), so that none
    # of them starts last while the other workers have nothing left to run
    items.sort(key=lambda item: item.module.__name__ not in LONG_FIRST if item.module else True)


# modules of tests of 30-60 s each (tortures, a second RGW cluster, syslog-ng with loggen)
LONG_FIRST = {"test_torture", "test_localrgw", "test_syslog_ng_e2e", "test_start_intents"}


def _session_root(tmp_path_factory):
    """The directory shared by every worker of this session (the xdist pattern); without
    xdist, the session's own temp dir."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return  # workers leave the shared cluster to the main process
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    root = factory.getbasetemp()  # the workers' _session_root(): their basetemps are inside it
    if (root / "rgw.json").exists():
        localrgw.stop_shared_rgw(root)


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> MotoServer:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def checking_moto(tmp_path_factory) -> IAMMoto:
    """A moto server that checks credentials as S3 does (an unknown access key: 403 InvalidAccessKeyId;
    a wrong secret: 403 SignatureDoesNotMatch); `access_key`/`secret_key` are valid there."""
    import json

    import boto3

    # the three IAM calls below, then every call is checked
    server = IAMMoto(tmp_path_factory.mktemp("moto-auth") / "moto.log", setup_calls=3).start()
    iam = boto3.client("iam", endpoint_url=server.url, aws_access_key_id="setup", aws_secret_access_key="setup",
                       region_name="us-east-1")
    iam.create_user(UserName="spoolup")
    key = iam.create_access_key(UserName="spoolup")["AccessKey"]
    iam.put_user_policy(UserName="spoolup", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]  # valid there
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rgw(tmp_path_factory) -> S3Server:
    """The session's Ceph RGW (started on first use).  Missing Ceph packages fail the
    test under CI and skip it, visibly, elsewhere."""
    localrgw.require()
    owner = int(os.environ.get("RGW_FIXTURE_OWNER_PID", os.getpid()))
    info = localrgw.shared_rgw(_session_root(tmp_path_factory), ACCESS_KEY, SECRET_KEY, owner)
    return S3Server("rgw", info["url"], info["access_key"], info["secret_key"])


@pytest.fixture
def s3server(request) -> S3Server:
    """The S3 endpoint of this test: moto, or each of s3_servers(...) in turn."""
    name = getattr(request, "param", "moto")
    if name == "rgw":
        return request.getfixturevalue("rgw")
    return S3Server("moto", request.getfixturevalue("moto").url)


@pytest.fixture
def s3(s3server):
    return s3server.client()


@pytest.fixture
def bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def state_fs(request) -> str:
    """The filesystem of the state dirs make_spoolup creates: "disk" (the test run's own
    temporary directory) or a filesystem type mounted per instance ("ramfs": no O_DIRECT)."""
    return getattr(request, "param", "disk")


@pytest.fixture
def make_spoolup(tmp_path, s3server, bucket, state_fs):
    made: list[Spoolup] = []
    with contextlib.ExitStack() as mounts:

        def make(**options) -> Spoolup:
            base = tmp_path / f"sp{len(made)}"
            if options.get("user") is not None:
                base = options["user"].workdir(tmp_path.name)  # pytest's tmp dirs are 0700: not the user's to enter
            state_dir = options.pop("state_dir", None)
            if state_dir is None and state_fs != "disk":
                state_dir = mounts.enter_context(mounted(state_fs, base / "state"))
            options.setdefault("access-key", s3server.access_key)
            options.setdefault("secret-key", s3server.secret_key)
            sp = Spoolup(base, options.pop("url", s3server.url), options.pop("bucket", bucket),
                         state_dir=state_dir, **options)
            made.append(sp)
            return sp

        try:
            yield make
        finally:
            for sp in made:
                sp.cleanup()
                if sp.user is not None:
                    shutil.rmtree(sp.base, ignore_errors=True)


@pytest.fixture(scope="session")
def test_user() -> TestUser:
    """An unprivileged user (no capabilities) to run spoolup as: Spoolup(..., user=test_user)."""
    return TestUser()


@pytest.fixture
def make_user_spoolup(make_spoolup, test_user):
    """make_spoolup, with spoolup running as the unprivileged test user (as the shipped unit runs it)."""

    def make(**options) -> Spoolup:
        return make_spoolup(user=test_user, **options)

    return make


@pytest.fixture
def proxy(s3server):
    """A fault-injecting proxy in front of the test's S3 server (tests/faultproxy.py); a module
    may define its own `proxy` (test_ops_signals: the stall proxy)."""
    p = FaultProxy(s3server.url).start()
    yield p
    p.stop()
