#!/bin/bash
# Stop the daemons started by start_server.sh in $RGW_DIR, by the PIDs in their pid
# files (radosgw first, then osd, mgr, mon); with --wipe, delete $RGW_DIR afterwards.
set -u
D=${RGW_DIR:?set RGW_DIR to the cluster directory}
for name in client.rgw osd.0 mgr.x mon.a; do
  f=$D/run/$name.pid
  [[ -s $f ]] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    # make sure the pid really is the ceph daemon we started
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    case $exe in
      */radosgw|*/ceph-osd|*/ceph-mgr|*/ceph-mon) ;;
      *) echo "[stop_server] $name: pid $pid is '$exe', not a ceph daemon; skipped" >&2; rm -f "$f"; continue ;;
    esac
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "[stop_server] $name (pid $pid) ignored SIGTERM for 20s; SIGKILL" >&2
      kill -KILL "$pid"; sleep 0.5
    fi
  fi
  rm -f "$f"
done
if [[ ${1:-} == --wipe ]]; then rm -rf "$D"; fi
exit 0
