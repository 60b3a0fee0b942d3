package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// emptyFlake is a cluster flake without VMs (nothing to build or run);
// note makes each push a different commit.
func emptyFlake(note string) string {
	return `{
  # ` + note + `
  outputs = { self }: {
    blixard = { cluster = "e2e"; vms = { }; };
  };
}
`
}

// TestNixGitRaftWebhookOnFollowerMakesLeaderFetch: a signed GitHub push
// webhook delivered to a node that does not lead makes the leader fetch at
// once (through a replicated RequestSync), long before its 60 s poll; so
// does `POST /v1/sync`.
func TestNixGitRaftWebhookOnFollowerMakesLeaderFetch(t *testing.T) {
	requireTools(t, "nix", "git")
	const secret = "e2e-webhook-secret"
	r := newRepo(t)
	first := r.push(emptyFlake("first"), "first")
	c := startCluster(t, r.url(), []nodeSpec{{2, 1024, ""}, {2, 1024, ""}, {2, 1024, ""}},
		"--poll", "60s", "--webhook-secret", secret)
	// A new leader fetches at once: the first revision needs no poll.
	s := waitRevision(t, c, first)
	var follower *node
	for _, n := range c.nodes {
		if n.id != s.Leader {
			follower = n
			break
		}
	}
	if s.Leader == 0 || follower == nil {
		t.Fatalf("no leader known (%d)", s.Leader)
	}

	second := r.push(emptyFlake("second"), "second")
	payload, err := json.Marshal(map[string]any{"ref": "refs/heads/" + r.branch, "before": first, "after": second})
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(payload)
	req, err := http.NewRequest(http.MethodPost, "http://"+follower.api+"/v1/webhook", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("webhook on follower %d: %s: %s", follower.id, resp.Status, body)
	}

	waitRevisionSoon(t, follower, second, "its webhook", start, s.Leader)

	// POST /v1/sync on the follower goes the same way.
	third := r.push(emptyFlake("third"), "third")
	start = time.Now()
	resp, err = http.Post("http://"+follower.api+"/v1/sync", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/sync on follower %d: %s: %s", follower.id, resp.Status, body)
	}
	waitRevisionSoon(t, follower, third, "POST /v1/sync", start, s.Leader)

	// It went through the replicated request, not the leader's own trigger.
	var st struct {
		Reconciler *struct {
			Leader           bool      `json:"leader"`
			SyncRequested    time.Time `json:"syncRequested"`
			SyncRequestError string    `json:"syncRequestError"`
		} `json:"reconciler"`
	}
	if err := cliJSON(t, &st, "status", "--server", follower.api); err != nil {
		t.Fatal(err)
	}
	if rs := st.Reconciler; rs == nil || rs.Leader || rs.SyncRequested.IsZero() || rs.SyncRequestError != "" {
		t.Errorf("follower %d's reconciler status %+v; want a sync request without error, made as a follower", follower.id, rs)
	}
}

// waitRevisionSoon waits until n shows commit as its revision, within a
// bound far below the 60 s poll (a bound, not a measurement), and logs how
// long it took since start.
func waitRevisionSoon(t *testing.T, n *node, commit, after string, start time.Time, leader uint64) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("revision %s on follower %d after %s", commit[:12], n.id, after), func() error {
		s, err := status(t, n.api)
		if err != nil {
			return err
		}
		if s.Revision == nil || s.Revision.Commit != commit {
			return fmt.Errorf("revision %+v", s.Revision)
		}
		return nil
	})
	t.Logf("%s on follower %d (leader %d) to the new revision on it: %s (poll 60s)", after, n.id, leader, time.Since(start).Round(time.Millisecond))
}
