package guestagent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/vmsnap"
)

// System is what freezing and identifying change in the guest.
type System interface {
	// SeedRandom mixes seed into the kernel's random pool.
	SeedRandom(seed []byte) error
	SetHostname(name string) error
	Hostname() (string, error)
	// SetClock sets the wall clock.
	SetClock(t time.Time) error
	// SetLink sets the NIC's MAC (nil: keep) and MTU (0: keep), and brings
	// it up when up is true (false: leaves it as it is).
	SetLink(iface string, mac net.HardwareAddr, mtu int, up bool) error
	// AddAddr adds an IPv4 address to the NIC.
	AddAddr(iface string, p netip.Prefix) error
	// ReplaceDefaultRoute routes everything through gw on the NIC.
	ReplaceDefaultRoute(iface string, gw netip.Addr) error
	// Down removes the NIC's IPv4 addresses and takes it down.
	Down(iface string) error
	// Link is the NIC's MAC and its first IPv4 address (invalid: none).
	Link(iface string) (string, netip.Addr, error)
	// RunDHCP runs the DHCP client's command until it returns (a client
	// that goes to the background once it has a lease returns then).
	RunDHCP(ctx context.Context) error
	// StopDHCP ends every running DHCP client and waits until it is gone.
	StopDHCP(ctx context.Context) error
	WriteFile(path string, data []byte) error
	Remove(path string) error
	// Get sends GET path to 127.0.0.1:port and reads the whole answer.
	Get(ctx context.Context, port int, path string) error
	// Greet sends one datagram to gw without waiting for anything: the
	// kernel first asks gw's MAC by ARP, and gw learns the guest's new
	// address and MAC from that request.
	Greet(gw netip.Addr) error
}

// Config is how the guest's network is set up.
type Config struct {
	// Iface is the NIC an identity configures (eth0).
	Iface string
	// DHCP: the NIC is on a node's cluster network and takes its address
	// by DHCP (a freeze stops the client and takes the NIC down). Else it
	// has the fixed Addr (qemu's user-mode network: nothing to clash).
	DHCP bool
	Addr netip.Addr
	// StaticMarker is a file that exists while the address came from an
	// ident line rather than a lease ("": none). The demo's DHCP script
	// keeps such an address when the client starts ("deconfig").
	StaticMarker string
	// ResolvConf is written from an ident line's dns and domain.
	ResolvConf string
	// DHCPAfter is how long after answering an ident line with an address
	// the DHCP client starts, for the lease: its first exchange would
	// compete for the vCPU with the first requests.
	DHCPAfter time.Duration
}

// Agent answers the host's lines.
type Agent struct {
	cfg   Config
	sys   System
	log   *slog.Logger
	state vmsnap.GuestState
	// afterReply logs what the last answer did once it is on its way (the
	// serial console is slow under emulation).
	afterReply func()
	// background is the context of work that outlives an answer (the
	// DHCP client started after an identity).
	background context.Context
}

// New returns an agent in state running (a guest that booted).
func New(ctx context.Context, cfg Config, sys System, log *slog.Logger) *Agent {
	if cfg.Iface == "" {
		cfg.Iface = "eth0"
	}
	return &Agent{cfg: cfg, sys: sys, log: log, state: vmsnap.GuestRunning, background: ctx}
}

// State is the agent's state (its hello says it).
func (a *Agent) State() vmsnap.GuestState { return a.state }

// Serve greets the host on port and answers its lines until the host
// leaves (end of file), then greets again, until ctx ends or the port
// fails. A write to a virtio-serial port blocks until the host is
// connected, so the greeting waits there for the next host.
func (a *Agent) Serve(ctx context.Context, port io.ReadWriter) error {
	for ctx.Err() == nil {
		if _, err := io.WriteString(port, vmsnap.Hello(a.state)+"\n"); err != nil {
			return fmt.Errorf("greeting the host: %w", err)
		}
		r := bufio.NewReaderSize(port, 1024)
		for {
			line, err := r.ReadString('\n')
			if errors.Is(err, io.EOF) {
				break // the host left
			}
			if err != nil {
				return fmt.Errorf("reading the host's line: %w", err)
			}
			reply := a.Handle(ctx, strings.TrimRight(line, "\r\n"))
			if _, err := io.WriteString(port, reply+"\n"); err != nil {
				return fmt.Errorf("answering the host: %w", err)
			}
			if a.afterReply != nil {
				a.afterReply()
				a.afterReply = nil
			}
		}
	}
	return ctx.Err()
}

// Handle answers one line of the host.
func (a *Agent) Handle(ctx context.Context, line string) string {
	cmd, _, _ := strings.Cut(line, " ")
	switch cmd {
	case "freeze":
		if err := a.freeze(ctx); err != nil {
			return "err " + oneLine(err)
		}
		return "frozen"
	case "ident":
		reply, err := a.identify(ctx, line)
		if err != nil {
			return "err " + oneLine(err)
		}
		return reply
	case "warm":
		took, err := a.warm(ctx, line)
		if err != nil {
			return "err " + oneLine(err)
		}
		return "warmed ms=" + strconv.FormatInt(took.Milliseconds(), 10)
	}
	return "err unknown command " + oneLine(errors.New(cmd))
}

func (a *Agent) freeze(ctx context.Context) error {
	if a.cfg.DHCP {
		if err := a.sys.StopDHCP(ctx); err != nil {
			return fmt.Errorf("cannot stop the DHCP client: %w", err)
		}
		if a.cfg.StaticMarker != "" {
			if err := a.sys.Remove(a.cfg.StaticMarker); err != nil {
				return err
			}
		}
		if err := a.sys.Down(a.cfg.Iface); err != nil {
			return fmt.Errorf("cannot take %s down: %w", a.cfg.Iface, err)
		}
	}
	a.state = vmsnap.GuestFrozen
	a.log.Info("FROZEN for a snapshot", "iface", a.cfg.Iface, "down", a.cfg.DHCP)
	return nil
}

func (a *Agent) identify(ctx context.Context, line string) (string, error) {
	start := time.Now()
	id, err := vmsnap.ParseIdent(line)
	if err != nil {
		return "", err
	}
	if err := a.sys.SeedRandom(id.Seed[:]); err != nil {
		return "", fmt.Errorf("cannot write the seed to the random pool: %w", err)
	}
	if id.Hostname != "" {
		if err := a.sys.SetHostname(id.Hostname); err != nil {
			return "", fmt.Errorf("cannot set hostname %s: %w", id.Hostname, err)
		}
	}
	if err := a.sys.SetClock(id.Time); err != nil {
		return "", fmt.Errorf("cannot set the clock to %d: %w", id.Time.Unix(), err)
	}
	var mac net.HardwareAddr
	if id.MAC != "" {
		mac, _ = net.ParseMAC(id.MAC) // checked by ParseIdent
	}
	mtu := 0
	if a.cfg.DHCP {
		mtu = id.MTU
	}
	if mac != nil || a.cfg.DHCP {
		if err := a.sys.SetLink(a.cfg.Iface, mac, mtu, a.cfg.DHCP); err != nil {
			return "", fmt.Errorf("cannot set up %s: %w", a.cfg.Iface, err)
		}
	}
	addr := a.cfg.Addr
	if a.cfg.DHCP {
		if addr, err = a.address(ctx, id); err != nil {
			return "", err
		}
	}
	a.state = vmsnap.GuestRunning
	// What was set is what the answer says (each change was acknowledged
	// by the kernel); only what was kept is read.
	shownMAC, host := mac.String(), id.Hostname
	if mac == nil {
		if shownMAC, _, err = a.sys.Link(a.cfg.Iface); err != nil {
			return "", fmt.Errorf("cannot read %s: %w", a.cfg.Iface, err)
		}
	}
	if host == "" {
		if host, err = a.sys.Hostname(); err != nil {
			return "", fmt.Errorf("cannot read the hostname: %w", err)
		}
	}
	shownAddr := "-"
	if addr.IsValid() {
		shownAddr = addr.String()
	}
	took := time.Since(start) // monotonic: setting the clock does not move it
	// Built without fmt: on a restore's path every code path is new.
	reply := "ok addr=" + shownAddr + " mac=" + shownMAC + " host=" + host + " ms=" + strconv.FormatInt(took.Milliseconds(), 10)
	if a.cfg.DHCP && id.Addr.IsValid() {
		go a.dhcpLater()
	}
	a.afterReply = func() {
		a.log.Info("IDENTITY", "mac", shownMAC, "host", host, "addr", shownAddr, "took", took)
	}
	return reply, nil
}

// warm runs "warm port=N path=/PATH": two GETs of PATH from the loopback
// to the guest's HTTP server on port N (their answers do not matter: the
// code they run is the point).
func (a *Agent) warm(ctx context.Context, line string) (time.Duration, error) {
	start := time.Now()
	port, path := 0, ""
	for _, w := range strings.Fields(line)[1:] {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "port":
			p, err := strconv.Atoi(v)
			if err != nil || p < 1 || p > 65535 {
				return 0, fmt.Errorf("warm: port %q is not a TCP port", v)
			}
			port = p
		case "path":
			path = v
		}
	}
	if port == 0 || !strings.HasPrefix(path, "/") {
		return 0, errors.New("warm: want port=N path=/PATH")
	}
	for range 2 {
		if err := a.sys.Get(ctx, port, path); err != nil {
			return 0, fmt.Errorf("warm: GET %s on port %d: %w", path, port, err)
		}
	}
	a.afterReply = func() { a.log.Info("WARMED", "port", port, "path", path, "took", time.Since(start)) }
	return time.Since(start), nil
}

// address configures the ident line's address or, without one, asks the
// DHCP server first, and returns the NIC's address.
func (a *Agent) address(ctx context.Context, id vmsnap.Identity) (netip.Addr, error) {
	if !id.Addr.IsValid() {
		if err := a.sys.RunDHCP(ctx); err != nil {
			return netip.Addr{}, fmt.Errorf("the DHCP client did not start: %w", err)
		}
		_, addr, err := a.sys.Link(a.cfg.Iface)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("cannot read %s: %w", a.cfg.Iface, err)
		}
		return addr, nil
	}
	if a.cfg.StaticMarker != "" {
		if err := a.sys.WriteFile(a.cfg.StaticMarker, nil); err != nil {
			return netip.Addr{}, err
		}
	}
	if err := a.sys.AddAddr(a.cfg.Iface, id.Addr); err != nil {
		return netip.Addr{}, fmt.Errorf("cannot add %s to %s: %w", id.Addr, a.cfg.Iface, err)
	}
	if id.Gateway.IsValid() {
		if err := a.sys.ReplaceDefaultRoute(a.cfg.Iface, id.Gateway); err != nil {
			return netip.Addr{}, fmt.Errorf("cannot route via %s: %w", id.Gateway, err)
		}
		// The node (the gateway) connects to the guest right after the
		// answer; without an ARP entry for the new address it would ask
		// first, and a restored guest's first ARP answer under emulation
		// can outlast a function's 80 ms health probe. Its own request
		// teaches the node. Best effort: the node can still ask.
		if err := a.sys.Greet(id.Gateway); err != nil {
			a.log.Debug("could not greet the gateway", "gw", id.Gateway, "err", err)
		}
	}
	if id.DNS.IsValid() && a.cfg.ResolvConf != "" {
		conf := "nameserver " + id.DNS.String() + "\n"
		if id.Domain != "" {
			conf += "search " + id.Domain + "\n"
		}
		if err := a.sys.WriteFile(a.cfg.ResolvConf, []byte(conf)); err != nil {
			return netip.Addr{}, err
		}
	}
	return id.Addr.Addr(), nil
}

func (a *Agent) dhcpLater() {
	t := time.NewTimer(a.cfg.DHCPAfter)
	defer t.Stop()
	select {
	case <-a.background.Done():
		return
	case <-t.C:
	}
	if err := a.sys.RunDHCP(a.background); err != nil {
		a.log.Warn("the DHCP client did not start; the address stays without a lease", "err", err)
	}
}

// oneLine keeps an error's text on one line of printable ASCII, as the
// protocol wants.
func oneLine(err error) string {
	b := []byte(err.Error())
	for i, c := range b {
		if c < ' ' || c > '~' {
			b[i] = ' '
		}
	}
	if len(b) > 400 {
		b = b[:400]
	}
	return string(b)
}
