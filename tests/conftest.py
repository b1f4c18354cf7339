"""pytest fixtures; the machinery lives in helpers.py."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from helpers import MotoServer, Spoolup, mounted, s3_client


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> MotoServer:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def checking_moto(tmp_path_factory) -> MotoServer:
    """A moto server that checks credentials as S3 does (an unknown access key: 403 InvalidAccessKeyId)."""
    server = MotoServer(tmp_path_factory.mktemp("moto-auth"))
    server.env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto):
    return s3_client(moto.url)


@pytest.fixture
def bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


def pytest_generate_tests(metafunc):
    """A module that sets STATE_FILESYSTEMS (e.g. helpers.STATE_FILESYSTEMS) runs each of its
    spoolup tests once per filesystem of the state dir."""
    kinds = getattr(metafunc.module, "STATE_FILESYSTEMS", None)
    if kinds and "state_fs" in metafunc.fixturenames:
        metafunc.parametrize("state_fs", kinds, indirect=True)


@pytest.fixture
def state_fs(request) -> str:
    """The filesystem of the state dirs make_spoolup creates: "disk" (the test run's own
    temporary directory) or a filesystem type mounted per instance ("ramfs": no O_DIRECT)."""
    return getattr(request, "param", "disk")


@pytest.fixture
def make_spoolup(tmp_path, moto, bucket, state_fs):
    made: list[Spoolup] = []
    with contextlib.ExitStack() as mounts:

        def make(**options) -> Spoolup:
            base = tmp_path / f"sp{len(made)}"
            state_dir = options.pop("state_dir", None)
            if state_dir is None and state_fs != "disk":
                state_dir = mounts.enter_context(mounted(state_fs, base / "state"))
            sp = Spoolup(base, options.pop("url", moto.url), options.pop("bucket", bucket),
                         state_dir=state_dir, **options)
            made.append(sp)
            return sp

        try:
            yield make
        finally:
            for sp in made:
                sp.cleanup()


