package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
)

// TestReadsWithoutALeaderPrintAStaleWarning runs the read commands against
// a node that knows no leader: each answers, with the warning first in
// text and on stderr with --json.
func TestReadsWithoutALeaderPrintAStaleWarning(t *testing.T) {
	st := testkit.NewStore(nil)
	st.Propose(context.Background(), testkit.Register(1))
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 0), Insecure: true}).Handler())
	defer srv.Close()
	const warning = "WARNING: stale answer, from the node's own replica at Raft index 1 (later changes may be missing): no leader: election in progress"
	for _, cmd := range []string{"status", "nodes", "history", "diff", "events"} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), []string{cmd, "--server", srv.URL}, &out, &errb); code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", cmd, code, out.String(), errb.String())
		}
		if first, _, _ := strings.Cut(out.String(), "\n"); first != warning {
			t.Errorf("%s prints first %q, want the stale warning", cmd, first)
		}
		out.Reset()
		errb.Reset()
		if code := run(context.Background(), []string{cmd, "--json", "--server", srv.URL}, &out, &errb); code != 0 {
			t.Fatalf("%s --json: exit %d\n%s%s", cmd, code, out.String(), errb.String())
		}
		if !json.Valid(out.Bytes()) || strings.TrimSpace(errb.String()) != warning {
			t.Errorf("%s --json: stdout %q, stderr %q; want JSON and the warning on stderr", cmd, out.String(), errb.String())
		}
	}
	var out, errb bytes.Buffer
	run(context.Background(), []string{"status", "--json", "--server", srv.URL}, &out, &errb)
	var v api.StatusView
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || !v.Stale || v.AppliedIndex != 1 || v.StaleReason == "" {
		t.Fatalf("status --json: %+v %v\n%s", v.Freshness, err, out.String())
	}
}

func TestTimeoutEndsACallTheNodeDoesNotAnswer(t *testing.T) {
	// The handler waits until the client hangs up (the server notices once
	// it read the body) or the test ends.
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	defer srv.Close()
	defer close(done)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--timeout", "50ms"}, "no answer from " + srv.URL + " to GET /v1/status in time (timeout 50ms: raise --timeout"},
		{[]string{"node", "drain", "2", "--timeout", "50ms"}, "the change may still be committed: check with `blixard events`"},
		{[]string{"status", "--timeout", "0s"}, "--timeout 0s: want a positive duration"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), append(tt.args, "--server", srv.URL), &out, &errb); code != 1 || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 1 and %q", tt.args, code, errb.String(), tt.want)
		}
	}
}
