package netdns_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/netdns"
)

// resolver is a UDP socket opened once inside an instance namespace, so a
// benchmark's polling does not pay for a thread per query.
type resolver struct {
	c    *dns.Client
	conn *dns.Conn
}

func (li *labInstance) resolver(b *testing.B) *resolver {
	b.Helper()
	// A query that reaches a dnsmasq as it exits is never answered: a
	// short timeout keeps that from dominating the restart measurement.
	r := &resolver{c: &dns.Client{Net: "udp", Timeout: 10 * time.Millisecond}}
	must(b, inNS(li.ns, func() error {
		var err error
		r.conn, err = r.c.Dial(dnsAddr)
		return err
	}))
	b.Cleanup(func() { _ = r.conn.Close() })
	return r
}

// lookupA asks for name's A records; errors (a restarting dnsmasq
// refuses or drops queries) come back as no answer.
func (r *resolver) lookupA(name string) []netip.Addr {
	resp, _, err := r.c.ExchangeWithConn(new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA), r.conn)
	if err != nil || resp.Rcode != dns.RcodeSuccess {
		return nil
	}
	var out []netip.Addr
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			addr, _ := netip.AddrFromSlice(a.A.To4())
			out = append(out, addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// until polls name until it resolves to want, without pausing: the
// benchmark measures how soon the answer changes.
func (r *resolver) until(b *testing.B, name string, want ...netip.Addr) {
	deadline := time.Now().Add(wait)
	for !slices.Equal(r.lookupA(name), want) {
		if time.Now().After(deadline) {
			b.Fatalf("%s never resolved to %v", name, want)
		}
	}
}

// BenchmarkDnsmasqUpdateToAnswer is the time from an Update that adds or
// removes a replica (hosts file rewritten, SIGHUP) to dnsmasq answering
// the VM name with the new set.
func BenchmarkDnsmasqUpdateToAnswer(b *testing.B) {
	l := newLab(b)
	m := l.manager(b)
	a := l.plug(b, web0, "vm-a")
	a.setAddr(b)
	desired := func(running ...netdns.Instance) netdns.Desired {
		return netdns.Desired{Network: labNetwork(), Running: running}
	}
	_, err := m.Update(b.Context(), desired(web0))
	must(b, err)
	l.run(b, m)
	testkit.WaitFor(b, wait, "dnsmasq to answer", a.expectA("web."+domain, web0.Address))
	r := a.resolver(b)
	i := 0
	for b.Loop() {
		i++
		d, want := desired(web0, web1), []netip.Addr{web0.Address, web1.Address}
		if i%2 == 0 {
			d, want = desired(web0), []netip.Addr{web0.Address}
		}
		act, err := m.Update(b.Context(), d)
		if err != nil || act != netdns.Reload {
			b.Fatalf("Update: %v, %v; want reload", act, err)
		}
		r.until(b, "web."+domain, want...)
	}
}

// BenchmarkDnsmasqRestartToAnswer is the time from an Update that changes
// the main configuration (here the upstream resolver) to the restarted
// dnsmasq answering through the new upstream.
func BenchmarkDnsmasqRestartToAnswer(b *testing.B) {
	l := newLab(b)
	ups := []*upstream{l.upstream(b, netip.MustParseAddr("192.0.2.7")), l.upstream(b, netip.MustParseAddr("192.0.2.8"))}
	m := l.manager(b)
	a := l.plug(b, web0, "vm-a")
	a.setAddr(b)
	_, err := m.Update(b.Context(), netdns.Desired{Network: labNetwork(ups[0]), Running: []netdns.Instance{web0}})
	must(b, err)
	l.run(b, m)
	testkit.WaitFor(b, wait, "dnsmasq to answer", a.expectA("example.org", ups[0].answer))
	r := a.resolver(b)
	i := 0
	for b.Loop() {
		i++
		up := ups[i%2]
		act, err := m.Update(b.Context(), netdns.Desired{Network: labNetwork(up), Running: []netdns.Instance{web0}})
		if err != nil || act != netdns.Restart {
			b.Fatalf("Update: %v, %v; want restart", act, err)
		}
		r.until(b, "example.org", up.answer)
	}
}

// BenchmarkDnsmasqLeaveToLeaseReleased is the time from an Update that
// takes a local instance away (it moved to another node) to dnsmasq's
// lease file without its lease: SIGHUP, the lease check, the DHCPRELEASE
// and dnsmasq's rewrite of its file. Giving the lease back (the instance
// returns and asks again) is not timed.
func BenchmarkDnsmasqLeaveToLeaseReleased(b *testing.B) {
	l := newLab(b)
	m := l.manager(b)
	a := l.plug(b, web0, "vm-a")
	desired := func(local ...netdns.Instance) netdns.Desired {
		return netdns.Desired{Network: labNetwork(), Local: local, Running: local}
	}
	_, err := m.Update(b.Context(), desired(web0, web1))
	must(b, err)
	l.run(b, m)
	for b.Loop() {
		b.StopTimer()
		act, err := m.Update(b.Context(), desired(web0, web1))
		if err != nil || act == netdns.Restart {
			b.Fatalf("Update: %v, %v; want reload or unchanged", act, err)
		}
		if _, err := a.dhcp(b, 5); err != nil {
			b.Fatal(err)
		}
		testkit.WaitFor(b, wait, "web-0's lease", l.expectLeases("02:00:00:00:00:02 10.100.0.2"))
		b.StartTimer()
		if act, err := m.Update(b.Context(), desired(web1)); err != nil || act != netdns.Reload {
			b.Fatalf("Update: %v, %v; want reload", act, err)
		}
		deadline := time.Now().Add(wait)
		for l.expectLeases()() != nil {
			if time.Now().After(deadline) {
				b.Fatalf("web-0's lease was never released: %v", l.expectLeases()())
			}
		}
	}
}

// BenchmarkRender renders the files of a node running 50 of a cluster's
// 10,000 instances: what every agent pass costs when nothing changed.
func BenchmarkRender(b *testing.B) {
	var local, running []netdns.Instance
	for i := range 10_000 {
		in := netdns.Instance{
			Name:     fmt.Sprintf("vm%d-%d", i/4, i%4),
			VM:       fmt.Sprintf("vm%d", i/4),
			Address:  netip.AddrFrom4([4]byte{10, 100, byte((i + 2) >> 8), byte(i + 2)}),
			MAC:      []byte{2, 0, 0, 0, byte(i >> 8), byte(i)},
			Hostname: fmt.Sprintf("vm%d-%d", i/4, i%4),
		}
		running = append(running, in)
		if i%200 == 0 {
			local = append(local, in)
		}
	}
	d := netdns.Desired{Network: network(), Local: local, Running: running}
	for b.Loop() {
		if _, err := netdns.Render("/var/lib/blixard/netdns", d); err != nil {
			b.Fatal(err)
		}
	}
}
