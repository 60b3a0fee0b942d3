#!/usr/bin/env bash
# Installs what Blixard's Ceph support and its tests (tests/ceph, the
# volumes package) need on a Debian 12 machine, idempotently: a monitor and
# an OSD for the throw-away test cluster (tests/ceph/ceph.sh), the ceph and
# rbd command-line tools, the librados/librbd headers go-ceph builds against
# (build with -tags ceph,pacific), qemu-system-common and qemu-block-extra
# (qemu-storage-daemon and qemu's rbd driver: the volume daemons of
# --volume-attach=daemon, the default where the kernel has no rbd driver)
# and qemu-utils (qemu-io, the NBD client the volume tests write through).
set -euo pipefail

log() { printf 'setup-ceph: %s\n' "$*" >&2; }

apt_packages=(ceph-mon ceph-osd ceph-common librados-dev librbd-dev qemu-utils qemu-system-common qemu-block-extra)
missing=()
for p in "${apt_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		log "must run as root (it installs Debian packages): sudo $0"
		exit 1
	fi
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	log "already installed: ${apt_packages[*]}"
fi
# qemu-storage-daemon loads its rbd driver from qemu-block-extra; without
# it, it says "Unknown driver 'rbd'" (with it, a missing ceph.conf fails
# the open, at once and without touching any cluster).
if qemu-storage-daemon --blockdev driver=rbd,node-name=probe,pool=p,image=i,conf=/nonexistent/ceph.conf 2>&1 | grep -q "Unknown driver"; then
	log "qemu-storage-daemon has no rbd driver: is qemu-block-extra installed?"
	exit 1
fi
log "ok: $(ceph --version); $(qemu-storage-daemon --version | head -n 1) with rbd"
