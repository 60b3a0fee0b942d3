package node

import (
	"net/netip"
	"strings"
	"testing"
)

// TestAgentOnlyConfig: what an agent-only node refuses, and what it
// registers as its (underlay) address.
func TestAgentOnlyConfig(t *testing.T) {
	base := func() Config {
		return Config{NodeID: 4, DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", Insecure: true,
			AgentOnly: true, Servers: []string{"127.0.0.1:7070"}}
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" : accepted
	}{
		{"agent-only with servers", func(*Config) {}, ""},
		{"with an advertised raft address", func(c *Config) { c.RaftAddr = "10.0.0.4:7001" }, ""},
		{"with a repository to build from", func(c *Config) { c.Source.Repo = "file:///srv/cluster.git" }, ""},
		{"no servers", func(c *Config) { c.Servers = nil }, "--agent-only needs --servers"},
		{"servers without agent-only", func(c *Config) { c.AgentOnly = false; c.RaftAddr = "127.0.0.1:7001" }, "--servers needs --agent-only"},
		{"join", func(c *Config) { c.Join, c.RaftAddr = true, "127.0.0.1:7001" }, "runs no Raft replica"},
		{"members", func(c *Config) {
			c.RaftAddr = "127.0.0.1:7001"
			c.Members = map[uint64]string{4: "127.0.0.1:7001", 1: "127.0.0.1:7002"}
		}, "runs no Raft replica"},
		{"notify", func(c *Config) { c.Notify.URLs = []string{"https://example.org/hook"} }, "an agent-only node never leads"},
		{"trust", func(c *Config) { c.Source.Repo, c.Source.Trust = "file:///srv/cluster.git", []string{"keys"} }, "--trust is for the servers"},
		{"network without an underlay address", func(c *Config) { c.Network.Enable = true }, "needs --underlay-addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.edit(&c)
			err := c.Check()
			if tc.want == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		raft, underlay, want string
	}{
		{"", "", ""},
		{"10.0.0.4:7001", "", "10.0.0.4:7001"},
		{"10.0.0.4:7001", "192.168.1.4", "192.168.1.4:0"},
		{"", "fd00::4", "[fd00::4]:0"},
	} {
		c := Config{RaftAddr: tc.raft}
		if tc.underlay != "" {
			c.Network.UnderlayAddr = netip.MustParseAddr(tc.underlay)
		}
		if got := advertisedUnderlay(c); got != tc.want {
			t.Errorf("advertisedUnderlay(raft %q, underlay %q) = %q, want %q", tc.raft, tc.underlay, got, tc.want)
		}
	}
}
