package replicated

import "testing"

// Only a liveness-only heartbeat that changed no status and no Ceph address
// is quiet: every other entry wakes the local readers.
func TestApplyEntryQuiet(t *testing.T) {
	s := NewState()
	applyAll(t, s, reg(1), plan(0, "c", asg("web", 1, "v1")))
	enc := func(c Command) []byte {
		t.Helper()
		c.V = 0 // the version the command needs
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ordered := func(seq, unchanged uint64, ceph ...string) Command {
		c := hb(1)
		c.NodeHeartbeat.Epoch, c.NodeHeartbeat.Seq, c.NodeHeartbeat.Unchanged = 5, seq, unchanged
		c.NodeHeartbeat.CephAddrs = ceph
		if unchanged == 0 {
			c.NodeHeartbeat.Statuses = []VMStatus{{VM: "web", Phase: PhaseRunning}}
		}
		return c
	}
	tests := []struct {
		name  string
		cmd   Command
		quiet bool
	}{
		{"a full heartbeat is not quiet", ordered(1, 0), false},
		{"liveness-only on the held report is quiet", ordered(2, 1), true},
		{"liveness-only on a report not held is quiet too: only the count moved (the agent learns from its result)", ordered(3, 2), true},
		{"liveness-only adding a Ceph client is not quiet", ordered(4, 1, "10.0.0.1:0/7"), false},
		{"liveness-only with the same Ceph client again is quiet", ordered(5, 1, "10.0.0.1:0/7"), true},
		{"a node state change is not quiet", setState(1, NodeCordoned), false},
	}
	for _, tt := range tests {
		res, quiet := s.ApplyEntryQuiet(s.Applied+1, enc(tt.cmd))
		if !res.OK() {
			t.Fatalf("%s: %s", tt.name, res.Message)
		}
		if quiet != tt.quiet {
			t.Errorf("%s: quiet = %t (%s)", tt.name, quiet, res.Message)
		}
	}
	if _, quiet := s.ApplyEntryQuiet(s.Applied+1, []byte("{")); quiet {
		t.Errorf("an undecodable entry is quiet")
	}
}
