package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Defaults of [Config].
const (
	DefaultBridge    = "blixard0"
	DefaultVXLANPort = 4789
)

// maxNameLen is Linux's IFNAMSIZ minus the terminating NUL: longer names are
// refused by the kernel, so they are refused here first with the flag to fix.
const maxNameLen = 15

// maxVNI is the largest VXLAN network identifier (24 bits, RFC 7348).
const maxVNI = 1<<24 - 1

// VXLAN encapsulation overhead: outer Ethernet 14 + IP (20 or 40) + UDP 8 +
// VXLAN 8. The overlay MTU is the underlay's minus this, so encapsulated
// frames are never fragmented or dropped on the underlay.
const (
	overheadIPv4 = 50
	overheadIPv6 = 70
)

// tapAlias marks a tap that hostnet created (process backend): only those
// are deleted when no longer wanted; taps made by microvm.nix's
// microvm-tap-interfaces@ belong to systemd and are only detached.
const tapAlias = "blixard-tap"

// Config is this node's overlay setup. It is the same on every node except
// Underlay and UnderlayDev.
type Config struct {
	// Bridge is the overlay bridge (--bridge, default "blixard0"). Instance
	// taps and the VXLAN device are its ports.
	Bridge string
	// Gateway is the bridge's address with the cluster's prefix length, e.g.
	// 10.100.0.1/16. Every node carries the same gateway: broadcasts (ARP,
	// DHCP) never leave a node, so each node answers for it to its own
	// instances.
	Gateway netip.Prefix
	// VXLANID is the VXLAN network identifier (--vxlan-id, 1..16777215). It
	// names the VXLAN device too: "blxvx" + the id (see [Config.VXLANDevice]).
	VXLANID uint32
	// VXLANPort is the UDP port of the VXLAN device (default 4789, IANA).
	VXLANPort int
	// Underlay is this node's address on the network that joins the nodes
	// (any routed network: a LAN, a WAN, a tailnet). Remote nodes send this
	// node's encapsulated frames there.
	Underlay netip.Addr
	// UnderlayDev optionally pins the VXLAN device to one interface (for
	// example tailscale0); empty lets the kernel route.
	UnderlayDev string
	// MTU of the bridge, the VXLAN device and the taps; 0 means the MTU of
	// the interface that carries Underlay minus the VXLAN overhead (1450 on
	// a 1500 underlay, 1230 on a tailnet's 1280). Guests must use the same
	// MTU (DHCP option 26).
	MTU int
	// NodeAddr is this node's own address in the overlay (optional, unique
	// per node, e.g. 10.100.0.2). Traffic the host itself sends into the
	// overlay (an ingress proxy, a health probe) needs it: its source would
	// otherwise be the gateway address, which every node carries, and the
	// replies would go to the instance's own node. With NodeAddr the bridge
	// carries it as its primary address (so the kernel picks it as source),
	// keeps Gateway as a secondary one, and gets the MAC [BridgeMAC]; every
	// other node lists this node as a remote entry ([NodeRemote]).
	NodeAddr netip.Addr
	// CreateTaps is true under the process backend: hostnet creates a
	// wanted tap that does not exist (persistent, owned by Tap.Owner) and
	// deletes the taps it created once they are no longer wanted. Under
	// systemd microvm.nix's microvm-tap-interfaces@NAME creates the taps and
	// hostnet only attaches (and detaches) them; a tap that is not there yet
	// is left for a later Sync.
	CreateTaps bool
}

// VXLANDevice is the name of the VXLAN device: "blxvx" + the VNI, at most
// 15 characters. Tying the name to the VNI means a new --vxlan-id replaces
// the device instead of fighting over it.
func (c Config) VXLANDevice() string {
	return fmt.Sprintf("blxvx%d", c.VXLANID)
}

// withDefaults fills the defaults that need no observation (MTU needs the
// underlay's interface, see Plan).
func (c Config) withDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.VXLANPort == 0 {
		c.VXLANPort = DefaultVXLANPort
	}
	return c
}

// validate checks a Config with its defaults applied. Each message names
// the setting to fix.
func (c Config) validate() error {
	if err := checkName(c.Bridge); err != nil {
		return fmt.Errorf("bridge %q: %w: pick another --bridge", c.Bridge, err)
	}
	if !c.Gateway.IsValid() || !c.Gateway.Addr().Is4() {
		return fmt.Errorf("gateway %v is not an IPv4 address with a prefix length (like 10.100.0.1/16): check network.cidr", c.Gateway)
	}
	if c.Gateway.Addr() == c.Gateway.Masked().Addr() || c.Gateway.Bits() > 30 {
		return fmt.Errorf("gateway %v must be a host address in a network of at least 4 addresses: check network.cidr", c.Gateway)
	}
	if c.VXLANID == 0 || c.VXLANID > maxVNI {
		return fmt.Errorf("vxlan id %d is outside 1..%d: set --vxlan-id", c.VXLANID, maxVNI)
	}
	if c.VXLANPort < 1 || c.VXLANPort > 65535 {
		return fmt.Errorf("vxlan port %d is outside 1..65535", c.VXLANPort)
	}
	if !c.Underlay.IsValid() || c.Underlay.IsUnspecified() || c.Underlay.Zone() != "" {
		return fmt.Errorf("underlay address %v is not a usable address: pass this node's address on the network between the nodes", c.Underlay)
	}
	if c.UnderlayDev != "" {
		if err := checkName(c.UnderlayDev); err != nil {
			return fmt.Errorf("underlay device %q: %w", c.UnderlayDev, err)
		}
	}
	if c.NodeAddr.IsValid() {
		overlay := c.Gateway.Masked()
		last := lastAddr(overlay)
		if !c.NodeAddr.Is4() || !overlay.Contains(c.NodeAddr) || c.NodeAddr == c.Gateway.Addr() ||
			c.NodeAddr == overlay.Addr() || c.NodeAddr == last {
			return fmt.Errorf("node address %s is not a host address in the overlay %s other than the gateway", c.NodeAddr, overlay)
		}
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return fmt.Errorf("mtu %d is outside 576..65535", c.MTU)
	}
	return nil
}

// overhead is the VXLAN encapsulation overhead on this node's underlay.
func (c Config) overhead() int {
	if c.Underlay.Unmap().Is4() {
		return overheadIPv4
	}
	return overheadIPv6
}

// BridgeMAC is the bridge's MAC on the node whose overlay address is
// nodeAddr: locally administered, 0a:b1 followed by the IPv4 address, so
// every node knows every other node's bridge MAC from the node's address.
// Instance MACs must not start with 0a:b1.
func BridgeMAC(nodeAddr netip.Addr) net.HardwareAddr {
	a := nodeAddr.As4()
	return net.HardwareAddr{0x0a, 0xb1, a[0], a[1], a[2], a[3]}
}

// NodeRemote is the entry through which other nodes reach the host of the
// node with overlay address nodeAddr and underlay address underlay (see
// Config.NodeAddr); list it in Desired.Remote on every other node.
func NodeRemote(nodeAddr, underlay netip.Addr) Remote {
	return Remote{MAC: BridgeMAC(nodeAddr), IP: nodeAddr, Node: underlay}
}

// Desired is what this node's overlay must carry, derived by the caller from
// the replicated state: the instances running here and every instance
// running elsewhere.
type Desired struct {
	// LocalTaps are the taps of the instances this node runs.
	LocalTaps []Tap
	// Remote are the instances other nodes run.
	Remote []Remote
}

// Tap is the host side of a local instance's NIC.
type Tap struct {
	// Name of the tap device (at most 15 characters).
	Name string
	// MAC is the guest's MAC (the virtio NIC's, qemu's mac=), not the tap
	// device's own address: the bridge gets a static entry sending that MAC
	// to this tap, so traffic reaches an instance that has just moved here
	// before it has sent anything.
	MAC net.HardwareAddr
	// Owner and Group own a tap that hostnet creates (Config.CreateTaps): the
	// user that runs the VM opens it.
	Owner, Group uint32
	// MultiQueue creates the tap with multi_queue, which a runner with
	// several queues needs (microvm.nix records it in the runner's
	// share/microvm/tap-flags).
	MultiQueue bool
}

// Remote is an instance that runs on another node.
type Remote struct {
	// MAC is the instance's MAC.
	MAC net.HardwareAddr
	// IP is the instance's overlay address, inside Config.Gateway's prefix.
	IP netip.Addr
	// Node is the underlay address of the node that runs it: the VXLAN
	// device sends frames for MAC there.
	Node netip.Addr
}

// validate checks Desired against cfg (defaults applied): names fit, MACs
// are unicast, addresses are in the overlay, nothing is listed twice, and no
// remote instance claims to run on this node.
func (d Desired) validate(cfg Config) error {
	taps := map[string]bool{}
	macs := map[string]string{}
	claim := func(mac net.HardwareAddr, who string) error {
		if err := checkMAC(mac); err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		if prev, ok := macs[string(mac)]; ok {
			return fmt.Errorf("%s and %s have the same MAC %s: every instance needs its own", prev, who, mac)
		}
		macs[string(mac)] = who
		return nil
	}
	for _, t := range d.LocalTaps {
		if err := checkName(t.Name); err != nil {
			return fmt.Errorf("tap %q: %w", t.Name, err)
		}
		if t.Name == cfg.Bridge || t.Name == cfg.VXLANDevice() {
			return fmt.Errorf("tap %q has the name of the overlay's own device: rename the tap", t.Name)
		}
		if taps[t.Name] {
			return fmt.Errorf("tap %q is listed twice", t.Name)
		}
		taps[t.Name] = true
		if err := claim(t.MAC, "tap "+t.Name); err != nil {
			return err
		}
	}
	ips := map[netip.Addr]bool{}
	for _, r := range d.Remote {
		who := fmt.Sprintf("remote instance %s", r.IP)
		if !r.IP.Is4() || !cfg.Gateway.Masked().Contains(r.IP) || r.IP == cfg.Gateway.Addr() {
			return fmt.Errorf("%s is not a host address in the overlay %s", who, cfg.Gateway.Masked())
		}
		if ips[r.IP] {
			return fmt.Errorf("%s is listed twice", who)
		}
		if r.IP == cfg.NodeAddr {
			return fmt.Errorf("%s has this node's own overlay address", who)
		}
		ips[r.IP] = true
		if err := claim(r.MAC, who); err != nil {
			return err
		}
		if !r.Node.IsValid() || r.Node.Unmap().Is4() != cfg.Underlay.Unmap().Is4() {
			return fmt.Errorf("%s: node address %v is not an address of the underlay's family (this node: %s)", who, r.Node, cfg.Underlay)
		}
		if r.Node.Unmap() == cfg.Underlay.Unmap() {
			return fmt.Errorf("%s is listed as remote but runs on this node (%s): list it as a local tap", who, r.Node)
		}
	}
	return nil
}

func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty interface name")
	case len(name) > maxNameLen:
		return fmt.Errorf("interface name longer than %d characters", maxNameLen)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("not a valid interface name")
	}
	return nil
}

func checkMAC(mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("MAC %q is not a 6-byte Ethernet address", mac)
	}
	if mac[0]&1 != 0 {
		return fmt.Errorf("MAC %s is a multicast address", mac)
	}
	if allZero(mac) {
		return fmt.Errorf("MAC %s is all zeros", mac)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// lastAddr is the highest address of p (its broadcast address for IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
