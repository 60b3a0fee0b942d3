package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// rolloutFlake declares web (replicas instances of version ver with the
// update block update) and db (never changed). With crash, web's runner
// exits at once: the process backend restarts it with backoff, and after
// three crashes the agent reports it failed (a crash loop).
func rolloutFlake(replicas int, ver string, crash bool, update string) string {
	return rolloutFlakeWith(replicas, ver, crash, update, "")
}

// rolloutFlakeWith is rolloutFlake with more attributes of web (extra,
// such as a health block).
func rolloutFlakeWith(replicas int, ver string, crash bool, update, extra string) string {
	fn := "runner"
	if crash {
		fn = "crashing"
	}
	return `{
  outputs = { self }: let
    runner = name: tag: builtins.derivation {
      name = "microvm-${name}-${tag}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\necho booted ${name} ${tag}\\nexec /bin/sleep infinity\\n' > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
    crashing = name: tag: builtins.derivation {
      name = "microvm-${name}-${tag}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\necho ${name} ${tag} crashes\\nexit 1\\n' > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
  in {
    blixard = {
      cluster = "roll";
      vms = {
        web = { runner = ` + fn + ` "web" "` + ver + `"; vcpu = 1; memMiB = 64; replicas = ` + fmt.Sprint(replicas) + `;
                update = ` + update + `; ` + extra + ` };
        db = { runner = runner "db" "v1"; vcpu = 1; memMiB = 64; };
      };
    };
  };
}
`
}

// The update blocks of the test: small minHealthySeconds keep it short.
const (
	rollOne    = `{ maxUnavailable = 1; minHealthySeconds = 1; progressDeadline = "90s"; autoRevert = true; }`
	rollCanary = `{ maxUnavailable = 2; canary = 1; minHealthySeconds = 1; progressDeadline = "90s"; autoRevert = true; }`
)

// apiClient is a client of node n's API (plain HTTP on loopback).
func apiClient(tb testing.TB, n *node) *api.Client {
	tb.Helper()
	c, err := api.NewClient(n.api, api.ClientOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// waitCmd runs `blixard wait` against n and returns its exit code and
// output (stdout then stderr).
func waitCmd(t *testing.T, n *node, commit string) (int, string) {
	t.Helper()
	out, errOut, code := cli(t, "", "wait", "--commit", commit, "--timeout", "100s", "--poll", "200ms", "--server", n.api)
	return code, out + errOut
}

// sample is one read of the state during a rollout.
type sample struct {
	at time.Time
	st *replicated.State
}

// sampler reads the state every 50 ms until stopped.
type sampler struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples []sample
}

func startSampler(tb testing.TB, c *api.Client) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := c.State(ctx)
			cancel()
			if err == nil {
				s.mu.Lock()
				s.samples = append(s.samples, sample{at: time.Now(), st: st})
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	tb.Cleanup(func() { s.halt() })
	return s
}

// halt stops the sampler and returns its samples.
func (s *sampler) halt() []sample {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

// unavailable lists the instances of web in st that are not running
// healthy, whatever their version: not running on their node, or not
// judged healthy (with a health check: not yet, after a restart).
func unavailable(st *replicated.State) []string {
	var out []string
	for name, a := range st.Assignments {
		if a.Declared != "web" {
			continue
		}
		o, ok := st.Observed[name]
		healthy := o.Health == replicated.Healthy || (o.Health == "" && a.Health == nil)
		if !ok || o.Node != a.Node || o.Phase != replicated.PhaseRunning || !healthy {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// healthServer accepts TCP connections on loopback until the test ends:
// the good versions' health checks probe it, so that a restarted instance
// is judged healthy only after a few probes (healthyAfter), which keeps it
// visibly unavailable for a moment.
func healthServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	_, port, _ := strings.Cut(l.Addr().String(), ":")
	return port
}

// webPIDs maps each instance of web to its runner's PID on its node.
func webPIDs(t *testing.T, c *cluster, st *replicated.State) map[string]int {
	t.Helper()
	out := map[string]int{}
	for name, a := range st.Assignments {
		if a.Declared == "web" || a.Declared == "db" {
			out[name] = c.nodes[a.Node-1].runnerPID(name)
		}
	}
	return out
}

func readState(t *testing.T, c *api.Client) *replicated.State {
	t.Helper()
	st, err := c.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waveEvents lists the RolloutWave events of web's rollout to commit (the
// instances of each wave), oldest first.
func waveEvents(st *replicated.State, commit string) []string {
	var out []string
	for _, e := range st.Events {
		if e.Kind == replicated.EventRolloutWave && strings.Contains(e.Message, "to commit "+commit) {
			what, _, _ := strings.Cut(strings.TrimPrefix(e.Message, "web: "), " to commit")
			out = append(out, what)
		}
	}
	return out
}

// TestRolloutRealCluster runs rolling updates on three `blixard serve`
// processes with real pushes, nix and runners: a good push rolls one
// instance at a time, a crash-looping one is reverted after its first
// wave, a canary moves alone until healthy, suspend holds pushes back,
// a rollback applies a revision two back, and a leader killed in the
// middle of a rollout leaves it to the next leader. `blixard wait` says
// how each ended.
func TestRolloutRealCluster(t *testing.T) {
	requireTools(t, "nix", "git")
	// The good versions' health check: four probes 250 ms apart must pass
	// after a start, so a restarted instance is unavailable for a moment
	// the samples see.
	check := `health = { tcp = { port = ` + healthServer(t) + `; }; interval = "250ms"; timeout = "100ms"; healthyAfter = 4; };`
	good := func(ver, update string) string { return rolloutFlakeWith(4, ver, false, update, check) }
	r := newRepo(t)
	v1 := r.push(good("v1", rollOne), "web v1")
	c := startCluster(t, r.url(), []nodeSpec{{8, 4096, ""}, {8, 4096, ""}, {8, 4096, ""}})
	n1 := c.nodes[0]
	client := apiClient(t, n1)
	if code, out := waitCmd(t, n1, v1); code != 0 {
		t.Fatalf("wait for v1: exit %d\n%s", code, out)
	}
	dbPID := webPIDs(t, c, readState(t, client))["db"]

	t.Run("a good push moves all four, one unavailable at most", func(t *testing.T) {
		s := startSampler(t, client)
		v2 := r.push(good("v2", rollOne), "web v2")
		code, out := waitCmd(t, n1, v2)
		samples := s.halt()
		if code != 0 || !strings.Contains(out, "converged") {
			t.Fatalf("wait for v2: exit %d\n%s", code, out)
		}
		worst := []string{}
		for _, sm := range samples {
			if down := unavailable(sm.st); len(down) > len(worst) {
				worst = down
			}
		}
		if len(worst) > 1 {
			t.Errorf("%d instances unavailable at once (%v), maxUnavailable 1", len(worst), worst)
		}
		if len(worst) == 0 {
			t.Errorf("no sample of %d saw an instance restarting: the samples say nothing", len(samples))
		}
		st := readState(t, client)
		if got := waveEvents(st, v2); !slices.Equal(got, []string{"wave 1: web-0", "wave 2: web-1", "wave 3: web-2", "wave 4: web-3"}) {
			t.Errorf("waves %q: one instance each, in order", got)
		}
		t.Logf("%d samples; most unavailable at once: %v", len(samples), worst)
	})

	var before map[string]int
	t.Run("a bad push is reverted after its first wave; wait exits 1", func(t *testing.T) {
		st := readState(t, client)
		before = webPIDs(t, c, st)
		v3 := r.push(rolloutFlake(4, "v3", true, rollOne), "web v3 crashes")
		code, out := waitCmd(t, n1, v3)
		if code != 1 || !strings.Contains(out, "failed: the rollout of web reverted") || !strings.Contains(out, "crash-loops") {
			t.Fatalf("wait for v3: exit %d, want 1 saying the rollout was reverted\n%s", code, out)
		}
		// web-0 runs v2 again; the other three never restarted.
		testkit.WaitFor(t, 60*time.Second, "web-0 running v2 again", func() error {
			st = readState(t, client)
			if down := unavailable(st); len(down) > 0 {
				return fmt.Errorf("unavailable: %v", down)
			}
			if a := st.Assignments["web-0"]; !strings.HasSuffix(a.OutPath, "-v2") || st.Observed["web-0"].BootedOut != a.OutPath {
				return fmt.Errorf("web-0 assigned %s, booted %s", a.OutPath, st.Observed["web-0"].BootedOut)
			}
			return nil
		})
		after := webPIDs(t, c, st)
		for _, name := range []string{"web-1", "web-2", "web-3", "db"} {
			if after[name] != before[name] || before[name] == 0 {
				t.Errorf("%s restarted during the bad rollout (pid %d → %d)", name, before[name], after[name])
			}
		}
		if got := waveEvents(st, v3); !slices.Equal(got, []string{"wave 1: web-0"}) {
			t.Errorf("waves of v3: %q, want only the first", got)
		}
		roll := st.Rollouts["web"]
		if roll.Phase != replicated.RolloutReverted || roll.To != v3 || len(roll.Reverted) == 0 {
			t.Errorf("rollout %+v", roll)
		}
		t.Logf("wait for v3 said:\n%s", out)
		// rollout status says so, with the crash.
		stdout, _, code := cli(t, "", "rollout", "status", "web", "--server", c.nodes[2].api)
		if code != 0 || !strings.Contains(stdout, "web: REVERTED") || !strings.Contains(stdout, "crash-loops") {
			t.Errorf("rollout status: exit %d\n%s", code, stdout)
		}
	})

	t.Run("a push whose health check fails is reverted at its deadline, with the probe's error", func(t *testing.T) {
		// Nothing listens on port: the agents probe it on 127.0.0.1 (the
		// nodes run without the cluster network) and get refused.
		_, port, _ := strings.Cut(freeAddr(t), ":")
		health := `health = { tcp = { port = ` + port + `; }; interval = "300ms"; timeout = "200ms"; unhealthyAfter = 1; };`
		st := readState(t, client)
		before = webPIDs(t, c, st)
		bad := r.push(rolloutFlakeWith(4, "v3h", false, `{ maxUnavailable = 1; minHealthySeconds = 1; progressDeadline = "6s"; autoRevert = true; }`,
			health), "web v3h with a health check that fails")
		code, out := waitCmd(t, n1, bad)
		if code != 1 || !strings.Contains(out, "not healthy within 6s (progressDeadline)") || !strings.Contains(out, "unhealthy: ") {
			t.Fatalf("wait for the failing health check: exit %d, want 1 saying why\n%s", code, out)
		}
		var reverted string
		testkit.WaitFor(t, 60*time.Second, "the revert's event and web-0 back on v2", func() error {
			st = readState(t, client)
			for _, e := range st.Events {
				if e.Kind == replicated.EventRolloutReverted && strings.Contains(e.Message, bad) {
					reverted = e.Message
				}
			}
			if reverted == "" {
				return fmt.Errorf("no RolloutReverted event for %s", bad)
			}
			if down := unavailable(st); len(down) > 0 {
				return fmt.Errorf("unavailable: %v", down)
			}
			if o := st.Observed["web-0"]; !strings.HasSuffix(o.BootedOut, "-v2") {
				return fmt.Errorf("web-0 booted %s", o.BootedOut)
			}
			return nil
		})
		if !strings.Contains(reverted, "127.0.0.1:"+port) {
			t.Errorf("the revert's event does not carry the probe's error: %s", reverted)
		}
		after := webPIDs(t, c, st)
		for _, name := range []string{"web-1", "web-2", "web-3", "db"} {
			if after[name] != before[name] {
				t.Errorf("%s restarted during the failed rollout (pid %d → %d)", name, before[name], after[name])
			}
		}
		t.Logf("the revert's event: %s", reverted)
	})

	var v4 string
	t.Run("the next good push converges; wait exits 0", func(t *testing.T) {
		v4 = r.push(good("v4", rollOne), "web v4")
		if code, out := waitCmd(t, c.nodes[1], v4); code != 0 {
			t.Fatalf("wait for v4: exit %d\n%s", code, out)
		}
	})

	var v5 string
	t.Run("a canary changes alone until it is healthy", func(t *testing.T) {
		s := startSampler(t, client)
		v5 = r.push(good("v5", rollCanary), "web v5 with a canary")
		code, out := waitCmd(t, n1, v5)
		samples := s.halt()
		if code != 0 {
			t.Fatalf("wait for v5: exit %d\n%s", code, out)
		}
		checked := 0
		for _, sm := range samples {
			st := sm.st
			if st.Revision == nil || st.Revision.Commit != v5 {
				continue
			}
			target := st.Desired.VMs["web"].Runner.Out
			moved := 0
			for _, a := range st.Assignments {
				if a.Declared == "web" && a.OutPath == target {
					moved++
				}
			}
			if moved < 2 {
				continue
			}
			checked++
			// Waves after the canary come only once it is healthy: every
			// state that has them has the canary running the new runner.
			if o := st.Observed["web-0"]; o.Phase != replicated.PhaseRunning || o.BootedOut != target || o.Health != replicated.Healthy {
				t.Errorf("%d instances on v5 while the canary web-0 is %s booted %s", moved, o.Phase, o.BootedOut)
			}
			if down := unavailable(st); len(down) > 2 {
				t.Errorf("%v unavailable at once, maxUnavailable 2", down)
			}
		}
		st := readState(t, client)
		if got := waveEvents(st, v5); len(got) != 3 || got[0] != "wave 1: web-0" || got[1] != "wave 2: web-1, web-2" || got[2] != "wave 3: web-3" {
			t.Errorf("waves of v5: %q, want the canary, then two, then one", got)
		}
		t.Logf("%d samples, %d with more than the canary moved", len(samples), checked)
	})

	var v6 string
	t.Run("suspended, a push is fetched and pending, not applied; resume applies it", func(t *testing.T) {
		if stdout, stderr, code := cli(t, "", "suspend", "--server", n1.api); code != 0 {
			t.Fatalf("suspend: exit %d %s%s", code, stdout, stderr)
		}
		v6 = r.push(good("v6", rollOne), "web v6")
		testkit.WaitFor(t, 60*time.Second, "v6 listed as pending", func() error {
			var v api.RolloutsView
			if err := cliJSON(t, &v, "rollout", "status", "--server", c.nodes[2].api); err != nil {
				return err
			}
			if v.Following || v.Suspended == nil || v.Suspended.Pending != v6 {
				return fmt.Errorf("following %t, suspension %+v", v.Following, v.Suspended)
			}
			if v.Revision == nil || v.Revision.Commit != v5 {
				return fmt.Errorf("revision %+v was applied while suspended", v.Revision)
			}
			return nil
		})
		st := readState(t, client)
		if st.Revision.Commit != v5 {
			t.Fatalf("revision %s applied while suspended", st.Revision.Commit)
		}
		for name, a := range st.Assignments {
			if strings.HasSuffix(a.OutPath, "-v6") {
				t.Errorf("%s assigned v6 while suspended", name)
			}
		}
		stdout, _, _ := cli(t, "", "rollout", "status", "--server", n1.api)
		if !strings.Contains(stdout, "Following: SUSPENDED") || !strings.Contains(stdout, "pending: commit "+v6[:12]) {
			t.Errorf("rollout status while suspended:\n%s", stdout)
		}
		if stdout, stderr, code := cli(t, "", "resume", "--server", c.nodes[1].api); code != 0 {
			t.Fatalf("resume: exit %d %s%s", code, stdout, stderr)
		}
		if code, out := waitCmd(t, n1, v6); code != 0 {
			t.Fatalf("wait for v6 after resume: exit %d\n%s", code, out)
		}
	})

	t.Run("rollback to a revision two back, then resume", func(t *testing.T) {
		var rev uint64
		for _, h := range readState(t, client).History {
			if h.Commit == v4 {
				rev = h.ID
			}
		}
		if rev == 0 {
			t.Fatalf("no revision of v4 (%s) in the history", v4)
		}
		stdout, stderr, code := cli(t, "", "rollback", fmt.Sprint(rev), "--server", n1.api)
		if code != 0 || !strings.Contains(stdout, fmt.Sprintf("rollback to revision %d (commit %s)", rev, v4)) {
			t.Fatalf("rollback: exit %d %s%s", code, stdout, stderr)
		}
		if code, out := waitCmd(t, n1, v4); code != 0 {
			t.Fatalf("wait for the rollback to v4: exit %d\n%s", code, out)
		}
		st := readState(t, client)
		for name, a := range st.Assignments {
			if a.Declared == "web" && !strings.HasSuffix(a.OutPath, "-v4") {
				t.Errorf("%s runs %s after the rollback to v4", name, a.OutPath)
			}
		}
		if st.Suspended == nil || st.Suspended.Rollback == nil || st.Suspended.Rollback.Commit != v4 {
			t.Errorf("suspension after the rollback: %+v", st.Suspended)
		}
		if _, _, code := cli(t, "", "resume", "--server", n1.api); code != 0 {
			t.Fatalf("resume: exit %d", code)
		}
		if code, out := waitCmd(t, n1, v6); code != 0 {
			t.Fatalf("wait for v6 after the rollback's resume: exit %d\n%s", code, out)
		}
	})

	t.Run("a leader killed in the middle of a rollout: the next one finishes it", func(t *testing.T) {
		slow := `{ maxUnavailable = 1; minHealthySeconds = 2; progressDeadline = "90s"; autoRevert = true; }`
		v7 := r.push(good("v7", slow), "web v7")
		var killed *node
		testkit.WaitFor(t, 60*time.Second, "the rollout of v7 in its second wave", func() error {
			st := readState(t, client)
			roll, ok := st.Rollouts["web"]
			if !ok || roll.To != v7 || roll.Waves < 2 {
				return fmt.Errorf("rollout %+v", roll)
			}
			if roll.Done() {
				t.Fatalf("the rollout of v7 ended (%s) before the leader was killed", roll.Phase)
			}
			s, err := status(t, n1.api)
			if err != nil || s.Leader == 0 {
				return fmt.Errorf("leader unknown: %v", err)
			}
			killed = c.nodes[s.Leader-1]
			return nil
		})
		killed.kill9()
		var other *node
		for _, n := range c.nodes {
			if n != killed {
				other = n
				break
			}
		}
		// Another node leads before the killed one comes back (as systemd
		// would restart it; its runners ran on meanwhile).
		testkit.WaitFor(t, 60*time.Second, "another leader", func() error {
			s, err := status(t, other.api)
			if err != nil || s.Leader == 0 || s.Leader == killed.id {
				return fmt.Errorf("leader %d: %v", s.Leader, err)
			}
			return nil
		})
		c.restart(killed)
		if code, out := waitCmd(t, other, v7); code != 0 {
			t.Fatalf("wait for v7 after the leader was killed: exit %d\n%s", code, out)
		}
		s, err := status(t, other.api)
		if err != nil {
			t.Fatal(err)
		}
		st := readState(t, apiClient(t, other))
		if got := waveEvents(st, v7); !slices.Equal(got, []string{"wave 1: web-0", "wave 2: web-1", "wave 3: web-2", "wave 4: web-3"}) {
			t.Errorf("waves of v7 %q: each instance once, in order, across the leader change", got)
		}
		t.Logf("killed the leader, node %d; node %d leads now", killed.id, s.Leader)
	})

	// db, a VM without an update block that no push changed, never
	// restarted. (Node 1 may be the leader killed above: ask the others.)
	var st *replicated.State
	testkit.WaitFor(t, 30*time.Second, "a node answering with the state", func() error {
		var err error
		for _, n := range c.nodes {
			if st, err = apiClient(t, n).State(context.Background()); err == nil {
				return nil
			}
		}
		return err
	})
	if pid := webPIDs(t, c, st)["db"]; pid != dbPID {
		t.Errorf("db restarted (pid %d → %d)", dbPID, pid)
	}
}

// BenchmarkRolloutPushTo10Rolled measures, on three `blixard serve`
// processes, the time from `git push` of a new version of a 10-instance VM
// with an update block (minHealthySeconds 1) to every instance running it
// healthy with the rollout ended (as `blixard wait` sees it), for
// maxUnavailable 1 and 3.
func BenchmarkRolloutPushTo10Rolled(b *testing.B) {
	for _, maxUnavailable := range []int{1, 3} {
		b.Run(fmt.Sprintf("maxUnavailable=%d", maxUnavailable), func(b *testing.B) {
			update := fmt.Sprintf(`{ maxUnavailable = %d; minHealthySeconds = 1; progressDeadline = "5m"; autoRevert = true; }`, maxUnavailable)
			r := newRepo(b)
			first := r.push(rolloutFlake(10, "v0", false, update), "v0")
			c := startCluster(b, r.url(), []nodeSpec{{16, 8192, ""}, {16, 8192, ""}, {16, 8192, ""}})
			client := apiClient(b, c.nodes[0])
			waitConverged(b, client, first)
			var samples []time.Duration
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				commit := r.push(rolloutFlake(10, fmt.Sprintf("v%d", i+1), false, update), "bump")
				waitConverged(b, client, commit)
				samples = append(samples, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, samples, "")
		})
	}
}

// BenchmarkRolloutDetectionToRevert measures, for a pushed runner that
// crash-loops, the time from the first state in which its node reports the
// first wave's instance failed on the new runner (detection) to the
// committed revert, and to that instance running its old runner again.
func BenchmarkRolloutDetectionToRevert(b *testing.B) {
	r := newRepo(b)
	first := r.push(rolloutFlake(4, "good", false, rollOne), "good")
	c := startCluster(b, r.url(), []nodeSpec{{8, 4096, ""}, {8, 4096, ""}, {8, 4096, ""}})
	client := apiClient(b, c.nodes[0])
	waitConverged(b, client, first)
	good := readStateTB(b, client).Assignments["web-0"].OutPath
	var toRevert, toRunning []time.Duration
	b.ResetTimer()
	for i := range b.N {
		commit := r.push(rolloutFlake(4, fmt.Sprintf("bad%d", i), true, rollOne), "bad")
		var detected, reverted time.Time
		testkit.WaitFor(b, 120*time.Second, "the crash loop reverted and web-0 running its old runner", func() error {
			st, err := client.State(context.Background())
			if err != nil {
				return err
			}
			now := time.Now()
			a, o := st.Assignments["web-0"], st.Observed["web-0"]
			roll := st.Rollouts["web"]
			if detected.IsZero() && roll.To == commit && o.Phase == replicated.PhaseFailed && o.BootedOut == a.OutPath && a.OutPath != good {
				detected = now
			}
			if reverted.IsZero() && roll.To == commit && roll.Phase == replicated.RolloutReverted {
				reverted = now
				if detected.IsZero() {
					detected = now // the failure and the revert came in one read
				}
			}
			if reverted.IsZero() || o.Phase != replicated.PhaseRunning || o.BootedOut != good {
				return fmt.Errorf("rollout %s, web-0 %s booted %s", roll.Phase, o.Phase, o.BootedOut)
			}
			toRevert = append(toRevert, reverted.Sub(detected))
			toRunning = append(toRunning, now.Sub(detected))
			return nil
		})
	}
	b.StopTimer()
	reportPercentiles(b, toRevert, "revert-")
	reportPercentiles(b, toRunning, "running-")
}

func readStateTB(tb testing.TB, c *api.Client) *replicated.State {
	tb.Helper()
	st, err := c.State(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// waitConverged polls GET /v1/converge (what `blixard wait` asks) until
// commit converged; it fails on a failed rollout.
func waitConverged(tb testing.TB, c *api.Client, commit string) {
	tb.Helper()
	testkit.WaitFor(tb, 5*time.Minute, "commit "+commit[:12]+" converged", func() error {
		v, err := c.Converge(context.Background(), commit)
		if err != nil {
			return err
		}
		if v.State == "failed" {
			tb.Fatalf("commit %s failed: %s", commit, v.Message)
		}
		if v.State != "converged" {
			return fmt.Errorf("%s: %s", v.State, v.Message)
		}
		return nil
	})
}

func reportPercentiles(b *testing.B, samples []time.Duration, prefix string) {
	if len(samples) == 0 {
		return
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	b.ReportMetric(float64(samples[len(samples)/2].Milliseconds()), prefix+"p50-ms")
	b.ReportMetric(float64(samples[len(samples)-1].Milliseconds()), prefix+"max-ms")
}
