package node_test

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/stats"
	"github.com/blixard/blixard/internal/testkit"
)

// overheadSamples is how many cold starts TestFunctionsColdStartOverhead
// measures, one function each, and overheadSpacing the time between them:
// long enough that one cold start's orchestration is over before the next
// request arrives (the guests then start side by side).
const (
	overheadSamples = 16
	overheadSpacing = 300 * time.Millisecond
)

// TestFunctionsColdStartOverhead measures the orchestration of cold
// starts: overheadSamples functions of the same runner (already in the
// store), each cold-started by a request to node 3, which cannot run an
// instance; from the request's arrival until the runner on node 1 or 2 was
// exec'd (the agent's "runner exec'd" log line; also until the runner's
// first command, its exec.ns): the gateway's scale-out, its Raft commit
// (with the plan riding along), the agent's pass, the network identity and
// the spawn. Three rounds: new instance names 300 ms apart, then, after
// every function scaled to zero, the same names again, then again one at
// a time. Every request must be answered by its function's instance.
func TestFunctionsColdStartOverhead(t *testing.T) {
	var extra strings.Builder
	for i := range overheadSamples {
		fmt.Fprintf(&extra, `      functions.o%d = { inherit runner; vcpu = 1; memMiB = 32; http = { host = "o%d.lab.test"; path = "/"; port = 8080; };
        maxInstances = 1; idleTimeout = "2s"; };
`, i, i)
	}
	l := newFnLabWith(t, extra.String(), func(i int) int {
		if i == 3 {
			return 0
		}
		return 16
	})
	l.startAll(3, 3*time.Minute)
	// The runner realised once before the samples: a cold start that
	// builds measures nix, not the orchestration.
	if code, body, err := l.fnGet(3, "fn.lab.test", "/", 60*time.Second); err != nil || code != http.StatusOK {
		t.Fatalf("warm-up cold start: %d %q %v", code, body, err)
	}
	scaledToZero := func() {
		testkit.WaitFor(t, time.Minute, "every o* function scaled to zero, its runner gone", func() error {
			for i := range overheadSamples {
				if left := l.fnRunners(fmt.Sprintf("o%d", i)); len(left) > 0 {
					return fmt.Errorf("o%d: %v", i, left)
				}
			}
			return nil
		})
	}
	l.overheadRound(t, "new instance names", false)
	scaledToZero()
	l.overheadRound(t, "the same names after scale to zero", false)
	scaledToZero()
	l.overheadRound(t, "one at a time, each after the one before answered", true)
	scaledToZero()
	l.quietRound(t, scaledToZero, 3)
	scaledToZero()
	l.quietRound(t, scaledToZero, 1)

	// The new instances' taps and identities came through the network's
	// fast lane (asking the kernel about the new taps alone), not only
	// through full passes, and found their taps made ahead (spares: no tap
	// operation, and no question to the kernel when the last Sync made
	// them); how many is timing, so it is logged.
	lanes, ahead, trusted := 0, 0, 0
	for i := 1; i <= 2; i++ {
		b, err := os.ReadFile(filepath.Join(l.root, fmt.Sprintf("n%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "network identities ready (fast lane)") {
				lanes++
				if strings.HasSuffix(line, " tap_ops=0") {
					ahead++
				}
				if strings.Contains(line, " taps_synced=1 ") {
					trusted++
				}
			}
		}
	}
	t.Logf("fast lanes taken on nodes 1 and 2: %d (for %d cold starts), %d with the tap made ahead, %d of them without asking the kernel",
		lanes, 3*overheadSamples, ahead, trusted)
	if lanes == 0 {
		t.Error("no new instance's identity came through the network's fast lane")
	}
	if ahead == 0 {
		t.Error("no new instance found its tap made ahead")
	}
	if trusted == 0 {
		t.Error("no fast lane trusted the spare tap the last Sync made (every one asked the kernel)")
	}
}

// overheadRound cold-starts every o* function once, overheadSpacing
// apart (their guests start side by side), or, sequential, each once the
// one before answered (the orchestration alone, without other guests
// starting beside it), and logs the orchestration's distribution.
func (l *lab) overheadRound(t *testing.T, what string, sequential bool) {
	t.Helper()
	arrived := make([]time.Time, overheadSamples)
	var wg sync.WaitGroup
	errs := make([]error, overheadSamples)
	for i := range overheadSamples {
		if sequential {
			wg.Wait()
		}
		arrived[i] = time.Now()
		wg.Go(func() {
			host := fmt.Sprintf("o%d.lab.test", i)
			code, body, err := l.fnGet(3, host, "/", 60*time.Second)
			if err == nil && (code != http.StatusOK || !strings.HasPrefix(body, fmt.Sprintf("hello from fn-o%d-0", i))) {
				err = fmt.Errorf("%d %q", code, body)
			}
			if err != nil {
				errs[i] = fmt.Errorf("%s: %s: %w; want 200 from fn-o%d-0", what, host, err, i)
			}
		})
		if !sequential {
			time.Sleep(overheadSpacing)
		}
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// Two ends: the agent's exec of the runner (its log line "runner
	// exec'd", written once exec.Cmd.Start returned: the orchestration the
	// issue bounds) and the runner's own first command (its exec.ns: the
	// shell's start and a fork of date(1) more).
	var toExec, toFirst []time.Duration
	var samples []string
	for i := range overheadSamples {
		name := fmt.Sprintf("fn-o%d-0", i)
		first, ok := l.instanceExec(name)
		if !ok || first.Before(arrived[i]) {
			t.Errorf("%s: %s left no exec.ns on node 1 or 2 after its request", what, name)
			continue
		}
		exec, ok := l.agentExec(t, name, arrived[i])
		if !ok {
			t.Errorf("%s: no node logged \"runner exec'd\" for %s after its request", what, name)
			continue
		}
		toExec, toFirst = append(toExec, exec.Sub(arrived[i])), append(toFirst, first.Sub(arrived[i]))
		// Each sample, to find it in the node logs (BLIXARD_LAB_LOGS).
		samples = append(samples, fmt.Sprintf("o%d %s→%s/%s", i, arrived[i].Format("15:04:05.000000"),
			exec.Sub(arrived[i]).Round(100*time.Microsecond), first.Sub(arrived[i]).Round(100*time.Microsecond)))
	}
	if len(toExec) == 0 {
		return
	}
	t.Logf("samples, %s (arrival→exec'd/first command): %s", what, strings.Join(samples, ", "))
	t.Logf("cold start orchestration, %s (request arrival at node 3 → runner exec'd on node 1 or 2), %d samples: %s",
		what, len(toExec), distribution(toExec))
	t.Logf("the same to the runner's first command (its shell started, date(1) forked): %s", distribution(toFirst))
}

// quietSamples is how many cold starts quietRound measures by default
// (BLIXARD_QUIET_SAMPLES sets another number: each takes ~3 s, the
// function's idle time and stop included).
const quietSamples = 8

// quietRound cold-starts o* functions one at a time through node
// gateway's gateway, each only once every instance of the round before it
// scaled to zero, its runner gone and the network's spare taps settled:
// the orchestration with nothing else starting or stopping on the nodes
// (in the other rounds earlier instances stop while later ones start:
// their taps' deletion holds the kernel's RTNL lock, which every node of
// this lab shares, and their processes exit on the same two cores).
// Through node 3, which cannot run an instance, every instance starts on
// node 1 or 2, told by node 3's ahead notice; through node 1 it starts
// there; both ahead of the scale-out's commit (speculate.go). A request's
// arrival is when the client had written it to its connection (its own
// work before that is logged apart).
func (l *lab) quietRound(t *testing.T, scaledToZero func(), gateway int) {
	t.Helper()
	samples := quietSamples
	if v, err := strconv.Atoi(os.Getenv("BLIXARD_QUIET_SAMPLES")); err == nil && v > 0 {
		samples = v
	}
	where := "at node 3 → runner exec'd on node 1 or 2, started ahead on node 3's notice"
	if gateway != 3 {
		where = fmt.Sprintf("at node %d → runner exec'd there, started ahead of the commit", gateway)
	}
	// The client's connection to that gateway is made before the first
	// sample (an unknown host: 404), so that no sample counts its setup.
	if code, _, err := l.fnGet(gateway, "nothing.lab.test", "/", 10*time.Second); err != nil || code != http.StatusNotFound {
		t.Fatalf("node %d's gateway, unknown host: %d %v; want 404", gateway, code, err)
	}
	var toExec, toFirst, fromCall []time.Duration
	type sample struct {
		fn      string
		arrived time.Time
		took    time.Duration
	}
	var all []sample
	for k := range samples {
		i := k % overheadSamples
		name := fmt.Sprintf("fn-o%d-0", i)
		scaledToZero()
		time.Sleep(time.Second) // the spare taps made again, the stops' processes reaped
		called := time.Now()
		code, body, arrived, err := l.fnGetSent(gateway, fmt.Sprintf("o%d.lab.test", i), "/", 60*time.Second)
		if err == nil && (code != http.StatusOK || !strings.HasPrefix(body, "hello from "+name)) {
			err = fmt.Errorf("%d %q", code, body)
		}
		if err == nil && arrived.IsZero() {
			err = errors.New("the client never wrote the request")
		}
		if err != nil {
			t.Errorf("quiet round through node %d: o%d: %v; want 200 from %s", gateway, i, err, name)
			continue
		}
		first, ok := l.instanceExec(name)
		exec, ok2 := l.agentExec(t, name, arrived)
		if !ok || !ok2 || first.Before(arrived) {
			t.Errorf("quiet round through node %d: %s left no exec.ns or \"runner exec'd\" line after its request", gateway, name)
			continue
		}
		toExec, toFirst = append(toExec, exec.Sub(arrived)), append(toFirst, first.Sub(arrived))
		fromCall = append(fromCall, exec.Sub(called))
		all = append(all, sample{fmt.Sprintf("o%d", i), arrived, exec.Sub(arrived)})
	}
	if len(toExec) == 0 {
		return
	}
	// The slowest samples, to find in the nodes' logs (BLIXARD_LAB_LOGS).
	slices.SortFunc(all, func(a, b sample) int { return cmp.Compare(b.took, a.took) })
	var slowest []string
	for _, s := range all[:min(5, len(all))] {
		slowest = append(slowest, fmt.Sprintf("%s %s→%s", s.fn, s.arrived.UTC().Format("15:04:05.000000"), s.took.Round(100*time.Microsecond)))
	}
	t.Logf("slowest samples through node %d (arrival→exec'd): %s", gateway, strings.Join(slowest, ", "))
	t.Logf("cold start orchestration, one at a time on quiet nodes (request arrival %s), %d samples: %s",
		where, len(toExec), distribution(toExec))
	t.Logf("the same to the runner's first command: %s", distribution(toFirst))
	// The client's own work before its request was on the wire (the Go
	// HTTP client in this busy test process: 0.3–1.2 ms) is no part of
	// the node's; with it, for comparison with the runs before this
	// measured from the client's call.
	t.Logf("the same from the client's call, before it wrote the request: %s", distribution(fromCall))
	// Which of them started ahead of their commit is in the nodes' logs:
	// the gateway's own (committed) or, through node 3, the notice's
	// receiver's (held); a receiver whose replica plans otherwise starts
	// nothing. The notices' lines count every round through node 3 (the
	// earlier rounds' too), so this round's count is not asserted exactly.
	logged, nodes := "instances started ahead of their scale-out's commit", []int{gateway}
	if gateway == 3 {
		logged, nodes = "instances started ahead of a peer's scale-out", []int{1, 2}
	}
	ahead := 0
	for _, i := range nodes {
		b, err := os.ReadFile(filepath.Join(l.root, fmt.Sprintf("n%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, logged) && (strings.Contains(line, " committed=true") || strings.Contains(line, " held=true")) {
				ahead++
			}
		}
	}
	t.Logf("instances started ahead of their commit on nodes %v: %d (%d cold starts through node %d in this round)", nodes, ahead, samples, gateway)
	if ahead == 0 {
		t.Errorf("no cold start through node %d started its instance ahead of the scale-out's commit", gateway)
	}
}

// distribution is "min, p50, p90, p99, max" of ds (nearest rank).
func distribution(ds []time.Duration) string {
	at := func(q float64) time.Duration {
		return stats.Quantile(ds, q).Round(100 * time.Microsecond)
	}
	return fmt.Sprintf("min %s, p50 %s, p90 %s, p99 %s, max %s", at(0), at(0.5), at(0.9), at(0.99), at(1))
}

// agentExec is when node 1 or 2 first logged "runner exec'd" for instance
// name after after (debug lines carry microseconds).
func (l *lab) agentExec(t *testing.T, name string, after time.Time) (time.Time, bool) {
	t.Helper()
	var first time.Time
	for i := 1; i <= 2; i++ {
		b, err := os.ReadFile(filepath.Join(l.root, fmt.Sprintf("n%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `msg="runner exec'd"`) || !strings.Contains(line+" ", " vm="+name+" ") {
				continue
			}
			ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err == nil && !at.Before(after) && (first.IsZero() || at.Before(first)) {
				first = at
			}
		}
	}
	return first, !first.IsZero()
}

// instanceExec is when instance name's runner was last exec'd on node 1
// or 2 (the newer exec.ns: an instance may start on the other node the
// next time).
func (l *lab) instanceExec(name string) (time.Time, bool) {
	var last time.Time
	for i := 1; i <= 2; i++ {
		b, err := os.ReadFile(filepath.Join(l.dir(i, "state"), name, "exec.ns"))
		if err != nil {
			continue
		}
		if ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && time.Unix(0, ns).After(last) {
			last = time.Unix(0, ns)
		}
	}
	return last, !last.IsZero()
}
