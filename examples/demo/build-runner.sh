# Builder of microvm.nix's runners (run by /bin/sh as a nix build, sandbox
# off: no PATH, host tools by absolute path). It writes
#   $out/share/microvm/vmlinuz     the Debian cloud kernel (copied, so the
#                                  initrd's modules always match it)
#   $out/share/microvm/initrd.gz   busybox, the modules, /init, /www (and,
#                                  with volumes, /www/cgi-bin/{write,read})
#   $out/bin/microvm-run           runs qemu in the foreground
#   $out/bin/microvm-shutdown      powers the guest off through QMP
# Inputs (environment): vmName port version memMiB vcpu kernelDir guestInit,
# and volumes (names separated by spaces; absent when the VM has none).
set -eu
PATH=/usr/bin:/bin
export PATH
fail() {
	echo "microvm.nix ($vmName): $*" >&2
	exit 1
}
volumes=${volumes:-}
for v in $volumes; do
	case $v in
	[a-z]*) ;;
	*) fail "volume name \"$v\" must start with a lowercase letter" ;;
	esac
	case $v in
	*[!a-z0-9-]*) fail "volume name \"$v\" may contain only lowercase letters, digits and '-'" ;;
	esac
done
setup="run scripts/setup-microvm.sh (as root) to install qemu, busybox-static, cpio, socat and the kernel"
for f in /usr/bin/qemu-system-x86_64 /usr/bin/socat /usr/bin/cpio /bin/busybox "$kernelDir/vmlinuz" "$kernelDir/modules"; do
	[ -e "$f" ] || fail "$f is missing: $setup"
	[ -r "$f" ] || fail "$f is not readable by the nix build user $(id -un): $setup"
done
if grep -q /lib64/ld-linux /bin/busybox; then
	fail "/bin/busybox is dynamically linked and cannot run in the initramfs: apt-get install busybox-static"
fi

share=$out/share/microvm
mkdir -p "$out/bin" "$share"
cp "$kernelDir/vmlinuz" "$share/vmlinuz"

root=$(mktemp -d)
trap 'chmod -R u+w "$root"; rm -rf "$root"' EXIT
chmod 0755 "$root"
mkdir -p "$root/bin" "$root/lib/modules" "$root/etc" "$root/www" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio net/core/failover \
	drivers/net/net_failover drivers/net/virtio_net drivers/input/evdev drivers/acpi/button drivers/block/virtio_blk; do
	f="$kernelDir/modules/kernel/$m.ko"
	[ -r "$f" ] || fail "$f is missing from the kernel in $kernelDir: $setup"
	cp "$f" "$root/lib/modules/"
done
cp "$guestInit" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox"
printf 'NAME=%s\nVERSION=%s\nVOLUMES="%s"\n' "$vmName" "$version" "$volumes" >"$root/etc/microvm"
printf 'hello from %s, version %s (a blixard demo microVM)\n' "$vmName" "$version" >"$root/www/index.html"

# Each volume is a virtio-blk disk served over NBD by blixard's agent on the
# unix socket volumes/VOL (relative to the VM's state directory, the
# runner's working directory). Its serial, volN, tells the guest which disk
# is which volume (see guest-init.sh).
drives=
checks=
i=0
for v in $volumes; do
	drives="$drives \\
	-drive if=none,id=vol$i,format=raw,file.driver=nbd,file.server.type=unix,file.server.path=volumes/$v \\
	-device virtio-blk-device,drive=vol$i,serial=vol$i"
	checks="$checks
[ -S volumes/$v ] || { echo \"microvm-run: volume $v is not attached: \$PWD/volumes/$v is not a socket (blixard's agent serves the volume's RBD image there before it starts the VM)\" >&2; exit 1; }"
	i=$((i + 1))
done
if [ -n "$volumes" ]; then
	# The guest's HTTP server reads and writes a marker on a volume (CGI).
	mkdir -p "$root/www/cgi-bin"
	cat >"$root/www/cgi-bin/write" <<'WRITE'
#!/bin/sh
# GET /cgi-bin/write?VOL=MARKER writes "MARKER\n" into the first sector of
# volume VOL (zero-padded) and flushes it to the disk.
reply() {
	printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1" "$2"
	exit 0
}
usage="usage: /cgi-bin/write?VOL=MARKER (MARKER: 1 to 400 of A-Z a-z 0-9 . _ -)"
case $QUERY_STRING in *=*) ;; *) reply "400 Bad Request" "$usage" ;; esac
vol=${QUERY_STRING%%=*}
marker=${QUERY_STRING#*=}
case $vol in '' | *[!a-z0-9-]*) reply "400 Bad Request" "$usage" ;; esac
case $marker in '' | *[!A-Za-z0-9._-]*) reply "400 Bad Request" "$usage" ;; esac
[ "${#marker}" -le 400 ] || reply "400 Bad Request" "$usage"
dev=/dev/volumes/$vol
[ -b "$dev" ] || reply "404 Not Found" "no volume $vol"
if ! err=$(printf '%s\n' "$marker" | dd of="$dev" bs=512 count=1 conv=sync,notrunc,fsync 2>&1); then
	reply "500 Internal Server Error" "writing $dev: $err"
fi
reply "200 OK" "wrote $marker to $vol"
WRITE
	cat >"$root/www/cgi-bin/read" <<'READ'
#!/bin/sh
# GET /cgi-bin/read?VOL answers the first line of volume VOL (zero bytes
# dropped: empty for a new volume), read from the disk, not from the cache.
reply() {
	printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1" "$2"
	exit 0
}
vol=$QUERY_STRING
case $vol in '' | *[!a-z0-9-]*) reply "400 Bad Request" "usage: /cgi-bin/read?VOL" ;; esac
dev=/dev/volumes/$vol
[ -b "$dev" ] || reply "404 Not Found" "no volume $vol"
blockdev --flushbufs "$dev" || reply "500 Internal Server Error" "blockdev --flushbufs $dev failed"
first=$(dd if="$dev" bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
reply "200 OK" "$first"
READ
	chmod 0755 "$root/www/cgi-bin/write" "$root/www/cgi-bin/read"
fi
# Reproducible archive: fixed mtimes, sorted names, no owner or timestamp in gzip.
find "$root" -exec touch -h -d @1 {} +
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet --reproducible -o -H newc -R 0:0) | gzip -9 -n >"$share/initrd.gz"

cat >"$out/bin/microvm-run" <<RUN
#!/bin/sh
# microvm-run of $vmName (version $version): runs the VM in the foreground with
# the serial console on stdout. Run it with the VM's state directory as the
# working directory (microvm@.service and blixard's agent do): the QMP
# socket (qmp.sock) and qemu.pid live there.
PATH=/usr/bin:/bin
export PATH
set -eu

# KVM when /dev/kvm is usable: a /dev/kvm without the CPU's virtualisation
# flags (a VM without nested virtualisation) can exist and not run guests.
accel=\${MICROVM_ACCEL:-}
if [ -z "\$accel" ]; then
	accel=tcg
	if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
		accel=kvm
	fi
fi

# Under software emulation the microvm machine has no timer the guest can
# calibrate its TSC against (it hangs): tell it the host's TSC frequency.
tsc_khz() {
	if [ -n "\${MICROVM_TSC_KHZ:-}" ]; then
		echo "\$MICROVM_TSC_KHZ"
		return
	fi
	if [ -r /sys/devices/system/cpu/cpu0/tsc_freq_khz ]; then
		cat /sys/devices/system/cpu/cpu0/tsc_freq_khz
		return
	fi
	# The host kernel's own calibration (dmesg may need root) or the value
	# scripts/setup-microvm.sh recorded from it.
	mhz=\$(dmesg 2>/dev/null | sed -n -e 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' \\
		-e 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -n 1)
	if [ -z "\$mhz" ] && [ -r $kernelDir/tsc_khz ]; then
		cat $kernelDir/tsc_khz
		return
	fi
	[ -n "\$mhz" ] || mhz=\$(sed -n 's/^cpu MHz[[:space:]]*: *\([0-9.]*\).*/\1/p' /proc/cpuinfo | head -n 1)
	[ -n "\$mhz" ] || { echo "microvm-run: cannot find the host TSC frequency; set MICROVM_TSC_KHZ" >&2; exit 1; }
	awk -v m="\$mhz" 'BEGIN { printf "%d\\n", m * 1000 }'
}
cpu=host
append="console=ttyS0 reboot=t panic=-1"
if [ "\$accel" = tcg ]; then
	cpu=max
	append="\$append tsc_early_khz=\$(tsc_khz)"
fi
echo "microvm-run: $vmName version $version: qemu microvm, accel \$accel (set MICROVM_ACCEL to change), kernel command line \"\$append\", http://127.0.0.1:$port"
$checks
rm -f qmp.sock
exec qemu-system-x86_64 -name "$vmName" -M microvm -accel "\$accel" -cpu "\$cpu" -smp $vcpu -m $memMiB \\
	-nodefaults -no-user-config -display none -no-reboot -serial stdio \\
	-kernel $share/vmlinuz -initrd $share/initrd.gz \\
	-append "\$append" \\
	-netdev user,id=net0,hostfwd=tcp:127.0.0.1:$port-:80 -device virtio-net-device,netdev=net0 \\
	-qmp unix:qmp.sock,server=on,wait=off -pidfile qemu.pid$drives
RUN

cat >"$out/bin/microvm-shutdown" <<'SHUTDOWN'
#!/bin/sh
# microvm-shutdown: presses the guest's power button through QMP
# (system_powerdown), again every 2s while the guest has not reacted (it may
# still be booting), and waits until qemu has exited. Run it in the VM's
# state directory. Fails after MICROVM_SHUTDOWN_TIMEOUT seconds (default 20).
PATH=/usr/bin:/bin
export PATH
pid=$(cat qemu.pid 2>/dev/null) || pid=
running() { [ -n "$pid" ] && grep -q qemu-system "/proc/$pid/cmdline" 2>/dev/null; }
if ! running; then
	echo "microvm-shutdown: no qemu running for $PWD"
	exit 0
fi
deadline=$(($(date +%s) + ${MICROVM_SHUTDOWN_TIMEOUT:-20}))
while running; do
	if [ "$(date +%s)" -ge "$deadline" ]; then
		echo "microvm-shutdown: qemu (pid $pid) still runs after ${MICROVM_SHUTDOWN_TIMEOUT:-20}s" >&2
		exit 1
	fi
	printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"system_powerdown"}' |
		socat -t 1 - UNIX-CONNECT:qmp.sock >/dev/null 2>&1 || true
	i=0
	while running && [ "$i" -lt 40 ]; do
		sleep 0.05
		i=$((i + 1))
	done
done
echo "microvm-shutdown: qemu (pid $pid) exited"
SHUTDOWN
chmod 0755 "$out/bin/microvm-run" "$out/bin/microvm-shutdown"
