package node

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

// tlsFiles are names only: Check reads no file.
var tlsFiles = raftstore.TLSFiles{CAFile: "ca.crt", CertFile: "node-1.crt", KeyFile: "node-1.key"}

func TestConfigCheck(t *testing.T) {
	flakeDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(flakeDir, "flake.nix"), []byte("{ }"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := func() Config {
		return Config{NodeID: 1, DataDir: "/d", RaftAddr: "127.0.0.1:7001", APIAddr: "127.0.0.1:7070", StateDir: "/s", Backend: BackendProcess,
			Insecure: true}
	}
	tests := []struct {
		name   string
		change func(c *Config)
		want   string // "" valid
	}{
		{"a single voter with its Raft address is valid", func(*Config) {}, ""},
		{"the Raft address comes from the members", func(c *Config) {
			c.RaftAddr, c.Members = "", map[uint64]string{1: "h:1", 2: "h:2"}
		}, ""},
		{"a single voter without a Raft address gets one later", func(c *Config) { c.RaftAddr = "" }, ""},
		{"a control-plane-only node needs no state directory", func(c *Config) { c.Backend, c.StateDir = BackendNone, "" }, ""},
		{"a working tree with a flake is valid", func(c *Config) { c.Source.Worktree = flakeDir }, ""},
		{"node id 0 names --node-id", func(c *Config) { c.NodeID = 0 }, "--node-id"},
		{"a node missing from its members names --raft-addr", func(c *Config) {
			c.RaftAddr, c.Members = "", map[uint64]string{2: "h:2"}
		}, "--raft-addr"},
		{"members that list this node elsewhere are refused", func(c *Config) { c.Members = map[uint64]string{1: "h:9"} }, "--members must list this node as 1=127.0.0.1:7001"},
		{"non-voting without join is refused", func(c *Config) { c.NonVoting = true }, "--non-voting needs --join"},
		{"an unknown backend is refused", func(c *Config) { c.Backend = "docker" }, "want process or systemd"},
		{"running VMs needs a state directory", func(c *Config) { c.StateDir = "" }, "--state-dir"},
		{"a repository and a working tree exclude each other", func(c *Config) { c.Source = Source{Repo: "file:///r", Worktree: flakeDir} }, "not both"},
		{"a working tree without flake.nix is refused", func(c *Config) { c.Source.Worktree = t.TempDir() }, "has no flake.nix"},
		{"negative capacity is refused", func(c *Config) { c.Capacity = replicated.Resources{VCPU: -1} }, "must not be negative"},
		{"a negative poll is refused", func(c *Config) { c.Poll = -time.Second }, "--poll"},
		{"TLS with all three files is valid", func(c *Config) { c.Insecure, c.TLS = false, tlsFiles }, ""},
		{"neither TLS nor --insecure is refused", func(c *Config) { c.Insecure = false }, "the API needs TLS"},
		{"TLS without a key is refused", func(c *Config) {
			c.Insecure, c.TLS = false, raftstore.TLSFiles{CAFile: "ca.crt", CertFile: "node-1.crt"}
		}, "go together"},
		{"TLS and --insecure exclude each other", func(c *Config) { c.TLS = tlsFiles }, "exclude each other"},
		{"--insecure on a wildcard address is refused", func(c *Config) { c.APIAddr = "0.0.0.0:7070" }, "--insecure-i-know"},
		{"--insecure on a LAN address is refused", func(c *Config) { c.APIAddr = "10.0.0.1:7070" }, "not a loopback address"},
		{"--insecure on a LAN address with --insecure-i-know is valid", func(c *Config) {
			c.APIAddr, c.InsecureIKnow = "10.0.0.1:7070", true
		}, ""},
		{"--insecure on localhost and ::1 is valid", func(c *Config) { c.APIAddr = "localhost:7070" }, ""},
		{"--insecure-i-know alone is refused", func(c *Config) { c.Insecure, c.InsecureIKnow, c.TLS = false, true, tlsFiles }, "goes with --insecure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.change(&c)
			err := c.Check()
			if tt.want == "" && err != nil {
				t.Fatalf("Check: %v", err)
			}
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Check: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestCephSettingsNeedCephSupport(t *testing.T) {
	c := Config{NodeID: 1, DataDir: "/d", RaftAddr: "h:1", APIAddr: "127.0.0.1:2", Ceph: &volumes.Config{User: "admin"}, Insecure: true}
	err := c.Check()
	if volumes.Built != (err == nil) {
		t.Fatalf("Check with Ceph settings (Ceph built: %v): %v", volumes.Built, err)
	}
	if !volumes.Built && !errors.Is(err, volumes.ErrNotBuilt) {
		t.Fatalf("Check: %v, want ErrNotBuilt", err)
	}
}

func TestParseMembersAndLabels(t *testing.T) {
	m, err := ParseMembers(" 1=10.0.0.1:7001, 2=10.0.0.2:7001")
	if err != nil || len(m) != 2 || m[2] != "10.0.0.2:7001" {
		t.Fatalf("ParseMembers: %v, %v", m, err)
	}
	for in, want := range map[string]string{"x": "ID=HOST:PORT", "0=h:1": "ID > 0", "1=h": "1=h", "1=h:1,1=h:2": "twice"} {
		if _, err := ParseMembers(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMembers(%q): %v, want %q", in, err, want)
		}
	}
	l, err := ParseLabels("zone=a, disk=")
	if err != nil || l["zone"] != "a" || l["disk"] != "" {
		t.Fatalf("ParseLabels: %v, %v", l, err)
	}
	if _, err := ParseLabels("nolabel"); err == nil || !strings.Contains(err.Error(), "KEY=VALUE") {
		t.Errorf("ParseLabels(nolabel): %v", err)
	}
}

func TestFencerFencesTheRegisteredAddresses(t *testing.T) {
	f := fencer{volumes.NewFencer(volumes.NewManager(volumes.Config{ConfigFile: "/nonexistent/ceph.conf"}, nil, nil), 0)}
	got, err := f.Fence(context.Background(), &replicated.Node{ID: 3})
	if err != nil || got != nil {
		t.Fatalf("fencing a node without Ceph addresses: %v, %v; want nothing to do", got, err)
	}
	if _, err := f.Fence(context.Background(), &replicated.Node{ID: 3, CephAddrs: []string{"10.0.0.3:0/1"}}); err == nil ||
		!strings.Contains(err.Error(), "node 3") {
		t.Fatalf("fencing without a reachable Ceph: %v, want an error naming node 3", err)
	}
}

func TestAdvertisedAPI(t *testing.T) {
	for _, tt := range []struct{ bound, configured, want string }{
		{"10.0.0.1:7070", "10.0.0.1:7070", "10.0.0.1:7070"},
		{"[::]:7070", "node1.example.org:7070", "node1.example.org:7070"},
		{"0.0.0.0:41234", "0.0.0.0:0", "0.0.0.0:41234"},
		{"127.0.0.1:41234", "", "127.0.0.1:41234"},
	} {
		if got := advertisedAPI(tt.bound, tt.configured); got != tt.want {
			t.Errorf("advertisedAPI(%q, %q) = %q, want %q", tt.bound, tt.configured, got, tt.want)
		}
	}
}

// TestRaftControlPlaneNodeRunsAndStops runs a real one-voter node (Dragonboat
// on loopback) without source or backend: it registers, heartbeats, serves
// its API, and Run returns nil once its context ends.
func TestRaftControlPlaneNodeRunsAndStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	ready := make(chan net.Addr, 1)
	states := make(chan *replicated.State, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{NodeID: 1, DataDir: dataDir, APIListener: ln, Heartbeat: 50 * time.Millisecond, Insecure: true,
			Capacity: replicated.Resources{VCPU: 2, MemMiB: 512}, QuietRaftLog: true,
			OnReady: func(a net.Addr) { ready <- a },
			OnState: func(s *replicated.State) {
				select {
				case states <- s:
				default:
				}
			}})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run returned before the node was ready: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the node did not get ready within 60s")
	}
	c, err := api.NewClient(ln.Addr().String(), api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "two heartbeats of node 1", func() error {
		ns, err := c.Nodes(context.Background())
		if err != nil {
			return err
		}
		if len(ns) != 1 || ns[0].Heartbeats < 2 || ns[0].Capacity.VCPU != 2 || !ns[0].Leader {
			return errors.New("not yet")
		}
		return nil
	})
	if len(states) == 0 {
		t.Error("OnState was never called")
	}
	if addr, err := os.ReadFile(filepath.Join(dataDir, "raft-addr")); err != nil || !strings.HasPrefix(string(addr), "127.0.0.1:") {
		t.Errorf("remembered Raft address %q, %v", addr, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of cancel")
	}
	if _, err := c.Status(context.Background()); err == nil {
		t.Error("the API still answers after Run returned")
	}
}

func TestATakenAPIPortFailsBeforeRaftStarts(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dataDir := t.TempDir()
	err = Run(context.Background(), Config{NodeID: 1, DataDir: dataDir, APIAddr: taken.Addr().String(), Insecure: true})
	if err == nil || !strings.Contains(err.Error(), "--api-addr") {
		t.Fatalf("Run on a taken port: %v, want an error naming --api-addr", err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "raft")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the Raft directory exists (%v): Raft started", err)
	}
}

func TestAPITLSNamesTheWrongFile(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := pki.InitCA(caDir); err != nil {
		t.Fatal(err)
	}
	node, err := pki.IssueNode(caDir, filepath.Join(dir, "n"), 1, []string{"127.0.0.1", "node1.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	user, err := pki.IssueUser(caDir, filepath.Join(dir, "u"), "alice", pki.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(caDir, pki.CACertFile)
	files := raftstore.TLSFiles{CAFile: ca, CertFile: node.Cert, KeyFile: node.Key}
	for _, tt := range []struct {
		name    string
		files   raftstore.TLSFiles
		id      uint64
		apiAddr string
		want    string // "" loads
	}{
		{"the node's certificate for its API host loads", files, 1, "127.0.0.1:7070", ""},
		{"a host name it names loads", files, 1, "node1.example.org:7070", ""},
		{"a wildcard address is not checked", files, 1, "0.0.0.0:7070", ""},
		{"another node's id is refused", files, 2, "127.0.0.1:7070", "not of node 2"},
		{"a host it does not name is refused", files, 1, "10.0.0.9:7070", "--host 10.0.0.9"},
		{"a user certificate is refused", raftstore.TLSFiles{CAFile: ca, CertFile: user.Cert, KeyFile: user.Key}, 1, "127.0.0.1:7070", "alice.crt"},
		{"a missing file is named", raftstore.TLSFiles{CAFile: ca, CertFile: node.Cert, KeyFile: node.Key + ".gone"}, 1, "127.0.0.1:7070", ".gone"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := loadAPITLS(tt.files, tt.id, tt.apiAddr)
			if tt.want == "" {
				if err != nil || got.server == nil || got.peer == nil {
					t.Fatalf("loadAPITLS: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("loadAPITLS: %v, want an error with %q", err, tt.want)
			}
		})
	}
}
