package vmsnap

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIdentityCommand(t *testing.T) {
	at := time.Unix(1767323045, 999)
	seed := [32]byte{0xab}
	const seedHex = "ab00000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		name    string
		id      Identity
		want    string
		wantErr string
	}{
		{"everything", Identity{MAC: "02:AB:00:00:00:01", Hostname: "fn-a-1", Time: at, Seed: seed, Addr: netip.MustParsePrefix("10.1.0.5/24"),
			Gateway: netip.MustParseAddr("10.1.0.1"), DNS: netip.MustParseAddr("10.1.0.2"), Domain: "lab.internal", MTU: 1450},
			"ident mac=02:ab:00:00:00:01 host=fn-a-1 time=1767323045 seed=" + seedHex + " ip=10.1.0.5/24 gw=10.1.0.1 dns=10.1.0.2 domain=lab.internal mtu=1450", ""},
		{"keep MAC and hostname, DHCP for the address", Identity{Time: at, Seed: seed},
			"ident mac=- host=- time=1767323045 seed=" + seedHex, ""},
		{"an address alone", Identity{MAC: "02:00:00:00:00:01", Time: at, Addr: netip.MustParsePrefix("10.1.0.5/16")},
			"ident mac=02:00:00:00:00:01 host=- time=1767323045 seed=" + strings.Repeat("0", 64) + " ip=10.1.0.5/16", ""},
		{"a MAC of 8 bytes", Identity{MAC: "02:00:00:00:00:00:00:01", Time: at}, "", "6-byte"},
		{"not a MAC", Identity{MAC: "02:00:00:00:00:0g", Time: at}, "", "MAC"},
		{"a hostname with a space", Identity{Hostname: "a b", Time: at}, "", "DNS label"},
		{"a hostname starting with -", Identity{Hostname: "-a", Time: at}, "", "DNS label"},
		{"a hostname of 64 characters", Identity{Hostname: strings.Repeat("a", 64), Time: at}, "", "DNS label"},
		{"no time", Identity{}, "", "before 1970"},
		{"an IPv6 address", Identity{Time: at, Addr: netip.MustParsePrefix("fd00::1/64")}, "", "IPv4"},
		{"a gateway without an address", Identity{Time: at, Gateway: netip.MustParseAddr("10.0.0.1")}, "", "without an address"},
		{"an IPv6 DNS server", Identity{Time: at, Addr: netip.MustParsePrefix("10.1.0.5/24"), DNS: netip.MustParseAddr("fd00::1")}, "", "dns"},
		{"a domain with a space", Identity{Time: at, Addr: netip.MustParsePrefix("10.1.0.5/24"), Domain: "a b.internal"}, "", "domain"},
		{"an MTU too small", Identity{Time: at, Addr: netip.MustParsePrefix("10.1.0.5/24"), MTU: 10}, "", "MTU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.id.Command()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Command = %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Command = %q, %v\nwant      %q", got, err, tc.want)
			}
			if len(got) > maxIdentityLine {
				t.Errorf("the line has %d bytes, over the protocol's %d", len(got), maxIdentityLine)
			}
		})
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		name    string
		line    string
		want    Reply
		wantErr string
	}{
		{"hello", "hello blixard.identity/1 state=frozen", Reply{Kind: "hello", Words: []string{IdentityProtocol}, Fields: map[string]string{"state": "frozen"}}, ""},
		{"ok with a carriage return", "ok addr=10.1.0.5 mac=02:ab:00:00:00:01 host=fn-a-1\r",
			Reply{Kind: "ok", Fields: map[string]string{"addr": "10.1.0.5", "mac": "02:ab:00:00:00:01", "host": "fn-a-1"}}, ""},
		{"frozen", "frozen", Reply{Kind: "frozen", Fields: map[string]string{}}, ""},
		{"err keeps its message whole", "err cannot set MAC 02:ab on eth0", Reply{Kind: "err", Message: "cannot set MAC 02:ab on eth0", Fields: map[string]string{}}, ""},
		{"err without a message", "err", Reply{Kind: "err", Message: "(no reason given)", Fields: map[string]string{}}, ""},
		{"empty", "", Reply{}, "empty"},
		{"unknown", "thawed", Reply{}, "unknown reply"},
		{"a field twice", "ok addr=1 addr=2", Reply{}, "twice"},
		{"a control byte", "ok addr=\x1b[2J", Reply{}, "printable"},
		{"too long", "ok " + strings.Repeat("a", maxIdentityLine), Reply{}, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseReply(tc.line)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseReply = %+v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Kind != tc.want.Kind || got.Message != tc.want.Message || !slices.Equal(got.Words, tc.want.Words) ||
				len(got.Fields) != len(tc.want.Fields) {
				t.Fatalf("ParseReply = %+v, %v; want %+v", got, err, tc.want)
			}
			for k, v := range tc.want.Fields {
				if got.Fields[k] != v {
					t.Errorf("field %s = %q, want %q", k, got.Fields[k], v)
				}
			}
		})
	}
}

func TestCheckIdentified(t *testing.T) {
	id := Identity{MAC: "02:AB:00:00:00:01", Hostname: "fn-a-1"}
	addr := netip.MustParseAddr("10.1.0.5")
	reply := func(line string) Reply {
		r, err := ParseReply(line)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		reply   string
		id      Identity
		want    netip.Addr
		wantErr string
	}{
		{"all as told", "ok addr=10.1.0.5 mac=02:ab:00:00:00:01 host=fn-a-1 ms=120", id, addr, ""},
		{"the MAC in capitals", "ok addr=10.1.0.5 mac=02:AB:00:00:00:01 host=fn-a-1", id, addr, ""},
		{"no address wanted, none had", "ok addr=- mac=52:54:00:12:34:56 host=(none)", Identity{}, netip.Addr{}, ""},
		{"the saved MAC kept", "ok addr=10.1.0.5 mac=02:ab:00:00:00:09 host=fn-a-1", id, addr, "MAC"},
		{"the saved hostname kept", "ok addr=10.1.0.5 mac=02:ab:00:00:00:01 host=fn-a-0", id, addr, "hostname"},
		{"another address", "ok addr=10.1.0.4 mac=02:ab:00:00:00:01 host=fn-a-1", id, addr, "want 10.1.0.5"},
		{"no address yet", "ok addr=- mac=02:ab:00:00:00:01 host=fn-a-1", id, addr, "address none"},
		{"a garbled address", "ok addr=10.1 mac=02:ab:00:00:00:01 host=fn-a-1", id, addr, "10.1"},
		{"refused", "err cannot set MAC", id, addr, "refused its identity: cannot set MAC"},
		{"another kind", "frozen", id, addr, "want ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := CheckIdentified(reply(tc.reply), tc.id, tc.want)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("CheckIdentified: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || g.Addr != tc.want {
				t.Fatalf("CheckIdentified = %+v, %v", g, err)
			}
			if strings.Contains(tc.reply, "ms=120") && g.Took != 120*time.Millisecond {
				t.Errorf("Took = %s, want the guest's 120 ms", g.Took)
			}
		})
	}
}

func TestIdentityArgs(t *testing.T) {
	got, err := IdentityArgs(IdentitySocket)
	want := []string{"-device", "virtio-serial-device", "-chardev", "socket,path=identity.sock,server=on,wait=off,id=bxid",
		"-device", "virtserialport,chardev=bxid,name=blixard.identity"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("IdentityArgs = %q, %v; want %q", got, err, want)
	}
	if _, err := IdentityArgs("/a,b/identity.sock"); err == nil {
		t.Error("a path with a comma: want an error (qemu would read the rest as options)")
	}
}

// A qemu with the identity channel but no guest agent (the kernel-less
// test machine): the socket accepts the host, and DialIdentity waits for
// a hello that never comes until its context ends, saying what it waited
// for. (ident_guest_test.go saves and restores the channel with a real
// guest.)
func TestQemuIdentityChannelWithoutAGuestAgent(t *testing.T) {
	dir := t.TempDir()
	args, err := IdentityArgs(filepath.Join(dir, IdentitySocket))
	if err != nil {
		t.Fatal(err)
	}
	p := startQemu(t, dir, args...)
	ctx := testCtx(t)
	if _, err := WaitDial(ctx, p.qmp); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = DialIdentity(short, filepath.Join(dir, IdentitySocket))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "hello") {
		t.Fatalf("DialIdentity of a guest without an agent: %v, want a deadline error waiting for the hello", err)
	}

	// No socket at all: the dial retries until the context ends.
	short2, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	if _, err := DialIdentity(short2, filepath.Join(t.TempDir(), IdentitySocket)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("DialIdentity without a socket: %v, want a deadline error", err)
	}
}

func TestParseIdentIsCommandsInverse(t *testing.T) {
	at := time.Unix(1767323045, 0)
	for _, id := range []Identity{
		{MAC: "02:ab:00:00:00:01", Hostname: "fn-a-1", Time: at, Seed: [32]byte{0xab, 1}, Addr: netip.MustParsePrefix("10.1.0.5/24"),
			Gateway: netip.MustParseAddr("10.1.0.1"), DNS: netip.MustParseAddr("10.1.0.2"), Domain: "lab.internal", MTU: 1450},
		{Time: at},
		{MAC: "02:00:00:00:00:01", Time: at, Addr: netip.MustParsePrefix("10.1.0.5/16")},
	} {
		line, err := id.Command()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseIdent(line)
		if err != nil {
			t.Fatalf("ParseIdent(%q): %v", line, err)
		}
		if !got.Time.Equal(id.Time) {
			t.Errorf("ParseIdent(%q) time %s, want %s", line, got.Time, id.Time)
		}
		got.Time = id.Time
		if got != id {
			t.Errorf("ParseIdent(%q) = %+v, want %+v", line, got, id)
		}
	}
}

func TestParseIdentRefuses(t *testing.T) {
	seed := " seed=" + strings.Repeat("0", 64)
	for _, tc := range []struct{ line, want string }{
		{"", "not an ident command"},
		{"freeze", "not an ident command"},
		{"ident mac=- host=- time=1" + seed + " mac=-", "mac twice"},
		{"ident mac=- host=-" + seed, "no time="},
		{"ident mac=- host=- time=1", "no seed="},
		{"ident mac=- host=- time=x" + seed, "time=x"},
		{"ident mac=- host=- time=1 seed=ab", "want 32"},
		{"ident mac=- host=- time=1 seed=zz", "seed=zz"},
		{"ident mac=02:00 host=- time=1" + seed, "MAC"},
		{"ident mac=- host=a_b time=1" + seed, "DNS label"},
		{"ident mac=- host=- time=1" + seed + " gw=10.0.0.1", "without an address"},
		{"ident mac=- host=- time=1" + seed + " ip=10.0.0.5", "ip=10.0.0.5"},
		{"ident mac=- host=- time=1" + seed + " ip=10.0.0.5/24 mtu=9", "MTU"},
		{"ident mac=- host=- time=1" + seed + " flag", "not KEY=VALUE"},
		{"ident mac=- host=- time=1" + seed + strings.Repeat(" x=y", 200), "at most"},
	} {
		_, err := ParseIdent(tc.line)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseIdent(%q) = %v, want an error with %q", tc.line, err, tc.want)
		}
	}
	id, err := ParseIdent("ident mac=- host=- time=1" + seed + " later=1")
	if err != nil || id.Time.Unix() != 1 {
		t.Errorf("a field of a later version: %+v, %v; want it ignored", id, err)
	}
}

// fakeGuest serves one connection on a unix socket as a guest agent would:
// it reads the host's first line, writes greet (if any) and then answer.
func fakeGuest(t *testing.T, greet, answer string) (path string, got <-chan string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), IdentitySocket)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	lines := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		lines <- strings.TrimSpace(line)
		if greet != "" {
			_, _ = io.WriteString(c, greet+"\n")
		}
		_, _ = io.WriteString(c, answer+"\n")
	}()
	return path, lines
}

func TestIdentifyRestored(t *testing.T) {
	id := Identity{MAC: "02:b1:00:00:00:01", Hostname: "fn-a-1", Time: time.Unix(1767323045, 0)}
	const ok = "ok addr=- mac=02:b1:00:00:00:01 host=fn-a-1 ms=3"
	for _, tc := range []struct {
		name, greet, answer, wantErr string
		wantHello                    bool
	}{
		{"a frozen guest greets, then answers", "hello blixard.identity/1 state=frozen", ok, "", true},
		{"a guest that did not see the last host leave answers at once", "", ok, "", false},
		{"a stale answer is skipped", "frozen", "hello blixard.identity/1 state=frozen", "waiting for the guest's answer", true},
		{"a guest saved running is refused", "hello blixard.identity/1 state=running", ok, "saved without being frozen", true},
		{"another protocol", "hello blixard.identity/9 state=frozen", ok, "want hello blixard.identity/1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, got := fakeGuest(t, tc.greet, tc.answer)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			r, err := IdentifyRestored(ctx, path, id)
			want, _ := id.Command()
			if line := <-got; line != want {
				t.Errorf("the guest got %q, want %q", line, want)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("IdentifyRestored = %+v, %v; want an error with %q", r, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := CheckIdentified(r.Answer, id, netip.Addr{}); err != nil {
				t.Errorf("answer %+v: %v", r.Answer, err)
			}
			if (r.Hello.Kind == "hello") != tc.wantHello {
				t.Errorf("hello %+v, want one: %t", r.Hello, tc.wantHello)
			}
		})
	}
}
