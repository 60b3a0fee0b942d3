package vmsnap

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The identity channel: a virtio-serial port between the host and a guest
// agent, through which every copy restored from one snapshot takes its own
// identity before any traffic reaches it. A restored guest is the saved one
// (MAC, address, hostname, random state, a clock that stood still); the
// channel lets the host first freeze the guest to be saved (its NIC down,
// so that no copy ever answers with the saved address) and then tell each
// restored copy who it is.
//
// qemu side ([IdentityArgs]): a virtio-serial device with one port named
// [IdentityPort] whose backend is a unix socket qemu listens on
// (server=on,wait=off). The device must be there at the save and at every
// restore, since migration needs the same devices on both sides; the
// socket path may differ per instance (chardevs are not migrated).
//
// Protocol (version [IdentityProtocol]): lines of printable ASCII, at most
// [maxIdentityLine] bytes, words separated by one space, fields KEY=VALUE.
//
//	guest: hello blixard.identity/1 state=running|frozen
//	       (written when the host connects: a guest's writes to a port
//	       block until the host side is open, so the line is the guest
//	       saying its agent listens, and in which state it is)
//	host:  freeze
//	guest: frozen                    (NIC down, DHCP client stopped)
//	host:  ident mac=MAC host=NAME time=SECONDS seed=HEX [ip=IP/LEN
//	       [gw=IP] [dns=IP] [domain=NAME] [mtu=N]]
//	guest: ok addr=IP mac=MAC host=NAME [ms=N]
//	       (N: the milliseconds the guest worked on it; MAC set on the NIC, hostname, clock, seed written into
//	       /dev/urandom, NIC up; with ip= the address is configured at
//	       once and the DHCP client runs on in the background, without it
//	       the address comes by DHCP first; addr "-" without one)
//	guest: err MESSAGE               (instead of frozen or ok)
//
// MAC and host are "-" to keep the guest's (a user-mode NIC has no
// identity to clash with another copy's). The host closes the connection
// after each exchange; the guest then waits for the next one.

// IdentityProtocol names the protocol; a snapshot's manifest records it
// (Manifest.Identity) when its guest was frozen through it.
const IdentityProtocol = "blixard.identity/1"

// IdentityPort is the virtio-serial port's name the guest agent looks for
// (/sys/class/virtio-ports/*/name).
const IdentityPort = "blixard.identity"

// IdentitySocket is the port's unix socket in the VM's state directory
// (the runner's working directory).
const IdentitySocket = "identity.sock"

// identityChardev is the chardev's id on qemu's command line.
const identityChardev = "bxid"

// maxIdentityLine bounds one line either way: a guest that sends more is
// not speaking the protocol.
const maxIdentityLine = 512

// IdentityArgs are the qemu arguments of the identity channel with its
// socket at sockPath (relative paths are relative to qemu's working
// directory, the VM's state directory): a virtio-serial device (the mmio
// form, which microvm machines have), the socket chardev and the port.
// Add them in save and in restore mode alike.
func IdentityArgs(sockPath string) ([]string, error) {
	if err := checkWord(sockPath); err != nil {
		return nil, fmt.Errorf("identity socket: %w", err)
	}
	return []string{
		"-device", "virtio-serial-device",
		"-chardev", fmt.Sprintf("socket,path=%s,server=on,wait=off,id=%s", sockPath, identityChardev),
		"-device", fmt.Sprintf("virtserialport,chardev=%s,name=%s", identityChardev, IdentityPort),
	}, nil
}

// Identity is what a restored copy takes on.
type Identity struct {
	// MAC is the NIC's address ("": keep the guest's).
	MAC string
	// Hostname is a DNS label ("": keep the guest's).
	Hostname string
	// Time is the wall clock to set (whole seconds reach the guest).
	Time time.Time
	// Seed is mixed into the guest's random pool.
	Seed [32]byte
	// Addr, when valid, is the address the guest configures at once on its
	// NIC, with Gateway as its default route, DNS as its name server,
	// Domain as its search domain and MTU (all optional); it then keeps
	// its DHCP client running in the background for the lease. Invalid:
	// the guest asks for its address by DHCP and answers once it has one
	// (slower: a DHCP exchange and the client's script under emulation).
	Addr    netip.Prefix
	Gateway netip.Addr
	DNS     netip.Addr
	Domain  string
	MTU     int
}

// Command is the ident line for id, checked so that every value stays one
// word the guest's shell can take apart.
func (id Identity) Command() (string, error) {
	mac, host := "-", "-"
	if id.MAC != "" {
		hw, err := net.ParseMAC(id.MAC)
		if err != nil || len(hw) != 6 {
			return "", fmt.Errorf("identity: MAC %q is not a 6-byte MAC address", id.MAC)
		}
		mac = hw.String()
	}
	if id.Hostname != "" {
		if !dnsLabel(id.Hostname) {
			return "", fmt.Errorf("identity: hostname %q is not a DNS label (letters, digits and -, at most 63)", id.Hostname)
		}
		host = id.Hostname
	}
	if id.Time.Unix() <= 0 {
		return "", fmt.Errorf("identity: time %s is before 1970", id.Time)
	}
	line := fmt.Sprintf("ident mac=%s host=%s time=%d seed=%s", mac, host, id.Time.Unix(), hex.EncodeToString(id.Seed[:]))
	if !id.Addr.IsValid() {
		if id.Gateway.IsValid() || id.DNS.IsValid() || id.Domain != "" || id.MTU != 0 {
			return "", errors.New("identity: a gateway, DNS server, domain or MTU without an address")
		}
		return line, nil
	}
	if !id.Addr.Addr().Is4() || id.Addr.Bits() < 1 {
		return "", fmt.Errorf("identity: address %s is not an IPv4 address with a prefix length", id.Addr)
	}
	line += " ip=" + id.Addr.String()
	for _, a := range []struct {
		key  string
		addr netip.Addr
	}{{"gw", id.Gateway}, {"dns", id.DNS}} {
		if !a.addr.IsValid() {
			continue
		}
		if !a.addr.Is4() {
			return "", fmt.Errorf("identity: %s %s is not an IPv4 address", a.key, a.addr)
		}
		line += " " + a.key + "=" + a.addr.String()
	}
	if id.Domain != "" {
		for _, label := range strings.Split(id.Domain, ".") {
			if !dnsLabel(label) {
				return "", fmt.Errorf("identity: domain %q is not a DNS name", id.Domain)
			}
		}
		line += " domain=" + id.Domain
	}
	if id.MTU != 0 {
		if id.MTU < 68 || id.MTU > 65535 {
			return "", fmt.Errorf("identity: MTU %d outside 68–65535", id.MTU)
		}
		line += " mtu=" + strconv.Itoa(id.MTU)
	}
	return line, nil
}

func dnsLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// GuestState is what the guest's hello says it is.
type GuestState string

const (
	GuestRunning GuestState = "running"
	GuestFrozen  GuestState = "frozen"
)

// Reply is one line of the guest.
type Reply struct {
	// Kind is the first word: hello, frozen, ok or err.
	Kind string
	// Fields are the KEY=VALUE words.
	Fields map[string]string
	// Message is the text after "err ".
	Message string
	// Words are the words that are not fields (hello's protocol).
	Words []string
}

// ParseReply parses one line of the guest (without its newline).
func ParseReply(line string) (Reply, error) {
	line = strings.TrimRight(line, "\r")
	if len(line) > maxIdentityLine {
		return Reply{}, fmt.Errorf("a line of %d bytes (at most %d)", len(line), maxIdentityLine)
	}
	for _, r := range line {
		if r < ' ' || r > '~' {
			return Reply{}, fmt.Errorf("line %q has a byte outside printable ASCII", line)
		}
	}
	kind, rest, _ := strings.Cut(line, " ")
	r := Reply{Kind: kind, Fields: map[string]string{}}
	switch kind {
	case "err":
		r.Message = rest
		if r.Message == "" {
			r.Message = "(no reason given)"
		}
		return r, nil
	case "hello", "frozen", "ok":
	case "":
		return Reply{}, errors.New("an empty line")
	default:
		return Reply{}, fmt.Errorf("unknown reply %q", kind)
	}
	for _, w := range strings.Fields(rest) {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			r.Words = append(r.Words, w)
			continue
		}
		if _, dup := r.Fields[k]; dup {
			return Reply{}, fmt.Errorf("field %s twice in %q", k, line)
		}
		r.Fields[k] = v
	}
	return r, nil
}

// GuestIdentity is what a re-identified guest reports.
type GuestIdentity struct {
	// Addr is its IPv4 address (invalid without one).
	Addr netip.Addr
	// MAC and Hostname are what its NIC and kernel now have.
	MAC, Hostname string
	// Took is how long the guest says it worked on the identity (its ms
	// field; 0 when it does not say).
	Took time.Duration
}

// CheckIdentified checks the guest's ok reply against what it was told:
// the MAC and hostname it was given, and the address the instance must
// have (wantAddr; invalid: any, or none).
func CheckIdentified(r Reply, id Identity, wantAddr netip.Addr) (GuestIdentity, error) {
	if r.Kind == "err" {
		return GuestIdentity{}, fmt.Errorf("the guest refused its identity: %s", r.Message)
	}
	if r.Kind != "ok" {
		return GuestIdentity{}, fmt.Errorf("the guest answered %q to ident, want ok", r.Kind)
	}
	g := GuestIdentity{MAC: strings.ToLower(r.Fields["mac"]), Hostname: r.Fields["host"]}
	if ms, err := strconv.Atoi(r.Fields["ms"]); err == nil && ms >= 0 {
		g.Took = time.Duration(ms) * time.Millisecond
	}
	if a := r.Fields["addr"]; a != "" && a != "-" {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return g, fmt.Errorf("the guest reports address %q: %w", a, err)
		}
		g.Addr = addr
	}
	if id.MAC != "" {
		want, _ := net.ParseMAC(id.MAC)
		if got, err := net.ParseMAC(g.MAC); err != nil || got.String() != want.String() {
			return g, fmt.Errorf("the guest's NIC has MAC %q, want %s: it could not take its identity", g.MAC, want)
		}
	}
	if id.Hostname != "" && g.Hostname != id.Hostname {
		return g, fmt.Errorf("the guest's hostname is %q, want %s", g.Hostname, id.Hostname)
	}
	if wantAddr.IsValid() && g.Addr != wantAddr {
		got := "none"
		if g.Addr.IsValid() {
			got = g.Addr.String()
		}
		return g, fmt.Errorf("the guest has address %s, want %s (its DHCP lease: check the node's dnsmasq for this MAC)", got, wantAddr)
	}
	return g, nil
}

// IdentityConn is one exchange with a guest's identity agent.
type IdentityConn struct {
	path string
	conn net.Conn
	r    *bufio.Reader
	// Hello is the guest's greeting.
	Hello Reply
}

// DialIdentity connects to the identity socket at path, retrying while it
// does not exist or refuses connections (qemu creates it when it starts),
// and waits for the guest's hello, all bounded by ctx. The hello comes
// when the guest agent's pending write goes through, so a guest without
// the agent (or one still booting) keeps this waiting until ctx ends.
func DialIdentity(ctx context.Context, path string) (*IdentityConn, error) {
	const every = 2 * time.Millisecond // on a restore's critical path
	var conn net.Conn
	var err error
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			conn = c
			break
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) || ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to the guest's identity channel %s: %w", path, err)
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("connecting to the guest's identity channel %s (is qemu running with IdentityArgs?): %w (last: %v)", path, ctx.Err(), err)
		case <-t.C:
		}
	}
	c := &IdentityConn{path: path, conn: conn, r: bufio.NewReaderSize(conn, maxIdentityLine+2)}
	// An answer the guest wrote after the host of an earlier exchange
	// gave up waits in the port until this connection: skip it.
	var hello Reply
	for range 4 {
		hello, err = c.read(ctx, "waiting for the guest's hello (does the guest run the identity agent? see examples/demo/guest-init.sh)")
		if err != nil {
			conn.Close()
			return nil, err
		}
		if hello.Kind == "hello" {
			break
		}
	}
	if hello.Kind != "hello" || len(hello.Words) == 0 || hello.Words[0] != IdentityProtocol {
		conn.Close()
		return nil, fmt.Errorf("identity channel %s: the guest greets %q %v, want hello %s", path, hello.Kind, hello.Words, IdentityProtocol)
	}
	c.Hello = hello
	return c, nil
}

// State is the guest's state from its hello.
func (c *IdentityConn) State() GuestState { return GuestState(c.Hello.Fields["state"]) }

// Close ends the exchange; the guest waits for the next connection.
func (c *IdentityConn) Close() error { return c.conn.Close() }

// Freeze asks the guest to take its NIC down before a save and waits for
// its answer.
func (c *IdentityConn) Freeze(ctx context.Context) error {
	r, err := c.call(ctx, "freeze")
	if err != nil {
		return err
	}
	switch r.Kind {
	case "frozen":
		return nil
	case "err":
		return fmt.Errorf("identity channel %s: the guest could not freeze: %s", c.path, r.Message)
	}
	return fmt.Errorf("identity channel %s: the guest answered %q to freeze, want frozen", c.path, r.Kind)
}

// Identify gives the guest id and returns its answer (check it with
// CheckIdentified).
func (c *IdentityConn) Identify(ctx context.Context, id Identity) (Reply, error) {
	line, err := id.Command()
	if err != nil {
		return Reply{}, err
	}
	return c.call(ctx, line)
}

func (c *IdentityConn) call(ctx context.Context, line string) (Reply, error) {
	word, _, _ := strings.Cut(line, " ")
	if err := c.write(ctx, line); err != nil {
		return Reply{}, fmt.Errorf("identity channel %s: sending %s: %w", c.path, word, err)
	}
	return c.read(ctx, "waiting for the guest's answer to "+word)
}

func (c *IdentityConn) write(ctx context.Context, line string) error {
	stop := bindConn(ctx, c.conn)
	defer stop()
	_, err := c.conn.Write([]byte(line + "\n"))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (c *IdentityConn) read(ctx context.Context, what string) (Reply, error) {
	stop := bindConn(ctx, c.conn)
	defer stop()
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		} else if errors.Is(err, bufio.ErrBufferFull) {
			err = fmt.Errorf("a line longer than %d bytes", maxIdentityLine)
		}
		return Reply{}, fmt.Errorf("identity channel %s: %s: %w", c.path, what, err)
	}
	r, err := ParseReply(strings.TrimSuffix(string(line), "\n"))
	if err != nil {
		return Reply{}, fmt.Errorf("identity channel %s: %s: %w", c.path, what, err)
	}
	return r, nil
}

// bindConn makes conn's blocked I/O return when ctx ends, until stop.
func bindConn(ctx context.Context, conn net.Conn) (stop func()) {
	_ = conn.SetDeadline(time.Time{})
	if ctx.Done() == nil {
		return func() {}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-ctx.Done():
			_ = conn.SetDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}
