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
#
# `blixard.ident=1` (the runner's snapshot modes) runs the identity agent:
# blixard's guest agent /bin/blixard-guest when the runner has it, else the
# shell's identd below.
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
. /etc/microvm # NAME, VERSION, VOLUMES
log() { echo "microvm[$NAME]: $*"; }

net=user
host=
ident=
for w in $(cat /proc/cmdline); do
	case $w in
	blixard.net=*) net=${w#*=} ;;
	blixard.hostname=*) host=${w#*=} ;;
	blixard.ident=*) ident=${w#*=} ;;
	esac
done
[ -z "$host" ] || hostname "$host" || log "hostname $host failed"
# Every boot has its own id: a client tells a new copy of this VM from the
# old one (after a move or a restart) by GET /boot-id.
cat /proc/sys/kernel/random/boot_id >/www/boot-id

# No modules.dep in here: insert in dependency order.
modules="virtio_ring virtio virtio_mmio failover net_failover virtio_net evdev button"
[ -z "$VOLUMES" ] || modules="$modules virtio_blk"
[ "$ident" != 1 ] || modules="$modules virtio_console"
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

# The identity agent (blixard.ident=1): the host side of the virtio-serial
# port blixard.identity is blixard's agent (vmsnap's identity channel,
# protocol blixard.identity/1). A write to the port blocks until the host
# opens its side, so the agent writes its hello and waits there, costing
# nothing, until the host connects; a read returns end-of-file when the
# host leaves. The host sends
#   freeze   before it saves this guest: the DHCP client stops, eth0 loses
#            its address and goes down, so a copy restored from the snapshot
#            never answers with this guest's address; answers "frozen";
#   ident mac=MAC host=NAME time=SECONDS seed=HEX [ip=IP/LEN gw=IP dns=IP
#            domain=NAME mtu=N]   to each restored copy: the MAC goes on
#            eth0 (virtio-net's MAC is migrated device state, so the guest
#            sets it: the driver tells the device), the hostname, the clock
#            (whole seconds), the seed into the random pool; eth0 comes up
#            with ip= at once (the DHCP client then runs in the background
#            for the lease: the node's dnsmasq has the static lease of the
#            new MAC), else by DHCP first; answers "ok addr=IP mac=MAC
#            host=NAME ms=N" ("-" for no address; N: the milliseconds
#            this took in the guest, at 10 ms resolution);
#   warm port=N path=/PATH   to a copy restored ahead of its request: two
#            GETs from the loopback (see ident_warm); answers "warmed".
# The boot id stays the saved guest's: it changes only with a boot. Every
# step on the restore path avoids forking where the shell can do it (sysfs,
# procfs, builtins): under software emulation each program costs
# milliseconds.
ident_reply() { echo "$*" >&3; }
ident_freeze() {
	if [ "$net" = dhcp ]; then
		killall udhcpc 2>/dev/null
		n=0
		while pidof udhcpc >/dev/null && [ "$n" -lt 100 ]; do
			sleep 0.01
			n=$((n + 1))
		done
		rm -f /tmp/blixard-static
		ip -4 addr flush dev eth0 && ip link set eth0 down || {
			ident_reply "err cannot take eth0 down"
			return
		}
	fi
	state=frozen
	log "FROZEN for a snapshot: eth0 down"
	ident_reply frozen
}
ident_set() {
	read -r t0 _ </proc/uptime
	mac= nhost= secs= seed= ipp= gw= dns= dom= mtu=
	for kv; do
		case $kv in
		mac=*) mac=${kv#mac=} ;;
		host=*) nhost=${kv#host=} ;;
		time=*) secs=${kv#time=} ;;
		seed=*) seed=${kv#seed=} ;;
		ip=*) ipp=${kv#ip=} ;;
		gw=*) gw=${kv#gw=} ;;
		dns=*) dns=${kv#dns=} ;;
		domain=*) dom=${kv#domain=} ;;
		mtu=*) mtu=${kv#mtu=} ;;
		esac
	done
	case $mac in '' | *[!0-9a-f:-]*) ident_reply "err bad mac $mac"; return ;; esac
	case $nhost in '' | *[!A-Za-z0-9-]*) ident_reply "err bad host $nhost"; return ;; esac
	case $secs in '' | *[!0-9]*) ident_reply "err bad time $secs"; return ;; esac
	case $seed in '' | *[!0-9a-f]*) ident_reply "err bad seed"; return ;; esac
	case $ipp$gw$dns$mtu in *[!0-9./]*) ident_reply "err bad network settings"; return ;; esac
	case $dom in *[!A-Za-z0-9.-]*) ident_reply "err bad domain $dom"; return ;; esac
	# The seed as text: its 64 hex digits carry the 256 bits.
	echo "$seed" >/dev/urandom || { ident_reply "err cannot write the seed to /dev/urandom"; return; }
	[ "$nhost" = - ] || echo "$nhost" >/proc/sys/kernel/hostname || { ident_reply "err cannot set hostname $nhost"; return; }
	date -s "@$secs" >/dev/null || { ident_reply "err cannot set the clock to @$secs"; return; }
	set --
	[ "$mac" = - ] || set -- address "$mac"
	if [ "$net" = dhcp ]; then
		[ -z "$mtu" ] || set -- "$@" mtu "$mtu"
		ip link set dev eth0 "$@" up || { ident_reply "err cannot set up eth0 ($*)"; return; }
	elif [ "$#" -gt 0 ]; then
		ip link set dev eth0 "$@" || { ident_reply "err cannot set eth0 $*"; return; }
	fi
	a=
	case $net in
	dhcp)
		if [ -n "$ipp" ]; then
			# The udhcpc script keeps this address (its deconfig would
			# flush it) until a lease replaces it.
			: >/tmp/blixard-static
			ip addr add "$ipp" dev eth0 || { ident_reply "err cannot add $ipp to eth0"; return; }
			[ -z "$gw" ] || ip route replace default via "$gw" dev eth0 || { ident_reply "err cannot route via $gw"; return; }
			if [ -n "$dns" ]; then
				echo "nameserver $dns" >/etc/resolv.conf
				[ -z "$dom" ] || echo "search $dom" >>/etc/resolv.conf
			fi
			a=${ipp%/*}
		else
			udhcpc -i eth0 -s /etc/udhcpc.script -O mtu -t 20 -T 1 -A 2 -b >/dev/null 2>&1 3>&- ||
				{ ident_reply "err udhcpc did not start"; return; }
			a=$(ip -4 -o addr show dev eth0)
			a=${a#* inet }
			case $a in *.*.*.*/*) a=${a%%/*} ;; *) a= ;; esac
		fi
		;;
	*) a=$addr ;;
	esac
	state=running
	read -r m </sys/class/net/eth0/address
	read -r h </proc/sys/kernel/hostname
	read -r t1 _ </proc/uptime
	ident_reply "ok addr=${a:--} mac=$m host=$h ms=$(((${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}) * 10))"
	if [ "$net" = dhcp ] && [ -n "$ipp" ]; then
		# After the answer, and later still: the lease only renews the
		# address the guest has, and the client's first exchange would
		# compete for the one vCPU with the first requests.
		(sleep 2 && exec udhcpc -i eth0 -s /etc/udhcpc.script -O mtu -t 20 -T 1 -A 2 -b >/dev/null 2>&1) 3>&- &
	fi
	log "IDENTITY mac=$m host=$h addr=${a:--}"
}
# warm port=N path=/PATH: two GETs from the loopback, so that a guest
# restored ahead of its request has run a request's code once.
ident_warm() {
	wport= wpath=
	for kv; do
		case $kv in
		port=*) wport=${kv#port=} ;;
		path=*) wpath=${kv#path=} ;;
		esac
	done
	case $wport in '' | *[!0-9]*) ident_reply "err warm: want port=N path=/PATH"; return ;; esac
	case $wpath in /*) ;; *) ident_reply "err warm: want port=N path=/PATH"; return ;; esac
	case $wpath in *[!A-Za-z0-9._/+@-]*) ident_reply "err warm: bad path $wpath"; return ;; esac
	wget -q -O /dev/null "http://127.0.0.1:$wport$wpath" 2>/dev/null 3>&-
	wget -q -O /dev/null "http://127.0.0.1:$wport$wpath" 2>/dev/null 3>&-
	ident_reply "warmed"
}
identd() {
	port=
	n=0
	while [ -z "$port" ] && [ "$n" -lt 100 ]; do
		for p in /sys/class/virtio-ports/*; do
			[ "$(cat "$p/name" 2>/dev/null)" = blixard.identity ] && [ -e "/dev/${p##*/}" ] && port=/dev/${p##*/}
		done
		[ -n "$port" ] || sleep 0.05
		n=$((n + 1))
	done
	[ -n "$port" ] || {
		log "identity agent: no virtio port named blixard.identity"
		return
	}
	exec 3<>"$port" || return
	state=running
	while :; do
		# Blocks until the host connects.
		ident_reply "hello blixard.identity/1 state=$state" || sleep 1
		while read -r line <&3; do
			# shellcheck disable=SC2086 # the words are the command
			set -- $line
			cmd=${1:-}
			[ "$#" -eq 0 ] || shift
			case $cmd in
			freeze) ident_freeze ;;
			ident) ident_set "$@" ;;
			warm) ident_warm "$@" ;;
			*) ident_reply "err unknown command $cmd" ;;
			esac
		done
	done
}
if [ "$ident" = 1 ] && [ -x /bin/blixard-guest ]; then
	# The same protocol without a program start per restore (see
	# guestagent in blixard's source).
	/bin/blixard-guest -net "$([ "$net" = dhcp ] && echo dhcp || echo user)" -addr "$addr" \
		-dhcp-command "udhcpc -i eth0 -s /etc/udhcpc.script -O mtu -t 20 -T 1 -A 2 -b" \
		-static-marker /tmp/blixard-static 2>&1 | sed "s/^/microvm[$NAME]: /" &
elif [ "$ident" = 1 ]; then
	identd &
fi

ready="READY name=$NAME version=$VERSION http=$addr:80"
[ -z "$host" ] || ready="$ready hostname=$(hostname)"
# shellcheck disable=SC2086 # word splitting joins the names with commas
[ -z "$VOLUMES" ] || ready="$ready volumes=$(IFS=,; set -- $VOLUMES; echo "$*")"
log "$ready"
while :; do
	wait
	sleep 3600
done
