package replicated_test

import (
	"encoding/json"
	"testing"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// TestRegisterNodeCarriesItsCache: a registration sets the node's binary
// cache and key and its gateway's address, a later one without them
// clears them (the node no longer serves one), and they survive a
// snapshot's JSON.
func TestRegisterNodeCarriesItsCache(t *testing.T) {
	st := replicated.NewState()
	reg := testkit.Register(2)
	reg.RegisterNode.CacheURL, reg.RegisterNode.CacheKey = "http://10.0.0.2:7080", "blixard-node-2:oipzTK458pC9u1jfHW+3nRa2lsktOiVA8CnxV7I4Bck="
	reg.RegisterNode.GatewayAddr = "10.0.0.2:8080"
	if res := st.Apply(1, reg); !res.OK() {
		t.Fatal(res.Message)
	}
	if n := st.Nodes[2]; n.CacheURL != reg.RegisterNode.CacheURL || n.CacheKey != reg.RegisterNode.CacheKey || n.GatewayAddr != "10.0.0.2:8080" {
		t.Fatalf("node 2 registered with cache %q key %q", n.CacheURL, n.CacheKey)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back replicated.State
	if err := json.Unmarshal(b, &back); err != nil || back.Nodes[2].CacheURL != reg.RegisterNode.CacheURL || back.Nodes[2].CacheKey != reg.RegisterNode.CacheKey ||
		back.Nodes[2].GatewayAddr != "10.0.0.2:8080" {
		t.Fatalf("after JSON: %+v %v", back.Nodes[2], err)
	}
	if c := st.Clone(); c.Nodes[2].CacheKey != reg.RegisterNode.CacheKey {
		t.Fatalf("Clone lost the cache key")
	}
	if res := st.Apply(2, testkit.Register(2)); !res.OK() {
		t.Fatal(res.Message)
	}
	if n := st.Nodes[2]; n.CacheURL != "" || n.CacheKey != "" || n.GatewayAddr != "" {
		t.Fatalf("re-registered without a cache, node 2 keeps cache %q key %q", n.CacheURL, n.CacheKey)
	}
}
