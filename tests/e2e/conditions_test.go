package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// TestNixGitRaftFailuresSurviveTheLeader: fetch and evaluation failures are
// replicated conditions, so a follower shows the failure the leader recorded
// after that leader was killed; and asking the cluster to plan a commit
// before it is pushed does not stop it from being deployed once pushed.
func TestNixGitRaftFailuresSurviveTheLeader(t *testing.T) {
	requireTools(t, "nix", "git")
	r := newRepo(t)
	first := r.push(lightRunnerFlake("cond", `web = { runner = runner "web" "1"; vcpu = 1; memMiB = 64; };`), "one VM")
	c := startCluster(t, r.url(), []nodeSpec{{4, 4096, ""}, {4, 4096, ""}, {4, 4096, ""}})
	waitRevision(t, c, first)

	// A plan request for a commit the cluster has not fetched yet fails, and
	// is no verdict: once pushed, that commit is deployed.
	r.write(lightRunnerFlake("cond", `web = { runner = runner "web" "2"; vcpu = 1; memMiB = 64; };`))
	gitRun(t, r.work, "add", "-A")
	gitRun(t, r.work, "commit", "-qm", "web 2, not pushed yet")
	early := gitRun(t, r.work, "rev-parse", "HEAD")
	if out, errOut, code := cli(t, "", "plan", "--server", c.nodes[0].api, "--commit", early); code != 1 {
		t.Fatalf("plan --commit of an unpushed commit: exit %d, want 1\n%s%s", code, out, errOut)
	}
	gitRun(t, r.work, "push", "-q", r.bare, "HEAD:refs/heads/main")
	waitRevision(t, c, early)

	broken := r.push(brokenFlake, "broken")
	leader := waitLastError(t, c.nodes[0].api, broken)
	var dead, alive *node
	for _, n := range c.nodes {
		if n.id == leader {
			dead = n
		} else if alive == nil {
			alive = n
		}
	}
	if dead == nil {
		t.Fatalf("no node has the leader's id %d", leader)
	}
	dead.kill9()
	testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("node %d to show the failure after leader %d was killed", alive.id, leader), func() error {
		s, err := status(t, alive.api)
		if err != nil {
			return err
		}
		if s.Leader == leader || s.Leader == 0 {
			return fmt.Errorf("leader is still %d", s.Leader)
		}
		if s.LastError == nil || s.LastError.Commit != broken || !strings.Contains(s.LastError.Message, "flake.nix") {
			return fmt.Errorf("lastError = %+v", s.LastError)
		}
		if s.Revision == nil || s.Revision.Commit != early {
			return fmt.Errorf("revision %+v, want the last good commit %s", s.Revision, early)
		}
		return nil
	})
}

// waitLastError waits until api reports commit's evaluation failure and
// returns the leader at that time.
func waitLastError(t *testing.T, api, commit string) uint64 {
	t.Helper()
	var leader uint64
	testkit.WaitFor(t, 60*time.Second, "the eval error of "+commit[:12], func() error {
		s, err := status(t, api)
		if err != nil {
			return err
		}
		if s.LastError == nil || s.LastError.Commit != commit {
			return fmt.Errorf("lastError = %+v", s.LastError)
		}
		leader = s.Leader
		return nil
	})
	return leader
}
