"""The kill-point tests (tests/test_killpoints.py) once more, with spoolup running as an
unprivileged user without capabilities (tests/helpers.py TestUser), as the shipped systemd
unit runs it: its state dir is its own, the spool is shared with it as syslog-ng would set
it up (root's files, group-readable, in a setgid group-writable directory).  Every
invariant must hold there too: crash, restart, each spool byte exactly once."""

from __future__ import annotations

import pytest

from test_killpoints import *  # noqa: F401,F403 - the same tests, collected again here
from test_killpoints import test_invariant6_a_writer_opening_the_file_during_the_reap_lease_does_not_kill_spoolup

del test_invariant6_a_writer_opening_the_file_during_the_reap_lease_does_not_kill_spoolup  # no spoolup run in it

pytestmark = pytest.mark.s3_servers("moto")
STATE_FILESYSTEMS = ("disk",)  # the filesystems are test_killpoints's point; permissions are this file's


@pytest.fixture
def make_spoolup(make_spoolup, test_user):
    """Every spoolup of these tests runs as the test user."""

    def make(**options):
        return make_spoolup(user=test_user, **options)

    return make
