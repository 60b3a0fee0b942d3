package netdns

// Forgetting the leases of instances the node no longer runs: pruned before a start, released while dnsmasq runs.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// leaseCheck is Run's timer for lease checks.
type leaseCheck struct {
	t *time.Timer
	// C delivers when a check is due; nil while none is scheduled.
	C <-chan time.Time
	// tries counts the checks in a row that found stale leases.
	tries int
}

// after schedules the next check in d, replacing any scheduled one.
func (c *leaseCheck) after(d time.Duration) {
	if c.t == nil {
		c.t = time.NewTimer(d)
	} else {
		c.t.Reset(d) // since Go 1.23 no stale tick can follow a Reset
	}
	c.C = c.t.C
}

// stop cancels the scheduled check (dnsmasq is not running: its next
// start prunes the lease file instead).
func (c *leaseCheck) stop() {
	if c.t != nil {
		c.t.Stop()
	}
	c.C, c.tries = nil, 0
}

// pruneLeaseFile removes the leases dhcp-hosts does not list from the
// lease file; dnsmasq must not be running.
func (m *Manager) pruneLeaseFile() error {
	hosts, _ := m.static()
	path := filepath.Join(m.dir, LeasesFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a first start
	}
	if err != nil {
		return fmt.Errorf("read dnsmasq's lease file: %w", err)
	}
	kept, stale := PruneLeases(data, hosts)
	if len(stale) == 0 {
		return nil
	}
	if err := writeAtomic(path, kept); err != nil {
		return err
	}
	m.log.Info("removed the DHCP leases of instances this node no longer serves before starting dnsmasq", "leases", describeLeases(stale))
	return nil
}

// checkLeases makes the running dnsmasq forget the leases dhcp-hosts does
// not list (a DHCPRELEASE each, sent from the calling thread's network
// namespace, which is dnsmasq's), and schedules the next check.
func (m *Manager) checkLeases(c *leaseCheck) {
	hosts, n := m.static()
	data, err := os.ReadFile(filepath.Join(m.dir, LeasesFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.log.Warn("cannot read dnsmasq's lease file to find leases of instances that left", "err", err)
		c.after(leaseCheckEvery)
		return
	}
	stale := StaleLeases(data, hosts)
	if len(stale) == 0 {
		if c.tries > 0 {
			m.log.Info("dnsmasq forgot the DHCP leases of instances this node no longer serves")
		}
		c.tries = 0
		c.after(leaseCheckEvery)
		return
	}
	c.tries++
	switch c.tries {
	case 1:
		m.log.Info("releasing the DHCP leases of instances this node no longer serves", "leases", describeLeases(stale))
	case releaseWarnAfter:
		m.log.Warn("dnsmasq keeps DHCP leases of instances this node no longer serves although they were released; "+
			"their addresses cannot be given to other instances here until the leases expire", "leases", describeLeases(stale),
			"expire_within", LeaseTime)
	}
	if err := sendReleases(n, stale); err != nil {
		m.log.Warn("cannot release DHCP leases of instances this node no longer serves", "err", err)
	}
	c.after(min(releaseRecheck<<(c.tries-1), leaseCheckEvery))
}

// sendReleases sends dnsmasq a DHCPRELEASE for each lease, as its client
// would. The socket is bound to the bridge (SO_BINDTODEVICE): the packet
// to the bridge's own address is delivered through loopback, and the
// kernel then reports the bridge as its interface (IP_PKTINFO), which
// dnsmasq serves. It goes once to each of the bridge's addresses in the
// cluster network: dnsmasq accepts only the one it uses as server
// identifier (the first, the node's own address where it has one) and
// ignores the others.
func sendReleases(n Network, leases []Lease) error {
	ifi, err := net.InterfaceByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", n.Bridge, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return fmt.Errorf("addresses of bridge %s: %w", n.Bridge, err)
	}
	var servers []netip.Addr
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP.To4()); ok && n.CIDR.Contains(ip) {
				servers = append(servers, ip)
			}
		}
	}
	if len(servers) == 0 {
		return fmt.Errorf("bridge %s has no address in %s, so dnsmasq serves nothing on it yet", n.Bridge, n.CIDR)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, n.Bridge)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		return fmt.Errorf("socket on bridge %s: %w", n.Bridge, err)
	}
	defer conn.Close()
	var errs []error
	for _, l := range leases {
		for _, s := range servers {
			if _, err := conn.WriteTo(releasePacket(l, s), &net.UDPAddr{IP: s.AsSlice(), Port: dhcpServerPort}); err != nil {
				errs = append(errs, fmt.Errorf("release %s %s: %w", l.MAC, l.Address, err))
			}
		}
	}
	return errors.Join(errs...)
}

// describeLeases is leases for a log line: "MAC ADDRESS" each.
func describeLeases(leases []Lease) []string {
	out := make([]string, len(leases))
	for i, l := range leases {
		out[i] = l.MAC.String() + " " + l.Address.String()
	}
	return out
}
