#!/usr/bin/env bash
# A throw-away real systemd for the systemd backend's tests: a minimal Debian
# bookworm booted with systemd-nspawn, whose system bus is reachable from the
# host and which runs microvm.nix's own microvm@NAME.service units.
#
#   nspawn.sh build           build the cached rootfs (once; scripts/setup-systemd.sh calls it)
#   nspawn.sh check           boot a throw-away container, check it, tear it down
#   nspawn.sh start  RUNDIR   boot a container for RUNDIR; prints its bus address
#   nspawn.sh stop   RUNDIR   tear down everything start made and remove RUNDIR
#   nspawn.sh status RUNDIR   "running BUS" (exit 0) or "stopped" (exit 3)
#
# RUNDIR (one container per RUNDIR, so several test packages can each have
# their own; removed by stop) holds:
#   dbus/     bound to the container's /run/dbus: dbus/system_bus_socket is its
#             system bus (dial unix:path=RUNDIR/dbus/system_bus_socket, EXTERNAL
#             auth, Hello; the container's /run/systemd/private refuses clients
#             from the host's PID namespace)
#   units/    bound read-only to /usr/local/lib/systemd/system (drop-ins tests
#             write there from the host take effect after a daemon-reload)
#   sysusers.d/, tmpfiles.d/
#             bound read-only to /usr/local/lib/sysusers.d and
#             /usr/local/lib/tmpfiles.d: systemd-sysusers and systemd-tmpfiles
#             apply them at boot
#   state/    bound to /var/lib/microvms (unless BLIXARD_SYSTEMD_STATE names
#             another host directory): the agent on the host and the units in
#             the container see the same STATE/NAME/{current,booted}
#   nspawn.pid, cgroup, bus, console.log
# The caller fills units/, sysusers.d/ and tmpfiles.d/ before start: the Go
# harness (harness.go, units.go) renders microvm.nix's host module there —
# microvm@.service and the units it requires, its microvm user (in group
# kvm) and its tmpfiles line for /var/lib/microvms. Empty, the container is
# a plain systemd.
# The host's /nix/store is bound read-only at /nix/store, so runners built on
# the host run inside. The container shares the host's network namespace so
# that ports a VM forwards (qemu hostfwd on 127.0.0.1) are reachable from the
# host.
#
# The rootfs is cached outside the repository, in
# ${BLIXARD_SYSTEMD_CACHE:-/var/cache/blixard/systemd-rootfs}/bookworm-vN, and
# never written by a container: it boots with --volatile=overlay (a tmpfs
# over a read-only root). It includes qemu-system-x86 and socat for the real
# microVM test. The Debian mirror is the one apt on this machine uses.
#
# Teardown (stop) checks that no process, mount or cgroup it made is left.
set -euo pipefail

# Bump when the package list or the preparation of the rootfs changes: a new
# version is built next to the old one (delete old ones by hand).
ROOTFS_VERSION=1
PACKAGES=systemd,systemd-sysv,dbus,qemu-system-x86,socat

log() { printf 'nspawn.sh: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

cache=${BLIXARD_SYSTEMD_CACHE:-/var/cache/blixard/systemd-rootfs}
rootfs=$cache/bookworm-v$ROOTFS_VERSION
setup_hint="run scripts/setup-systemd.sh (as root) to install debootstrap and systemd-container and build the rootfs"

need_root() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (it boots a container): sudo $0 $*"
}

# mirror prints the Debian mirror apt is configured with for bookworm.
mirror() {
	local m
	m=$(apt-get indextargets --format '$(RELEASE) $(IDENTIFIER) $(REPO_URI)' 2>/dev/null |
		awk '$1 == "bookworm" && $2 == "Packages" { print $3; exit }')
	if [ -z "$m" ]; then
		apt-get update -qq >&2 || true
		m=$(apt-get indextargets --format '$(RELEASE) $(IDENTIFIER) $(REPO_URI)' 2>/dev/null |
			awk '$1 == "bookworm" && $2 == "Packages" { print $3; exit }')
	fi
	[ -n "$m" ] || die "apt has no Debian bookworm source (check /etc/apt/sources.list*)"
	printf '%s\n' "$m"
}

build() {
	need_root build
	if [ -e "$rootfs/.blixard-rootfs" ]; then
		log "rootfs already built: $rootfs"
		return
	fi
	command -v debootstrap >/dev/null || die "debootstrap is missing: $setup_hint"
	mkdir -p "$cache"
	local m
	tmp=$(mktemp -d "$cache/.build-XXXXXX") # global: the EXIT trap removes it
	trap 'rm -rf "$tmp"' EXIT
	m=$(mirror)
	log "debootstrap bookworm ($PACKAGES) from $m into $rootfs (a few minutes, once)"
	debootstrap --variant=minbase --include="$PACKAGES" bookworm "$tmp/root" "$m" >"$tmp/debootstrap.log" 2>&1 ||
		die "debootstrap failed; see the log: $(tail -n 20 "$tmp/debootstrap.log")"
	local r=$tmp/root
	# A container with a passive console: no gettys; nothing it does not need.
	for u in console-getty.service getty@.service systemd-logind.service systemd-networkd.service \
		systemd-resolved.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
		dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
		ln -sf /dev/null "$r/etc/systemd/system/$u"
	done
	: >"$r/etc/machine-id" # generated at each boot
	echo blixard-systemd >"$r/etc/hostname"
	mkdir -p "$r/nix/store" "$r/var/lib/microvms" "$r/usr/local/lib/systemd/system"
	rm -rf "$r/var/cache/apt/archives/"*.deb "$r/var/lib/apt/lists/"*
	printf 'version %s\npackages %s\n' "$ROOTFS_VERSION" "$PACKAGES" >"$r/.blixard-rootfs"
	mv "$r" "$rootfs"
	rm -rf "$tmp"
	trap - EXIT
	log "rootfs built: $rootfs ($(du -sh "$rootfs" | cut -f1))"
}

# cgroup_roots prints the host cgroup hierarchies a container's cgroup is
# made in: the unified one, and on a hybrid host also name=systemd.
cgroup_roots() {
	if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
		echo /sys/fs/cgroup
		return
	fi
	[ -d /sys/fs/cgroup/unified ] && echo /sys/fs/cgroup/unified
	[ -d /sys/fs/cgroup/systemd ] && echo /sys/fs/cgroup/systemd
	return 0
}

# running prints nspawn's pid when RUNDIR's container runs.
running() {
	local pid cg
	pid=$(cat "$run/nspawn.pid" 2>/dev/null) || return 1
	cg=$(cat "$run/cgroup" 2>/dev/null) || return 1
	[ -n "$pid" ] && [ -n "$cg" ] && grep -q "/$cg\(/\|\$\)" "/proc/$pid/cgroup" 2>/dev/null || return 1
	echo "$pid"
}

bus() { echo "unix:path=$run/dbus/system_bus_socket"; }

# init_pid prints the host pid of RUNDIR's container's init (systemd).
init_pid() {
	local cg root pid
	cg=$(cat "$run/cgroup" 2>/dev/null) || return 1
	for root in $(cgroup_roots); do
		# cgroupfs files have size 0: read them.
		pid=$(head -n 1 "$root/$cg/payload/init.scope/cgroup.procs" 2>/dev/null || true)
		if [ -n "$pid" ]; then
			echo "$pid"
			return 0
		fi
	done
	return 1
}

system_state() {
	busctl --address="$(bus)" get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
		org.freedesktop.systemd1.Manager SystemState 2>/dev/null | awk '{ gsub(/"/, "", $2); print $2 }'
}

start() {
	need_root start "$run"
	command -v systemd-nspawn >/dev/null || die "systemd-nspawn is missing: $setup_hint"
	command -v busctl >/dev/null || die "busctl is missing: $setup_hint"
	[ -e "$rootfs/.blixard-rootfs" ] || die "no rootfs at $rootfs: $setup_hint"
	[ -d /nix/store ] || die "/nix/store is missing: run scripts/setup.sh to install nix"
	if running >/dev/null; then
		log "already running ($(running))"
		bus
		return
	fi
	stop_quiet # leftovers of a container that died
	mkdir -p "$run/dbus" "$run/units" "$run/sysusers.d" "$run/tmpfiles.d"
	local state=${BLIXARD_SYSTEMD_STATE:-$run/state}
	mkdir -p "$state"
	local id cg
	id=$(basename "$run" | tr -c 'a-zA-Z0-9\n' '-' | cut -c1-40)
	id=bx-${id}-$$
	cg=blixard-nspawn-$id
	echo "$cg" >"$run/cgroup"
	for root in $(cgroup_roots); do
		mkdir -p "$root/$cg"
	done
	# nspawn makes payload/ and supervisor/ under its caller's cgroup: give it
	# its own, so containers do not collide and stop can remove it.
	(
		for root in $(cgroup_roots); do
			echo "$BASHPID" >"$root/$cg/cgroup.procs"
		done
		exec systemd-nspawn -D "$rootfs" --volatile=overlay --boot --register=no --keep-unit \
			--console=passive --machine="$id" \
			--bind="$run/dbus:/run/dbus" \
			--bind-ro="$run/units:/usr/local/lib/systemd/system" \
			--bind-ro="$run/sysusers.d:/usr/local/lib/sysusers.d" \
			--bind-ro="$run/tmpfiles.d:/usr/local/lib/tmpfiles.d" \
			--bind-ro=/nix/store \
			--bind="$state:/var/lib/microvms" \
			</dev/null >"$run/console.log" 2>&1
	) &
	local pid=$!
	echo "$pid" >"$run/nspawn.pid"
	echo "$(bus)" >"$run/bus"
	local deadline=$((SECONDS + 60)) st=
	while :; do
		if ! kill -0 "$pid" 2>/dev/null; then
			die "systemd-nspawn exited during boot; its console: $(tail -n 30 "$run/console.log")"
		fi
		if [ -S "$run/dbus/system_bus_socket" ]; then
			st=$(system_state || true)
			case $st in running | degraded) break ;; esac
		fi
		[ $SECONDS -lt $deadline ] || die "systemd in the container did not finish booting in 60s (state ${st:-unknown}); console: $run/console.log"
		sleep 0.05
	done
	log "container $id up (pid $(running), state $st)"
	bus
}

# stop_quiet tears down RUNDIR's container: nspawn, every process left in its
# cgroup, the cgroup, and any mount under RUNDIR. It fails when something is left.
stop_quiet() {
	local pid cg
	if pid=$(running); then
		# nspawn turns SIGTERM into a clean poweroff of the container; one sent
		# very early in boot can be lost, so it is repeated.
		kill -TERM "$pid" 2>/dev/null || true
		local i=0
		while [ -d "/proc/$pid" ] && [ $i -lt 200 ]; do
			[ $((i % 20)) -eq 19 ] && kill -TERM "$pid" 2>/dev/null || true
			sleep 0.05
			i=$((i + 1))
		done
		if [ -d "/proc/$pid" ]; then
			log "nspawn (pid $pid) ignored SIGTERM for 10s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	cg=$(cat "$run/cgroup" 2>/dev/null || true)
	if [ -n "$cg" ]; then
		for root in $(cgroup_roots); do
			local d=$root/$cg
			[ -d "$d" ] || continue
			local tries=0
			while :; do
				local procs
				procs=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
				[ -z "$procs" ] && break
				[ $tries -lt 100 ] || die "processes left in $d: $procs"
				# shellcheck disable=SC2086
				kill -KILL $procs 2>/dev/null || true
				tries=$((tries + 1))
				sleep 0.05
			done
			find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
			[ ! -d "$d" ] || die "cannot remove cgroup $d"
		done
	fi
	local m
	for m in $(awk -v r="$run" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r); do
		umount -l "$m" || die "cannot unmount $m"
	done
	if pid=$(running); then
		die "systemd-nspawn (pid $pid) still runs"
	fi
}

stop() {
	need_root stop "$run"
	[ -e "$run" ] || return 0
	if [ ! -e "$run/cgroup" ] && [ ! -e "$run/nspawn.pid" ]; then
		die "$run was not made by $0 start: not removing it"
	fi
	stop_quiet
	rm -rf "$run"
	log "stopped and removed $run"
}

status() {
	if running >/dev/null; then
		echo "running $(bus) pid $(running) state $(system_state || echo unknown)"
		return 0
	fi
	echo stopped
	return 3
}

# check boots a throw-away container whose sysusers.d and tmpfiles.d make a
# user and a directory of its state dir owned by it (what the tests rely on),
# checks both from the host, and tears it down, checking that nothing is
# left. It is setup-systemd.sh's check of its result.
check() {
	need_root check
	unset BLIXARD_SYSTEMD_STATE # the check's state directory is its own
	run=$(mktemp -d "${TMPDIR:-/tmp}/blixard-nspawn-check-XXXXXX")
	mkdir -p "$run/sysusers.d" "$run/tmpfiles.d"
	echo 'u blixard-check -' >"$run/sysusers.d/check.conf"
	echo 'd /var/lib/microvms/check 0750 blixard-check - -' >"$run/tmpfiles.d/check.conf"
	local ok=yes bus_addr
	if ! bus_addr=$(start); then
		stop >/dev/null 2>&1 || true
		die "check: the container did not boot (see above)"
	fi
	local uid owner
	uid=$(awk -F: '$1 == "blixard-check" { print $3 }' "/proc/$(init_pid)/root/etc/passwd" 2>/dev/null || true)
	owner=$(stat -c %u "$run/state/check" 2>/dev/null || true)
	if [ -z "$uid" ] || [ "$uid" != "$owner" ]; then
		log "check: sysusers.d/tmpfiles.d were not applied at boot (user id '${uid}', owner of /var/lib/microvms/check '${owner}')"
		ok=no
	fi
	local cg
	cg=$(cat "$run/cgroup")
	stop >/dev/null 2>&1 || die "check: stopping the container failed"
	local left=
	for root in $(cgroup_roots); do
		[ ! -d "$root/$cg" ] || left="$left cgroup $root/$cg"
	done
	[ ! -e "$run" ] || left="$left directory $run"
	left="$left$(awk -v r="$run" 'index($2, r) == 1 { printf " mount %s", $2 }' /proc/self/mounts)"
	[ -z "$left" ] || die "check: left after stopping the container:$left"
	[ "$ok" = yes ] || die "check failed"
	log "ok: a container of $rootfs booted (bus $bus_addr), applied its sysusers.d and tmpfiles.d, and was torn down leaving nothing"
}

cmd=${1:-}
case $cmd in
build) build ;;
check) check ;;
start | stop | status)
	[ $# -eq 2 ] || die "usage: $0 $cmd RUNDIR"
	run=$(realpath -m "$2")
	case $run in /) die "RUNDIR must not be /" ;; esac
	"$cmd"
	;;
*) die "usage: $0 build | check | start RUNDIR | stop RUNDIR | status RUNDIR" ;;
esac
