package node

import (
	"strings"
	"testing"
	"time"
)

func TestHeartbeatLeaseAndRaftTimingFollowTheNodeTimeout(t *testing.T) {
	const s = time.Second
	base := Config{NodeID: 1, DataDir: "/d", RaftAddr: "127.0.0.1:7001", APIAddr: "127.0.0.1:7070", Insecure: true}
	tests := []struct {
		name             string
		change           func(c *Config)
		heartbeat, lease time.Duration // wanted, when valid
		wantErr          string        // "" valid
	}{
		{name: "the default 30s timeout beats every 2s with a 22.5s lease",
			change: func(c *Config) { c.NodeTimeout = 30 * s }, heartbeat: 2 * s, lease: 22500 * time.Millisecond},
		{name: "a 5s timeout beats every 500ms with a 3.75s lease",
			change: func(c *Config) { c.NodeTimeout = 5 * s }, heartbeat: 500 * time.Millisecond, lease: 3750 * time.Millisecond},
		{name: "a 3s timeout leaves 1s before it ends",
			change: func(c *Config) { c.NodeTimeout = 3 * s }, heartbeat: 300 * time.Millisecond, lease: 2 * s},
		{name: "no timeout beats every 2s with no lease",
			change: func(c *Config) {}, heartbeat: 2 * s, lease: 0},
		{name: "a given heartbeat and lease are kept",
			change: func(c *Config) { c.NodeTimeout, c.Heartbeat, c.Lease = 10*s, 3*s, 8*s }, heartbeat: 3 * s, lease: 8 * s},
		{name: "a heartbeat of more than a third of the timeout is refused",
			change: func(c *Config) { c.NodeTimeout, c.Heartbeat = 5*s, 2*s }, wantErr: "--heartbeat 2s is more than a third of --node-timeout 5s"},
		{name: "a lease shorter than two heartbeats is refused",
			change: func(c *Config) { c.NodeTimeout, c.Heartbeat, c.Lease = 10*s, 3*s, 5*s }, wantErr: "must hold two heartbeats"},
		{name: "a lease ending less than 500ms before the timeout is refused",
			change: func(c *Config) { c.NodeTimeout, c.Lease = 5*s, 4600*time.Millisecond }, wantErr: "end at least 500ms before --node-timeout 5s"},
		{name: "a lease without a timeout is refused",
			change: func(c *Config) { c.Lease = 5 * s }, wantErr: "--lease 5s needs a --node-timeout"},
		{name: "a timeout too short for any lease is refused",
			change: func(c *Config) { c.NodeTimeout = s }, wantErr: "--lease 0s must hold two heartbeats"},
		{name: "an election of fewer than 10 heartbeats is refused",
			change: func(c *Config) { c.Raft = RaftTiming{HeartbeatRTT: 10, ElectionRTT: 50} }, wantErr: "raise --raft-election-rtt to at least 100"},
		{name: "a shorter heartbeat allows a shorter election",
			change: func(c *Config) { c.Raft = RaftTiming{RTT: 5 * time.Millisecond, HeartbeatRTT: 2, ElectionRTT: 20} }, heartbeat: 2 * s},
		{name: "a tick that is not whole milliseconds is refused",
			change: func(c *Config) { c.Raft.RTT = 1500 * time.Microsecond }, wantErr: "--raft-rtt 1.5ms: want whole milliseconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.change(&c)
			got, err := c.withDefaults()
			switch {
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("withDefaults: %v, want an error with %q", err, tt.wantErr)
			case tt.wantErr == "" && err != nil:
				t.Fatalf("withDefaults: %v", err)
			case tt.wantErr == "" && (got.Heartbeat != tt.heartbeat || got.Lease != tt.lease):
				t.Fatalf("heartbeat %v, lease %v; want %v, %v", got.Heartbeat, got.Lease, tt.heartbeat, tt.lease)
			}
		})
	}
}

func TestALeaseShorterThanALeaderChangeIsARisk(t *testing.T) {
	for _, tt := range []struct {
		nodeTimeout time.Duration
		raft        RaftTiming
		risky       bool
	}{
		{30 * time.Second, RaftTiming{}, false},
		{5 * time.Second, RaftTiming{}, false},                                 // lease 3.75s > 2×1s + 500ms
		{3 * time.Second, RaftTiming{}, true},                                  // lease 2s ≤ 2×1s + 300ms
		{3 * time.Second, RaftTiming{ElectionRTT: 50, HeartbeatRTT: 5}, false}, // lease 2s > 2×500ms + 300ms
		{0, RaftTiming{}, false},
	} {
		c := Config{NodeID: 1, DataDir: "/d", RaftAddr: "127.0.0.1:7001", APIAddr: "127.0.0.1:7070", Insecure: true,
			NodeTimeout: tt.nodeTimeout, Raft: tt.raft}
		got, err := c.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if risk := got.LeaseRisk(); (risk != "") != tt.risky || (tt.risky && !strings.Contains(risk, "a leader change may make this node stop its VMs")) {
			t.Errorf("node timeout %v, %+v: risk %q, want risky %v", tt.nodeTimeout, tt.raft, risk, tt.risky)
		}
	}
}
