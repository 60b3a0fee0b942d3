#!/bin/sh
# busybox udhcpc's script in the lab's guests: applies the lease (address,
# MTU, default route) and writes the guest's resolv.conf.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "$1" in
bound|renew)
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/$mask" dev "$interface"
  if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu"; fi
  for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
  : > /etc/resolv.conf
  for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  if [ -n "$domain" ]; then echo "search $domain" >> /etc/resolv.conf; fi
  ;;
esac
exit 0
