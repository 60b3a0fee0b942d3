package replicated

import (
	"bytes"
	"fmt"
	"testing"
)

// scaleState is a cluster of nodes × vms: every node registered, one plan
// placing vms/nodes instances on each, and every node's heartbeat reporting
// them running (the steady state of issue 16's scale target).
func scaleState(tb testing.TB, nodes, vms int) (*State, [][]VMStatus) {
	tb.Helper()
	s := NewState()
	for id := 1; id <= nodes; id++ {
		applyAll(tb, s, reg(uint64(id)))
	}
	as := make([]Assignment, 0, vms)
	for i := range vms {
		as = append(as, asg(fmt.Sprintf("vm-%05d", i), uint64(i%nodes+1), "v1"))
	}
	applyAll(tb, s, plan(0, "c1", as...))
	gen := s.Revision.ID
	sts := make([][]VMStatus, nodes+1)
	for _, a := range as {
		sts[a.Node] = append(sts[a.Node], VMStatus{VM: a.VM, Phase: PhaseRunning, BootedOut: a.OutPath,
			Generation: gen, Health: Healthy, HealthSince: t0, ObservedAt: t0})
	}
	for id := 1; id <= nodes; id++ {
		c := hb(uint64(id), sts[id]...)
		c.NodeHeartbeat.Epoch, c.NodeHeartbeat.Seq = 7, 1
		applyAll(tb, s, c)
	}
	return s, sts
}

// BenchmarkScale1000Nodes10000VMs measures, in a state of 1,000 nodes and
// 10,000 running instances: Apply of one node's heartbeat carrying its 10
// statuses, Apply of a liveness-only heartbeat (statuses unchanged since
// the stored report), and a snapshot's encoding and decoding (size
// reported as snapshot-bytes).
func BenchmarkScale1000Nodes10000VMs(b *testing.B) {
	s, sts := scaleState(b, 1000, 10000)
	b.Run("heartbeat-full", func(b *testing.B) {
		st := s.Clone()
		seq := uint64(1)
		b.ReportAllocs()
		for b.Loop() {
			seq++
			c := hb(500, sts[500]...)
			c.NodeHeartbeat.Epoch, c.NodeHeartbeat.Seq = 7, seq
			if r := st.Apply(st.Applied+1, c); !r.OK() {
				b.Fatal(r.Message)
			}
		}
	})
	b.Run("heartbeat-liveness-only", func(b *testing.B) {
		st := s.Clone()
		seq := uint64(1)
		b.ReportAllocs()
		for b.Loop() {
			seq++
			c := hb(500)
			c.V = HeartbeatDeltaVersion
			c.NodeHeartbeat.Epoch, c.NodeHeartbeat.Seq, c.NodeHeartbeat.Unchanged = 7, seq, 1
			if r := st.Apply(st.Applied+1, c); !r.OK() || r.StatusSeq != 1 {
				b.Fatalf("%+v", r)
			}
		}
	})
	b.Run("heartbeat-entry-liveness-only", func(b *testing.B) {
		// As the Raft state machine applies it: decoded from its JSON.
		st := s.Clone()
		seq := uint64(1)
		b.ReportAllocs()
		for b.Loop() {
			seq++
			c := hb(500)
			c.V = 0
			c.NodeHeartbeat.Epoch, c.NodeHeartbeat.Seq, c.NodeHeartbeat.Unchanged = 7, seq, 1
			data, err := EncodeCommand(c)
			if err != nil {
				b.Fatal(err)
			}
			if r, quiet := st.ApplyEntryQuiet(st.Applied+1, data); !r.OK() || !quiet {
				b.Fatalf("%+v quiet=%t", r, quiet)
			}
		}
	})
	b.Run("encode-snapshot", func(b *testing.B) {
		var buf bytes.Buffer
		b.ReportAllocs()
		for b.Loop() {
			buf.Reset()
			if err := EncodeSnapshot(&buf, s); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(buf.Len()), "snapshot-bytes")
	})
	b.Run("decode-snapshot", func(b *testing.B) {
		var buf bytes.Buffer
		if err := EncodeSnapshot(&buf, s); err != nil {
			b.Fatal(err)
		}
		data := buf.Bytes()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeSnapshot(bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("clone", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.Clone()
		}
	})
}
