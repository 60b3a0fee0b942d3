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
//	host:  warm port=N path=/PATH   (a frozen guest restored ahead of its
//	       request: two GETs of PATH from its loopback to its HTTP server
//	       on port N, so that the code a request runs is translated before
//	       the first one under emulation)
//	guest: warmed ms=N
//	guest: err MESSAGE               (instead of frozen, ok or warmed)
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
	if err := id.check(); err != nil {
		return "", err
	}
	mac, host := "-", "-"
	if id.MAC != "" {
		hw, _ := net.ParseMAC(id.MAC)
		mac = hw.String()
	}
	if id.Hostname != "" {
		host = id.Hostname
	}
	line := fmt.Sprintf("ident mac=%s host=%s time=%d seed=%s", mac, host, id.Time.Unix(), hex.EncodeToString(id.Seed[:]))
	if !id.Addr.IsValid() {
		return line, nil
	}
	line += " ip=" + id.Addr.String()
	if id.Gateway.IsValid() {
		line += " gw=" + id.Gateway.String()
	}
	if id.DNS.IsValid() {
		line += " dns=" + id.DNS.String()
	}
	if id.Domain != "" {
		line += " domain=" + id.Domain
	}
	if id.MTU != 0 {
		line += " mtu=" + strconv.Itoa(id.MTU)
	}
	return line, nil
}

// check is what both sides check of an identity. It formats only on
// failure: the guest runs it on a restore's path, where every code path
// is new under emulation.
func (id Identity) check() error {
	if id.MAC != "" {
		if hw, err := net.ParseMAC(id.MAC); err != nil || len(hw) != 6 {
			return fmt.Errorf("identity: MAC %q is not a 6-byte MAC address", id.MAC)
		}
	}
	if id.Hostname != "" && !dnsLabel(id.Hostname) {
		return fmt.Errorf("identity: hostname %q is not a DNS label (letters, digits and -, at most 63)", id.Hostname)
	}
	if id.Time.Unix() <= 0 {
		return fmt.Errorf("identity: time %s is before 1970", id.Time)
	}
	if !id.Addr.IsValid() {
		if id.Gateway.IsValid() || id.DNS.IsValid() || id.Domain != "" || id.MTU != 0 {
			return errors.New("identity: a gateway, DNS server, domain or MTU without an address")
		}
		return nil
	}
	if !id.Addr.Addr().Is4() || id.Addr.Bits() < 1 {
		return fmt.Errorf("identity: address %s is not an IPv4 address with a prefix length", id.Addr)
	}
	if id.Gateway.IsValid() && !id.Gateway.Is4() {
		return fmt.Errorf("identity: gw %s is not an IPv4 address", id.Gateway)
	}
	if id.DNS.IsValid() && !id.DNS.Is4() {
		return fmt.Errorf("identity: dns %s is not an IPv4 address", id.DNS)
	}
	if id.Domain != "" {
		for _, label := range strings.Split(id.Domain, ".") {
			if !dnsLabel(label) {
				return fmt.Errorf("identity: domain %q is not a DNS name", id.Domain)
			}
		}
	}
	if id.MTU != 0 && (id.MTU < 68 || id.MTU > 65535) {
		return fmt.Errorf("identity: MTU %d outside 68–65535", id.MTU)
	}
	return nil
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
	// Kind is the first word: hello, frozen, ok, warmed or err.
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
	case "hello", "frozen", "ok", "warmed":
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
	c, err := dialIdentity(ctx, path)
	if err != nil {
		return nil, err
	}
	if err := c.readHello(ctx); err != nil {
		c.conn.Close()
		return nil, err
	}
	return c, nil
}

// Identified is the outcome of IdentifyRestored.
type Identified struct {
	// Hello and Answer are the guest's greeting and its answer to the
	// ident line (check it with CheckIdentified).
	Hello, Answer Reply
	// HelloAfter and AnswerAfter are when they came, from the call.
	HelloAfter, AnswerAfter time.Duration
}

// IdentifyRestored gives id to the guest behind the identity socket at
// path without waiting for its hello first: the line is sent as soon as
// the socket accepts, and the guest reads it right after its greeting goes
// out, one wake-up fewer for a guest that runs every code path anew
// (a restored guest under emulation). The hello must say frozen: a guest
// saved running may already have answered with the saved identity. A
// guest that answers without greeting (it did not see the previous host
// leave) is taken at its answer.
func IdentifyRestored(ctx context.Context, path string, id Identity) (Identified, error) {
	var out Identified
	line, err := id.Command()
	if err != nil {
		return out, err
	}
	start := time.Now()
	c, err := dialIdentity(ctx, path)
	if err != nil {
		return out, err
	}
	defer c.Close()
	if err := c.write(ctx, line); err != nil {
		return out, fmt.Errorf("identity channel %s: sending ident: %w", path, err)
	}
	// The guest greets when it sees a host connect; if the previous host
	// left just before, it may not have seen that and answers the line
	// without a greeting. Answers of earlier exchanges (frozen) are
	// skipped, as in DialIdentity.
	for range 4 {
		r, err := c.read(ctx, "waiting for the guest's hello or its answer to ident (does the guest run the identity agent? see examples/demo/guest-init.sh)")
		if err != nil {
			return out, err
		}
		switch r.Kind {
		case "hello":
			if len(r.Words) == 0 || r.Words[0] != IdentityProtocol {
				return out, fmt.Errorf("identity channel %s: the guest greets %v, want hello %s", path, r.Words, IdentityProtocol)
			}
			c.Hello, out.Hello, out.HelloAfter = r, r, time.Since(start)
			if st := c.State(); st != GuestFrozen {
				return out, fmt.Errorf("the guest says it is %q, not %q: it was saved without being frozen", st, GuestFrozen)
			}
			if out.Answer, err = c.read(ctx, "waiting for the guest's answer to ident"); err != nil {
				return out, err
			}
			out.AnswerAfter = time.Since(start)
			return out, nil
		case "ok", "err":
			out.Answer, out.AnswerAfter = r, time.Since(start)
			out.HelloAfter = out.AnswerAfter
			return out, nil
		}
	}
	return out, fmt.Errorf("identity channel %s: neither a hello nor an answer to ident in the guest's first lines", path)
}

// dialIdentity connects to the identity socket at path, retrying while it
// does not exist or refuses connections (qemu creates it when it starts).
func dialIdentity(ctx context.Context, path string) (*IdentityConn, error) {
	const every = 2 * time.Millisecond // on a restore's critical path
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return &IdentityConn{path: path, conn: conn, r: bufio.NewReaderSize(conn, maxIdentityLine+2)}, nil
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
}

// readHello waits for the guest's hello. It comes when the guest agent's
// pending write goes through, so a guest without the agent (or one still
// booting) keeps this waiting until ctx ends.
func (c *IdentityConn) readHello(ctx context.Context) error {
	// An answer the guest wrote after the host of an earlier exchange
	// gave up waits in the port until this connection: skip it.
	var hello Reply
	var err error
	for range 4 {
		hello, err = c.read(ctx, "waiting for the guest's hello (does the guest run the identity agent? see examples/demo/guest-init.sh)")
		if err != nil {
			return err
		}
		if hello.Kind == "hello" {
			break
		}
	}
	if hello.Kind != "hello" || len(hello.Words) == 0 || hello.Words[0] != IdentityProtocol {
		return fmt.Errorf("identity channel %s: the guest greets %q %v, want hello %s", c.path, hello.Kind, hello.Words, IdentityProtocol)
	}
	c.Hello = hello
	return nil
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

// ParseIdent is the guest's side of Command: the Identity an ident line
// gives (the same checks, so a line Command would not write is refused).
// MAC and Hostname are "" for "-" (keep the guest's).
func ParseIdent(line string) (Identity, error) {
	line = strings.TrimRight(line, "\r")
	if len(line) > maxIdentityLine {
		return Identity{}, fmt.Errorf("a line of %d bytes (at most %d)", len(line), maxIdentityLine)
	}
	words := strings.Fields(line)
	if len(words) == 0 || words[0] != "ident" {
		return Identity{}, fmt.Errorf("%q is not an ident command", line)
	}
	var id Identity
	seen := map[string]bool{}
	for _, w := range words[1:] {
		k, v, ok := strings.Cut(w, "=")
		if !ok || v == "" {
			return Identity{}, fmt.Errorf("ident: %q is not KEY=VALUE", w)
		}
		if seen[k] {
			return Identity{}, fmt.Errorf("ident: %s twice", k)
		}
		seen[k] = true
		var err error
		switch k {
		case "mac":
			if v != "-" {
				id.MAC = v
			}
		case "host":
			if v != "-" {
				id.Hostname = v
			}
		case "time":
			var secs int64
			secs, err = strconv.ParseInt(v, 10, 64)
			id.Time = time.Unix(secs, 0)
		case "seed":
			var b []byte
			b, err = hex.DecodeString(v)
			if err == nil && len(b) != len(id.Seed) {
				err = fmt.Errorf("%d bytes, want %d", len(b), len(id.Seed))
			}
			copy(id.Seed[:], b)
		case "ip":
			id.Addr, err = netip.ParsePrefix(v)
		case "gw":
			id.Gateway, err = netip.ParseAddr(v)
		case "dns":
			id.DNS, err = netip.ParseAddr(v)
		case "domain":
			id.Domain = v
		case "mtu":
			id.MTU, err = strconv.Atoi(v)
		default:
			// A later protocol version's field: the guest does what it
			// knows (the host checks the answer).
		}
		if err != nil {
			return Identity{}, fmt.Errorf("ident: %s=%s: %w", k, v, err)
		}
	}
	for _, k := range []string{"mac", "host", "time", "seed"} {
		if !seen[k] {
			return Identity{}, fmt.Errorf("ident: no %s=", k)
		}
	}
	if err := id.check(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Hello is the guest's greeting line in state s.
func Hello(s GuestState) string { return "hello " + IdentityProtocol + " state=" + string(s) }

// Warm asks the frozen guest on c to run the code a request takes, before
// any request: two GETs of httpPath from its own loopback to its HTTP
// server on port (a restored guest under emulation translates every code
// path anew on its first run: its first request after the identity took
// ~150 ms more than later ones). It returns how long the guest says it
// took. A guest agent that does not know the command answers an error;
// nothing in the guest changes, and c stays usable either way.
func (c *IdentityConn) Warm(ctx context.Context, port int, httpPath string) (time.Duration, error) {
	if port < 1 || port > 65535 {
		return 0, fmt.Errorf("warm: port %d outside 1–65535", port)
	}
	if !strings.HasPrefix(httpPath, "/") || checkWord(httpPath) != nil || len(httpPath) > 200 {
		return 0, fmt.Errorf("warm: path %q is not one word starting with /", httpPath)
	}
	r, err := c.call(ctx, "warm port="+strconv.Itoa(port)+" path="+httpPath)
	if err != nil {
		return 0, err
	}
	switch r.Kind {
	case "warmed":
		ms, _ := strconv.Atoi(r.Fields["ms"])
		return time.Duration(ms) * time.Millisecond, nil
	case "err":
		return 0, fmt.Errorf("identity channel %s: the guest did not warm up: %s", c.path, r.Message)
	}
	return 0, fmt.Errorf("identity channel %s: the guest answered %q to warm, want warmed", c.path, r.Kind)
}
