package metrics

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/blixard/blixard/replicated"
)

// bigState is a cluster of nodes nodes running vms VM instances, every one
// reported running and healthy.
func bigState(nodes, vms int) *replicated.State {
	st := &replicated.State{Applied: 123456, Revision: &replicated.Revision{ID: 123000, Commit: "c"},
		Nodes: map[uint64]*replicated.Node{}, Assignments: map[string]replicated.Assignment{}, Observed: map[string]replicated.VMStatus{}}
	for i := 1; i <= nodes; i++ {
		st.Nodes[uint64(i)] = &replicated.Node{ID: uint64(i), State: replicated.NodeReady,
			Capacity: replicated.Resources{VCPU: 64, MemMiB: 256 << 10}, LastHeartbeatSeq: 99999}
	}
	for i := range vms {
		name, node := fmt.Sprintf("vm-%d", i), uint64(i%nodes+1)
		st.Assignments[name] = replicated.Assignment{VM: name, Node: node, VCPU: 2, MemMiB: 2048}
		st.Observed[name] = replicated.VMStatus{VM: name, Node: node, Phase: replicated.PhaseRunning, Health: replicated.Healthy}
	}
	return st
}

// BenchmarkScrape is one scrape of a node of a large cluster: gathering
// every series (the state's read from the replica each time) and encoding
// them as Prometheus text, as GET /metrics does.
func BenchmarkScrape(b *testing.B) {
	for _, size := range []struct{ nodes, vms int }{{3, 30}, {100, 1000}, {100, 5000}} {
		b.Run(fmt.Sprintf("%dnodes-%dvms", size.nodes, size.vms), func(b *testing.B) {
			m := New(Options{Replica: fakeReplica{st: bigState(size.nodes, size.vms)}, Raft: fakeRaft{}})
			m.ObserveFetch(time.Second, nil)
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				fams, err := m.Gatherer().Gather()
				if err != nil {
					b.Fatal(err)
				}
				buf.Reset()
				enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
				for _, f := range fams {
					if err := enc.Encode(f); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(buf.Len()), "bytes/scrape")
		})
	}
}

// BenchmarkObserve is what a part pays to report one measurement.
func BenchmarkObserve(b *testing.B) {
	m := New(Options{})
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveStart(1500*time.Millisecond, nil)
	}
}
