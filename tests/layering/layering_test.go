package layering

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/blixard/blixard/"

// mustNot lists, per package, import paths (prefixes) it must not use:
// each package owns one job and reaches the others only where the design
// says so.
var mustNot = map[string][]string{
	// Plain data and pure helpers: no programs, no git, no Raft.
	"spec": {"os/exec", "github.com/go-git/", "github.com/lni/", module},
	// Runs nix programs for nixeval and nodeagent: nothing of this module.
	"nixrun": {module, "github.com/lni/", "github.com/go-git/"},
	// Runs nix; must not know about Raft, plans, git or hosts.
	"nixeval": {"os/exec", "github.com/lni/", "github.com/go-git/", module + "replicated", module + "reconciler",
		module + "gitsync", module + "nodeagent", module + "volumes", module + "cmd"},
	// The git mirror: must not evaluate Nix or know the cluster.
	"gitsync": {"os/exec", module},
	// The pure replicated state: no Raft library, no programs, no git, no
	// evaluation, no hosts.
	"replicated": {"os/exec", "github.com/lni/", "github.com/go-git/", module + "nixeval", module + "gitsync",
		module + "reconciler", module + "nodeagent", module + "volumes", module + "raftstore"},
	// The Raft shell around the state: no programs, no git, no evaluation,
	// no planning, no hosts.
	"raftstore": {"os/exec", "github.com/go-git/", module + "nixeval", module + "gitsync", module + "reconciler",
		module + "nodeagent", module + "volumes"},
	// Planning: must not touch hosts or run programs; it sees git and nix
	// only through the interfaces it declares.
	"reconciler": {"os/exec", "github.com/lni/", "github.com/go-git/", module + "nixeval", module + "gitsync",
		module + "nodeagent", module + "volumes", module + "raftstore"},
	// The agent: must not decide placement; Ceph reaches it through its own
	// Volumes interface.
	"nodeagent": {module + "reconciler", module + "gitsync", module + "nixeval", module + "volumes", module + "raftstore",
		"github.com/lni/", "github.com/ceph/"},
	// The Ceph edge: no knowledge of the cluster's state or placement.
	"volumes": {module + "replicated", module + "reconciler", module + "gitsync", module + "nixeval", module + "nodeagent"},
	// The HTTP API: translates HTTP to the interfaces it declares; no
	// programs, no Raft library, no git, no hosts; it plans only through
	// reconciler.PlanCommit and never assembles a node.
	"api": {"os/exec", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", module + "raftstore",
		module + "nixeval", module + "nixrun", module + "nodeagent", module + "volumes", module + "node", module + "cmd"},
	// The cluster PKI: creates and loads certificates; knows no Raft, HTTP
	// routing, git or nix, and imports nothing of this module.
	"pki": {module, "os/exec", "github.com/lni/", "github.com/go-git/"},
	// Host networking over netlink: never runs ip(8) or any program, and
	// takes its own input types instead of knowing the replicated state.
	"hostnet": {"os/exec", module, "github.com/lni/", "github.com/go-git/", "github.com/ceph/"},
	// DHCP and DNS through dnsmasq: runs that one program, but takes its
	// own input types instead of knowing the replicated state, and never
	// programs links (hostnet does).
	"netdns": {module, "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/"},
	// The ingress proxy: routes outside traffic by the table it is given;
	// runs no programs, reaches no Raft, git or Ceph, plans nothing and
	// leaves host networking to hostnet.
	"ingress": {"os/exec", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/",
		module + "raftstore", module + "reconciler", module + "nodeagent", module + "gitsync", module + "nixeval",
		module + "nixrun", module + "volumes", module + "api", module + "node", module + "hostnet", module + "cmd"},
	// Notifications: POSTs the leader's events to webhook receivers; reads
	// the replicated state through its own Replica interface, runs no
	// programs, proposes nothing, plans nothing, reaches no Raft library,
	// git, nix or Ceph, and serves no API.
	"notify": {"os/exec", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/",
		module + "raftstore", module + "reconciler", module + "nodeagent", module + "gitsync", module + "nixeval",
		module + "nixrun", module + "volumes", module + "api", module + "node", module + "hostnet", module + "netdns",
		module + "ingress", module + "cmd"},
	// The function gateway: routes and proxies requests to the function
	// instances it is given (reusing ingress's routing rule), asks for
	// capacity through its own Scaler interface; runs no programs, reaches
	// no Raft, git, nix, Ceph or netlink, and serves no API.
	"fngateway": {"os/exec", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/",
		module + "raftstore", module + "reconciler", module + "nodeagent", module + "gitsync", module + "nixeval",
		module + "nixrun", module + "volumes", module + "api", module + "node", module + "hostnet", module + "netdns",
		module + "notify", module + "cmd"},
	// The node assembly: wires every package, but runs no programs, serves
	// no HTTP itself and reaches Raft, git and Ceph only through raftstore,
	// gitsync and volumes.
	"node": {"os/exec", "net/http", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", module + "cmd"},
	// qemu snapshots: talks QMP to a qemu it is handed and keeps snapshot
	// files; decides nothing about when to use them, runs no programs, and
	// knows no Raft, replicated state, agent, git, nix or Ceph.
	"vmsnap": {module, "os/exec", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/"},
	// The guest's side of the identity channel (cmd/blixard-guest, inside
	// a VM): speaks vmsnap's protocol and changes the guest's own system;
	// knows nothing of the host's agent, Raft, the state, HTTP routing,
	// git, nix or Ceph, and stays small (it runs in every snapshot guest).
	"guestagent": {"net/http", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/",
		"github.com/prometheus/", module + "nodeagent", module + "node", module + "replicated", module + "raftstore",
		module + "reconciler", module + "spec", module + "api", module + "hostnet", module + "netdns", module + "cmd"},
	// The node's Prometheus registry: turns what the parts measure and the
	// local replica's state into series; serves no HTTP (the API does),
	// proposes nothing, runs no programs, reaches no Raft library, git,
	// nix or Ceph, and knows the parts only through their own interfaces.
	"metrics": {"os/exec", "net/http", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/",
		"github.com/prometheus/client_golang/prometheus/promhttp", module + "raftstore", module + "reconciler",
		module + "nodeagent", module + "gitsync", module + "nixeval", module + "nixrun", module + "volumes", module + "api",
		module + "node", module + "hostnet", module + "netdns", module + "ingress", module + "notify", module + "cmd"},
	// Progress reports (nix's latest line) handed through a context from
	// the work to whoever shows it: imports nothing of this module.
	"progress": {module, "os/exec", "github.com/lni/", "github.com/go-git/"},
	// The binary cache between nodes: serves and probes closures of the
	// store paths it is given, runs nix only through nixrun, and knows no
	// Raft, replicated state, placement, agent, git or Ceph.
	"nixcache": {"os/exec", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/",
		module + "replicated", module + "raftstore", module + "reconciler", module + "nodeagent", module + "gitsync",
		module + "nixeval", module + "volumes", module + "api", module + "node", module + "hostnet", module + "netdns",
		module + "ingress", module + "notify", module + "cmd"},
	// An agent-only node's link to the servers: carries views and commands
	// over their API; holds no replica, reaches no Raft library, plans
	// nothing, runs no programs and touches no host.
	"agentlink": {"os/exec", "github.com/lni/", "github.com/go-git/", "github.com/ceph/", "github.com/vishvananda/",
		module + "raftstore", module + "reconciler", module + "nodeagent", module + "gitsync", module + "nixeval",
		module + "nixrun", module + "volumes", module + "node", module + "hostnet", module + "netdns", module + "ingress",
		module + "notify", module + "nixcache", module + "metrics", module + "cmd"},
}

func TestPackagesKeepToTheirJob(t *testing.T) {
	for pkg, forbidden := range mustNot {
		t.Run(pkg, func(t *testing.T) {
			files, err := filepath.Glob(filepath.Join("..", "..", pkg, "*.go"))
			if err != nil || len(files) == 0 {
				t.Fatalf("no Go files in %s (%v)", pkg, err)
			}
			docs := 0
			for _, name := range files {
				if strings.HasSuffix(name, "_test.go") {
					continue
				}
				f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly|parser.ParseComments)
				if err != nil {
					t.Fatal(err)
				}
				if f.Doc != nil {
					docs++
				}
				for _, imp := range f.Imports {
					path, _ := strconv.Unquote(imp.Path.Value)
					for _, bad := range forbidden {
						if strings.HasPrefix(path, bad) && !(bad == module && path == module+"spec" && pkg != "spec") {
							t.Errorf("%s imports %s; package %s must not (see its doc.go and DESIGN.md §2)", filepath.Base(name), path, pkg)
						}
					}
				}
			}
			if docs != 1 {
				t.Errorf("package %s has %d package doc comments, want exactly 1", pkg, docs)
			}
		})
	}
}

// TestEveryPackageIsListed keeps mustNot complete: a new top-level package
// must state its boundaries here too.
func TestEveryPackageIsListed(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		gofiles, _ := filepath.Glob(filepath.Join("..", "..", e.Name(), "*.go"))
		if len(gofiles) == 0 {
			continue // cmd, tests, examples, nix…: no library package at the top
		}
		if _, ok := mustNot[e.Name()]; !ok {
			t.Errorf("top-level package %s has no entry in mustNot", e.Name())
		}
	}
}
