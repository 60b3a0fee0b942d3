#!/bin/busybox sh
# /init of the demo microVMs (PID 1 in a busybox initramfs built by
# build-runner.sh). It loads the drivers the Debian cloud kernel has as
# modules, brings up eth0 for qemu's user-mode network (10.0.2.15/24,
# gateway 10.0.2.2), serves /www over HTTP on port 80, prints a READY line on
# the serial console and powers off when the ACPI power button is pressed
# (microvm-shutdown presses it through QMP `system_powerdown`). With volumes
# it also loads virtio_blk and links each volume's disk to /dev/volumes/VOL
# (the CGI scripts in /www/cgi-bin read and write them).
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
. /etc/microvm # NAME, VERSION, VOLUMES
log() { echo "microvm[$NAME]: $*"; }

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
ip addr add 10.0.2.15/24 dev eth0 &&
	ip link set eth0 up &&
	ip route add default via 10.0.2.2 ||
	log "no network: eth0 did not come up"
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

ready="READY name=$NAME version=$VERSION http=10.0.2.15:80"
# shellcheck disable=SC2086 # word splitting joins the names with commas
[ -z "$VOLUMES" ] || ready="$ready volumes=$(IFS=,; set -- $VOLUMES; echo "$*")"
log "$ready"
while :; do
	wait
	sleep 3600
done
