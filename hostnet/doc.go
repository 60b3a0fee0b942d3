// Package hostnet is the node side of the overlay network: it programs this
// host's kernel (through netlink, never by running ip(8)) so that every
// instance reaches every other instance at its cluster address, wherever
// each one runs.
//
// It must not know the replicated state, Raft, placement or the cluster spec:
// it takes its own small inputs ([Config], [Desired]) that the node agent
// derives from the replicated state, and imports nothing of this module. It
// runs no programs.
//
// # The model
//
// Every node has the same layer-2 segment, joined over the underlay:
//
//	instance ── tap ─┐
//	instance ── tap ─┼─ bridge blixard0 (10.100.0.1/16) ── vxlan blxvxVNI ══ UDP 4789 ══ other nodes
//	                 │    static FDB + neighbours          local = underlay address
//
// How frames find their way:
//
//   - The bridge (Config.Bridge) carries the cluster's gateway address on
//     every node. Instances' taps and the VXLAN device are its ports.
//   - The VXLAN device has learning off and no default destination: it sends
//     a frame only to a node its FDB names, "MAC dst NODE" (one entry per
//     remote instance). There is no multicast group and no all-zeros flood
//     entry, so broadcasts (ARP, DHCP) never leave a node: each node answers
//     for the gateway and runs DHCP for its own instances only, and several
//     nodes' DHCP servers never see each other's clients.
//   - ARP for a remote instance is answered on the node itself: a permanent
//     neighbour entry "IP lladdr MAC" on the bridge, a static bridge entry
//     sending MAC to the VXLAN port, and neigh_suppress on that port make the
//     bridge reply in the remote instance's place (the ARP/ND suppression of
//     EVPN). flannel's vxlan backend uses the same static FDB and neighbour
//     entries per remote host instead of multicast; here they are per
//     instance, because instances (not nodes) own addresses.
//   - All entries come from the replicated state: when an instance moves,
//     every node replaces one FDB entry (MAC → the new node), an atomic
//     repoint; the instance keeps its MAC and address, so its peers' ARP
//     caches stay valid.
//   - A local instance's tap gets a static bridge entry for the guest's MAC,
//     so traffic reaches an instance that has just moved here before it has
//     sent a frame (learning would wait for one).
//
// The underlay is any routed network between the nodes' underlay addresses
// (Config.Underlay): a LAN, a routed WAN, or a tailnet (node addresses that
// are Tailscale addresses, UnderlayDev tailscale0). VXLAN is UDP, so it only
// needs UDP 4789 open between the nodes; the overlay MTU defaults to the
// underlay interface's MTU minus the encapsulation (1450 on Ethernet, 1230
// on a tailnet's 1280), and guests must be told it (DHCP option 26). VXLAN
// does not encrypt: over an untrusted underlay use a tailnet or another
// encrypted underlay.
//
// # Use
//
//  1. The agent derives Desired from the replicated state on every pass:
//     the taps of the instances it runs and, for every instance running on
//     another node, its MAC, address and that node's underlay address.
//  2. It calls [Host.Sync], which observes the namespace ([Host.Observe]),
//     plans with the pure [Plan] and applies the result ([Host.Apply]). Sync
//     is level-triggered: it converges from whatever is there, and returns
//     no operations when the host already matches.
//  3. A [*ConflictError] (a bridge with another address, a VXLAN id another
//     device uses, an underlay address the host does not have, an address
//     or a route that overlaps the overlay — a VPN's, a tailnet's subnet
//     route in Tailscale's table 52) changed nothing and needs a person:
//     its message says what to do.
//
// Under the systemd backend microvm.nix's microvm-tap-interfaces@NAME
// creates the taps and hostnet only attaches them; under the process backend
// (Config.CreateTaps) hostnet creates them, persistent and owned by the user
// that runs the VM, marks them with an alias and deletes them once no longer
// wanted. Taps it did not create are only detached.
//
// What hostnet owns, and so changes or deletes: the bridge's addresses, MAC,
// MTU and ports; the VXLAN device named after the VNI and every entry in its
// own FDB; static bridge entries on the bridge's ports; permanent neighbours
// on the bridge inside the overlay prefix. Everything else — learned
// entries, other links, addresses outside the bridge, routes and routing
// rules — is only read.
//
// The host itself reaches remote instances (an ingress proxy, a health
// probe) from its own overlay address, Config.NodeAddr: the gateway address
// cannot be a source, since every node has it and replies would go to the
// instance's own node. The bridge carries NodeAddr as its primary address
// and the MAC [BridgeMAC] of it, and every other node lists the node as
// [NodeRemote].
//
// Not modelled: IPv6 inside the overlay (neighbour discovery would need the
// same suppression entries); encryption (use an encrypted underlay).
package hostnet
