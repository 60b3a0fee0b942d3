package api

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Status shows a suspended cluster with its pending commit and a rollout in
// progress, so `blixard status` alone tells an operator why a push is not
// running yet.
func TestWriteStatusShowsSuspensionAndRollouts(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	s := &replicated.State{
		Suspended: &replicated.Suspension{Since: at, By: "alice", Pending: "0123456789abcdef0123",
			Rollback: &replicated.RollbackTarget{Revision: 7, Commit: "fedcba9876543210fedc"}},
		Rollouts: map[string]replicated.Rollout{
			"web": {VM: "web", To: "aaaaaaaaaaaaaaaaaaaa", Phase: replicated.RolloutProgressing, Instances: 4, Moving: 4,
				Waves: 2, Wave: []string{"web-1"}, Deadline: at.Add(5 * time.Minute)},
			"db": {VM: "db", To: "bbbbbbbbbbbbbbbbbbbb", Phase: replicated.RolloutSucceeded, Instances: 1, Moving: 1, Waves: 1},
		},
	}
	v := NewStatusView(s, 1, 1, nil)
	if len(v.Rollouts) != 1 || v.Rollouts[0].VM != "web" {
		t.Fatalf("rollouts in the view: %+v, want only web's (in progress)", v.Rollouts)
	}
	var b bytes.Buffer
	if err := WriteStatus(&b, v); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Following: suspended since ",
		" by alice, rolled back to revision 7 (commit fedcba987654); `blixard resume` follows the branch again",
		"pending (fetched, not applied): commit 0123456789ab",
		"Rollout: web to commit aaaaaaaaaaaa, wave 2 (web-1), moving 4 of 4 instances, deadline ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Rollout: db") {
		t.Errorf("a finished rollout is listed:\n%s", out)
	}
}

func TestWriteNodesShowsProblems(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var b strings.Builder
	err := WriteNodes(&b, []NodeView{{ID: 1, State: replicated.NodeReady}, {ID: 2, State: replicated.NodeReady,
		Problems: map[string]replicated.NodeProblem{"network": {Message: "not converged: route 10.100.0.0/16\nvia tun0 overlaps", Since: since}}}})
	if err != nil {
		t.Fatal(err)
	}
	want := "node 2 network problem since " + since.Local().Format(time.RFC3339) + ": not converged: route 10.100.0.0/16 via tun0 overlaps\n"
	if !strings.HasSuffix(b.String(), want) || strings.Contains(b.String(), "node 1 ") {
		t.Fatalf("WriteNodes:\n%s\nwant it to end with %q and name no problem of node 1", b.String(), want)
	}
}
