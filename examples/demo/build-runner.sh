# Builder of microvm.nix's runners (run by /bin/sh as a nix build, sandbox
# off: no PATH, host tools by absolute path). It writes
#   $out/share/microvm/vmlinuz     the Debian cloud kernel (copied, so the
#                                  initrd's modules always match it)
#   $out/share/microvm/initrd.gz   busybox, the modules, /init, the DHCP
#                                  client's script, /www with
#                                  /www/cgi-bin/fetch (and, with volumes,
#                                  /www/cgi-bin/{write,read})
#   $out/bin/microvm-run           runs qemu in the foreground
#   $out/bin/microvm-shutdown      powers the guest off through QMP
# Inputs (environment): vmName port version memMiB vcpu kernelDir guestInit,
# volumes (names separated by spaces; absent when the VM has none) and
# guestAgent (blixard's static guest agent, /bin/blixard-guest in the
# initramfs; absent: the identity agent is guest-init.sh's shell).
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
	drivers/net/net_failover drivers/net/virtio_net drivers/input/evdev drivers/acpi/button drivers/block/virtio_blk \
	drivers/char/virtio_console; do
	f="$kernelDir/modules/kernel/$m.ko"
	[ -r "$f" ] || fail "$f is missing from the kernel in $kernelDir: $setup"
	cp "$f" "$root/lib/modules/"
done
cp "$guestInit" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox"
if [ -n "${guestAgent:-}" ]; then
	if grep -q /lib64/ld-linux "$guestAgent"; then
		fail "the guest agent $guestAgent is dynamically linked: build it with CGO_ENABLED=0"
	fi
	cp "$guestAgent" "$root/bin/blixard-guest"
	chmod 0755 "$root/bin/blixard-guest"
fi
printf 'NAME=%s\nVERSION=%s\nVOLUMES="%s"\n' "$vmName" "$version" "$volumes" >"$root/etc/microvm"
printf 'hello from %s, version %s (a blixard demo microVM)\n' "$vmName" "$version" >"$root/www/index.html"

# With cluster networking the guest asks for its address by DHCP (busybox
# udhcpc, see guest-init.sh); this script applies what the node's dnsmasq
# answers: address, MTU, default route and resolv.conf (the DNS server is
# the gateway, the node's dnsmasq, which resolves NAME.CLUSTER.internal).
cat >"$root/etc/udhcpc.script" <<'DHCP'
#!/bin/sh
# busybox udhcpc's script: $1 is the event; the lease is in the environment
# ($interface $ip $mask $router $dns $domain $search $mtu).
case $1 in
deconfig)
	# A restored copy's identity agent configured the committed address
	# itself (/tmp/blixard-static, see guest-init.sh): keep it.
	[ -e /tmp/blixard-static ] || ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	# A renewal of the same address changes nothing: flushing it would cut
	# the guest's connections.
	if ! ip -4 -o addr show dev "$interface" | grep -q " inet $ip/$mask "; then
		ip -4 addr flush dev "$interface"
		ip addr add "$ip/$mask" dev "$interface"
	fi
	[ -z "$mtu" ] || ip link set dev "$interface" mtu "$mtu"
	for r in $router; do
		ip route replace default via "$r" dev "$interface"
		break
	done
	: >/etc/resolv.conf.new
	for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf.new; done
	search=${search:-$domain}
	[ -z "$search" ] || echo "search $search" >>/etc/resolv.conf.new
	mv /etc/resolv.conf.new /etc/resolv.conf
	;;
esac
exit 0
DHCP
chmod 0755 "$root/etc/udhcpc.script"

# GET /cgi-bin/fetch?HOST[/PATH] makes this guest fetch http://HOST/PATH: a
# way to see one guest reach another by name across the cluster network.
mkdir -p "$root/www/cgi-bin"
cat >"$root/www/cgi-bin/fetch" <<'FETCH'
#!/bin/sh
# GET /cgi-bin/fetch?HOST[/PATH] fetches http://HOST/PATH from this guest
# and answers "HOST is ADDRESS" and the body it got. HOST is an IPv4
# address or a DNS name, which busybox nslookup resolves with the server
# of /etc/resolv.conf: the static busybox's own libc lookup (wget NAME)
# needs NSS modules this initramfs does not have, so the name is resolved
# first and the address fetched. (wget -T crashes this busybox: timeout(1)
# bounds both steps instead.)
reply() {
	printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1" "$2"
	exit 0
}
usage="usage: /cgi-bin/fetch?HOST[/PATH] (HOST: a DNS name or an IPv4 address; PATH: A-Z a-z 0-9 . _ - /)"
host=${QUERY_STRING%%/*}
path=
case $QUERY_STRING in */*) path=${QUERY_STRING#*/} ;; esac
case $host in '' | *[!A-Za-z0-9.-]*) reply "400 Bad Request" "$usage" ;; esac
case $path in *[!A-Za-z0-9._/-]*) reply "400 Bad Request" "$usage" ;; esac
case $host in
*[!0-9.]*)
	[ -s /etc/resolv.conf ] || reply "503 Service Unavailable" "cannot resolve $host: no /etc/resolv.conf (this guest has no DHCP lease; without cluster networking it has no DNS server)"
	out=$(timeout 10 nslookup -type=a "$host" 2>&1)
	# The answer's addresses follow its "Name:" line (the server's own
	# "Address:" line comes before it).
	addr=$(printf '%s\n' "$out" | awk '/^Name:/ { a = 1 } a && /^Address:/ { print $2; exit }')
	[ -n "$addr" ] || reply "502 Bad Gateway" "cannot resolve $host: nslookup answered: $out"
	;;
*) addr=$host ;;
esac
body=$(timeout 10 wget -q -O - "http://$addr/$path" 2>&1)
case $? in
0) ;;
143) reply "504 Gateway Timeout" "GET http://$addr/$path ($host): no answer within 10 s" ;;
*) reply "502 Bad Gateway" "GET http://$addr/$path ($host) failed: $body" ;;
esac
reply "200 OK" "$host is $addr
$body"
FETCH
chmod 0755 "$root/www/cgi-bin/fetch"

# GET /cgi-bin/ident answers who this guest is now: its NIC's MAC, its
# hostname, its IPv4 address, its boot id and its wall clock (seconds since
# 1970). Copies restored from one snapshot share the boot id (it changes
# only with a boot) and differ in the rest (see guest-init.sh, identity).
# ?sleep=N (0 to 60) answers after N seconds: a request that keeps the
# guest busy.
cat >"$root/www/cgi-bin/ident" <<'IDENT'
#!/bin/sh
case $QUERY_STRING in
sleep=*)
	n=${QUERY_STRING#sleep=}
	case $n in '' | *[!0-9]*) ;; *) [ "$n" -gt 60 ] || sleep "$n" ;; esac
	;;
esac
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n'
addr=$(ip -4 -o addr show dev eth0 2>/dev/null | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1)
echo "mac=$(cat /sys/class/net/eth0/address 2>/dev/null)"
echo "host=$(hostname)"
echo "addr=${addr:--}"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
echo "date=$(date +%s)"
IDENT
chmod 0755 "$root/www/cgi-bin/ident"

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
# A snapshot restore does not boot: the kernel command line goes unread,
# so the TSC frequency is not looked up (dmesg and sed over the host's
# kernel log cost 0.1–0.2 s of every restore here).
restoring=
if [ -f snapshot.env ]; then
	while IFS= read -r line; do
		[ "\$line" != BLIXARD_SNAPSHOT=restore ] || restoring=1
	done <snapshot.env
fi
if [ "\$accel" = tcg ]; then
	cpu=max
	[ -n "\$restoring" ] || append="\$append tsc_early_khz=\$(tsc_khz)"
fi

# The guest's one NIC. With cluster networking (blixard serve --network)
# the node writes the instance's identity to network.env in the working
# directory and creates its tap before it starts the runner: the NIC is on
# that tap with the instance's MAC, and the kernel command line tells the
# guest to ask for its address by DHCP (the node's dnsmasq has a static
# lease for that MAC) and its hostname. Without network.env (blixard dev,
# a node without --network) it is qemu's user-mode network, the guest's
# port 80 forwarded to 127.0.0.1:$port (MICROVM_PORT overrides the port,
# so two copies of this runner can run on one host).
if [ -f network.env ]; then
	BLIXARD_TAP= BLIXARD_MAC= BLIXARD_IP= BLIXARD_HOSTNAME=
	. ./network.env
	bad() { echo "microvm-run: \$PWD/network.env: \$*; blixard's network component writes this file: check the node's log" >&2; exit 1; }
	case \$BLIXARD_TAP in '' | *[!A-Za-z0-9_.-]*) bad "BLIXARD_TAP \"\$BLIXARD_TAP\" is not an interface name" ;; esac
	case \$BLIXARD_MAC in '' | *[!0-9a-fA-F:]*) bad "BLIXARD_MAC \"\$BLIXARD_MAC\" is not a MAC address" ;; esac
	case \$BLIXARD_HOSTNAME in *[!A-Za-z0-9-]*) bad "BLIXARD_HOSTNAME \"\$BLIXARD_HOSTNAME\" is not a DNS label" ;; esac
	[ -e "/sys/class/net/\$BLIXARD_TAP" ] || bad "tap \$BLIXARD_TAP does not exist (blixard creates it before the start with --backend process; under systemd only microvm.nix runners get theirs)"
	nic="-netdev tap,id=net0,ifname=\$BLIXARD_TAP,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=\$BLIXARD_MAC"
	append="\$append blixard.net=dhcp"
	[ -z "\$BLIXARD_HOSTNAME" ] || append="\$append blixard.hostname=\$BLIXARD_HOSTNAME"
	where="tap \$BLIXARD_TAP, MAC \$BLIXARD_MAC, address \${BLIXARD_IP:-?} by DHCP"
else
	fwd=\${MICROVM_PORT:-$port}
	case \$fwd in '' | *[!0-9]*) echo "microvm-run: MICROVM_PORT \"\$fwd\" is not a port number" >&2; exit 1 ;; esac
	nic="-netdev user,id=net0,hostfwd=tcp:127.0.0.1:\$fwd-:80 -device virtio-net-device,netdev=net0"
	where="http://127.0.0.1:\$fwd"
fi

# Snapshots (blixard's vmsnap package). snapshot.env in the working
# directory puts the guest RAM in the file BLIXARD_SNAPSHOT_MEM:
# BLIXARD_SNAPSHOT=save maps it shared (share=on), so the RAM is in the
# file when the agent saves the VM over QMP; =restore maps a snapshot's
# file copy-on-write (share=off: the file stays as saved, and many VMs
# restore from one) and makes qemu wait for the saved state
# (-incoming defer) instead of booting. In both modes the guest gets the
# identity channel: a virtio-serial port named blixard.identity whose host
# side is the unix socket identity.sock here, through which the agent
# freezes the guest before the save (NIC down) and gives every restored
# copy its own MAC, hostname, clock and random seed (see guest-init.sh).
# Save and restore need the same devices; the kernel command line
# (blixard.ident=1) tells the booting guest to run its identity agent.
# Without the file nothing changes.
snap=
if [ -f snapshot.env ]; then
	BLIXARD_SNAPSHOT= BLIXARD_SNAPSHOT_MEM=
	. ./snapshot.env
	badsnap() { echo "microvm-run: \$PWD/snapshot.env: \$*; blixard's agent writes this file (remove it to boot normally)" >&2; exit 1; }
	case \$BLIXARD_SNAPSHOT in
	save) memshare=on ;;
	restore) memshare=off ;;
	*) badsnap "BLIXARD_SNAPSHOT \"\$BLIXARD_SNAPSHOT\" is neither save nor restore" ;;
	esac
	mem=\$BLIXARD_SNAPSHOT_MEM
	if [ -n "\$mem" ]; then
		# One word for qemu's option parser and the word splitting below.
		case \$mem in /*) ;; *) badsnap "BLIXARD_SNAPSHOT_MEM \"\$mem\" is not an absolute path" ;; esac
		case \$mem in *[!A-Za-z0-9._/+@-]*) badsnap "BLIXARD_SNAPSHOT_MEM \"\$mem\" may hold only letters, digits and . _ / + @ -" ;; esac
		[ "\$memshare" = on ] || [ -f "\$mem" ] || badsnap "the snapshot's RAM file \$mem does not exist"
		snap="-object memory-backend-file,id=mem,size=${memMiB}M,mem-path=\$mem,share=\$memshare -machine memory-backend=mem"
	elif [ "\$memshare" = on ]; then
		badsnap "BLIXARD_SNAPSHOT_MEM is empty: a save needs a file for the RAM"
	fi
	[ "\$memshare" = on ] || snap="\$snap -incoming defer"
	snap="\$snap -device virtio-serial-device -chardev socket,path=identity.sock,server=on,wait=off,id=bxid"
	snap="\$snap -device virtserialport,chardev=bxid,name=blixard.identity"
	append="\$append blixard.ident=1"
	rm -f identity.sock
	where="\$where, snapshot \$BLIXARD_SNAPSHOT (RAM \${mem:-in the state})"
fi
echo "microvm-run: $vmName version $version: qemu microvm, accel \$accel (set MICROVM_ACCEL to change), kernel command line \"\$append\", \$where"
$checks
rm -f qmp.sock
# \$nic and \$snap are split into words on purpose: every part was checked above.
# shellcheck disable=SC2086
exec qemu-system-x86_64 -name "$vmName" -M microvm -accel "\$accel" -cpu "\$cpu" -smp $vcpu -m $memMiB \\
	-nodefaults -no-user-config -display none -no-reboot -serial stdio \\
	-kernel $share/vmlinuz -initrd $share/initrd.gz \\
	-append "\$append" \\
	\$nic \$snap \\
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
