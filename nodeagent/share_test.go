package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nixcache"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

const (
	keyA = "blixard-node-1:oipzTK458pC9u1jfHW+3nRa2lsktOiVA8CnxV7I4Bck="
	keyB = "blixard-node-2:oipzTK458pC9u1jfHW+3nRa2lsktOiVA8CnxV7I4Bck="
)

func TestCachePeers(t *testing.T) {
	st := replicated.NewState()
	st.Nodes = map[uint64]*replicated.Node{
		1: {ID: 1, State: replicated.NodeReady, CacheURL: "http://10.0.0.1:7001", CacheKey: keyA},
		2: {ID: 2, State: replicated.NodeCordoned, CacheURL: "http://10.0.0.2:7001", CacheKey: keyB},
		3: {ID: 3, State: replicated.NodeDown, CacheURL: "http://10.0.0.3:7001", CacheKey: keyA},
		4: {ID: 4, State: replicated.NodeReady},
		5: {ID: 5, State: replicated.NodeReady, CacheURL: "http://10.0.0.5:7001", CacheKey: "not a key"},
		6: {ID: 6, State: replicated.NodeReady, CacheURL: "http://10.0.0.6:7001", CacheKey: keyA},
	}
	want := []cachePeer{{1, "http://10.0.0.1:7001", keyA}, {2, "http://10.0.0.2:7001", keyB}}
	if got := cachePeers(st, 6); !reflect.DeepEqual(got, want) {
		t.Errorf("cachePeers(self 6) = %v, want %v", got, want)
	}
	if got := cachePeers(nil, 1); got != nil {
		t.Errorf("cachePeers(nil) = %v", got)
	}
}

func TestSubstituterConfig(t *testing.T) {
	peers := []cachePeer{{1, "http://a:1", keyA}, {2, "http://b:1", keyB}}
	for name, c := range map[string]struct {
		peers      []cachePeer
		subs, keys []string
		want       string
	}{
		"nothing": {want: ""},
		"peers": {peers: peers, want: "extra-substituters = http://a:1 http://b:1\nextra-trusted-public-keys = " + keyA + " " + keyB +
			"\nnarinfo-cache-negative-ttl = 0\nconnect-timeout = 5"},
		"peers and a substituter": {peers: peers[:1], subs: []string{"https://cache.example.org"}, keys: []string{"cache.example.org-1:x"},
			want: "extra-substituters = http://a:1 https://cache.example.org\nextra-trusted-public-keys = " + keyA +
				" cache.example.org-1:x\nnarinfo-cache-negative-ttl = 0\nconnect-timeout = 5"},
		"a substituter without a key": {subs: []string{"https://cache.example.org"},
			want: "extra-substituters = https://cache.example.org\nnarinfo-cache-negative-ttl = 0\nconnect-timeout = 5"},
	} {
		if got := substituterConfig(c.peers, c.subs, c.keys); got != c.want {
			t.Errorf("%s:\n%s\nwant\n%s", name, got, c.want)
		}
	}
}

func TestPeerVerdict(t *testing.T) {
	const (
		m = nixcache.Missing
		h = nixcache.Has
		b = nixcache.Building
		q = nixcache.Queued
	)
	for _, c := range []struct {
		avail       []nixcache.Availability
		prebuilding bool
		has, wait   bool
	}{
		{nil, false, false, false},
		{[]nixcache.Availability{m, m}, false, false, false},
		{[]nixcache.Availability{m, h}, false, true, false},
		{[]nixcache.Availability{b, h}, false, true, false},
		{[]nixcache.Availability{m, b}, false, false, true},
		{[]nixcache.Availability{m, b}, true, false, true},
		{[]nixcache.Availability{q}, false, false, true},
		// Two builders never wait for each other's queue.
		{[]nixcache.Availability{q}, true, false, false},
		{[]nixcache.Availability{q, b}, true, false, true},
	} {
		if has, wait := peerVerdict(c.avail, c.prebuilding); has != c.has || wait != c.wait {
			t.Errorf("peerVerdict(%v, prebuilding %v) = has %v wait %v, want %v %v", c.avail, c.prebuilding, has, wait, c.has, c.wait)
		}
	}
}

func TestPrebuildItems(t *testing.T) {
	st := replicated.NewState()
	st.Revision = &replicated.Revision{ID: 9, Commit: "rev"}
	st.Assignments = map[string]replicated.Assignment{
		"web-0": {VM: "web-0", Declared: "web", Node: 1, OutPath: "/nix/store/b-web", Drv: "/nix/store/b-web.drv"},
		"web-1": {VM: "web-1", Declared: "web", Node: 2, OutPath: "/nix/store/b-web", Drv: "/nix/store/b-web.drv"},
		"db-0": {VM: "db-0", Declared: "db", Node: 3, OutPath: "/nix/store/a-db", Drv: "/nix/store/a-db.drv", Commit: "old",
			OwnRunner: true},
		"mine":    {VM: "mine", Node: 7, OutPath: "/nix/store/c-mine"},
		"no-out":  {VM: "no-out", Node: 1},
		"web2-0":  {VM: "web2-0", Declared: "web2", Node: 7, OutPath: "/nix/store/b-web"},
		"other-0": {VM: "other-0", Node: 2, OutPath: "/nix/store/d-other"},
		// A function's instance builds functions.NAME.runner.
		"fn-hello-0": {VM: "fn-hello-0", Declared: "hello", Function: "hello", Node: 2, OutPath: "/nix/store/e-hello"},
	}
	want := []prebuildItem{
		{out: "/nix/store/a-db", drv: "/nix/store/a-db.drv", commit: "old", owner: `vms.db.instances."db-0"`},
		{out: "/nix/store/b-web", drv: "/nix/store/b-web.drv", commit: "rev", owner: "vms.web"},
		{out: "/nix/store/d-other", commit: "rev", owner: "vms.other-0"},
		{out: "/nix/store/e-hello", commit: "rev", owner: "functions.hello"},
		// Unassigned functions' runners too (nodes prefetch them).
		{out: "/nix/store/f-idle", drv: "/nix/store/f-idle.drv", commit: "rev", owner: "functions.idle"},
	}
	st.Desired = &spec.Cluster{Functions: map[string]spec.Function{
		"hello": {Runner: spec.Runner{Out: "/nix/store/e-hello", Drv: "/nix/store/e-hello.drv"}},
		"idle":  {Runner: spec.Runner{Out: "/nix/store/f-idle", Drv: "/nix/store/f-idle.drv"}},
	}}
	if got := prebuildItems(st, 7); !reflect.DeepEqual(got, want) {
		t.Errorf("prebuildItems =\n%+v\nwant\n%+v", got, want)
	}
}

// TestFunctionRunnerItems: a node keeps the runners of the functions it
// may run (node list, labels, whole capacity), one per out path.
func TestFunctionRunnerItems(t *testing.T) {
	fn := func(out string, vcpu int, p spec.Placement) spec.Function {
		return spec.Function{Runner: spec.Runner{Out: "/nix/store/" + out, Drv: "/nix/store/" + out + ".drv"}, VCPU: vcpu, MemMiB: 256, Placement: p}
	}
	st := replicated.NewState()
	st.Revision = &replicated.Revision{ID: 3, Commit: "rev"}
	st.Nodes = map[uint64]*replicated.Node{
		1: {ID: 1, Capacity: replicated.Resources{VCPU: 4, MemMiB: 4096}, Labels: map[string]string{"zone": "a"}},
		2: {ID: 2, Capacity: replicated.Resources{VCPU: 1, MemMiB: 4096}, Labels: map[string]string{"zone": "b"}},
	}
	st.Desired = &spec.Cluster{Functions: map[string]spec.Function{
		"any":     fn("a-any", 1, spec.Placement{}),
		"same":    fn("a-any", 1, spec.Placement{}), // the same runner: once
		"big":     fn("b-big", 2, spec.Placement{}),
		"zoned":   fn("c-zoned", 1, spec.Placement{Labels: map[string]string{"zone": "a"}}),
		"pinned":  fn("d-pinned", 1, spec.Placement{Nodes: []uint64{2}}),
		"noout":   {VCPU: 1},
		"too-big": fn("e-huge", 64, spec.Placement{}),
	}}
	lazy := fn("f-lazy", 1, spec.Placement{})
	lazy.NoPrefetch = true
	st.Desired.Functions["lazy"] = lazy // prefetch = false: not kept ahead
	lazyShared := fn("a-any", 1, spec.Placement{})
	lazyShared.NoPrefetch = true
	st.Desired.Functions["lazy-shared"] = lazyShared // any keeps that runner anyway
	outs := func(node uint64) string {
		var o []string
		for _, it := range functionRunnerItems(st, node) {
			o = append(o, strings.TrimPrefix(it.out, "/nix/store/")+"="+it.owner+"@"+it.commit)
		}
		return strings.Join(o, " ")
	}
	if got, want := outs(1), "a-any=functions.any@rev b-big=functions.big@rev c-zoned=functions.zoned@rev"; got != want {
		t.Errorf("node 1 keeps %q, want %q", got, want)
	}
	if got, want := outs(2), "a-any=functions.any@rev d-pinned=functions.pinned@rev"; got != want {
		t.Errorf("node 2 keeps %q, want %q", got, want)
	}
	if got := outs(9); got != "" {
		t.Errorf("an unregistered node keeps %q", got)
	}
	// An agent-only node with the placement part (--network) sees the
	// same: its view carries the functions and its own record.
	views := replicated.ComputeViews(st, replicated.OptionalViewParts(), nil)
	parts := map[replicated.ViewPart]replicated.EncodedPart{}
	for _, p := range append(replicated.BaseViewParts(), replicated.OptionalViewParts()...) {
		if e, ok := views.Part(1, p); ok {
			parts[p] = e
		}
	}
	av, err := (&replicated.AgentView{}).Merge(views.Applied, parts)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := functionRunnerItems(av.State(1), 1), functionRunnerItems(st, 1); !reflect.DeepEqual(got, want) {
		t.Errorf("from node 1's agent view: %+v\nwant %+v", got, want)
	}
	st.Revision = nil
	if got := outs(1); got != "" {
		t.Errorf("before any revision: %q", got)
	}
}

// peerCache is another node's binary cache: a chroot store of its own
// (node A) served by nixcache on loopback, registered in the test state as
// node peerNode.
type peerCache struct {
	cache *nixcache.Cache
	url   string
	store string // nix store URL
	key   nixcache.SecretKey
	// probes counts the narinfo requests.
	probes atomic.Int64
}

const peerNode = testNode + 1

func newPeerCache(t *testing.T, st *testState) *peerCache {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() { makeTreeWritable(dir) })
	key, err := nixcache.GenerateKey("blixard-node-8")
	if err != nil {
		t.Fatal(err)
	}
	p := &peerCache{store: "local?root=" + dir, key: key}
	real, _ := nixcache.RealStoreDir(p.store, "/nix/store")
	p.cache, err = nixcache.NewCache(nixcache.Options{Key: key, Store: nixcache.NixStore{URL: p.store}, RealStoreDir: real,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".narinfo") {
			p.probes.Add(1)
		}
		p.cache.ServeHTTP(w, r)
	})
	go func() { done <- nixcache.Serve(ctx, ln, counting, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	p.url = "http://" + ln.Addr().String()
	st.Update(func(s *replicated.State) {
		s.Nodes[peerNode] = &replicated.Node{ID: peerNode, State: replicated.NodeReady, CacheURL: p.url, CacheKey: key.Public()}
	})
	return p
}

// take moves r's out path from the host's store into the peer's: node A
// has it, this node (the host's store) does not.
func (p *peerCache) take(t *testing.T, r runner) {
	t.Helper()
	ctx := context.Background()
	if _, err := runNix(ctx, "nix", "copy", "--no-check-sigs", "--to", p.store, r.out); err != nil {
		t.Fatalf("nix copy to the peer's store: %v", err)
	}
	if _, err := runNix(ctx, "nix-store", "--delete", r.out); err != nil {
		t.Fatalf("removing %s from this node's store: %v", r.out, err)
	}
}

func makeTreeWritable(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
}

// origin says how the host's store got out: "substituted from KEY-NAME"
// (nix recorded that key's signature, and ultimate is false) or "built
// here".
func origin(t *testing.T, out string) string {
	t.Helper()
	b, err := runNix(context.Background(), "nix", "path-info", "--json", out)
	if err != nil {
		t.Fatalf("path-info %s: %v", out, err)
	}
	var infos []struct {
		Ultimate   bool     `json:"ultimate"`
		Signatures []string `json:"signatures"`
	}
	if err := json.Unmarshal(b, &infos); err != nil || len(infos) != 1 {
		t.Fatalf("path-info %s: %v %s", out, err, b)
	}
	if infos[0].Ultimate {
		return "built here"
	}
	var names []string
	for _, s := range infos[0].Signatures {
		name, _, _ := strings.Cut(s, ":")
		names = append(names, name)
	}
	return "substituted from " + strings.Join(names, ",")
}

// noBuilds is a Builder that fails the test: these runners must come from
// a peer.
type noBuilds struct{ t *testing.T }

func (b noBuilds) Build(context.Context, string, string) (string, error) {
	b.t.Errorf("the agent built a runner from the flake")
	return "", errors.New("no builds in this test")
}

// TestNixAgentSubstitutesFromPeer: a runner only the peer's store has is
// substituted from the peer's cache, signed by the peer's key, and runs;
// nothing is built here although its .drv is in this node's store.
func TestNixAgentSubstitutesFromPeer(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // nix's narinfo cache
	e := newEnv(t)
	peer := newPeerCache(t, e.state)
	r := makeRunner(t, runnerSpec{marker: "from-the-peer"}).build(t)
	peer.take(t, r)
	peer.cache.SetRoots([]string{r.out})
	e.state.assign("a", testNode, r)
	var mu sync.Mutex
	var produced []map[string]string
	e.start(func(o *Options) {
		o.Builder = noBuilds{t}
		o.Cache.Producing = func(m map[string]string) {
			mu.Lock()
			defer mu.Unlock()
			produced = append(produced, m)
		}
	})
	e.waitPhase("a", replicated.PhaseRunning, nil)
	if got := origin(t, r.out); got != "substituted from blixard-node-8" {
		t.Errorf("runner %s: %s, want substituted from blixard-node-8", r.out, got)
	}
	if e.ever("a", replicated.PhaseBuilding) {
		t.Errorf("a was reported building")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(produced) != 0 {
		t.Errorf("this node said it produces %v, but it built nothing", produced)
	}
}

// TestNixRealiseWaitsForPeerBuild: a peer building the runner is waited
// for, and the runner is then substituted from it, not built here.
func TestNixRealiseWaitsForPeerBuild(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	e := newEnv(t)
	peer := newPeerCache(t, e.state)
	r := makeRunner(t, runnerSpec{marker: "waited-for"}).build(t)
	// What the peer will have built waits in a store of its own, so that
	// this node's store never has the runner while the peer does.
	staging := "local?root=" + t.TempDir()
	t.Cleanup(func() { makeTreeWritable(strings.TrimPrefix(staging, "local?root=")) })
	ctx := context.Background()
	if _, err := runNix(ctx, "nix", "copy", "--no-check-sigs", "--to", staging, r.out); err != nil {
		t.Fatal(err)
	}
	if _, err := runNix(ctx, "nix-store", "--delete", r.out); err != nil {
		t.Fatal(err)
	}
	// The peer is building it: it is a root, not valid there yet.
	peer.cache.SetRoots([]string{r.out})
	peer.cache.SetProducing(map[string]string{r.out: "building"})
	a := New(Options{NodeID: testNode, StateDir: e.dir, State: e.state, Proposer: e.state,
		Cache: CacheOptions{PollInterval: 20 * time.Millisecond}})
	root := filepath.Join(e.dir, "gcroot")
	var built atomic.Bool
	done := make(chan error, 1)
	go func() {
		done <- a.real.realise(ctx, root, r.drv, r.out, "", "a", func(string) { built.Store(true) })
	}()
	// Several probes: the realisation is waiting, not building.
	testkit.WaitFor(t, waitTimeout, "the peer probed again and again", testkit.Until(func() bool { return peer.probes.Load() >= 5 }))
	select {
	case err := <-done:
		t.Fatalf("realise returned while the peer was still building: %v", err)
	default:
	}
	// The peer's build ends: it has the runner now.
	if _, err := runNix(ctx, "nix", "copy", "--no-check-sigs", "--from", staging, "--to", peer.store, r.out); err != nil {
		t.Fatal(err)
	}
	peer.cache.SetProducing(nil)
	if err := <-done; err != nil {
		t.Fatalf("realise: %v", err)
	}
	if built.Load() {
		t.Errorf("the realisation built the runner")
	}
	if got := origin(t, r.out); got != "substituted from blixard-node-8" {
		t.Errorf("runner %s: %s, want substituted from blixard-node-8", r.out, got)
	}
}

// TestNixRealiseBuildsWhenNoPeerHasIt: with a peer that neither has nor
// builds the runner, it is built here (said so through Producing while it
// builds) and pushed to PushTo.
func TestNixRealiseBuildsWhenNoPeerHasIt(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	e := newEnv(t)
	newPeerCache(t, e.state)
	r := makeRunner(t, runnerSpec{marker: "built-here"})
	push := t.TempDir()
	var mu sync.Mutex
	var produced []map[string]string
	a := New(Options{NodeID: testNode, StateDir: e.dir, State: e.state, Proposer: e.state,
		Cache: CacheOptions{PushTo: "file://" + push, Producing: func(m map[string]string) {
			mu.Lock()
			defer mu.Unlock()
			produced = append(produced, m)
		}}})
	if err := a.real.realise(context.Background(), filepath.Join(e.dir, "gcroot"), r.drv, r.out, "", "a", func(string) {}); err != nil {
		t.Fatal(err)
	}
	if got := origin(t, r.out); got != "built here" {
		t.Errorf("runner %s: %s, want built here", r.out, got)
	}
	mu.Lock()
	want := []map[string]string{{r.out: "building"}, {}}
	if !reflect.DeepEqual(produced, want) {
		t.Errorf("Producing got %v, want %v", produced, want)
	}
	mu.Unlock()
	if _, err := os.Stat(filepath.Join(push, nixcache.HashPart(r.out)+".narinfo")); err != nil {
		t.Errorf("the built runner was not pushed to %s: %v", push, err)
	}
}

// TestNixPrebuilder: a builder realises the runners assigned to other
// nodes, roots them while they are assigned, and says which it has queued.
func TestNixPrebuilder(t *testing.T) {
	e := newEnv(t)
	r1 := makeRunner(t, runnerSpec{marker: "one"})
	r2 := makeRunner(t, runnerSpec{marker: "two"})
	e.state.assign("mine", testNode, r1)
	e.state.assign("elsewhere", peerNode, r2)
	var mu sync.Mutex
	var queued []map[string]string
	a := New(Options{NodeID: testNode, StateDir: e.dir, State: e.state, Proposer: e.state,
		Cache: CacheOptions{Producing: func(m map[string]string) {
			mu.Lock()
			defer mu.Unlock()
			queued = append(queued, m)
		}}})
	dir := filepath.Join(t.TempDir(), "roots")
	active := false
	p := a.Prebuilder(dir, func() bool { return active })
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if p.step(ctx) || fileExists(r2.out) {
		t.Fatalf("an inactive prebuilder realised something")
	}
	active = true
	if !p.step(ctx) {
		t.Fatalf("the prebuilder realised nothing")
	}
	if got, err := os.Readlink(filepath.Join(dir, filepath.Base(r2.out))); err != nil || got != r2.out || !fileExists(r2.out) {
		t.Errorf("root of %s: %q %v", r2.out, got, err)
	}
	if fileExists(r1.out) {
		t.Errorf("the prebuilder realised this node's own runner (the agent does)")
	}
	if p.step(ctx) {
		t.Errorf("the prebuilder realised something again")
	}
	mu.Lock()
	sawQueued := false
	for _, m := range queued {
		sawQueued = sawQueued || m[r2.out] == "queued"
	}
	if !sawQueued || len(queued[len(queued)-1]) != 0 {
		t.Errorf("Producing got %v, want %s queued, then nothing", queued, r2.out)
	}
	mu.Unlock()
	e.state.unassign("elsewhere")
	p.step(ctx)
	if _, err := os.Lstat(filepath.Join(dir, filepath.Base(r2.out))); !os.IsNotExist(err) {
		t.Errorf("the root of an unassigned runner is still there: %v", err)
	}
}

func TestSuccessor(t *testing.T) {
	st := replicated.NewState()
	st.Nodes = map[uint64]*replicated.Node{
		1: {ID: 1, State: replicated.NodeReady, CacheURL: "http://n1:7080"},
		2: {ID: 2, State: replicated.NodeReady, CacheURL: "http://n2:7080"},
		3: {ID: 3, State: replicated.NodeReady},
		4: {ID: 4, State: replicated.NodeDown, CacheURL: "http://n4:7080"},
	}
	st.Assignments = map[string]replicated.Assignment{
		"here":     {VM: "here", Node: 1, OutPath: "/nix/store/a"},
		"moved":    {VM: "moved", Node: 2, OutPath: "/nix/store/b"},
		"no-cache": {VM: "no-cache", Node: 3, OutPath: "/nix/store/c"},
		"to-down":  {VM: "to-down", Node: 4, OutPath: "/nix/store/d"},
		"unknown":  {VM: "unknown", Node: 9, OutPath: "/nix/store/e"},
	}
	for vm, want := range map[string]string{
		"here": "", "moved": "http://n2:7080 /nix/store/b 2", "no-cache": "", "to-down": "", "unknown": "", "removed": "",
	} {
		url, out, node, ok := successor(st, 1, vm)
		got := ""
		if ok {
			got = fmt.Sprintf("%s %s %d", url, out, node)
		}
		if got != want {
			t.Errorf("successor(%s) = %q, want %q", vm, got, want)
		}
	}
}

// TestNixMovedVMRunsUntilItsNewNodeHasTheRunner: a VM moved to a node
// whose store lacks its runner keeps running here while that node's cache
// says it does not have it, and stops once it has.
func TestNixMovedVMRunsUntilItsNewNodeHasTheRunner(t *testing.T) {
	e := newEnv(t)
	peer := newPeerCache(t, e.state)
	r := makeRunner(t, runnerSpec{marker: "moving"}).build(t)
	peer.cache.SetRoots([]string{r.out})
	e.state.assign("a", testNode, r)
	e.start(func(o *Options) { o.Cache.PollInterval = 20 * time.Millisecond })
	e.waitPhase("a", replicated.PhaseRunning, nil)
	running := e.pid("a")

	before := peer.probes.Load()
	e.state.assign("a", peerNode, r)
	testkit.WaitFor(t, waitTimeout, "the new node's cache asked again and again", testkit.Until(func() bool { return peer.probes.Load() >= before+5 }))
	if !running.alive() {
		t.Fatalf("the VM stopped before its new node had the runner")
	}
	if _, err := runNix(context.Background(), "nix", "copy", "--no-check-sigs", "--to", peer.store, r.out); err != nil {
		t.Fatal(err)
	}
	e.waitGone(running)
	testkit.WaitFor(t, waitTimeout, "a reported stopped", testkit.Until(func() bool { return e.ever("a", replicated.PhaseStopped) }))
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestStillProducing(t *testing.T) {
	failed := errors.New("connection refused")
	for _, c := range []struct {
		a         nixcache.Availability
		err       error
		last      nixcache.Availability
		errsInRow int
		want      nixcache.Availability
	}{
		{nixcache.Has, nil, nixcache.Building, 0, nixcache.Has},
		{nixcache.Missing, nil, nixcache.Building, 0, nixcache.Missing}, // the builder gave up
		{nixcache.Missing, failed, nixcache.Building, 1, nixcache.Building},
		{nixcache.Missing, failed, nixcache.Queued, 2, nixcache.Queued},
		{nixcache.Missing, failed, nixcache.Building, 3, nixcache.Missing},
		{nixcache.Missing, failed, nixcache.Missing, 1, nixcache.Missing},
	} {
		if got := stillProducing(c.a, c.err, c.last, c.errsInRow); got != c.want {
			t.Errorf("stillProducing(%v, %v, last %v, %d errors) = %v, want %v", c.a, c.err, c.last, c.errsInRow, got, c.want)
		}
	}
}

// countingBuilder counts flake builds (none should happen).
type countingBuilder struct{ n atomic.Int64 }

func (b *countingBuilder) Build(context.Context, string, string) (string, error) {
	b.n.Add(1)
	return "", errors.New("the test builder builds nothing")
}

// TestNixFunctionPrefetcher: a node keeps the runner of a function it may
// run realised and rooted (here from the derivation in its store, as the
// evaluating leader does); a runner neither in the store, nor derivable
// here, nor in a peer's cache is not built from the flake but asked for
// again later; a function no longer declared loses its root.
func TestNixFunctionPrefetcher(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "prefetched"})
	b := &countingBuilder{}
	e.state.Update(func(st *replicated.State) {
		st.Desired = &spec.Cluster{Functions: map[string]spec.Function{
			"hello":   {Runner: spec.Runner{Drv: r.drv, Out: r.out}, VCPU: 1, MemMiB: 64},
			"elusive": {Runner: spec.Runner{Drv: "/nix/store/00000000000000000000000000000000-elusive.drv", Out: "/nix/store/00000000000000000000000000000000-elusive"}, VCPU: 1, MemMiB: 64},
		}}
	})
	a := New(Options{NodeID: testNode, StateDir: e.dir, State: e.state, Proposer: e.state, Builder: b})
	dir := filepath.Join(t.TempDir(), "function-runners")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := a.FunctionPrefetcher(dir)
	ctx := context.Background()
	for p.step(ctx) {
	}
	if got, err := os.Readlink(filepath.Join(dir, filepath.Base(r.out))); err != nil || got != r.out || !fileExists(r.out) {
		t.Errorf("hello's runner: root %q (%v), realised %v; want it rooted at %s", got, err, fileExists(r.out), r.out)
	}
	if n := b.n.Load(); n != 0 {
		t.Errorf("the prefetcher built %d runners from the flake; it never should", n)
	}
	if _, ok := p.failed["/nix/store/00000000000000000000000000000000-elusive"]; !ok {
		t.Errorf("the runner no one has is not marked to be asked for again: %v", p.failed)
	}
	if k := a.real.roots.keeper(r.out, ""); k == "" {
		t.Errorf("the prefetched root does not keep %s for instances to link", r.out)
	}
	e.state.Update(func(st *replicated.State) { delete(st.Desired.Functions, "hello") })
	p.step(ctx)
	if _, err := os.Lstat(filepath.Join(dir, filepath.Base(r.out))); !os.IsNotExist(err) {
		t.Errorf("the root of a function no longer declared is still there: %v", err)
	}
}
