package netdns_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/blixard/blixard/netdns"
)

// The dnsmasq tests build a node out of anonymous network namespaces: a
// "node" namespace with the bridge blixard0 carrying the gateway address
// (what hostnet sets up) and dnsmasq, run by the Manager on a thread inside
// it; "instance" namespaces plugged into the bridge through veths whose
// instance end has the instance's MAC (a tap without qemu has no
// carrier), where busybox udhcpc asks for a lease and DNS queries are
// sent from; and small upstream DNS servers (miekg/dns) on the node's
// loopback that dnsmasq forwards other names to. Anonymous namespaces
// vanish with their last file descriptor, so nothing outlives the test
// binary; t.Cleanup closes them. They need root (CAP_NET_ADMIN,
// CAP_SYS_ADMIN), which the suite has.

const (
	bridge = "blixard0"
	domain = "test.internal"
)

var (
	cidr    = netip.MustParsePrefix("10.100.0.0/16")
	gateway = netip.MustParseAddr("10.100.0.1")
	dnsAddr = netip.AddrPortFrom(gateway, 53).String()
)

type lab struct {
	node netns.NsHandle
	nl   *netlink.Handle
	br   netlink.Link
	dir  string
	logs *logBuffer
}

// labInstance is a namespace standing in for a guest.
type labInstance struct {
	netdns.Instance
	ns netns.NsHandle
	nl *netlink.Handle
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// requirePrograms fails, with the setup command, when a program the tests
// run is missing.
func requirePrograms(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Fatalf("dnsmasq is missing: run scripts/setup.sh (it installs dnsmasq-base): %v", err)
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Fatalf("busybox is missing (its udhcpc is the DHCP client): run scripts/setup-microvm.sh: %v", err)
	}
}

// newNamespace creates an anonymous network namespace with loopback up,
// on a thread of its own that is discarded afterwards.
func newNamespace(t testing.TB) (netns.NsHandle, *netlink.Handle) {
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
	h, err := netlink.NewHandleAt(r.ns, unix.NETLINK_ROUTE)
	must(t, err)
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	must(t, err)
	must(t, h.LinkSetUp(lo))
	return r.ns, h
}

// inNS runs f on a fresh thread inside ns: sockets it opens and programs
// it starts live in ns.
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

func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
}

func addAddr(h *netlink.Handle, l netlink.Link, p netip.Prefix) error { return h.AddrAdd(l, nlAddr(p)) }

// newLab makes the node namespace with its bridge and a state directory
// that dnsmasq's unprivileged user can read (t.TempDir is private).
func newLab(t testing.TB) *lab {
	t.Helper()
	requirePrograms(t)
	l := &lab{logs: &logBuffer{}}
	l.node, l.nl = newNamespace(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}
	must(t, l.nl.LinkAdd(br))
	must(t, addAddr(l.nl, br, netip.PrefixFrom(gateway, cidr.Bits())))
	must(t, l.nl.LinkSetUp(br))
	l.br = br
	dir, err := os.MkdirTemp("", "netdns-test-")
	must(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	l.dir = filepath.Join(dir, "state")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dnsmasq and manager log:\n%s", l.logs.String())
		}
	})
	return l
}

// manager makes a Manager for the lab with short backoffs.
func (l *lab) manager(t testing.TB) *netdns.Manager {
	t.Helper()
	m, err := netdns.New(netdns.Options{
		Dir:        l.dir,
		Logger:     slog.New(slog.NewTextHandler(l.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	})
	must(t, err)
	return m
}

// run runs m on a thread inside the node namespace, as the agent runs it
// in the host's, until the test ends; stop ends it earlier.
func (l *lab) run(t testing.TB, m *netdns.Manager) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: dnsmasq is forked on this thread, which dies with the goroutine
		if err := netns.Set(l.node); err != nil {
			done <- err
			return
		}
		done <- m.Run(ctx)
	}()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

// plug makes an instance namespace whose eth0 (with in's MAC) is
// connected to the node's bridge through a veth named tap; it has no
// address until it takes a lease.
func (l *lab) plug(t testing.TB, in netdns.Instance, tap string) *labInstance {
	t.Helper()
	li := &labInstance{Instance: in}
	li.ns, li.nl = newNamespace(t)
	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: tap, MasterIndex: l.br.Attrs().Index},
		PeerName:         "eth0",
		PeerHardwareAddr: in.MAC,
		PeerNamespace:    netlink.NsFd(int(li.ns)),
	}
	must(t, l.nl.LinkAdd(v))
	must(t, l.nl.LinkSetUp(v))
	eth0, err := li.nl.LinkByName("eth0")
	must(t, err)
	must(t, li.nl.LinkSetUp(eth0))
	return li
}

// lease is what udhcpc handed its script on "bound".
type lease map[string]string

// udhcpcScript writes udhcpc's variables into $LEASE_OUT on "bound".
const udhcpcScript = `#!/bin/sh
[ "$1" = bound ] || exit 0
env > "$LEASE_OUT.tmp" && mv "$LEASE_OUT.tmp" "$LEASE_OUT"
`

// dhcp runs busybox udhcpc in the instance (tries discovers, one second
// apart) and returns the lease it got, or an error with udhcpc's output.
func (li *labInstance) dhcp(t testing.TB, tries int) (lease, error) {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	must(t, os.WriteFile(script, []byte(udhcpcScript), 0o755))
	out := filepath.Join(dir, "lease")
	var output []byte
	err := inNS(li.ns, func() error {
		cmd := exec.Command("busybox", "udhcpc", "-f", "-q", "-n", "-t", strconv.Itoa(tries), "-T", "1", "-A", "0",
			"-i", "eth0", "-s", script, "-O", "mtu", "-O", "search")
		cmd.Env = []string{"LEASE_OUT=" + out, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		var err error
		output, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("udhcpc: %w: %s", err, output)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("udhcpc succeeded but its script wrote no lease: %w: %s", err, output)
	}
	l := lease{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			l[k] = v
		}
	}
	return l, nil
}

// configure gives the instance the address and route of a lease, as
// udhcpc's default script does in a guest.
func (li *labInstance) configure(t testing.TB, l lease) {
	t.Helper()
	eth0, err := li.nl.LinkByName("eth0")
	must(t, err)
	bits, err := strconv.Atoi(l["mask"])
	must(t, err)
	must(t, addAddr(li.nl, eth0, netip.PrefixFrom(netip.MustParseAddr(l["ip"]), bits)))
	must(t, li.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: netip.MustParseAddr(l["router"]).AsSlice()}))
}

// setAddr gives the instance its committed address directly (for tests
// that are not about DHCP).
func (li *labInstance) setAddr(t testing.TB) {
	t.Helper()
	eth0, err := li.nl.LinkByName("eth0")
	must(t, err)
	must(t, addAddr(li.nl, eth0, netip.PrefixFrom(li.Address, cidr.Bits())))
}

// query sends one DNS question from the instance to the gateway over UDP.
func (li *labInstance) query(name string, qtype uint16) (*dns.Msg, error) {
	var r *dns.Msg
	err := inNS(li.ns, func() error {
		c := &dns.Client{Net: "udp", Timeout: 500 * time.Millisecond}
		var err error
		r, _, err = c.Exchange(new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype), dnsAddr)
		return err
	})
	return r, err
}

// lookupA returns the sorted A records of name, or an error naming the
// response code when there are none.
func (li *labInstance) lookupA(name string) ([]netip.Addr, error) {
	r, err := li.query(name, dns.TypeA)
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s: %s", name, dns.RcodeToString[r.Rcode])
	}
	var out []netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			addr, _ := netip.AddrFromSlice(a.A.To4())
			out = append(out, addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// expectA returns a WaitFor condition: name resolves to exactly want.
func (li *labInstance) expectA(name string, want ...netip.Addr) func() error {
	return func() error {
		got, err := li.lookupA(name)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s resolves to %v, want %v", name, got, want)
		}
		return nil
	}
}

// expectRcode returns a WaitFor condition: name gets response code rcode.
func (li *labInstance) expectRcode(name string, qtype uint16, rcode int) func() error {
	return func() error {
		r, err := li.query(name, qtype)
		if err != nil {
			return err
		}
		if r.Rcode != rcode {
			return fmt.Errorf("%s %s: %s (%v), want %s", name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode], r.Answer, dns.RcodeToString[rcode])
		}
		return nil
	}
}

// upstream is a DNS server on the node's loopback that answers every A
// question with answer and records the names it was asked.
type upstream struct {
	addr   netip.AddrPort
	mu     sync.Mutex
	asked  []string // guarded by mu
	answer netip.Addr
}

func (l *lab) upstream(t testing.TB, answer netip.Addr) *upstream {
	t.Helper()
	u := &upstream{answer: answer}
	var pc net.PacketConn
	must(t, inNS(l.node, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
		return err
	}))
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg).SetReply(q)
		if len(q.Question) == 1 {
			u.mu.Lock()
			u.asked = append(u.asked, q.Question[0].Name)
			u.mu.Unlock()
			if q.Question[0].Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
					A:   u.answer.AsSlice(),
				})
			}
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	served := make(chan error, 1)
	go func() { served <- srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() {
		_ = srv.Shutdown()
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("upstream DNS server: %v", err)
		}
	})
	return u
}

func (u *upstream) wasAsked(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Contains(u.asked, dns.Fqdn(name))
}

// pid reads the pid file dnsmasq wrote.
func (l *lab) pid() (int, error) {
	data, err := os.ReadFile(filepath.Join(l.dir, netdns.PIDFile))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// logBuffer collects log output, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder // guarded by mu
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) count(substr string) int { return strings.Count(b.String(), substr) }
