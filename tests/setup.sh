#!/bin/sh
# What the test suite needs, on Debian 12 / Ubuntu, as root (after apt-get update):
#   syslog-ng-core  the end-to-end tests drive a real syslog-ng
#   strace          the durability test watches syncs
#   ceph-*, radosgw the S3-facing tests run against Ceph RGW as well as moto
#                   (tests/localrgw.py builds a throw-away cluster on loopback)
#   .[test]         moto server, pytest, pytest-xdist, ... at the versions CI tested
#                   (constraints.txt); SPOOLUP_NEWEST=1: the newest releases instead
# The Ceph packages' scripts would start system daemons: a policy-rc.d that
# refuses every start is in place during the install (and removed afterwards,
# unless it was there before).  The tests start their own daemons, and stop them.
set -eu
cd "$(dirname "$0")/.."
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"
    chmod +x "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi
apt-get install -y syslog-ng-core strace
apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-mgr radosgw ceph-common
if [ "${SPOOLUP_NEWEST:-}" = 1 ]; then
    pip install -U '.[test]'
else
    pip install -c constraints.txt '.[test]'
fi
