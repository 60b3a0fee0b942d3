#!/bin/busybox sh
# /init of the demo microVMs (PID 1 in a busybox initramfs built by
# build-runner.sh). It loads the drivers the Debian cloud kernel has as
# modules, brings up eth0, serves /www over HTTP on port 80, prints a READY
# line with its address on the serial console and powers off when the ACPI
# power button is pressed (microvm-shutdown presses it through QMP
# `system_powerdown`). With volumes it also loads virtio_blk and links each
# volume's disk to /dev/volumes/VOL (the CGI scripts in /www/cgi-bin read
# and write them).
#
# The network comes from the kernel command line microvm-run writes:
# `blixard.net=dhcp` (cluster networking: eth0 is on the instance's tap)
# makes busybox udhcpc ask the node's dnsmasq for the address, route and DNS
# server (/etc/udhcpc.script applies them); without it eth0 is set for
# qemu's user-mode network (10.0.2.15/24, gateway 10.0.2.2).
# `blixard.hostname=NAME` sets the hostname.
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
. /etc/microvm # NAME, VERSION, VOLUMES
log() { echo "microvm[$NAME]: $*"; }

net=user
host=
for w in $(cat /proc/cmdline); do
	case $w in
	blixard.net=*) net=${w#*=} ;;
	blixard.hostname=*) host=${w#*=} ;;
	esac
done
[ -z "$host" ] || hostname "$host" || log "hostname $host failed"
# Every boot has its own id: a client tells a new copy of this VM from the
# old one (after a move or a restart) by GET /boot-id.
cat /proc/sys/kernel/random/boot_id >/www/boot-id

# No modules.dep in here: insert in dependency order.
modules="virtio_ring virtio virtio_mmio failover net_failover virtio_net evdev button"
[ -z "$VOLUMES" ] || modules="$modules virtio_blk"
for m in $modules; do
	insmod "/lib/modules/$m.ko" || log "insmod $m failed"
done

# The runner gives the disk of the i-th volume the serial "vol<i>".
[ -z "$VOLUMES" ] || mkdir -p /dev/volumes
i=0
for v in $VOLUMES; do
	disk=
	n=0
	while [ -z "$disk" ] && [ "$n" -lt 100 ]; do
		for b in /sys/block/vd*; do
			[ "$(cat "$b/serial" 2>/dev/null)" = "vol$i" ] && disk=${b##*/}
		done
		[ -n "$disk" ] || sleep 0.05
		n=$((n + 1))
	done
	if [ -n "$disk" ]; then
		ln -s "/dev/$disk" "/dev/volumes/$v"
		log "volume $v is /dev/$disk ($(blockdev --getsize64 "/dev/$disk") bytes)"
	else
		log "volume $v: no disk with serial vol$i appeared"
	fi
	i=$((i + 1))
done

i=0
while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 100 ]; do
	sleep 0.05
	i=$((i + 1))
done
ip link set lo up
case $net in
dhcp)
	# In the foreground until the first lease (at most 20 tries a second
	# apart), then in the background, renewing it (or, without one, still
	# asking).
	ip link set eth0 up || log "no network: eth0 did not come up"
	udhcpc -i eth0 -s /etc/udhcpc.script -O mtu -t 20 -T 1 -A 2 -b ||
		log "udhcpc did not start"
	addr=$(ip -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1)
	[ -n "$addr" ] || {
		addr=none
		log "no DHCP lease on eth0 yet: udhcpc keeps asking in the background"
	}
	;;
*)
	addr=10.0.2.15
	ip addr add 10.0.2.15/24 dev eth0 &&
		ip link set eth0 up &&
		ip route add default via 10.0.2.2 ||
		log "no network: eth0 did not come up"
	;;
esac
httpd -p 80 -h /www || log "httpd did not start"

# The power button(s): evdev nodes whose device is named "Power Button".
buttons=
for d in /sys/class/input/event*; do
	[ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] && buttons="$buttons /dev/input/${d##*/}"
done
for ev in $buttons; do
	# One input_event (24 bytes on x86_64) is a press.
	(dd if="$ev" of=/dev/null bs=24 count=1 2>/dev/null && log "power button pressed; powering off" && poweroff -f) &
done
[ -n "$buttons" ] || log "no Power Button input device: microvm-shutdown cannot stop this VM cleanly"

ready="READY name=$NAME version=$VERSION http=$addr:80"
[ -z "$host" ] || ready="$ready hostname=$(hostname)"
# shellcheck disable=SC2086 # word splitting joins the names with commas
[ -z "$VOLUMES" ] || ready="$ready volumes=$(IFS=,; set -- $VOLUMES; echo "$*")"
log "$ready"
while :; do
	wait
	sleep 3600
done
