package node

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nixcache"
	"github.com/blixard/blixard/replicated"
)

func TestCacheConfigCheck(t *testing.T) {
	base := func() Config {
		return Config{NodeID: 1, DataDir: "/d", RaftAddr: "127.0.0.1:7001", APIAddr: "127.0.0.1:7070", Insecure: true}
	}
	for _, tt := range []struct {
		name   string
		change func(c *CacheConfig)
		want   string // "" valid
	}{
		{"no cache is valid", func(*CacheConfig) {}, ""},
		{"a cache address is valid", func(c *CacheConfig) { c.Addr = ":7080" }, ""},
		{"a builder with a cache is valid", func(c *CacheConfig) { c.Addr, c.Builder = ":7080", true }, ""},
		{"substituters without a cache are valid", func(c *CacheConfig) {
			c.Substituters, c.TrustedKeys, c.PushTo = []string{"https://cache.example.org"}, []string{"cache.example.org-1:oipzTK458pC9u1jfHW+3nRa2lsktOiVA8CnxV7I4Bck="}, "s3://bucket"
		}, ""},
		{"a builder without a cache is refused", func(c *CacheConfig) { c.Builder = true }, "--builder needs --cache-addr"},
		{"a URL without a cache is refused", func(c *CacheConfig) { c.URL = "http://h:1" }, "--cache-url needs --cache-addr"},
		{"an address without a port is refused", func(c *CacheConfig) { c.Addr = "h" }, "--cache-addr"},
		{"a URL that is no http URL is refused", func(c *CacheConfig) { c.Addr, c.URL = ":1", "h:1" }, "--cache-url"},
		{"a substituter that is no URL is refused", func(c *CacheConfig) { c.Substituters = []string{"cache"} }, "--substituter"},
		{"a malformed key is refused", func(c *CacheConfig) { c.TrustedKeys = []string{"cache-1"} }, "--trusted-key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.change(&c.Cache)
			err := c.Check()
			if tt.want == "" && err != nil {
				t.Fatalf("Check: %v", err)
			}
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Check: %v, want an error with %q", err, tt.want)
			}
		})
	}
	c, err := base().withDefaults()
	if err != nil || c.Cache.KeyFile != "/d/nix-cache/secret-key" {
		t.Errorf("default key file %q (%v)", c.Cache.KeyFile, err)
	}
}

func TestAdvertisedCacheURL(t *testing.T) {
	for _, tt := range []struct{ explicit, listen, bound, raft, want string }{
		{"", "10.0.0.1:7080", "10.0.0.1:7080", "10.0.0.1:7001", "http://10.0.0.1:7080"},
		{"", ":7080", "[::]:7080", "10.0.0.1:7001", "http://10.0.0.1:7080"},
		{"", "0.0.0.0:0", "0.0.0.0:41234", "node1.example.org:7001", "http://node1.example.org:41234"},
		{"", "[::]:7080", "[::]:7080", "[fd00::1]:7001", "http://[fd00::1]:7080"},
		{"", "node1.example.org:7080", "10.0.0.1:7080", "", "http://node1.example.org:7080"},
		{"https://cache.node1.example.org", ":7080", "[::]:7080", "", "https://cache.node1.example.org"},
		{"", ":7080", "[::]:7080", "", "error"},
	} {
		got, err := advertisedCacheURL(tt.explicit, tt.listen, tt.bound, tt.raft)
		if err != nil {
			got = "error"
		}
		if got != tt.want {
			t.Errorf("advertisedCacheURL(%q, %q, %q, %q) = %q (%v), want %q", tt.explicit, tt.listen, tt.bound, tt.raft, got, err, tt.want)
		}
	}
}

func TestCacheRoots(t *testing.T) {
	st := replicated.NewState()
	st.Assignments = map[string]replicated.Assignment{
		"web-0": {VM: "web-0", Node: 1, OutPath: "/nix/store/b-web"},
		"web-1": {VM: "web-1", Node: 2, OutPath: "/nix/store/b-web"},
		"db":    {VM: "db", Node: 3, OutPath: "/nix/store/a-db"},
		"none":  {VM: "none", Node: 3},
	}
	if got, want := cacheRoots(st), []string{"/nix/store/a-db", "/nix/store/b-web"}; !reflect.DeepEqual(got, want) {
		t.Errorf("cacheRoots = %v, want %v", got, want)
	}
}

// TestRaftNodeServesItsCache runs a real one-voter node with --cache-addr:
// it registers its cache's URL and the public key of the key it generated
// (the same key after a restart), and serves nix-cache-info there.
func TestRaftNodeServesItsCache(t *testing.T) {
	dataDir := t.TempDir()
	var keys []string
	for run := 0; run < 2; run++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		states := make(chan *replicated.State, 1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Config{NodeID: 1, DataDir: dataDir, APIListener: ln, Heartbeat: 50 * time.Millisecond, Insecure: true,
				QuietRaftLog: true, Cache: CacheConfig{Addr: "127.0.0.1:0"},
				OnState: func(s *replicated.State) {
					select {
					case <-states:
					default:
					}
					states <- s
				}})
		}()
		var node *replicated.Node
		testkit.WaitFor(t, 60*time.Second, "node 1 registered with its cache", func() error {
			select {
			case err := <-done:
				t.Fatalf("Run returned: %v", err)
			case s := <-states:
				if n := s.Nodes[1]; n != nil && n.CacheURL != "" {
					node = n
					return nil
				}
			default:
			}
			return errors.New("not yet")
		})
		if !strings.HasPrefix(node.CacheURL, "http://127.0.0.1:") || nixcache.ValidPublicKey(node.CacheKey) != nil ||
			!strings.HasPrefix(node.CacheKey, "blixard-node-1:") {
			t.Errorf("registered cache %q key %q", node.CacheURL, node.CacheKey)
		}
		keys = append(keys, node.CacheKey)
		resp, err := http.Get(node.CacheURL + "/nix-cache-info")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "StoreDir: /nix/store\n") {
			t.Errorf("nix-cache-info: %d %q", resp.StatusCode, body)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if _, err := http.Get(node.CacheURL + "/nix-cache-info"); err == nil {
			t.Errorf("the cache still answers after Run returned")
		}
	}
	if keys[0] != keys[1] {
		t.Errorf("the node's key changed across a restart: %s, then %s", keys[0], keys[1])
	}
	if fi, err := os.Stat(filepath.Join(dataDir, "nix-cache", "secret-key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", fi, err)
	}
}
