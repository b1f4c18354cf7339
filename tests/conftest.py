"""pytest fixtures; the machinery lives in helpers.py."""

from __future__ import annotations

import uuid

import pytest

from helpers import MotoServer, Spoolup, s3_client


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> MotoServer:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto):
    return s3_client(moto.url)


@pytest.fixture
def bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def make_spoolup(tmp_path, moto, bucket):
    made: list[Spoolup] = []

    def make(**options) -> Spoolup:
        sp = Spoolup(tmp_path / f"sp{len(made)}", options.pop("url", moto.url), options.pop("bucket", bucket),
                     **options)
        made.append(sp)
        return sp

    yield make
    for sp in made:
        sp.cleanup()


