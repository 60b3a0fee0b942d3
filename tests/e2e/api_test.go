package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// TestServeAPIRejectsGarbage sends malformed requests to a real node: each
// gets a 4xx with a JSON error that says what is wrong, and the node keeps
// serving.
func TestServeAPIRejectsGarbage(t *testing.T) {
	n := &node{id: 1, api: freeAddr(t), raft: freeAddr(t), dataDir: t.TempDir()}
	n.logPath = filepath.Join(n.dataDir, "serve.log")
	c := &cluster{t: t, nodes: []*node{n}}
	c.start(n, []string{"serve", "--node-id", "1", "--data-dir", n.dataDir, "--raft-addr", n.raft,
		"--api-addr", n.api, "--state-dir", n.stateDir(), "--agent=false"})
	t.Cleanup(c.stopAll)
	// Registered, not only serving: /healthz answers before the node's own
	// RegisterNode is applied, and /metrics below counts the nodes.
	testkit.WaitFor(t, 60*time.Second, "the node to serve and be registered", func() error {
		resp, err := http.Get("http://" + n.api + "/v1/nodes")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"id": 1`) {
			return fmt.Errorf("GET /v1/nodes: %d %s", resp.StatusCode, b)
		}
		return nil
	})

	tests := []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"plan body not JSON", "POST", "/v1/plan", "{commit", 400, "request body"},
		{"plan with unknown field", "POST", "/v1/plan", `{"commit":"abc","x":1}`, 400, "unknown field"},
		{"plan with a short commit", "POST", "/v1/plan", `{"commit":"abc"}`, 400, "40-digit"},
		{"plan on a node without a repository", "POST", "/v1/plan", `{"commit":"` + strings.Repeat("a", 40) + `"}`, 409, "--repo"},
		{"sync on a node without a repository", "POST", "/v1/sync", "", 409, "--repo"},
		{"unknown endpoint", "GET", "/v1/nope", "", 404, "no such endpoint"},
		{"wrong method", "DELETE", "/v1/status", "", 405, ""},
		{"logs of an invalid VM name", "GET", "/v1/vms/Bad_Name/logs", "", 400, "VM name"},
		{"logs of an unknown VM", "GET", "/v1/vms/ghost/logs", "", 404, "neither assigned nor observed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, "http://"+n.api+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.code {
				t.Fatalf("HTTP %d, want %d: %s", resp.StatusCode, tt.code, body)
			}
			if tt.want == "" {
				return
			}
			var e struct{ Error string }
			if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, tt.want) {
				t.Fatalf("error %q (decode: %v) should mention %q", body, err, tt.want)
			}
		})
	}
	resp, err := http.Get("http://" + n.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"blixard_node_is_leader{node=\"1\"} 1", "blixard_revision 0", `blixard_node_heartbeats{node="1",state="ready"}`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
	if _, stderr, code := cli(t, "", "status", "--server", n.api); code != 0 {
		t.Fatalf("node stopped answering after garbage: exit %d: %s", code, stderr)
	}
}
