#!/usr/bin/env bash
# A throw-away single-node Ceph cluster on 127.0.0.1 for Blixard's tests:
# one monitor, one memstore OSD, pool "rbd" (initialised for RBD), cephx
# with a client.admin keyring. Nothing outside its own temporary directory
# is written; no manager daemon runs (RBD does not need one).
#
#   tests/ceph/ceph.sh start [DIR]  starts a cluster in DIR (default: a new
#                                   temporary directory) and prints the path
#                                   of its ceph.conf on stdout; the admin
#                                   keyring is DIR/keyring
#   tests/ceph/ceph.sh stop DIR     kills its daemons by PID and removes DIR
#
# Install the packages first: scripts/setup-ceph.sh.
set -euo pipefail

log() { printf 'ceph.sh: %s\n' "$*" >&2; }

usage() {
	log "usage: $0 start [DIR] | stop DIR"
	exit 2
}

require() {
	for p in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd; do
		command -v "$p" >/dev/null || { log "$p not found: run scripts/setup-ceph.sh"; exit 1; }
	done
}

# free_port prints a TCP port on 127.0.0.1 nothing listens on.
free_port() {
	local p
	for _ in $(seq 100); do
		# Below the ephemeral range (32768-60999 by default): a port taken
		# by an outgoing connection between this check and the bind would
		# fail the monitor.
		p=$((20000 + RANDOM % 12000))
		if ! ss -Htln "sport = :$p" | grep -q .; then
			echo "$p"
			return
		fi
	done
	log "no free port found"
	exit 1
}

# stop kills the daemons whose pid files are in DIR (they ignore SIGTERM
# for seconds, so SIGKILL follows after a short wait) and removes DIR.
stop() {
	local dir=$1 pids=() pid
	[ -d "$dir" ] || return 0
	[ -f "$dir/ceph.conf" ] || { log "$dir is not a cluster made by $0 (no ceph.conf); not removing it"; exit 1; }
	for f in "$dir"/run/*.pid; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && pids+=("$pid")
	done
	if [ "${#pids[@]}" -gt 0 ]; then
		kill -TERM "${pids[@]}" 2>/dev/null || true
		for _ in $(seq 10); do
			alive=()
			for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
			[ "${#alive[@]}" -eq 0 ] && break
			sleep 0.1
		done
		for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	fi
	rm -rf "$dir"
}

start() {
	require
	local dir=${1:-}
	if [ -z "$dir" ]; then
		dir=$(mktemp -d "${TMPDIR:-/tmp}/blixard-ceph.XXXXXX")
	else
		mkdir -p "$dir"
	fi
	dir=$(cd "$dir" && pwd)
	# On any failure below, leave nothing behind.
	trap 'log "start failed; logs were in $dir/log"; tail -n 20 "$dir"/log/*.log >&2 2>/dev/null || true; stop "$dir"' ERR
	local port fsid conf=$dir/ceph.conf
	port=$(free_port)
	fsid=$(uuidgen)
	mkdir -p "$dir/run" "$dir/log" "$dir/mon/ceph-a" "$dir/osd/ceph-0"
	cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
ms bind msgr1 = false
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/keyring
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
mon data = $dir/mon/ceph-\$id
osd data = $dir/osd/ceph-\$id
osd objectstore = memstore
memstore device bytes = 2147483648
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
paxos propose interval = 0.05
osd heartbeat grace = 60

[osd]
keyring = $dir/osd/ceph-\$id/keyring

[client]
admin socket =
log file =
EOF
	ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool --create-keyring "$dir/keyring" --gen-key -n client.admin \
		--cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
	ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/keyring" >/dev/null
	monmaptool --create --addv a "[v2:127.0.0.1:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
	ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" >/dev/null 2>&1
	ceph-mon -c "$conf" -i a

	local uuid id
	uuid=$(uuidgen)
	id=$(ceph -c "$conf" --connect-timeout 20 osd new "$uuid")
	ceph-authtool --create-keyring "$dir/osd/ceph-$id/keyring" --gen-key -n "osd.$id" >/dev/null
	ceph -c "$conf" auth add "osd.$id" osd 'allow *' mon 'allow profile osd' -i "$dir/osd/ceph-$id/keyring" >/dev/null 2>&1
	ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" --no-mon-config >/dev/null 2>&1
	ceph-osd -c "$conf" -i "$id" >/dev/null 2>&1
	for _ in $(seq 300); do
		ceph -c "$conf" osd stat 2>/dev/null | grep -q '1 up' && break
		sleep 0.1
	done
	ceph -c "$conf" osd stat | grep -q '1 up' || { log "the OSD did not come up"; false; }
	ceph -c "$conf" osd pool create rbd 8 8 >/dev/null 2>&1
	rbd -c "$conf" pool init rbd
	trap - ERR
	log "cluster up in $dir (monitor v2:127.0.0.1:$port); stop it with: $0 stop $dir"
	echo "$conf"
}

case "${1:-}" in
start) start "${2:-}" ;;
stop) [ -n "${2:-}" ] || usage; stop "$2" ;;
*) usage ;;
esac
