package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/blixard/blixard/nixcache"
	"github.com/blixard/blixard/replicated"
)

// CacheOptions say how the agent shares runners with other nodes: every
// realisation substitutes from the binary caches of the other nodes (their
// registered [replicated.Node.CacheURL], trusting their CacheKey) and from
// Substituters before it builds, and waits for a peer that is building the
// runner rather than building it too. The zero value uses the peers only.
type CacheOptions struct {
	// Substituters are further binary caches to substitute from (serve
	// --substituter: harmonia, attic, cachix…), TrustedKeys the public keys
	// their paths are signed with.
	Substituters, TrustedKeys []string
	// PushTo is a nix store URL every runner this node builds is copied to
	// afterwards (`nix copy --to`), e.g. the store behind Substituters; ""
	// copies nothing. A failed copy is logged; the VM starts anyway.
	PushTo string
	// Producing, when set, is told the runners this node is producing each
	// time that changes: out path → "building" (a build runs) or "queued"
	// (a [Prebuilder] means to build it). The node passes it to its
	// nixcache.Cache, whose answers make other nodes wait for the build.
	Producing func(map[string]string)
	// Client probes the peers' caches (default: 5 s per probe).
	Client *http.Client
	// PollInterval is how often a realisation waiting for a peer's build,
	// or a stop waiting for a handover, asks again (default 2 s).
	PollInterval time.Duration
	// HandoverWait bounds how long the stop of a VM that moved to another
	// node waits for that node to have the runner in its store (its cache
	// says so), so the copy happens while the old copy still runs and a
	// move's downtime does not include it (default 5 minutes; negative:
	// stop at once). A node without a cache is not waited for.
	HandoverWait time.Duration
}

// cachePeer is another node's binary cache.
type cachePeer struct {
	node     uint64
	url, key string
}

// cachePeers lists the binary caches of the nodes in st other than self,
// by node id: those that registered a URL and a valid key and are not
// marked down (a down node's cache would only cost nix a connect timeout).
func cachePeers(st *replicated.State, self uint64) []cachePeer {
	if st == nil {
		return nil
	}
	var out []cachePeer
	for id, n := range st.Nodes {
		if id == self || n.CacheURL == "" || n.State == replicated.NodeDown || nixcache.ValidPublicKey(n.CacheKey) != nil {
			continue
		}
		out = append(out, cachePeer{node: id, url: n.CacheURL, key: n.CacheKey})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].node < out[j].node })
	return out
}

// substituterConfig is the nix.conf of a realisation that may substitute
// from peers and from subs, trusting keys: "" when there is none.
//
// Settings beside the caches: a negative narinfo lookup is not remembered
// (nix keeps one for an hour by default, and a peer that had not built a
// runner yet must be asked again the next time), and a peer that does not
// answer costs 5 seconds, not curl's default of minutes.
func substituterConfig(peers []cachePeer, subs, keys []string) string {
	var urls, trusted []string
	for _, p := range peers {
		urls = append(urls, p.url)
		trusted = append(trusted, p.key)
	}
	urls = append(urls, subs...)
	trusted = append(trusted, keys...)
	if len(urls) == 0 {
		return ""
	}
	cfg := "extra-substituters = " + strings.Join(urls, " ") + "\n"
	if len(trusted) > 0 {
		cfg += "extra-trusted-public-keys = " + strings.Join(trusted, " ") + "\n"
	}
	return cfg + "narinfo-cache-negative-ttl = 0\nconnect-timeout = 5"
}

type nixConfigKey struct{}

// withNixConfig makes every nix run under ctx (runNixOf) use cfg as well,
// so a realisation's substituters reach the Builder's `nix build` too
// without changing the Builder interface.
func withNixConfig(ctx context.Context, cfg string) context.Context {
	if cfg == "" {
		return ctx
	}
	return context.WithValue(ctx, nixConfigKey{}, cfg)
}

// nixConfigFrom is the configuration withNixConfig put in ctx ("" none).
func nixConfigFrom(ctx context.Context) string {
	s, _ := ctx.Value(nixConfigKey{}).(string)
	return s
}

// peerVerdict decides, from what the peers said of a runner, whether to
// substitute it now (a peer has it) or to wait (a peer is building it; a
// builder's queue counts unless this realisation is a builder's own, so
// that two builders never wait for each other).
func peerVerdict(avail []nixcache.Availability, prebuilding bool) (has, wait bool) {
	for _, a := range avail {
		switch a {
		case nixcache.Has:
			return true, false
		case nixcache.Building:
			wait = true
		case nixcache.Queued:
			wait = wait || !prebuilding
		}
	}
	return false, wait
}

// sharing is the agent's side of the binary caches: the peers to
// substitute from, waiting for their builds, what this node produces, and
// pushing what it built. A nil *sharing shares nothing.
type sharing struct {
	o     CacheOptions
	self  uint64
	state StateReader
	nix   string
	log   *slog.Logger

	mu       sync.Mutex
	building map[string]int  // out path → builds running (guarded by mu)
	queued   map[string]bool // a prebuilder's queue (guarded by mu)
}

func newSharing(o Options, log *slog.Logger) *sharing {
	c := o.Cache
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 5 * time.Second}
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 2 * time.Second
	}
	if c.HandoverWait == 0 {
		c.HandoverWait = 5 * time.Minute
	}
	return &sharing{o: c, self: o.NodeID, state: o.State, nix: o.Nix, log: log,
		building: map[string]int{}, queued: map[string]bool{}}
}

func (s *sharing) peers() []cachePeer {
	if s == nil || s.state == nil {
		return nil
	}
	st, err := s.state.LocalRead()
	if err != nil {
		return nil
	}
	return cachePeers(st, s.self)
}

// context is ctx with the nix configuration of the current peers.
func (s *sharing) context(ctx context.Context) context.Context {
	if s == nil {
		return ctx
	}
	return withNixConfig(ctx, substituterConfig(s.peers(), s.o.Substituters, s.o.TrustedKeys))
}

// awaitPeers waits while a peer is building out (or, unless prebuilding,
// means to) and reports whether a peer has it now. A peer that cannot be
// asked counts as not having it: this node then builds it itself.
func (s *sharing) awaitPeers(ctx context.Context, out string, prebuilding bool) bool {
	if s == nil {
		return false
	}
	logged := false
	// last is what each peer said last time; errs counts its failed probes
	// in a row since. A builder that does not answer a few probes (busy, a
	// slow store) is still waited for; one that stays silent is not.
	last := map[uint64]nixcache.Availability{}
	errs := map[uint64]int{}
	for {
		peers := s.peers()
		avail := make([]nixcache.Availability, len(peers))
		var builder uint64
		for i, p := range peers {
			a, err := nixcache.Probe(ctx, s.o.Client, p.url, out)
			if err != nil {
				errs[p.node]++
			} else {
				errs[p.node] = 0
			}
			avail[i] = stillProducing(a, err, last[p.node], errs[p.node])
			last[p.node] = avail[i]
			if avail[i] == nixcache.Building || avail[i] == nixcache.Queued {
				builder = p.node
			}
		}
		has, wait := peerVerdict(avail, prebuilding)
		if has || !wait || ctx.Err() != nil {
			return has
		}
		if !logged {
			// Not the building hook: nothing builds here, and the VM's
			// status stays pending rather than building.
			s.log.Info("waiting for another node to build a runner instead of building it too", "out", out, "builder", builder)
			logged = true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(s.o.PollInterval):
		}
	}
}

// maxProbeErrors is how many failed probes in a row a peer that was
// producing a runner gets before it no longer counts as producing it.
const maxProbeErrors = 3

// stillProducing is what a probe's answer counts as: a failed probe of a
// peer that was building or queueing the runner counts as that until it
// failed maxProbeErrors times in a row; a 404 without BuildingHeader is
// the peer's word that it no longer produces it.
func stillProducing(a nixcache.Availability, err error, last nixcache.Availability, errsInRow int) nixcache.Availability {
	if err != nil && errsInRow < maxProbeErrors && (last == nixcache.Building || last == nixcache.Queued) {
		return last
	}
	return a
}

// successor is where vm moved: the node it is now assigned to, when that
// is another node whose cache can be asked, and the runner it will run.
func successor(st *replicated.State, self uint64, vm string) (cacheURL, out string, node uint64, ok bool) {
	if st == nil {
		return "", "", 0, false
	}
	as, assigned := st.Assignments[vm]
	if !assigned || as.Node == self || as.OutPath == "" {
		return "", "", 0, false
	}
	n := st.Nodes[as.Node]
	if n == nil || n.CacheURL == "" || n.State == replicated.NodeDown {
		return "", "", 0, false
	}
	return n.CacheURL, as.OutPath, as.Node, true
}

// awaitSuccessor holds the stop of vm, which moved to another node, until
// that node has its runner (up to HandoverWait): the new node realises it
// while the old copy still runs, and starts it only once this node reports
// it stopped, so the move's downtime is the shutdown and the start, not
// the copy. It returns at once for a VM that did not move, or moved to a
// node whose cache cannot be asked.
func (s *sharing) awaitSuccessor(ctx context.Context, vm string, now func() time.Time) {
	if s == nil || s.state == nil || s.o.HandoverWait < 0 {
		return
	}
	deadline := now().Add(s.o.HandoverWait)
	logged := false
	for {
		st, err := s.state.LocalRead()
		if err != nil {
			return
		}
		url, out, node, moved := successor(st, s.self, vm)
		if !moved {
			return
		}
		a, err := nixcache.Probe(ctx, s.o.Client, url, out)
		switch {
		case a == nixcache.Has:
			if logged {
				s.log.Info("the VM's new node has its runner; stopping it here", "vm", vm, "node", node)
			}
			return
		case err != nil:
			// Nothing to learn from a cache that does not answer.
			return
		case !now().Before(deadline):
			s.log.Warn("the VM's new node still lacks its runner; stopping it here anyway", "vm", vm, "node", node, "waited", s.o.HandoverWait)
			return
		}
		if !logged {
			s.log.Info("the VM moved; it keeps running here until its new node has the runner", "vm", vm, "node", node, "out", out)
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.o.PollInterval):
		}
	}
}

// startBuild marks out as being built here until done is called.
func (s *sharing) startBuild(out string) (done func()) {
	if s == nil {
		return func() {}
	}
	s.mu.Lock()
	s.building[out]++
	s.reportLocked()
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.building[out]--; s.building[out] <= 0 {
			delete(s.building, out)
		}
		s.reportLocked()
	}
}

// setQueued replaces the prebuilder's queue.
func (s *sharing) setQueued(outs []string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued = make(map[string]bool, len(outs))
	for _, o := range outs {
		s.queued[o] = true
	}
	s.reportLocked()
}

// reportLocked tells Producing what this node produces. Called with mu
// held, so reports arrive in order.
func (s *sharing) reportLocked() {
	if s.o.Producing == nil {
		return
	}
	m := make(map[string]string, len(s.building)+len(s.queued))
	for o := range s.queued {
		m[o] = "queued"
	}
	for o := range s.building {
		m[o] = "building"
	}
	s.o.Producing(m)
}

// push copies out, which this node built, to PushTo.
func (s *sharing) push(ctx context.Context, out string) {
	if s == nil || s.o.PushTo == "" {
		return
	}
	if _, err := runNixOf(ctx, s.nix, "nix", "copy", "--to", s.o.PushTo, out); err != nil {
		s.log.Warn("copying a built runner to --push-to failed; other nodes build or substitute it elsewhere", "out", out, "err", err)
		return
	}
	s.log.Info("runner copied to --push-to", "out", out)
}

// Prebuilder realises the runners assigned to the other nodes, on a
// builder node or the leader, so that their closures are in this node's
// store — built once, here — and its binary cache serves them: a node that
// takes over a VM, or runs a replica, then copies the runner instead of
// building it. Roots are kept in its directory while the runners are
// assigned, so the store keeps them. Construct with [Agent.Prebuilder].
type Prebuilder struct {
	real   realiser // the agent's, so the same build is never run twice
	state  StateReader
	self   uint64
	dir    string
	active func() bool
	// items lists the runners to keep realised here; shared: it tells the
	// other nodes (Blixard-Building) which of them wait in its queue.
	items  func(st *replicated.State, self uint64) []prebuildItem
	shared bool
	// quiet: a failure is expected until a peer has the runner (logged
	// once per runner, at Info), and rounds come at most once a second.
	quiet bool
	retry time.Duration
	now   func() time.Time
	log   *slog.Logger
	wake  chan struct{}
	// failed maps out paths whose realisation failed to when it may be
	// tried again (owned by Run).
	failed map[string]time.Time
}

// Prebuilder returns a prebuilder that shares this agent's realiser and
// keeps its GC roots in dir. It realises only while active() is true (the
// node is a builder or leads); it runs once Run is called.
func (a *Agent) Prebuilder(dir string, active func() bool) *Prebuilder {
	r := a.real
	r.prebuilding = true
	return &Prebuilder{real: r, state: a.o.State, self: a.o.NodeID, dir: dir, active: active, items: prebuildItems, shared: true,
		retry: a.o.BuildRetry, now: a.o.Now, log: a.log.With("component", "prebuild"), wake: make(chan struct{}, 1),
		failed: map[string]time.Time{}}
}

// FunctionPrefetcher returns a prebuilder that keeps the runner of every
// function this node may run realised here, rooted in dir, from the
// revision that declares it on: a function's first cold start on a node
// then waits neither for a build nor for a copy of its closure, and its
// instance links the runner's root without running nix (rootBook). Like
// every realisation it substitutes from the other nodes' caches first and
// waits for a peer that builds it.
//
// It never builds from the flake: every eligible node doing so for every
// function at every push would multiply the builds. It builds only from a
// derivation already in this store (the evaluating leader's), else copies
// from the other nodes' caches and the substituters (the leader's
// prebuilder builds every function's runner for them), retrying every
// prefetchRetry until one has it.
func (a *Agent) FunctionPrefetcher(dir string) *Prebuilder {
	items := functionRunnerItems
	if a.o.Realise != nil {
		// A stand-in store (Options.Realise) realises at start only.
		items = func(*replicated.State, uint64) []prebuildItem { return nil }
	}
	r := a.real
	r.builder = nil
	return &Prebuilder{real: r, state: a.o.State, self: a.o.NodeID, dir: dir, active: func() bool { return true },
		items: items, retry: min(a.o.BuildRetry, prefetchRetry), now: a.o.Now, quiet: true,
		log: a.log.With("component", "function-runners"), wake: make(chan struct{}, 1), failed: map[string]time.Time{}}
}

// prefetchRetry is how soon a function runner no peer had yet is asked
// for again: a substitution attempt is a few requests to the caches.
const prefetchRetry = 10 * time.Second

// functionRunnerItems lists the runners of the committed revision's
// functions that node self may run (replicated.FunctionMayRun), one per out path,
// sorted; a function with `prefetch = false` is left out (another one with
// the same runner still keeps it).
func functionRunnerItems(st *replicated.State, self uint64) []prebuildItem {
	if st == nil || st.Desired == nil || st.Revision == nil {
		return nil
	}
	node := st.Nodes[self]
	if node == nil {
		return nil
	}
	seen := map[string]bool{}
	var out []prebuildItem
	for _, name := range slices.Sorted(maps.Keys(st.Desired.Functions)) {
		f := st.Desired.Functions[name]
		if f.Runner.Out == "" || f.NoPrefetch || seen[f.Runner.Out] || !replicated.FunctionMayRun(f, node) {
			continue
		}
		seen[f.Runner.Out] = true
		out = append(out, prebuildItem{out: f.Runner.Out, drv: f.Runner.Drv, commit: st.Revision.Commit, owner: "functions." + name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].out < out[j].out })
	return out
}

// Notify asks for a look at the state now; it never blocks.
func (p *Prebuilder) Notify() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// prebuildItem is one runner to realise.
type prebuildItem struct {
	out, drv, commit, owner string
}

// prebuildItems lists the runners assigned to nodes other than self and
// every function's runner, one per out path, sorted (how each is built:
// the first assignment's).
func prebuildItems(st *replicated.State, self uint64) []prebuildItem {
	if st == nil {
		return nil
	}
	revision := ""
	if st.Revision != nil {
		revision = st.Revision.Commit
	}
	names := make([]string, 0, len(st.Assignments))
	for n := range st.Assignments {
		names = append(names, n)
	}
	sort.Strings(names)
	seen := map[string]bool{}
	var out []prebuildItem
	for _, n := range names {
		as := st.Assignments[n]
		if as.Node == self || as.OutPath == "" || seen[as.OutPath] {
			continue
		}
		seen[as.OutPath] = true
		out = append(out, prebuildItem{out: as.OutPath, drv: as.Drv, commit: buildCommit(as, revision), owner: runnerOwner(as)})
	}
	// Every function's runner too, assigned or not: the nodes that may
	// run it fetch it ahead of its first cold start (FunctionPrefetcher)
	// and should copy it from here rather than each build it.
	if st.Desired != nil {
		for _, name := range slices.Sorted(maps.Keys(st.Desired.Functions)) {
			f := st.Desired.Functions[name]
			if f.Runner.Out == "" || seen[f.Runner.Out] {
				continue
			}
			seen[f.Runner.Out] = true
			out = append(out, prebuildItem{out: f.Runner.Out, drv: f.Runner.Drv, commit: revision, owner: "functions." + name})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].out < out[j].out })
	return out
}

// Run realises what the state asks for until ctx ends: on Notify and every
// 10 seconds it removes the roots of runners no longer assigned elsewhere
// and, while active, realises the next runner not yet rooted here (one at
// a time, re-reading the state between runners). It returns nil.
func (p *Prebuilder) Run(ctx context.Context) error {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return fmt.Errorf("prebuild roots %s: %w", p.dir, err)
	}
	defer p.setQueued(nil)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		for p.step(ctx) && ctx.Err() == nil {
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-tick.C:
		}
		if p.quiet {
			// Function runners change with revisions, not with every
			// applied entry: at most a round a second (each reads the
			// state, a copy on a replica).
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	}
}

// step does one round and reports whether it realised something (so the
// next may follow at once).
func (p *Prebuilder) step(ctx context.Context) bool {
	var st *replicated.State
	var err error
	if r, ok := p.state.(sharedReader); ok {
		st, err = r.SharedRead() // read only: no copy needed
	} else {
		st, err = p.state.LocalRead()
	}
	if err != nil {
		return false
	}
	items := p.items(st, p.self)
	p.prune(items)
	if !p.active() {
		p.setQueued(nil)
		return false
	}
	now := p.now()
	var todo []prebuildItem
	for _, it := range items {
		if retry, ok := p.failed[it.out]; ok && now.Before(retry) {
			continue
		}
		if target, err := os.Readlink(p.root(it.out)); err == nil && target == it.out && fileExists(it.out) {
			continue
		}
		todo = append(todo, it)
	}
	outs := make([]string, len(todo))
	for i, it := range todo {
		outs[i] = it.out
	}
	p.setQueued(outs)
	if len(todo) == 0 {
		return false
	}
	it := todo[0]
	err = p.real.realise(ctx, p.root(it.out), it.drv, it.out, it.commit, it.owner, func(how string) {
		p.log.Info("building a runner to keep here", "out", it.out, "how", how, "for", it.owner)
	})
	switch {
	case ctx.Err() != nil:
		return false
	case err != nil:
		_, again := p.failed[it.out]
		p.failed[it.out] = now.Add(p.retry)
		switch {
		case !p.quiet:
			p.log.Warn("realising a runner ahead of its use failed; the nodes that run it realise it then", "out", it.out, "for", it.owner, "err", err)
		case !again:
			p.log.Info("runner not fetched ahead yet (no peer has it); asking again", "out", it.out, "for", it.owner, "every", p.retry, "err", err)
		}
	default:
		delete(p.failed, it.out)
		p.log.Info("runner realised ahead of its use", "out", it.out, "for", it.owner)
	}
	return true
}

// setQueued tells the other nodes what waits in a shared prebuilder's queue.
func (p *Prebuilder) setQueued(outs []string) {
	if p.shared {
		p.real.share.setQueued(outs)
	}
}

// root is where out's GC root lives.
func (p *Prebuilder) root(out string) string { return filepath.Join(p.dir, filepath.Base(out)) }

// prune removes the roots of runners no longer in items.
func (p *Prebuilder) prune(items []prebuildItem) {
	want := map[string]bool{}
	for _, it := range items {
		want[filepath.Base(it.out)] = true
	}
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !want[e.Name()] {
			if err := os.Remove(filepath.Join(p.dir, e.Name())); err != nil {
				p.log.Warn("removing the GC root of a runner no longer assigned failed", "root", e.Name(), "err", err)
			}
		}
	}
	for out := range p.failed {
		if !want[filepath.Base(out)] {
			delete(p.failed, out)
		}
	}
}
