#!/usr/bin/env bash
# Installs what the real-microVM demo (examples/demo) and its test
# (tests/qemu) need on a Debian 12 machine, idempotently:
#   - qemu (microvm machine type), busybox-static, cpio and socat;
#   - a Debian cloud kernel, unpacked (not installed) into
#     $BLIXARD_KERNEL_DIR (default /var/cache/blixard/kernel), with stable
#     links vmlinuz → the kernel image and modules → its module tree.
# The kernel is only read by the runners' nix builds (which run as nixbld
# users), so everything under the cache is made world-readable.
# It prints what it did and what it skipped.
set -euo pipefail

log() { printf 'setup-microvm: %s\n' "$*" >&2; }

kernel_dir=${BLIXARD_KERNEL_DIR:-/var/cache/blixard/kernel}

need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		log "must run as root (it installs Debian packages and writes $kernel_dir): sudo $0"
		exit 1
	fi
}

# 1. Debian packages. apt-get update only runs when something is missing.
apt_packages=(qemu-system-x86 qemu-utils busybox-static cpio socat)
missing=()
for p in "${apt_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=no
if [ "${#missing[@]}" -gt 0 ]; then
	need_root
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	updated=yes
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	log "already installed: ${apt_packages[*]}"
fi

# 2. The cloud kernel, unpacked into the cache without installing it.
if [ -e "$kernel_dir/vmlinuz" ] && [ -d "$kernel_dir/modules/kernel" ]; then
	log "kernel already unpacked: $kernel_dir/vmlinuz -> $(readlink "$kernel_dir/vmlinuz")"
else
	need_root
	newest() {
		apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$' |
			awk '{print $1}' | sort -V | tail -n 1
	}
	pkg=$(newest)
	if [ -z "$pkg" ] && [ "$updated" = no ]; then
		apt-get update -qq
		pkg=$(newest)
	fi
	if [ -z "$pkg" ]; then
		log "no linux-image-*-cloud-amd64 package in the apt sources: check /etc/apt/sources.list (Debian 12 main)"
		exit 1
	fi
	ver=${pkg#linux-image-}
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	chown _apt "$tmp" 2>/dev/null || true # apt downloads as _apt
	log "downloading $pkg (not installing it)"
	(cd "$tmp" && apt-get download -qq "$pkg")
	mkdir -p "$kernel_dir"
	rm -rf "$kernel_dir/$ver.tmp"
	dpkg -x "$tmp"/"$pkg"_*.deb "$kernel_dir/$ver.tmp"
	chmod -R a+rX "$kernel_dir/$ver.tmp"
	rm -rf "${kernel_dir:?}/$ver"
	mv "$kernel_dir/$ver.tmp" "$kernel_dir/$ver"
	ln -sfn "$ver/boot/vmlinuz-$ver" "$kernel_dir/vmlinuz"
	ln -sfn "$ver/lib/modules/$ver" "$kernel_dir/modules"
	log "unpacked $pkg into $kernel_dir/$ver (links: vmlinuz, modules)"
fi
chmod a+rx "$(dirname "$kernel_dir")" "$kernel_dir" 2>/dev/null || true

# 3. The host's TSC frequency, which runners under software emulation pass
# to the guest (tsc_early_khz): recorded here from the kernel's calibration,
# because reading dmesg at run time may need root.
if [ -r /sys/devices/system/cpu/cpu0/tsc_freq_khz ]; then
	log "host TSC: $(cat /sys/devices/system/cpu/cpu0/tsc_freq_khz) kHz (sysfs; runners read it there)"
else
	mhz=$(dmesg 2>/dev/null | sed -n -e 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' \
		-e 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -n 1)
	if [ -n "$mhz" ] && [ -w "$kernel_dir" ]; then
		khz=$(awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }')
		if [ "$(cat "$kernel_dir/tsc_khz" 2>/dev/null)" != "$khz" ]; then
			echo "$khz" >"$kernel_dir/tsc_khz"
			chmod a+r "$kernel_dir/tsc_khz"
			log "host TSC: $khz kHz (from dmesg), recorded in $kernel_dir/tsc_khz"
		else
			log "host TSC: $khz kHz (already recorded in $kernel_dir/tsc_khz)"
		fi
	else
		log "host TSC: not in sysfs or dmesg; runners fall back to /proc/cpuinfo (set MICROVM_TSC_KHZ if guests hang at boot)"
	fi
fi

# 4. Report what a runner will use.
accel="tcg (software emulation: no usable /dev/kvm)"
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel="kvm"; fi
log "ok: $(qemu-system-x86_64 --version | head -n 1), kernel $(readlink "$kernel_dir/vmlinuz"), accel $accel"
