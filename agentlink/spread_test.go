package agentlink_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/agentlink"
)

// TestLinksStartAtDifferentServers: nodes given the same --servers list
// start at different servers, by node ID (node 1 at the first), so the
// agents of a large cluster spread over the servers by themselves.
func TestLinksStartAtDifferentServers(t *testing.T) {
	var mu sync.Mutex
	first := map[string]int{} // a proposing node's ?node= → the server it reached first
	release := make(chan struct{})
	var servers []string
	for i := range 3 {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			if _, ok := first[r.URL.Query().Get("node")]; !ok {
				first[r.URL.Query().Get("node")] = i
			}
			mu.Unlock()
			select { // hold the request: no failover to the next server
			case <-release:
			case <-r.Context().Done():
			}
			http.Error(w, "test server", http.StatusServiceUnavailable)
		}))
		t.Cleanup(srv.Close)
		servers = append(servers, srv.URL)
	}
	t.Cleanup(func() { close(release) })
	for id := uint64(1); id <= 7; id++ {
		l, err := agentlink.New(agentlink.Options{Servers: servers, NodeID: id})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, _ = l.Propose(ctx, register(id))
		cancel()
	}
	mu.Lock()
	defer mu.Unlock()
	for id := 1; id <= 7; id++ {
		got, ok := first[strconv.Itoa(id)]
		if want := (id - 1) % 3; !ok || got != want {
			t.Errorf("node %d reached server %d first (reached any: %v), want server %d (of 3, by node ID)", id, got+1, ok, want+1)
		}
	}
}
