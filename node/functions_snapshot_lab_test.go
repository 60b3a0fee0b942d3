package node_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/tests/microvm"
)

// The snapshot lab: the network lab's three `blixard serve --network`
// nodes (nodes 1 and 2 run instances, node 3 has no vCPUs) with two
// functions served by the demo's real qemu guest (testdata/fnsnap):
// snap (snapshot = true) and plain (the same guest under another name,
// snapshot = false).

func snapLabFiles(t *testing.T) map[string][]byte {
	t.Helper()
	// The guest agent beside the flake: a path in it, so nix copies it
	// into the store with the flake.
	files := map[string][]byte{"settings.nix": fmt.Appendf(nil, "{ kernelDir = %s; guestAgent = ./blixard-guest; }\n", strconv.Quote(microvm.KernelDir()))}
	read := func(name, path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	read("flake.nix", filepath.Join("testdata", "fnsnap", "flake.nix"))
	read("blixard-guest", microvm.GuestAgent(t))
	for _, f := range []string{"microvm.nix", "build-runner.sh", "guest-init.sh"} {
		read(f, filepath.Join(microvm.DemoDir(), f))
	}
	return files
}

// nodeLog is node i's log so far.
func (l *lab) nodeLog(i int) string {
	b, _ := os.ReadFile(filepath.Join(l.root, fmt.Sprintf("n%d.log", i)))
	return string(b)
}

// coldStartSamples is how many cold starts of each function (full boot,
// restore) the snapshot lab times.
const coldStartSamples = 3

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func rounded(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// logLines are the lines of log containing s.
func logLines(log, s string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

// identAnswer is a guest's /cgi-bin/ident through a gateway.
type identAnswer struct {
	mac, host, addr, bootID, date string
	err                           error
}

// ident asks snap's guest who it is, through node i's gateway.
func (l *lab) ident(i int, path string) identAnswer {
	code, body, err := l.fnGet(i, "snap.lab.test", path, 3*time.Minute)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET %s: %d %q", path, code, body)
	}
	if err != nil {
		return identAnswer{err: err}
	}
	f := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			f[k] = v
		}
	}
	a := identAnswer{mac: f["mac"], host: f["host"], addr: f["addr"], bootID: f["boot_id"], date: f["date"]}
	if a.mac == "" || a.host == "" || a.addr == "" || a.bootID == "" {
		a.err = fmt.Errorf("GET %s: %q is not /cgi-bin/ident's answer", path, body)
	}
	return a
}

// fnNode is the node running fn's one instance (0: none).
func (l *lab) fnNode(at int, fn string) (int, error) {
	v, err := l.functions(at)
	if err != nil {
		return 0, err
	}
	f := fnView(v, fn)
	if len(f.Instances) != 1 {
		return 0, fmt.Errorf("%s has instances %+v, want one", fn, f.Instances)
	}
	return int(f.Instances[0].Node), nil
}

// crash kills node i as a dead host would lose it: SIGKILL to its serve,
// and to the qemu of every instance it ran (their pid files).
func (l *lab) crash(i int) {
	l.t.Helper()
	l.mu.Lock()
	cmd, done := l.cmds[i], l.done[i]
	delete(l.cmds, i)
	l.mu.Unlock()
	if cmd == nil {
		l.t.Fatalf("node %d does not run", i)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	m, _ := filepath.Glob(filepath.Join(l.dir(i, "state"), "*", "qemu.pid"))
	pool, _ := filepath.Glob(filepath.Join(l.dir(i, "state"), ".pool", "*", "qemu.pid"))
	for _, f := range append(m, pool...) {
		b, _ := os.ReadFile(f)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmdline), "qemu-system") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// startedAhead counts the runners node i's restore pool started ahead for
// instance that reached their QMP socket, waiting for a restore.
func (l *lab) startedAhead(i int, instance string) int {
	return strings.Count(l.nodeLog(i), fmt.Sprintf(`msg="restored ahead" node=%d component=agent node=%d component=restore-pool vm=%s `, i, i, instance))
}

// waitStartedAhead waits until node i's restore pool has a runner waiting
// for instance's restore, started after the first after of them, whose
// qemu works in STATE/.pool/INSTANCE.
func (l *lab) waitStartedAhead(i int, instance string, after int) {
	l.t.Helper()
	dir := filepath.Join(l.dir(i, "state"), nodeagent.PoolDir, instance)
	testkit.WaitFor(l.t, time.Minute, "node "+strconv.Itoa(i)+"'s restore pool holding a runner for "+instance, func() error {
		if n := l.startedAhead(i, instance); n <= after {
			return fmt.Errorf("%d started ahead so far", n)
		}
		procs, _ := filepath.Glob("/proc/[0-9]*/cwd")
		for _, p := range procs {
			if cwd, err := os.Readlink(p); err == nil && cwd == dir {
				if cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline")); strings.Contains(string(cmdline), "qemu-system") {
					return nil
				}
			}
		}
		return fmt.Errorf("no qemu works in %s", dir)
	})
}

// TestFunctionsSnapshotColdStartsAndNodeLoss runs snapshot cold starts
// for real: the first request to snap boots its guest, which the agent
// saves once healthy and restores (the request is answered by the restored
// guest); after scale to zero the next requests restore from the
// snapshot (timed against plain's full boot of the same guest, both
// through the gateway, logged); a held request makes snap scale out to a
// second instance, restored from the snapshot of the first with its own
// MAC, address, hostname and clock (the guests' /cgi-bin/ident), and both
// answer at once; then the node running snap's instances dies and the next
// request, through another node's gateway, is served by a new instance on
// the other node.
func TestFunctionsSnapshotColdStartsAndNodeLoss(t *testing.T) {
	microvm.Require(t)
	l := newLab(t, labConfig{
		files: snapLabFiles(t),
		vcpu: func(i int) int {
			if i == 3 {
				return 0
			}
			return 2
		},
		// The runners' builds read host files (qemu, the kernel): no sandbox.
		env: []string{"NIX_CONFIG=" + strings.TrimPrefix(os.Getenv("NIX_CONFIG")+"\n", "\n") + microvm.NixConfig},
		// Two guests restored ahead on node 1: snap's next two instances
		// (its restoreAhead), none of snap2's (restoreAhead = 0).
		serveArgs: func(i int) []string {
			if i == 1 {
				return []string{"--restore-pool", "2"}
			}
			return nil
		},
	})
	l.startAll(1, 5*time.Minute)

	// Requests go to node 1's gateway: an instance is placed on the
	// requesting node when it fits, so every cold start of this part is on
	// node 1, where the snapshot is.
	get := func(at int, fn, what string, timeout time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		code, body, err := l.fnGet(at, fn+".lab.test", "/", timeout)
		took := time.Since(start)
		guest := strings.TrimSuffix(fn, "2") // snap2 runs snap's guest
		if err != nil || code != http.StatusOK || !strings.HasPrefix(body, "hello from "+guest+", version 1") {
			t.Fatalf("%s: %d %q %v; want 200 and the guest's answer", what, code, body, err)
		}
		t.Logf("%s: 200 after %s", what, took.Round(time.Millisecond))
		return took
	}
	idle := func(fn string) {
		t.Helper()
		testkit.WaitFor(t, 90*time.Second, fn+" scaled to zero, no runner left", func() error {
			v, err := l.functions(1)
			if err != nil {
				return err
			}
			if f := fnView(v, fn); f.Want != 0 || len(f.Instances) != 0 {
				return fmt.Errorf("want %d, instances %+v", f.Want, f.Instances)
			}
			if ps := l.fnRunners(fn); len(ps) > 0 {
				return fmt.Errorf("processes left: %v", ps)
			}
			return nil
		})
	}
	restores := func(i int) int { return strings.Count(l.nodeLog(i), `msg="restored from snapshot"`) }
	saves := func(i int) int { return strings.Count(l.nodeLog(i), `msg="saved snapshot"`) }

	// plain's first cold start builds its runner: warm it, so the timed
	// cold start below is a boot only.
	get(1, "plain", "plain: first request (build and boot)", 5*time.Minute)
	idle("plain")
	boot := get(1, "plain", "plain: cold start (full boot)", 2*time.Minute)
	idle("plain")

	first := get(1, "snap", "snap: first request (build, boot, save, restore)", 5*time.Minute)
	if n, err := l.fnNode(1, "snap"); err != nil || n != 1 {
		t.Fatalf("snap runs on node %d (%v); want node 1, the requesting node", n, err)
	}
	if saves(1) != 1 || restores(1) != 1 {
		t.Fatalf("node 1 logged %d saves and %d restores after the first request; want 1 and 1", saves(1), restores(1))
	}
	snaps, _ := filepath.Glob(filepath.Join(l.dir(1, "state"), ".snapshots", "*", "manifest.json"))
	if len(snaps) != 1 {
		t.Fatalf("node 1's snapshot store holds %v; want one snapshot", snaps)
	}
	// The console from here on: the runner started ahead prints its first
	// line when the pool starts it, after the scale to zero.
	console := filepath.Join(l.dir(1, "state"), "fn-snap-0", "console.log")
	before, _ := os.ReadFile(console)
	ahead0 := l.startedAhead(1, "fn-snap-0")
	idle("snap")

	// Cold start again: from the snapshot, no kernel boot on the console,
	// into the runner node 1's restore pool started ahead for fn-snap-0.
	l.waitStartedAhead(1, "fn-snap-0", ahead0)
	restored := get(1, "snap", "snap: cold start (restore into a runner started ahead)", 2*time.Minute)
	if saves(1) != 1 || restores(1) != 2 {
		t.Fatalf("node 1 logged %d saves and %d restores; want 1 and 2 (the second cold start restores)", saves(1), restores(1))
	}
	after, _ := os.ReadFile(console)
	if len(after) < len(before) {
		before = nil // rotated
	}
	if added := string(after[len(before):]); strings.Contains(added, "Linux version") || !strings.Contains(added, "snapshot restore") {
		t.Errorf("the restored cold start's console shows a boot, or no restore:\n%s", added)
	}
	// The pool starts a runner for fn-snap-0 again once snap scaled to zero.
	ahead0 = l.startedAhead(1, "fn-snap-0")
	idle("snap")
	// snap2: the same runner and snapshot, its runner spawned at the
	// request (restoreAhead = 0: node 1's pool holds snap's instances only).
	unpooled := get(1, "snap2", "snap2: cold start (restore into a runner spawned)", 2*time.Minute)
	// More samples of the three, in turn, each from zero instances.
	boots, restoreds, unpooleds := []time.Duration{boot}, []time.Duration{restored}, []time.Duration{unpooled}
	for k := 2; k <= coldStartSamples; k++ {
		idle("snap2")
		boots = append(boots, get(1, "plain", fmt.Sprintf("plain: cold start %d (full boot)", k), 2*time.Minute))
		idle("plain")
		l.waitStartedAhead(1, "fn-snap-0", ahead0)
		restoreds = append(restoreds, get(1, "snap", fmt.Sprintf("snap: cold start %d (restore into a runner started ahead)", k), 2*time.Minute))
		ahead0 = l.startedAhead(1, "fn-snap-0")
		idle("snap")
		unpooleds = append(unpooleds, get(1, "snap2", fmt.Sprintf("snap2: cold start %d (restore into a runner spawned)", k), 2*time.Minute))
	}
	idle("snap2")
	if saves(1) != 1 || restores(1) != 1+2*coldStartSamples {
		t.Fatalf("node 1 logged %d saves and %d restores; want 1 and %d", saves(1), restores(1), 1+2*coldStartSamples)
	}
	log1 := l.nodeLog(1)
	ahead := logLines(log1, `msg="restored from snapshot" node=1 component=agent node=1 vm=fn-snap-0`)
	spawned := logLines(log1, `msg="restored from snapshot" node=1 component=agent node=1 vm=fn-snap2-0`)
	// The first of fn-snap-0's restores followed its save: no snapshot
	// existed for the pool to start a runner for.
	if n := len(logLines(strings.Join(ahead, "\n"), "started_ahead=true")); n != coldStartSamples || len(ahead) != coldStartSamples+1 {
		t.Errorf("fn-snap-0 restored %d times, %d of them into a runner started ahead; want %d and %d:\n%s",
			len(ahead), n, coldStartSamples+1, coldStartSamples, strings.Join(ahead, "\n"))
	}
	// snap2's samples compare restores into a spawned runner; when snap
	// had no spare for a moment (its instance still stopping) the pool
	// started fn-snap2-0's runner instead: such a sample is left out.
	if len(spawned) != coldStartSamples {
		t.Fatalf("fn-snap2-0 restored %d times; want %d:\n%s", len(spawned), coldStartSamples, strings.Join(spawned, "\n"))
	}
	var kept []time.Duration
	for k, line := range spawned {
		if strings.Contains(line, "started_ahead=true") {
			t.Logf("snap2 sample %d was restored into a runner started ahead: left out of the comparison", k+1)
			continue
		}
		kept = append(kept, unpooleds[k])
	}
	if len(kept) == 0 {
		t.Fatalf("every snap2 sample was restored into a runner started ahead; none into a spawned runner to compare")
	}
	unpooleds = kept
	// The same on node 1's /metrics.
	fams := scrape(t, l.net.Addr(1)+":7070")
	if n, ok := value(fams, "blixard_snapshot_restore_duration_seconds", map[string]string{"result": "ok", "runner": "started_ahead"}); !ok || n < coldStartSamples {
		t.Errorf("node 1's /metrics counts %v restores into runners started ahead (found %t); want at least %d", n, ok, coldStartSamples)
	}
	if _, ok := value(fams, "blixard_restore_pool_runners", nil); !ok {
		t.Errorf("node 1's /metrics has no blixard_restore_pool_runners")
	}
	mb, mr, mu := median(boots), median(restoreds), median(unpooleds)
	t.Logf("cold start to first byte through the gateway (%d samples each): full boot (plain) %v, median %s; "+
		"snapshot restore into a runner started ahead (snap) %v, median %s: %.1f× faster; "+
		"snapshot restore into a runner spawned (snap2) %v, median %s: %.1f× faster; first snap request (boot+save+restore) %s",
		coldStartSamples, rounded(boots), mb.Round(time.Millisecond), rounded(restoreds), mr.Round(time.Millisecond), float64(mb)/float64(mr),
		rounded(unpooleds), mu.Round(time.Millisecond), float64(mb)/float64(mu), first.Round(time.Millisecond))
	for _, line := range append(ahead, spawned...) {
		t.Logf("node 1: %s", line)
	}

	// Scale-out: a held request keeps snap's instance busy (concurrency 1),
	// so the next one makes the gateway ask for a second instance, which
	// node 1 (the requesting node, where it fits) restores from the
	// snapshot saved from fn-snap-0. Each answers with its own committed
	// MAC, address and hostname, and both answer at once.
	restoresBefore := restores(1)
	// snap's second instance has its guest restored ahead too
	// (restoreAhead = 2): the burst's second request finds it.
	l.waitStartedAhead(1, "fn-snap-1", 0)
	held := make(chan identAnswer, 1)
	go func() { held <- l.ident(1, "/cgi-bin/ident?sleep=20") }()
	testkit.WaitFor(t, 2*time.Minute, "the held request in flight on snap's instance", func() error {
		v, err := l.functions(1)
		if err != nil {
			return err
		}
		if f := fnView(v, "snap"); f.Local == nil || f.Local.InFlight < 1 {
			return fmt.Errorf("node 1's gateway: %+v", f.Local)
		}
		return nil
	})
	start := time.Now()
	second := l.ident(1, "/cgi-bin/ident")
	scaleOut := time.Since(start)
	firstAns := <-held
	for _, a := range []identAnswer{firstAns, second} {
		if a.err != nil {
			t.Fatalf("GET /cgi-bin/ident: %v", a.err)
		}
	}
	t.Logf("scale-out: the second instance, restored from the first's snapshot, answered after %s (cold start through the gateway)", scaleOut.Round(time.Millisecond))
	// The agent set the copy's clock after the restore: a clock left as
	// saved (minutes ago, at the first request) would be behind.
	if d, err := strconv.ParseInt(second.date, 10, 64); err != nil || d < start.Unix()-1 {
		t.Errorf("the second instance's clock says %q, before the request that started it (%d): its clock was not set", second.date, start.Unix())
	}
	if saves(1) != 1 || restores(1) <= restoresBefore {
		t.Fatalf("node 1 logged %d saves and %d restores (%d before the scale-out); want still 1 save and a restore for the second instance",
			saves(1), restores(1), restoresBefore)
	}
	st, err := l.api(1).State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byHost := map[string]identAnswer{}
	for _, a := range []identAnswer{firstAns, second} {
		id, ok := st.Network.Identities[a.host]
		if !ok {
			t.Fatalf("an instance answers as host %q, which is no instance's committed hostname (the saved guest's, kept?): %+v", a.host, a)
		}
		if a.mac != id.MAC.String() || a.addr != id.Address.String() {
			t.Errorf("%s answers mac=%s addr=%s; its committed identity is %s %s", a.host, a.mac, a.addr, id.MAC, id.Address)
		}
		if as, ok := st.Assignments[a.host]; !ok || as.Node != 1 {
			t.Errorf("%s is assigned to node %d; want node 1 (the requesting node, which holds the snapshot)", a.host, as.Node)
		}
		byHost[a.host] = a
	}
	if len(byHost) != 2 || firstAns.mac == second.mac || firstAns.addr == second.addr {
		t.Fatalf("the two instances answer as %+v and %+v: want two identities", firstAns, second)
	}
	if firstAns.bootID != second.bootID {
		t.Errorf("boot ids %s and %s: both guests are copies of the one snapshot and keep its boot id (it changes only with a boot)", firstAns.bootID, second.bootID)
	}
	// Both at once: concurrency 1 and two ready instances, so two requests
	// held together go one to each.
	both := make(chan identAnswer, 2)
	for range 2 {
		go func() { both <- l.ident(1, "/cgi-bin/ident?sleep=2") }()
	}
	seen := map[string]bool{}
	for range 2 {
		a := <-both
		if a.err != nil {
			t.Fatalf("two requests at once: %v", a.err)
		}
		if _, ok := byHost[a.host]; !ok || a.mac != byHost[a.host].mac {
			t.Errorf("two requests at once: an answer from %+v, want one of the two instances", a)
		}
		seen[a.host] = true
	}
	if len(seen) != 2 {
		t.Errorf("two requests at once were answered by %v; want both instances", seen)
	}
	t.Logf("identities: %s mac=%s addr=%s and %s mac=%s addr=%s, boot id %s",
		firstAns.host, firstAns.mac, firstAns.addr, second.host, second.mac, second.addr, second.bootID)
	secondRestores := logLines(l.nodeLog(1), `msg="restored from snapshot" node=1 component=agent node=1 vm=fn-snap-1`)
	for _, line := range secondRestores {
		t.Logf("node 1: %s", line)
	}
	if len(secondRestores) != 1 || !strings.Contains(secondRestores[0], "started_ahead=true") {
		t.Errorf("fn-snap-1 was restored %d times, not once into the guest node 1's pool restored ahead for it (restoreAhead = 2)",
			len(secondRestores))
	}
	idle("snap")

	// Node 1, running snap's only instance, dies with its guest. The next
	// request, through node 2's gateway, is served by a new instance on
	// node 2 once the leader has judged node 1 down (--node-timeout):
	// until then the gateway may answer 504 (its queue timeout), and the
	// client asks again.
	l.crash(1)
	killed := time.Now()
	var code int
	var body string
	attempts := 0
	testkit.WaitFor(t, 5*time.Minute, "a request through node 2 served by a new instance", func() error {
		attempts++
		var err error
		code, body, err = l.fnGet(2, "snap.lab.test", "/", 2*time.Minute)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
	if !strings.HasPrefix(body, "hello from snap, version 1") {
		t.Fatalf("after node 1 died: %d %q", code, body)
	}
	v, err := l.functions(2)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range fnView(v, "snap").Instances {
		if in.Node != 2 {
			t.Fatalf("after node 1 died snap has instance %+v; want every instance on node 2", in)
		}
	}
	t.Logf("node 1 killed: a request through node 2 answered 200 after %s (%d attempts; node timeout 30s); node 2 saved %d and restored %d snapshots",
		time.Since(killed).Round(time.Millisecond), attempts, saves(2), restores(2))
}
