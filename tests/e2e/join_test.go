package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// TestNixGitRaftNonVotingNodeJoins: three voters that run no VMs (capacity 0,
// no agent) and a fourth node added as a non-voting replica, which gets the
// VMs the voters could not place.
func TestNixGitRaftNonVotingNodeJoins(t *testing.T) {
	requireTools(t, "nix", "git")
	r := newRepo(t)
	commit := r.push(clusterFlake(nil), "six VMs")
	c := startCluster(t, r.url(), []nodeSpec{{0, 0, ""}, {0, 0, ""}, {0, 0, ""}}, "--agent=false")
	waitRevision(t, c, commit)
	testkit.WaitFor(t, 30*time.Second, "6 unschedulable VMs", func() error {
		var st struct {
			Unschedulable []struct{ VM string } `json:"unschedulable"`
		}
		if err := cliJSON(t, &st, "status", "--server", c.nodes[1].api); err != nil {
			return err
		}
		if len(st.Unschedulable) != 6 {
			return fmt.Errorf("%d unschedulable", len(st.Unschedulable))
		}
		return nil
	})

	n := &node{id: 4, api: freeAddr(t), raft: freeAddr(t), dataDir: t.TempDir()}
	n.logPath = filepath.Join(n.dataDir, "serve.log")
	out, stderr, code := cli(t, "", "node", "add", "4", n.raft, "--non-voting", "--server", c.nodes[0].api)
	if code != 0 || !strings.Contains(out, "--join --non-voting") {
		t.Fatalf("node add: exit %d: %s%s", code, out, stderr)
	}
	n.args = []string{"serve", "--node-id", "4", "--data-dir", n.dataDir, "--raft-addr", n.raft, "--api-addr", n.api,
		"--join", "--non-voting", "--repo", r.url(), "--poll", "300ms", "--heartbeat", "500ms",
		"--capacity-vcpu", "16", "--capacity-mem-mib", "16384", "--state-dir", n.stateDir(), "--log-level", "debug"}
	c.nodes = append(c.nodes, n)
	c.start(n, n.args)

	vms := waitAllRunning(t, c, 6)
	for name, vm := range vms {
		if vm.node != 4 {
			t.Errorf("%s runs on node %d, want the joined node 4", name, vm.node)
		}
	}
	// The non-voting replica serves linearizable reads like the voters.
	s, err := status(t, n.api)
	if err != nil || s.Revision == nil || s.Revision.Commit != commit {
		t.Fatalf("status on node 4: %+v, %v", s.Revision, err)
	}
	if _, stderr, code := cli(t, "", "node", "add", "0", "127.0.0.1:1", "--server", c.nodes[0].api); code != 1 || !strings.Contains(stderr, "node id") {
		t.Errorf("node add 0: exit %d, stderr %q; want 1 and a message", code, stderr)
	}
}
