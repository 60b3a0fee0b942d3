package hostnet_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/blixard/blixard/hostnet"
)

// The kernel tests build their own network out of anonymous network
// namespaces: a hub namespace with an underlay bridge, one namespace per
// "node" joined to it by a veth (192.168.77.N/24 on the node's eth0), and
// one namespace per "instance" behind a veth whose node end stands in for a
// tap (a tap without qemu has no carrier). Anonymous namespaces vanish with
// their last file descriptor, so nothing outlives the test binary even when
// it is killed; t.Cleanup closes them (and the links in them) on failure
// too. They need root (CAP_NET_ADMIN, CAP_SYS_ADMIN), which the suite has.

// gateway is the bridges' address: the overlay is 10.100.0.0/16.
var gateway = netip.MustParsePrefix("10.100.0.1/16")

const vni = 42

type lab struct {
	hub   netns.NsHandle
	hubNL *netlink.Handle
	nodes []*node
}

type node struct {
	ns       netns.NsHandle
	nl       *netlink.Handle
	host     *hostnet.Host
	underlay netip.Addr
	addr     netip.Addr // the node's own overlay address (Config.NodeAddr)
}

type instance struct {
	ns  netns.NsHandle
	nl  *netlink.Handle
	tap string // the node-side veth, attached by hostnet
	mac net.HardwareAddr
	ip  netip.Addr
	mtu int
}

// newNamespace creates an anonymous network namespace with loopback up. It
// is made on a thread of its own that is discarded afterwards, so the test's
// threads stay in the original namespace.
func newNamespace(t testing.TB) netns.NsHandle {
	t.Helper()
	type result struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.New()
		c <- result{ns, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatalf("create network namespace (needs root): %v", r.err)
	}
	t.Cleanup(func() { _ = r.ns.Close() })
	h := handleAt(t, r.ns)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return r.ns
}

func handleAt(t testing.TB, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// inNS runs f on a fresh thread inside ns: sockets it opens stay in ns.
func inNS(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addAddr(t testing.TB, h *netlink.Handle, l netlink.Link, p netip.Prefix) {
	t.Helper()
	must(t, h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}))
}

// newLab builds the hub and n nodes, each with a Host.
func newLab(t testing.TB, n int) *lab {
	t.Helper()
	l := &lab{hub: newNamespace(t)}
	l.hubNL = handleAt(t, l.hub)
	ul := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "underlay"}}
	must(t, l.hubNL.LinkAdd(ul))
	must(t, l.hubNL.LinkSetUp(ul))
	for i := 1; i <= n; i++ {
		nd := &node{
			ns:       newNamespace(t),
			underlay: netip.AddrFrom4([4]byte{192, 168, 77, byte(i)}),
			addr:     netip.AddrFrom4([4]byte{10, 100, 0, byte(1 + i)}),
		}
		nd.nl = handleAt(t, nd.ns)
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: fmt.Sprintf("n%d", i), MasterIndex: ul.Index},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(nd.ns)),
		}
		must(t, l.hubNL.LinkAdd(v))
		must(t, l.hubNL.LinkSetUp(v))
		eth0, err := nd.nl.LinkByName("eth0")
		must(t, err)
		addAddr(t, nd.nl, eth0, netip.PrefixFrom(nd.underlay, 24))
		must(t, nd.nl.LinkSetUp(eth0))
		nd.host, err = hostnet.NewAt(nd.ns, nil)
		must(t, err)
		t.Cleanup(func() { _ = nd.host.Close() })
		l.nodes = append(l.nodes, nd)
	}
	return l
}

func (nd *node) config() hostnet.Config {
	return hostnet.Config{Gateway: gateway, VXLANID: vni, Underlay: nd.underlay, UnderlayDev: "eth0", NodeAddr: nd.addr}
}

// newInstance makes an instance namespace with eth0 (mac, ip/16, default
// route via the gateway) that is not plugged into any node yet.
func newInstance(t testing.TB, tap string, m net.HardwareAddr, ip netip.Addr) *instance {
	t.Helper()
	in := &instance{ns: newNamespace(t), tap: tap, mac: m, ip: ip, mtu: 1450}
	in.nl = handleAt(t, in.ns)
	return in
}

// plug connects in to nd: a veth named in.tap on the node, eth0 in the
// instance (same MAC and address as before a move).
func (in *instance) plug(t testing.TB, nd *node) {
	t.Helper()
	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: in.tap},
		PeerName:         "eth0",
		PeerHardwareAddr: in.mac,
		PeerNamespace:    netlink.NsFd(int(in.ns)),
	}
	must(t, nd.nl.LinkAdd(v))
	eth0, err := in.nl.LinkByName("eth0")
	must(t, err)
	// The MTU a DHCP server would hand out (option 26).
	must(t, in.nl.LinkSetMTU(eth0, in.mtu))
	addAddr(t, in.nl, eth0, netip.PrefixFrom(in.ip, gateway.Bits()))
	must(t, in.nl.LinkSetUp(eth0))
	must(t, in.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gateway.Addr().AsSlice()}))
}

// unplug removes the instance's veth pair from nd (the VM stopped there).
func (in *instance) unplug(t testing.TB, nd *node) {
	t.Helper()
	l, err := nd.nl.LinkByName(in.tap)
	must(t, err)
	must(t, nd.nl.LinkDel(l))
}

// ping sends ICMP echo requests from the namespace src to dst every 10 ms
// until one is answered or ctx ends, and returns how long that took. The
// raw socket is opened inside src.
func ping(ctx context.Context, src netns.NsHandle, dst netip.Addr) (time.Duration, error) {
	var conn net.PacketConn
	if err := inNS(src, func() error {
		var err error
		conn, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return 0, fmt.Errorf("open ICMP socket: %w", err)
	}
	defer conn.Close()
	start := time.Now()
	id := uint16(os.Getpid())
	buf := make([]byte, 1500)
	for seq := uint16(1); ; seq++ {
		if err := ctx.Err(); err != nil {
			return time.Since(start), fmt.Errorf("no echo reply from %s: %w", dst, err)
		}
		if _, err := conn.WriteTo(echoRequest(id, seq), &net.IPAddr{IP: dst.AsSlice()}); err != nil &&
			!errors.Is(err, unix.EHOSTUNREACH) && !errors.Is(err, unix.ENETUNREACH) {
			return 0, fmt.Errorf("send echo request: %w", err)
		}
		deadline := time.Now().Add(10 * time.Millisecond)
		_ = conn.SetReadDeadline(deadline)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				break // deadline: send the next request
			}
			// Raw IPv4 ICMP sockets hand over the ICMP message itself.
			if n >= 8 && buf[0] == 0 && binary.BigEndian.Uint16(buf[4:]) == id &&
				from.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
				return time.Since(start), nil
			}
		}
	}
}

func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "blixard!")
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(b[2:], ^uint16(sum))
	return b
}

// tcpCopy sends size bytes over TCP from the namespace src to a listener on
// dst:port in the namespace dstNS and returns the elapsed time once the
// receiver has read them all.
func tcpCopy(srcNS, dstNS netns.NsHandle, dst netip.Addr, size int64) (time.Duration, error) {
	var ln net.Listener
	if err := inNS(dstNS, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		n, err := io.Copy(io.Discard, c)
		if err == nil && n != size {
			err = fmt.Errorf("received %d bytes, sent %d", n, size)
		}
		got <- err
	}()
	var c net.Conn
	start := time.Now()
	if err := inNS(srcNS, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		return 0, err
	}
	_, err := io.CopyN(c, zeros{}, size)
	_ = c.Close()
	if err != nil {
		return 0, err
	}
	if err := <-got; err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// dupFile returns a file for a duplicate of nd's namespace handle, to hand
// to a child process.
func dupFile(nd *node) (*os.File, error) {
	fd, err := unix.Dup(int(nd.ns))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "netns"), nil
}
