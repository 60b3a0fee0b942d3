package guestagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/vmsnap"
)

// fakeSystem records what the agent changes; fail names a call that fails.
type fakeSystem struct {
	mu    sync.Mutex
	calls []string
	fail  string
	mac   string
	addr  netip.Addr
	host  string
	dhcp  chan struct{}
}

func (f *fakeSystem) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	name, _, _ := strings.Cut(call, " ")
	if name == f.fail {
		return errors.New("refused by the test")
	}
	return nil
}

func (f *fakeSystem) Calls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, "; ")
}

func (f *fakeSystem) SeedRandom(seed []byte) error {
	return f.record(fmt.Sprintf("seed %x", seed[:2]))
}
func (f *fakeSystem) SetHostname(name string) error { return f.record("hostname " + name) }
func (f *fakeSystem) Hostname() (string, error)     { return f.host, f.record("read-hostname") }
func (f *fakeSystem) SetClock(t time.Time) error {
	return f.record(fmt.Sprintf("clock %d", t.Unix()))
}
func (f *fakeSystem) SetLink(iface string, mac net.HardwareAddr, mtu int, up bool) error {
	return f.record(fmt.Sprintf("link %s mac=%s mtu=%d up=%t", iface, mac, mtu, up))
}
func (f *fakeSystem) AddAddr(iface string, p netip.Prefix) error {
	return f.record(fmt.Sprintf("addr %s %s", iface, p))
}
func (f *fakeSystem) ReplaceDefaultRoute(iface string, gw netip.Addr) error {
	return f.record(fmt.Sprintf("route %s %s", iface, gw))
}
func (f *fakeSystem) Down(iface string) error { return f.record("down " + iface) }
func (f *fakeSystem) Link(iface string) (string, netip.Addr, error) {
	return f.mac, f.addr, f.record("read-link " + iface)
}
func (f *fakeSystem) RunDHCP(context.Context) error {
	err := f.record("dhcp")
	if f.dhcp != nil {
		f.dhcp <- struct{}{}
	}
	return err
}
func (f *fakeSystem) StopDHCP(context.Context) error { return f.record("stop-dhcp") }
func (f *fakeSystem) WriteFile(path string, data []byte) error {
	return f.record(fmt.Sprintf("write %s %q", path, data))
}
func (f *fakeSystem) Remove(path string) error  { return f.record("remove " + path) }
func (f *fakeSystem) Greet(gw netip.Addr) error { return f.record("greet " + gw.String()) }
func (f *fakeSystem) Get(_ context.Context, port int, path string) error {
	return f.record(fmt.Sprintf("get %d %s", port, path))
}

const seedHex = "ab01000000000000000000000000000000000000000000000000000000000000"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var dhcpConfig = Config{Iface: "eth0", DHCP: true, StaticMarker: "/tmp/static", ResolvConf: "/etc/resolv.conf"}

func TestAgentHandle(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       Config
		sys       *fakeSystem
		line      string
		want      string // the answer without its ms field
		wantCalls string
		state     vmsnap.GuestState
	}{
		{
			name:      "a cluster identity with an address",
			cfg:       dhcpConfig,
			line:      "ident mac=02:b1:00:00:00:01 host=fn-a-1 time=1767323045 seed=" + seedHex + " ip=10.1.0.5/24 gw=10.1.0.1 dns=10.1.0.1 domain=lab.internal mtu=1450",
			want:      "ok addr=10.1.0.5 mac=02:b1:00:00:00:01 host=fn-a-1",
			wantCalls: `seed ab01; hostname fn-a-1; clock 1767323045; link eth0 mac=02:b1:00:00:00:01 mtu=1450 up=true; write /tmp/static ""; addr eth0 10.1.0.5/24; route eth0 10.1.0.1; greet 10.1.0.1; write /etc/resolv.conf "nameserver 10.1.0.1\nsearch lab.internal\n"`,
			state:     vmsnap.GuestRunning,
		},
		{
			name:      "a cluster identity without an address asks the DHCP server",
			cfg:       dhcpConfig,
			sys:       &fakeSystem{mac: "02:b1:00:00:00:02", addr: netip.MustParseAddr("10.1.0.9")},
			line:      "ident mac=02:b1:00:00:00:02 host=fn-a-2 time=1767323045 seed=" + seedHex,
			want:      "ok addr=10.1.0.9 mac=02:b1:00:00:00:02 host=fn-a-2",
			wantCalls: "seed ab01; hostname fn-a-2; clock 1767323045; link eth0 mac=02:b1:00:00:00:02 mtu=0 up=true; dhcp; read-link eth0",
			state:     vmsnap.GuestRunning,
		},
		{
			name:      "user-mode network, MAC and hostname kept",
			cfg:       Config{Iface: "eth0", Addr: netip.MustParseAddr("10.0.2.15")},
			sys:       &fakeSystem{mac: "52:54:00:12:34:56", host: "saved"},
			line:      "ident mac=- host=- time=1767323045 seed=" + seedHex,
			want:      "ok addr=10.0.2.15 mac=52:54:00:12:34:56 host=saved",
			wantCalls: "seed ab01; clock 1767323045; read-link eth0; read-hostname",
			state:     vmsnap.GuestRunning,
		},
		{
			name:      "user-mode network with a MAC: the link is not brought up",
			cfg:       Config{Iface: "eth0"},
			line:      "ident mac=02:b1:00:00:00:03 host=c time=1767323045 seed=" + seedHex,
			want:      "ok addr=- mac=02:b1:00:00:00:03 host=c",
			wantCalls: "seed ab01; hostname c; clock 1767323045; link eth0 mac=02:b1:00:00:00:03 mtu=0 up=false",
			state:     vmsnap.GuestRunning,
		},
		{
			name:      "a NIC that refuses",
			cfg:       dhcpConfig,
			sys:       &fakeSystem{fail: "link"},
			line:      "ident mac=02:b1:00:00:00:01 host=a time=1767323045 seed=" + seedHex + " ip=10.1.0.5/24",
			want:      "err cannot set up eth0: refused by the test",
			wantCalls: "seed ab01; hostname a; clock 1767323045; link eth0 mac=02:b1:00:00:00:01 mtu=0 up=true",
			state:     vmsnap.GuestRunning,
		},
		{
			name:  "a line the protocol does not allow changes nothing",
			cfg:   dhcpConfig,
			line:  "ident mac=- host=- time=0 seed=" + seedHex,
			want:  "err identity: time 1970-01-01 00:00:00 +0000 UTC is before 1970",
			state: vmsnap.GuestRunning,
		},
		{
			name:      "warm",
			cfg:       dhcpConfig,
			line:      "warm port=80 path=/fn/a",
			want:      "warmed",
			wantCalls: "get 80 /fn/a; get 80 /fn/a",
			state:     vmsnap.GuestRunning,
		},
		{
			name:      "warm with a server that refuses",
			cfg:       dhcpConfig,
			sys:       &fakeSystem{fail: "get"},
			line:      "warm port=80 path=/",
			want:      "err warm: GET / on port 80: refused by the test",
			wantCalls: "get 80 /",
			state:     vmsnap.GuestRunning,
		},
		{
			name:  "warm without a port",
			cfg:   dhcpConfig,
			line:  "warm path=/",
			want:  "err warm: want port=N path=/PATH",
			state: vmsnap.GuestRunning,
		},
		{
			name:  "an unknown command",
			cfg:   dhcpConfig,
			line:  "reboot now",
			want:  "err unknown command reboot",
			state: vmsnap.GuestRunning,
		},
		{
			name:      "freeze on a cluster network",
			cfg:       dhcpConfig,
			line:      "freeze",
			want:      "frozen",
			wantCalls: "stop-dhcp; remove /tmp/static; down eth0",
			state:     vmsnap.GuestFrozen,
		},
		{
			name:  "freeze on a user-mode network changes nothing",
			cfg:   Config{Iface: "eth0"},
			line:  "freeze",
			want:  "frozen",
			state: vmsnap.GuestFrozen,
		},
		{
			name:      "a freeze whose DHCP client does not stop",
			cfg:       dhcpConfig,
			sys:       &fakeSystem{fail: "stop-dhcp"},
			line:      "freeze",
			want:      "err cannot stop the DHCP client: refused by the test",
			wantCalls: "stop-dhcp",
			state:     vmsnap.GuestRunning,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg := tc.cfg
			cfg.DHCPAfter = time.Hour // the lease's client is TestAgentStartsTheDHCPClientAfterAnIdentity's
			sys := tc.sys
			if sys == nil {
				sys = &fakeSystem{}
			}
			a := New(ctx, cfg, sys, quiet())
			got := a.Handle(ctx, tc.line)
			if i := strings.Index(got, " ms="); i >= 0 {
				got = got[:i]
			}
			if got != tc.want {
				t.Errorf("answer %q\nwant   %q", got, tc.want)
			}
			if calls := sys.Calls(); calls != tc.wantCalls {
				t.Errorf("calls %s\nwant  %s", calls, tc.wantCalls)
			}
			if a.State() != tc.state {
				t.Errorf("state %s, want %s", a.State(), tc.state)
			}
		})
	}
}

// The host's side accepts what the agent answers.
func TestAgentAnswerSatisfiesTheHost(t *testing.T) {
	id := vmsnap.Identity{MAC: "02:b1:00:00:00:01", Hostname: "fn-a-1", Time: time.Unix(1767323045, 0), Addr: netip.MustParsePrefix("10.1.0.5/24")}
	line, err := id.Command()
	if err != nil {
		t.Fatal(err)
	}
	a := New(context.Background(), Config{Iface: "eth0", DHCP: true, DHCPAfter: time.Hour}, &fakeSystem{}, quiet())
	r, err := vmsnap.ParseReply(a.Handle(context.Background(), line))
	if err != nil {
		t.Fatal(err)
	}
	g, err := vmsnap.CheckIdentified(r, id, netip.MustParseAddr("10.1.0.5"))
	if err != nil {
		t.Fatalf("CheckIdentified: %v (%+v)", err, r)
	}
	if _, ok := r.Fields["ms"]; !ok {
		t.Errorf("the answer says nothing of the time it took: %+v (%+v)", r, g)
	}
}

func TestAgentStartsTheDHCPClientAfterAnIdentity(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sys := &fakeSystem{dhcp: make(chan struct{}, 1)}
	a := New(ctx, Config{Iface: "eth0", DHCP: true, DHCPAfter: time.Millisecond}, sys, quiet())
	a.Handle(ctx, "ident mac=- host=- time=1767323045 seed="+seedHex+" ip=10.1.0.5/24")
	select {
	case <-sys.dhcp:
	case <-time.After(10 * time.Second):
		t.Fatalf("no DHCP client after the identity; calls: %s", sys.Calls())
	}
}

// fakePort is a virtio-serial port: each connection of the host is the
// lines it sends; a read returns end of file when they are used up, and
// the greeting after the last connection fails (the test's end).
type fakePort struct {
	conns   []string
	current *strings.Reader
	left    bool // the current host left: the agent read end of file
	out     bytes.Buffer
}

func (p *fakePort) Write(b []byte) (int, error) {
	if p.current == nil || p.left {
		// A greeting: the next host connects.
		if len(p.conns) == 0 {
			return 0, errors.New("the test's host is gone")
		}
		p.current, p.left = strings.NewReader(p.conns[0]), false
		p.conns = p.conns[1:]
	}
	return p.out.Write(b)
}

func (p *fakePort) Read(b []byte) (int, error) {
	n, err := p.current.Read(b)
	p.left = err == io.EOF
	return n, err
}

func TestAgentServeGreetsEachHost(t *testing.T) {
	port := &fakePort{conns: []string{"freeze\n", "ident mac=- host=- time=1767323045 seed=" + seedHex + "\nbogus\n"}}
	a := New(context.Background(), Config{Iface: "eth0", Addr: netip.MustParseAddr("10.0.2.15"), DHCPAfter: time.Hour}, &fakeSystem{mac: "52:54:00:12:34:56", host: "g"}, quiet())
	err := a.Serve(context.Background(), port)
	if err == nil || !strings.Contains(err.Error(), "greeting the host") {
		t.Errorf("Serve = %v, want the failed greeting", err)
	}
	got := port.out.String()
	for i, want := range []string{
		"hello blixard.identity/1 state=running\n",
		"frozen\n",
		"hello blixard.identity/1 state=frozen\n",
		"ok addr=10.0.2.15 mac=52:54:00:12:34:56 host=g ms=",
		"err unknown command bogus\n",
	} {
		j := strings.Index(got, want)
		if j < 0 {
			t.Fatalf("line %d %q not in what the agent wrote (in order):\n%s", i, want, port.out.String())
		}
		got = got[j+len(want):]
	}
}
