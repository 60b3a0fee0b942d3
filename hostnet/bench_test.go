package hostnet_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/hostnet"
)

// copySize is the TCP transfer of the throughput benchmark.
const copySize = 200 << 20

// BenchmarkNetnsOverlayVsUnderlayTCP copies 200 MiB over TCP between two
// nodes' namespaces directly on the underlay veths, and between two
// instances on those nodes through bridge, VXLAN and the same underlay. It
// reports both rates and overlay/underlay.
func BenchmarkNetnsOverlayVsUnderlayTCP(b *testing.B) {
	l := newLab(b, 2)
	a := newInstance(b, "vm-a", mac("52:54:00:00:00:0a"), netip.MustParseAddr("10.100.1.10"))
	bb := newInstance(b, "vm-b", mac("52:54:00:00:00:0b"), netip.MustParseAddr("10.100.1.11"))
	a.plug(b, l.nodes[0])
	bb.plug(b, l.nodes[1])
	placement := map[*instance]int{a: 0, bb: 1}
	for i, nd := range l.nodes {
		if _, err := nd.host.Sync(b.Context(), nd.config(), desired(l, i, placement)); err != nil {
			b.Fatal(err)
		}
	}
	var under, over time.Duration
	runs := 0
	for b.Loop() {
		runs++
		d, err := tcpCopy(l.nodes[0].ns, l.nodes[1].ns, l.nodes[1].underlay, copySize)
		if err != nil {
			b.Fatalf("underlay copy: %v", err)
		}
		under += d
		d, err = tcpCopy(a.ns, bb.ns, bb.ip, copySize)
		if err != nil {
			b.Fatalf("overlay copy: %v", err)
		}
		over += d
	}
	mbps := func(d time.Duration) float64 { return float64(copySize) * float64(runs) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(under), "underlay-MB/s")
	b.ReportMetric(mbps(over), "overlay-MB/s")
	b.ReportMetric(mbps(over)/mbps(under), "overlay/underlay")
}

// remotes returns n remote instances spread over two nodes (node picks
// the underlay address of the first).
func remotes(n int, node func(i int) netip.Addr) []hostnet.Remote {
	out := make([]hostnet.Remote, n)
	for i := range out {
		out[i] = hostnet.Remote{
			MAC:  net.HardwareAddr{0x52, 0x54, 0, 1, byte(i >> 8), byte(i)},
			IP:   netip.AddrFrom4([4]byte{10, 100, byte(2 + i>>8), byte(i)}),
			Node: node(i),
		}
	}
	return out
}

// BenchmarkNetnsSync1000Remotes measures Sync with 1,000 remote instances
// (3,000 kernel entries): from a host without overlay ("first"), on a host
// that already matches ("noop": observe + plan), and when every instance
// moved to another node ("move-all": 1,000 FDB replaces).
func BenchmarkNetnsSync1000Remotes(b *testing.B) {
	const n = 1000
	at := func(node netip.Addr) hostnet.Desired {
		return hostnet.Desired{Remote: remotes(n, func(int) netip.Addr { return node })}
	}
	n2, n3 := netip.MustParseAddr("192.168.77.2"), netip.MustParseAddr("192.168.77.3")

	b.Run("first", func(b *testing.B) {
		nd := newLab(b, 1).nodes[0]
		for b.Loop() {
			b.StopTimer()
			for _, name := range []string{"blixard0", "blxvx42"} {
				if l, err := nd.nl.LinkByName(name); err == nil {
					must(b, nd.nl.LinkDel(l))
				}
			}
			b.StartTimer()
			ops, err := nd.host.Sync(b.Context(), nd.config(), at(n2))
			if err != nil || len(ops) < 3*n {
				b.Fatalf("Sync: %d operations, %v", len(ops), err)
			}
		}
	})
	b.Run("noop", func(b *testing.B) {
		nd := newLab(b, 1).nodes[0]
		if _, err := nd.host.Sync(b.Context(), nd.config(), at(n2)); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			ops, err := nd.host.Sync(b.Context(), nd.config(), at(n2))
			if err != nil || len(ops) != 0 {
				b.Fatalf("Sync: %q, %v", strs(ops), err)
			}
		}
	})
	b.Run("move-all", func(b *testing.B) {
		nd := newLab(b, 1).nodes[0]
		if _, err := nd.host.Sync(b.Context(), nd.config(), at(n2)); err != nil {
			b.Fatal(err)
		}
		node := n2
		for b.Loop() {
			if node == n2 {
				node = n3
			} else {
				node = n2
			}
			ops, err := nd.host.Sync(b.Context(), nd.config(), at(node))
			if err != nil || len(ops) != n {
				b.Fatalf("Sync: %d operations, %v", len(ops), err)
			}
		}
	})
}

// BenchmarkPlan1000Remotes is the pure planner's share of a no-op Sync.
func BenchmarkPlan1000Remotes(b *testing.B) {
	cfg := baseConfig()
	want := hostnet.Desired{Remote: remotes(1000, func(int) netip.Addr { return netip.MustParseAddr("192.168.77.2") })}
	ops, err := hostnet.Plan(cfg, want, bareHost())
	if err != nil {
		b.Fatal(err)
	}
	have, err := simulate(bareHost(), ops)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if ops, err := hostnet.Plan(cfg, want, have); err != nil || len(ops) != 0 {
			b.Fatalf("Plan: %d operations, %v", len(ops), err)
		}
	}
}

// BenchmarkNetnsNewTap is what a cold start's tap costs on a node that
// already carries 20 instances: the full Sync (observe the namespace, plan,
// apply) against AddMissingTaps (the network pass's fast lane: ask for
// that tap alone, apply). The tap is deleted between iterations, untimed.
// In a test namespace a tap is created from a thread that enters it (see
// Host.createTapLocked), which a node in its own namespace does not need.
func BenchmarkNetnsNewTap(b *testing.B) {
	var existing []hostnet.Tap
	for i := range 20 {
		existing = append(existing, hostnet.Tap{Name: fmt.Sprintf("vm-%d", i), MAC: mac(fmt.Sprintf("52:54:00:00:01:%02x", i))})
	}
	fresh := hostnet.Tap{Name: "vm-new", MAC: mac("52:54:00:00:02:01")}
	for _, lane := range []string{"sync", "fast-lane"} {
		b.Run(lane, func(b *testing.B) {
			nd := newLab(b, 1).nodes[0]
			cfg := nd.config()
			cfg.CreateTaps = true
			if _, err := nd.host.Sync(b.Context(), cfg, hostnet.Desired{LocalTaps: existing}); err != nil {
				b.Fatal(err)
			}
			mtu, err := nd.host.LinkMTU(hostnet.DefaultBridge)
			must(b, err)
			want := hostnet.Desired{LocalTaps: append(slices.Clone(existing), fresh)}
			for b.Loop() {
				b.StopTimer()
				if l, err := nd.nl.LinkByName(fresh.Name); err == nil {
					must(b, nd.nl.LinkDel(l))
				}
				b.StartTimer()
				var ops []hostnet.Op
				if lane == "sync" {
					ops, err = nd.host.Sync(b.Context(), cfg, want)
				} else {
					ops, err = nd.host.AddMissingTaps(b.Context(), cfg, mtu, []hostnet.Tap{fresh})
				}
				if err != nil || len(ops) != 4 {
					b.Fatalf("%s: %q, %v", lane, strs(ops), err)
				}
			}
		})
	}
}
