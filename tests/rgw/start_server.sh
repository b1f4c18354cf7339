#!/bin/bash
# Bring up a throw-away single-node Ceph cluster (1 mon, 1 mgr, 1 BlueStore OSD on
# a sparse file, nothing mounted) plus radosgw (beast frontend) on 127.0.0.1, and an
# S3 user with the given keys.  Always builds from scratch in $RGW_DIR (which must
# be empty or absent).  The test fixture (tests/localrgw.py) chooses free ports and
# the directory; by hand:
#   RGW_DIR=$(mktemp -d) MON_V2_PORT=.. MON_V1_PORT=.. RGW_PORT=.. tests/rgw/start_server.sh
# prints URL=, ACCESS_KEY=, SECRET_KEY=; tests/rgw/stop_server.sh stops it.
# Needs: apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-mgr radosgw ceph-common
set -euo pipefail

D=${RGW_DIR:?set RGW_DIR to an empty directory for the cluster}
: "${MON_V2_PORT:?set MON_V2_PORT (a free loopback port)}"
: "${MON_V1_PORT:?set MON_V1_PORT (a free loopback port)}"
: "${RGW_PORT:?set RGW_PORT (a free loopback port)}"
CONF=$D/ceph.conf
URL="http://127.0.0.1:$RGW_PORT"
ACCESS_KEY=${RGW_ACCESS_KEY:-SPOOLUPTESTACCESSKEY}
SECRET_KEY=${RGW_SECRET_KEY:-spoolupTestSecretKey0123456789abcdefghij}
BLOCK_SIZE=${RGW_BLOCK_SIZE:-4294967296}   # the OSD's sparse block file: 4 GiB apparent size
UID_=spoolup

log() { echo "[start_server] $(date +%T) $*" >&2; }

need() { command -v "$1" >/dev/null || { log "missing $1: apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-mgr radosgw ceph-common"; exit 3; }; }
for b in ceph ceph-mon ceph-osd ceph-mgr radosgw radosgw-admin monmaptool ceph-authtool curl python3; do need "$b"; done

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= end )); then log "timed out after ${t}s waiting for $what"; return 1; fi
    sleep 0.5
  done
}

C() { timeout 30 ceph -c "$CONF" "$@"; }

if [[ -e $D/ceph.conf ]]; then log "$D already holds a cluster; use a new directory"; exit 2; fi
mkdir -p "$D"/{run,log,mon.a,mgr.x,osd0,rgw}
FSID=$(cat /proc/sys/kernel/random/uuid)
cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
mon warn on insecure global id reclaim allowed = false
client mount timeout = 60
keyring = $D/keyring
run dir = $D/run
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $D/mon.\$id
mon initial members = a

[mgr]
mgr data = $D/mgr.\$id

[osd]
osd data = $D/osd\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $BLOCK_SIZE
bluestore fsck on mount = false
osd memory target = 1073741824
osd op num shards = 2
osd op num threads per shard = 1

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $D/rgw
rgw thread pool size = 64
CONF
log "creating a cluster in $D (mon $MON_V2_PORT/$MON_V1_PORT, rgw $RGW_PORT)"
ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n client.rgw --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null
monmaptool --create --clobber --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]" "$D/monmap" >/dev/null
ceph-mon -c "$CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"

ceph-mon -c "$CONF" -i a
wait_for 60 "monitor quorum" C mon stat || { tail -20 "$D/log/mon.a.log" >&2; exit 1; }
C auth import -i "$D/keyring" >/dev/null 2>&1
ceph-mgr -c "$CONF" -i x

OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
id=$(C osd new "$OSD_UUID")
[[ $id == 0 ]] || { log "unexpected OSD id $id"; exit 1; }
timeout 300 ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" >"$D/log/osd-mkfs.log" 2>&1 \
  || { log "ceph-osd --mkfs failed, see $D/log/osd-mkfs.log"; tail -20 "$D/log/osd-mkfs.log" >&2; exit 1; }
ceph-osd -c "$CONF" -i 0
wait_for 120 "osd.0 up" bash -c "timeout 10 ceph -c '$CONF' osd dump | grep -q '^osd.0 up'" \
  || { tail -20 "$D/log/osd.0.log" >&2; exit 1; }

radosgw -c "$CONF" -n client.rgw
wait_for 180 "radosgw on $URL" curl -s -o /dev/null -m 5 "$URL/" || { tail -20 "$D/log/client.rgw.log" >&2; exit 1; }

wait_for 120 "all PGs active" bash -c "timeout 10 ceph -c '$CONF' pg stat -f json | python3 -c '
import json, sys
d = json.load(sys.stdin); d = d.get(\"pg_summary\", d)
states = d.get(\"num_pg_by_state\", [])
sys.exit(0 if states and all(\"active\" in s[\"name\"] for s in states) else 1)'" || true

timeout 60 radosgw-admin -c "$CONF" user create --uid="$UID_" --display-name="spoolup test" \
  --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null
log "up: $(radosgw --version | head -1)"
cat <<INFO
URL=$URL
ACCESS_KEY=$ACCESS_KEY
SECRET_KEY=$SECRET_KEY
REGION=us-east-1
CEPH_CONF=$CONF
INFO
