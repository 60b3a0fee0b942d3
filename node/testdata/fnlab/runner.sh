#!/bin/sh
# The function lab's runner (node/functions_lab_test.go), the network
# lab's plain runner (testdata/netlab/runner.sh) made a function: its
# "guest" is a network and mount namespace behind a veth named like the
# instance's tap, configured by DHCP from the node's dnsmasq, serving HTTP
# on port 8080: "hello from NAME" at /, and after a second "slow from
# NAME" at /cgi-bin/slow (busybox httpd's CGI; /cgi-bin/one below). It writes when it was
# exec'd (exec.ns, nanoseconds since the epoch) and when its server
# started (ready.ns), for the lab's cold start measurements.
# It reads the identity the node wrote to STATE/NAME/network.env, as a
# plain runner does (docs/architecture.md, Networking). The agent runs it
# in STATE/NAME.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
date +%s%N > "$PWD/exec.ns"
dir=$PWD
name=$(basename "$dir")
bin=$(dirname "$0")
n=0
while [ ! -s "$dir/network.env" ]; do
  n=$((n + 1))
  if [ $n -gt 300 ]; then echo "runner $name: no network.env after 30 s"; exit 1; fi
  sleep 0.1
done
. "$dir/network.env"
echo "runner $name: tap $BLIXARD_TAP, MAC $BLIXARD_MAC, address $BLIXARD_IP/$BLIXARD_PREFIX"
: > "$dir/resolv.conf"
mkdir -p "$dir/www"
echo "hello from $name" > "$dir/www/index.html"
mkdir -p "$dir/www/cgi-bin"
printf '#!/bin/sh\nsleep 1\nprintf "Content-Type: text/plain\\r\\n\\r\\nslow from %s\\n"\n' "$name" > "$dir/www/cgi-bin/slow"
chmod +x "$dir/www/cgi-bin/slow"
# /cgi-bin/one takes half a second and says whether another request was
# inside it meanwhile ("overlap") or not ("alone"): how a handler that is
# not safe for concurrent requests would fare.
printf '#!/bin/sh\nif mkdir %s/busy 2>/dev/null; then s=alone; sleep 0.5; rmdir %s/busy; else s=overlap; sleep 0.5; fi\nprintf "Content-Type: text/plain\\r\\n\\r\\n%%s from %s\\n" "$s"\n' "$dir" "$dir" "$name" > "$dir/www/cgi-bin/one"
chmod +x "$dir/www/cgi-bin/one"
# The guest: its own network namespace, and its own /etc/resolv.conf
# (bound from the instance directory) for the DHCP client to write.
unshare --net --mount sh -c 'mount --bind "$0" /etc/resolv.conf && exec sleep 3600' "$dir/resolv.conf" &
guest=$!
echo "$guest" > "$dir/guest.pids"
bye() {
  for p in $(cat "$dir/guest.pids" 2>/dev/null); do kill "$p" 2>/dev/null; done
  rm -f "$dir/guest.pids"
  exit 0
}
trap bye TERM INT HUP
until [ "$(cat /proc/$guest/comm 2>/dev/null)" = sleep ]; do sleep 0.05; done
g() { nsenter -t "$guest" -n -m "$@"; }
# The tap hostnet created has no hypervisor behind it: a veth of the same
# name takes its place (hostnet attaches any tap or veth of that name). The
# veth is made under another name and swapped in by one ip(8) batch, so no
# network pass of the node finds the name free and makes the tap again.
tmp=bt${BLIXARD_TAP#??}
ip link del "$tmp" 2>/dev/null
if ! ip link add "$tmp" type veth peer name eth0 netns "$guest"; then
  echo "runner $name: cannot create $tmp"
  bye
fi
n=0
while ip link show "$tmp" >/dev/null 2>&1; do
  printf 'link del %s\nlink set %s name %s\n' "$BLIXARD_TAP" "$tmp" "$BLIXARD_TAP" | ip -force -batch - 2>/dev/null
  n=$((n + 1))
  if [ $n -gt 100 ]; then echo "runner $name: cannot rename $tmp to $BLIXARD_TAP"; bye; fi
  ip link show "$tmp" >/dev/null 2>&1 && sleep 0.1
done
g ip link set lo up
g ip link set eth0 address "$BLIXARD_MAC"
g ip link set eth0 up
ip link set "$BLIXARD_TAP" up
if ! g busybox udhcpc -i eth0 -f -q -n -t 60 -T 1 -O mtu -s "$bin/udhcpc-script"; then
  echo "runner $name: no DHCP lease"
  bye
fi
# nsenter execs httpd (no fork for these namespaces): $! is httpd's PID.
nsenter -t "$guest" -n -m busybox httpd -f -p 8080 -h "$dir/www" &
echo "$!" >> "$dir/guest.pids"
date +%s%N > "$dir/ready.ns"
echo "booted $name: $(g ip -4 -o addr show dev eth0)"
wait "$guest"
bye
