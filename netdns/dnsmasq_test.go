package netdns_test

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/netdns"
)

// wait is the deadline of every poll: dnsmasq answers within milliseconds;
// a missed deadline is a failure, not a slow machine.
const wait = 10 * time.Second

// The lab's instances are render_test.go's web0 and web1 (on this node)
// and db (running on another node).

func labNetwork(upstreams ...*upstream) netdns.Network {
	n := netdns.Network{Bridge: bridge, Domain: domain, CIDR: cidr, Gateway: gateway, MTU: 1450}
	for _, u := range upstreams {
		n.Upstreams = append(n.Upstreams, u.addr)
	}
	return n
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestDnsmasqServesLeasesAndNames drives one real dnsmasq through the
// life of two replicas on this node and one instance elsewhere.
func TestDnsmasqServesLeasesAndNames(t *testing.T) {
	l := newLab(t)
	up := l.upstream(t, addr("192.0.2.7"))
	m := l.manager(t)
	a := l.plug(t, web0, "vm-a")
	b := l.plug(t, web1, "vm-b")
	ctx := t.Context()

	// web-0 is placed here and running; web-1 is not placed here yet.
	act, err := m.Update(ctx, netdns.Desired{Network: labNetwork(up), Local: []netdns.Instance{web0}, Running: []netdns.Instance{web0, db}})
	must(t, err)
	if act != netdns.Restart {
		t.Fatalf("first Update: %v, want restart (a first start)", act)
	}
	l.run(t, m)

	t.Run("a local instance gets its committed address and hostname", func(t *testing.T) {
		got, err := a.dhcp(t, 5)
		must(t, err)
		want := lease{"ip": "10.100.0.2", "mask": "16", "hostname": "web-0", "router": "10.100.0.1", "dns": "10.100.0.1",
			"domain": domain, "search": domain, "mtu": "1450", "lease": "3600"}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("lease %s = %q, want %q (lease %v)", k, got[k], v, got)
			}
		}
		a.configure(t, got)
	})

	t.Run("a MAC not in the hostsfile gets no lease", func(t *testing.T) {
		if got, err := b.dhcp(t, 2); err == nil {
			t.Fatalf("web-1 is not placed on this node but got lease %v", got)
		}
		// dnsmasq saw the request and ignored it (not a lost packet).
		testkit.WaitFor(t, wait, "dnsmasq to log the ignored request", testkit.Until(func() bool {
			return l.logs.count("DHCPDISCOVER(blixard0) 02:00:00:00:00:03 ignored") > 0
		}))
	})

	t.Run("SIGHUP rereads the hostsfile: a newly placed instance gets its lease", func(t *testing.T) {
		act, err := m.Update(ctx, netdns.Desired{Network: labNetwork(up), Local: []netdns.Instance{web0, web1},
			Running: []netdns.Instance{web0, web1, db}})
		must(t, err)
		if act != netdns.Reload {
			t.Fatalf("Update: %v, want reload", act)
		}
		got, err := b.dhcp(t, 5)
		must(t, err)
		if got["ip"] != "10.100.0.3" || got["hostname"] != "web-1" {
			t.Fatalf("web-1's lease %v, want 10.100.0.3 and hostname web-1", got)
		}
		b.configure(t, got)
	})

	t.Run("an instance name has one address, the VM name all replicas", func(t *testing.T) {
		testkit.WaitFor(t, wait, "web-0's name", a.expectA("web-0."+domain, web0.Address))
		testkit.WaitFor(t, wait, "web's replicas", a.expectA("web."+domain, web0.Address, web1.Address))
		testkit.WaitFor(t, wait, "db on another node", b.expectA("db."+domain, db.Address))
		r, err := a.query("3.0.100.10.in-addr.arpa", dns.TypePTR)
		must(t, err)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "web-1."+domain+"." {
			t.Errorf("reverse of web-1's address: %v, want web-1.%s", r.Answer, domain)
		}
		// No IPv6: an empty answer, not an error and not forwarded.
		r, err = a.query("web-0."+domain, dns.TypeAAAA)
		must(t, err)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Errorf("AAAA web-0.%s: %s %v, want an empty answer", domain, dns.RcodeToString[r.Rcode], r.Answer)
		}
	})

	t.Run("other names are forwarded upstream and the cluster's unknown names are not", func(t *testing.T) {
		testkit.WaitFor(t, wait, "example.org through the upstream", a.expectA("example.org", addr("192.0.2.7")))
		if !up.wasAsked("example.org") {
			t.Errorf("the upstream never saw example.org")
		}
		testkit.WaitFor(t, wait, "an unknown cluster name", a.expectRcode("nosuch."+domain, dns.TypeA, dns.RcodeNameError))
		testkit.WaitFor(t, wait, "an unknown cluster address", a.expectRcode("99.0.100.10.in-addr.arpa", dns.TypePTR, dns.RcodeNameError))
		for _, name := range []string{"nosuch." + domain, "99.0.100.10.in-addr.arpa"} {
			if up.wasAsked(name) {
				t.Errorf("%s was forwarded upstream; the cluster's names must stay local", name)
			}
		}
	})

	t.Run("an Update that changes nothing writes and signals nothing", func(t *testing.T) {
		before := inodes(t, l.dir)
		reloads := l.logs.count("read " + filepath.Join(l.dir, netdns.HostsFile))
		act, err := m.Update(ctx, netdns.Desired{Network: labNetwork(up), Local: []netdns.Instance{web1, web0},
			Running: []netdns.Instance{db, web1, web0}})
		must(t, err)
		if act != netdns.Unchanged {
			t.Errorf("same desired state in another order: %v, want unchanged", act)
		}
		if after := inodes(t, l.dir); after != before {
			t.Errorf("files were rewritten: inodes %v, then %v", before, after)
		}
		if n := l.logs.count("read " + filepath.Join(l.dir, netdns.HostsFile)); n != reloads {
			t.Errorf("dnsmasq reread its hosts file %d more times", n-reloads)
		}
	})

	t.Run("a stopped replica leaves the VM name after SIGHUP", func(t *testing.T) {
		act, err := m.Update(ctx, netdns.Desired{Network: labNetwork(up), Local: []netdns.Instance{web0, web1},
			Running: []netdns.Instance{web0, db}})
		must(t, err)
		if act != netdns.Reload {
			t.Fatalf("Update: %v, want reload", act)
		}
		testkit.WaitFor(t, wait, "web without web-1", a.expectA("web."+domain, web0.Address))
		// web-1 still holds its lease here: the lease's name is not
		// published under the domain (no domain=).
		testkit.WaitFor(t, wait, "web-1's name gone", a.expectRcode("web-1."+domain, dns.TypeA, dns.RcodeNameError))
	})

	t.Run("a new main configuration restarts dnsmasq, which keeps its leases", func(t *testing.T) {
		oldPID, err := l.pid()
		must(t, err)
		up2 := l.upstream(t, addr("192.0.2.8"))
		act, err := m.Update(ctx, netdns.Desired{Network: labNetwork(up2), Local: []netdns.Instance{web0, web1},
			Running: []netdns.Instance{web0, db}})
		must(t, err)
		if act != netdns.Restart {
			t.Fatalf("Update: %v, want restart", act)
		}
		testkit.WaitFor(t, wait, "example.org through the new upstream", a.expectA("example.org", addr("192.0.2.8")))
		if pid, err := l.pid(); err != nil || pid == oldPID {
			t.Errorf("pid %d (%v) after a restart, was %d", pid, err, oldPID)
		}
		leases, err := os.ReadFile(filepath.Join(l.dir, netdns.LeasesFile))
		must(t, err)
		for _, mac := range []string{"02:00:00:00:00:02", "02:00:00:00:00:03"} {
			if !strings.Contains(string(leases), mac) {
				t.Errorf("lease of %s lost across the restart; leases file:\n%s", mac, leases)
			}
		}
		// The new process gives web-0 the same address again.
		got, err := a.dhcp(t, 5)
		must(t, err)
		if got["ip"] != "10.100.0.2" {
			t.Errorf("web-0 renewed to %v, want 10.100.0.2", got)
		}
	})

	t.Run("a dnsmasq that dies is started again", func(t *testing.T) {
		pid, err := l.pid()
		must(t, err)
		must(t, syscall.Kill(pid, syscall.SIGKILL))
		testkit.WaitFor(t, wait, "a new dnsmasq", func() error {
			p, err := l.pid()
			if err != nil {
				return err
			}
			if p == pid {
				return errors.New("still the killed one's pid file")
			}
			return a.expectA("web."+domain, web0.Address)()
		})
	})
}

// TestDnsmasqForgetsLeasesOfInstancesThatLeft: a node's dnsmasq keeps no
// lease of an instance it no longer serves — released while it runs,
// pruned from the lease file before it starts — so an instance that comes
// back gets its committed address, and an address freed by a removed
// instance goes to the new instance placed here (a stale lease would make
// dnsmasq refuse it: "not using configured address").
func TestDnsmasqForgetsLeasesOfInstancesThatLeft(t *testing.T) {
	l := newLab(t)
	// The bridge as hostnet sets it up on a node with an overlay address
	// (hostnet.Config.NodeAddr): the node's address is the primary one, the
	// gateway a secondary. dnsmasq names the primary as its server
	// identifier, which a release must carry.
	must(t, l.nl.AddrDel(l.br, nlAddr(netip.PrefixFrom(gateway, cidr.Bits()))))
	must(t, addAddr(l.nl, l.br, netip.MustParsePrefix("10.100.255.254/16")))
	must(t, addAddr(l.nl, l.br, netip.PrefixFrom(gateway, cidr.Bits())))
	m := l.manager(t)
	a := l.plug(t, web0, "vm-a")
	b := l.plug(t, web1, "vm-b")
	ctx := t.Context()
	update := func(want netdns.Action, local ...netdns.Instance) {
		t.Helper()
		act, err := m.Update(ctx, netdns.Desired{Network: labNetwork(), Local: local, Running: local})
		must(t, err)
		if act != want {
			t.Fatalf("Update with local instances %v: %v, want %v", names(local), act, want)
		}
	}
	dhcp := func(li *labInstance, wantIP string) {
		t.Helper()
		got, err := li.dhcp(t, 5)
		if err != nil {
			t.Fatalf("%s asks for its lease: %v", li.Name, err)
		}
		if got["ip"] != wantIP || got["hostname"] != li.Hostname || got["serverid"] != "10.100.255.254" {
			t.Fatalf("%s's lease %v, want %s, hostname %s, server 10.100.255.254", li.Name, got, wantIP, li.Hostname)
		}
	}
	const refused = "not using configured address"

	update(netdns.Restart, web0, web1)
	stop := l.run(t, m)
	dhcp(a, "10.100.0.2")
	dhcp(b, "10.100.0.3")
	testkit.WaitFor(t, wait, "both leases in the lease file", l.expectLeases("02:00:00:00:00:02 10.100.0.2", "02:00:00:00:00:03 10.100.0.3"))

	t.Run("an instance that moved away loses its lease here", func(t *testing.T) {
		update(netdns.Reload, web1)
		testkit.WaitFor(t, wait, "web-0's lease gone", l.expectLeases("02:00:00:00:00:03 10.100.0.3"))
		if l.logs.count("DHCPRELEASE(blixard0) 10.100.0.2 02:00:00:00:00:02") != 1 {
			t.Errorf("dnsmasq did not log the release of web-0's lease once")
		}
	})

	t.Run("it gets its committed address when it comes back", func(t *testing.T) {
		update(netdns.Reload, web0, web1)
		dhcp(a, "10.100.0.2")
	})

	t.Run("a removed instance's address goes to the new instance placed here", func(t *testing.T) {
		// web-1 is removed from the cluster; cache-0, new, is committed
		// web-1's old address and placed here.
		cache0 := netdns.Instance{Name: "cache-0", VM: "cache", Address: addr("10.100.0.3"), MAC: mustMAC("02:00:00:00:00:09"), Hostname: "cache-0"}
		c := l.plug(t, cache0, "vm-c")
		update(netdns.Reload, web0, cache0)
		dhcp(c, "10.100.0.3")
		testkit.WaitFor(t, wait, "web-1's lease replaced by cache-0's",
			l.expectLeases("02:00:00:00:00:02 10.100.0.2", "02:00:00:00:00:09 10.100.0.3"))
		if n := l.logs.count(refused); n != 0 {
			t.Errorf("dnsmasq refused a configured address %d times: a stale lease held it", n)
		}
	})

	t.Run("a dnsmasq started again has no lease of an instance that left while it was stopped", func(t *testing.T) {
		must(t, stop())
		cache0 := netdns.Instance{Name: "cache-0", VM: "cache", Address: addr("10.100.0.3"), MAC: mustMAC("02:00:00:00:00:09"), Hostname: "cache-0"}
		update(netdns.Reload, cache0) // web-0 moved away while dnsmasq was stopped
		if err := l.expectLeases("02:00:00:00:00:02 10.100.0.2", "02:00:00:00:00:09 10.100.0.3")(); err != nil {
			t.Fatalf("before the start: %v", err)
		}
		releases := l.logs.count("DHCPRELEASE(")
		l.run(t, m)
		// api-0, new, gets web-0's address here.
		api0 := netdns.Instance{Name: "api-0", VM: "api", Address: addr("10.100.0.2"), MAC: mustMAC("02:00:00:00:00:0a"), Hostname: "api-0"}
		d := l.plug(t, api0, "vm-d")
		update(netdns.Reload, cache0, api0)
		dhcp(d, "10.100.0.2")
		testkit.WaitFor(t, wait, "only the local instances' leases", l.expectLeases("02:00:00:00:00:09 10.100.0.3", "02:00:00:00:00:0a 10.100.0.2"))
		if l.logs.count("removed the DHCP leases of instances this node no longer serves before starting dnsmasq") != 1 {
			t.Errorf("the lease file was not pruned before the start")
		}
		if n := l.logs.count("DHCPRELEASE("); n != releases {
			t.Errorf("%d releases after the start; the pruned file should have left none to release", n-releases)
		}
		if n := l.logs.count(refused); n != 0 {
			t.Errorf("dnsmasq refused a configured address %d times: a stale lease held it", n)
		}
	})
}

func names(ins []netdns.Instance) []string {
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = in.Name
	}
	return out
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// expectLeases returns a WaitFor condition: dnsmasq's lease file holds
// exactly the leases want ("MAC ADDRESS", in any order).
func (l *lab) expectLeases(want ...string) func() error {
	return func() error {
		data, err := os.ReadFile(filepath.Join(l.dir, netdns.LeasesFile))
		if err != nil {
			return err
		}
		var got []string
		for _, le := range netdns.ParseLeases(data) {
			got = append(got, le.MAC.String()+" "+le.Address.String())
		}
		slices.Sort(got)
		want = slices.Sorted(slices.Values(want))
		if !slices.Equal(got, want) {
			return fmt.Errorf("leases %q, want %q; lease file:\n%s", got, want, data)
		}
		return nil
	}
}

// inodes identifies the current versions of the files Update writes.
func inodes(t *testing.T, dir string) [3]uint64 {
	t.Helper()
	var out [3]uint64
	for i, name := range []string{netdns.ConfigFile, netdns.DHCPHostsFile, netdns.HostsFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		must(t, err)
		out[i] = fi.Sys().(*syscall.Stat_t).Ino
	}
	return out
}

func TestDnsmasqStopsWithTheContext(t *testing.T) {
	l := newLab(t)
	m := l.manager(t)
	a := l.plug(t, web0, "vm-a")
	a.setAddr(t)
	_, err := m.Update(t.Context(), netdns.Desired{Network: labNetwork(), Running: []netdns.Instance{web0}})
	must(t, err)
	stop := l.run(t, m)
	testkit.WaitFor(t, wait, "dnsmasq to answer", a.expectA("web-0."+domain, web0.Address))
	// Without upstreams other names are refused.
	testkit.WaitFor(t, wait, "example.org refused", a.expectRcode("example.org", dns.TypeA, dns.RcodeRefused))
	if err := m.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "already in progress") {
		t.Errorf("a second Run: %v, want a refusal", err)
	}
	pid, err := l.pid()
	must(t, err)
	must(t, stop())
	// Run reaped dnsmasq and everything in its process group before it
	// returned: the group is gone.
	if err := unix.Kill(-pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("process group %d still exists after Run returned (kill: %v)", pid, err)
	}
	if _, err := a.query("web-0."+domain, dns.TypeA); err == nil {
		t.Errorf("DNS still answers after Run returned")
	}
}

// TestDnsmasqReloadWhileStartingIsNotLost changes the hosts files after
// dnsmasq was started but before it runs: its program is a wrapper that
// waits on a FIFO the test opens, then execs dnsmasq. A SIGHUP before
// dnsmasq has installed its handler would kill the process (the default
// action); the change must still be served.
func TestDnsmasqReloadWhileStartingIsNotLost(t *testing.T) {
	l := newLab(t)
	real, err := exec.LookPath("dnsmasq")
	must(t, err)
	gate := filepath.Join(filepath.Dir(l.dir), "gate")
	must(t, unix.Mkfifo(gate, 0o600))
	wrapper := filepath.Join(filepath.Dir(l.dir), "slow-dnsmasq")
	must(t, os.WriteFile(wrapper, []byte("#!/bin/sh\nread _ < "+gate+"\nexec "+real+` "$@"`+"\n"), 0o755))
	m, err := netdns.New(netdns.Options{Dir: l.dir, Binary: wrapper, Logger: slog.New(slog.NewTextHandler(l.logs, nil))})
	must(t, err)
	a := l.plug(t, web0, "vm-a")
	a.setAddr(t)
	ctx := t.Context()
	_, err = m.Update(ctx, netdns.Desired{Network: labNetwork(), Running: []netdns.Instance{web0}})
	must(t, err)
	l.run(t, m)
	testkit.WaitFor(t, wait, "the wrapper to start", testkit.Until(func() bool { return l.logs.count("dnsmasq started") == 1 }))
	act, err := m.Update(ctx, netdns.Desired{Network: labNetwork(), Running: []netdns.Instance{web0, web1}})
	must(t, err)
	if act != netdns.Reload {
		t.Fatalf("Update: %v, want reload", act)
	}
	// Let the wrapper exec dnsmasq; whether the reload is signalled
	// before dnsmasq's loop runs or after, both replicas must be served.
	must(t, os.WriteFile(gate, []byte("go\n"), 0o600))
	testkit.WaitFor(t, wait, "both replicas", a.expectA("web."+domain, web0.Address, web1.Address))
	if n := l.logs.count("dnsmasq exited"); n != 0 {
		t.Errorf("dnsmasq died %d times; log:\n%s", n, l.logs.String())
	}
}

// TestDnsmasqRestartsWithReloadsServeTheLastFiles restarts dnsmasq over
// and over with hosts changes right behind each restart.
func TestDnsmasqRestartsWithReloadsServeTheLastFiles(t *testing.T) {
	l := newLab(t)
	m := l.manager(t)
	a := l.plug(t, web0, "vm-a")
	a.setAddr(t)
	ctx := t.Context()
	_, err := m.Update(ctx, netdns.Desired{Network: labNetwork(), Running: []netdns.Instance{web0}})
	must(t, err)
	l.run(t, m)
	testkit.WaitFor(t, wait, "dnsmasq to answer", a.expectA("web."+domain, web0.Address))
	const rounds = 5
	for i := range rounds {
		n := labNetwork()
		n.MTU = 1400 + i // a new main configuration: restart
		for _, step := range []struct {
			running []netdns.Instance
			want    netdns.Action
		}{
			{[]netdns.Instance{web0}, netdns.Restart},
			{[]netdns.Instance{web0, web1}, netdns.Reload},
		} {
			act, err := m.Update(ctx, netdns.Desired{Network: n, Running: step.running})
			must(t, err)
			if act != step.want {
				t.Fatalf("round %d: %v, want %v", i, act, step.want)
			}
		}
		testkit.WaitFor(t, wait, "both replicas", a.expectA("web."+domain, web0.Address, web1.Address))
		act, err := m.Update(ctx, netdns.Desired{Network: n, Running: []netdns.Instance{web0}})
		must(t, err)
		if act != netdns.Reload {
			t.Fatalf("round %d: %v, want reload", i, act)
		}
		testkit.WaitFor(t, wait, "one replica", a.expectA("web."+domain, web0.Address))
	}
	if n := l.logs.count("dnsmasq exited"); n != 0 {
		t.Errorf("dnsmasq died %d times during %d restarts with reloads", n, rounds)
	}
	if n := l.logs.count("dnsmasq started"); n != rounds+1 {
		t.Errorf("dnsmasq started %d times, want %d", n, rounds+1)
	}
}

func TestDnsmasqRetriesUntilTheBridgeHasTheGateway(t *testing.T) {
	l := newLab(t)
	must(t, l.nl.AddrDel(l.br, nlAddr(netip.PrefixFrom(gateway, cidr.Bits()))))
	m := l.manager(t)
	a := l.plug(t, web0, "vm-a")
	a.setAddr(t)
	_, err := m.Update(t.Context(), netdns.Desired{Network: labNetwork(), Running: []netdns.Instance{web0}})
	must(t, err)
	l.run(t, m)
	testkit.WaitFor(t, wait, "dnsmasq to fail to bind", testkit.Until(func() bool {
		return l.logs.count("dnsmasq exited; starting it again") >= 2
	}))
	// hostnet adds the address: the next attempt binds.
	must(t, addAddr(l.nl, l.br, netip.PrefixFrom(gateway, cidr.Bits())))
	testkit.WaitFor(t, wait, "dnsmasq to answer", a.expectA("web-0."+domain, web0.Address))
}

func TestNewRefusesAStateDirectoryNobodyCanSearch(t *testing.T) {
	private := t.TempDir() // 0700, like every t.TempDir
	must(t, os.Chmod(private, 0o700))
	_, err := netdns.New(netdns.Options{Dir: filepath.Join(private, "netdns")})
	if err == nil || !strings.Contains(err.Error(), "chmod o+x "+private) {
		t.Fatalf("New in a private directory: %v, want an error that says chmod o+x %s", err, private)
	}
	_, err = netdns.New(netdns.Options{Dir: t.TempDir(), Binary: "no-such-dnsmasq"})
	if err == nil || !strings.Contains(err.Error(), "apt-get install dnsmasq-base") {
		t.Fatalf("New without the program: %v, want one that says how to install it", err)
	}
}
