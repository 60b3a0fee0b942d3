// Package netdns runs DHCP and DNS for the instances on this node's bridge:
// a dnsmasq (Debian: dnsmasq-base; NixOS: pkgs.dnsmasq) that this package
// configures, starts, reloads and restarts. dnsmasq is a real, well-kept
// server; this package only decides what it serves.
//
// It must not know the replicated state, Raft, placement or the cluster
// spec: it takes its own small inputs ([Desired]: [Network] and
// [Instance]s) that the node agent derives from the replicated state, and
// imports nothing of this module. It programs no links or addresses:
// hostnet owns the bridge and its gateway address.
//
// # What dnsmasq serves
//
//   - DHCP, static leases only: each instance this node runs (Desired.Local)
//     gets its committed address and hostname for its MAC. A MAC that is not
//     listed gets nothing (dnsmasq ignores it), so a node never answers for
//     another node's instances. Broadcasts never cross the VXLAN (see
//     hostnet), so every node's DHCP server sees only its own instances
//     anyway; listing only local ones is the second guard. Offers also carry
//     the gateway as router and DNS server, the cluster domain and, when set,
//     the overlay MTU (option 26).
//   - DNS on the bridge, for every running instance of the cluster
//     (Desired.Running), the same on every node:
//     HOSTNAME.DOMAIN is the instance's address (its hostname is its
//     instance name whenever that is a DNS label, so web-0.prod.internal);
//     NAME.DOMAIN is the address of every running instance of declared VM
//     NAME (web.prod.internal: all replicas); the reverse (PTR) of an
//     instance's address is HOSTNAME.DOMAIN. Names under DOMAIN and reverse
//     names of the cluster network that no instance has are NXDOMAIN, never
//     forwarded. Every other name goes to Network.Upstreams, the host's
//     resolvers ([ParseResolvConf]).
//
// DOMAIN is [Domain] of the cluster name: "CLUSTER.internal".
//
// # Upstream resolvers
//
// The host's resolv.conf servers are used as they are, loopback stubs such
// as systemd-resolved's 127.0.0.53 included: dnsmasq runs in the host's
// network namespace, so it reaches them, and the stub keeps resolved's
// per-link routing (a tailnet's MagicDNS names, a VPN's split DNS) that its
// list of "real" servers in /run/systemd/resolve/resolv.conf would lose. Only
// the gateway itself is left out: forwarding to it would be a loop.
//
// # Use
//
//  1. [New] checks the program and the state directory and starts nothing.
//  2. [Manager.Run] owns dnsmasq until its context ends: it starts dnsmasq
//     once the first Update has written its files, restarts it with
//     exponential backoff when it exits, and kills it when the context ends.
//     Call it after hostnet has set the bridge up with the gateway address:
//     until then dnsmasq cannot bind and is retried.
//  3. [Manager.Update] renders the files (the pure [Render]) and writes the
//     ones that changed, atomically. New hosts files are reread on SIGHUP;
//     a new main configuration restarts dnsmasq. An Update that changes
//     nothing writes and signals nothing, so the agent may call it on every
//     pass (Render takes 14–20 ms for 10,000 running instances; calling
//     it only when the replicated state or resolv.conf changed is cheaper).
//
// # Files in Options.Dir
//
// dnsmasq.conf (main configuration), dhcp-hosts (MAC,address,hostname per
// local instance), hosts (addresses and names of running instances), leases
// (dnsmasq's lease database) and dnsmasq.pid. dnsmasq reads the hosts files
// again after it has dropped root for "nobody" (its default user), so New
// refuses a directory that user cannot search.
//
// Names under DOMAIN come only from the hosts file, so they change exactly
// when Update says: the domain reaches guests as a DHCP option rather than
// dnsmasq's domain=, which would also publish every lease's hostname under
// it. A guest's bare hostname ("web-0", no domain) does resolve from its
// lease on the node that gave it, while the lease lasts.
//
// # Leases of instances that left
//
// dnsmasq keeps a lease until it expires ([LeaseTime]) even when dhcp-hosts
// no longer lists its MAC, and a stale lease blocks its address: dnsmasq
// will not offer it to the instance it is committed to next ("not using
// configured address … because it is leased to …"). So the Manager makes
// dnsmasq forget every lease that dhcp-hosts does not list with that
// address ([StaleLeases]): before each start it removes them from the lease
// file ([PruneLeases]), and while dnsmasq runs it sends a DHCPRELEASE for
// each, as the client would (dnsmasq then deletes the lease), at once after
// every reread of dhcp-hosts and every minute, until dnsmasq's lease file
// shows them gone. An instance that moves away loses its lease here; when
// it comes back it gets its committed address again, and a removed
// instance's address goes to the next instance committed to it.
//
// Not modelled: IPv6 (no DHCPv6, no AAAA records: AAAA questions for
// cluster names get an empty answer).
package netdns
