#!/usr/bin/env bash
# Installs what the systemd backend's tests (nodeagent TestSystemd…, tests/systemd)
# need on a Debian 12 machine, idempotently:
#   - debootstrap, systemd-container (systemd-nspawn) and systemd (busctl, journalctl);
#   - the cached Debian bookworm rootfs those tests boot with systemd-nspawn
#     (tests/systemd/nspawn.sh build: ~1.5–3 min once, ~285 MB, in
#     ${BLIXARD_SYSTEMD_CACHE:-/var/cache/blixard/systemd-rootfs}).
# Then it checks the result: it boots a throw-away container of that rootfs
# (nspawn.sh check: systemd reaches running, sysusers.d and tmpfiles.d bound
# in are applied at boot, teardown leaves no process, mount or cgroup).
# The tests render the container's units from microvm.nix's host module at
# the pinned commit, so they also need scripts/setup-nixlib.sh; the
# real-microVM test in tests/systemd also needs scripts/setup-microvm.sh.
# It prints what it did and what it skipped.
set -euo pipefail

log() { printf 'setup-systemd: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "must run as root (it installs Debian packages and builds a rootfs): sudo $0"
	exit 1
fi

apt_packages=(debootstrap systemd-container systemd)
missing=()
for p in "${apt_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	log "already installed: ${apt_packages[*]}"
fi

here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../tests/systemd/nspawn.sh" build
bash "$here/../tests/systemd/nspawn.sh" check
