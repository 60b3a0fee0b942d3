package fault

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// kind is a fault.
type kind string

const (
	kill9         kind = "kill9"              // SIGKILL blixard; its runners keep running; restart after the hold
	nodeKill      kind = "node-kill"          // SIGKILL every process of the node (runners too); restart after the hold
	freeze        kind = "freeze"             // SIGSTOP every process of the node; SIGCONT after the hold
	partMinority  kind = "partition-minority" // a follower cut from the other nodes
	partLeader    kind = "partition-leader"   // the leader cut from the other nodes
	partMajority  kind = "partition-majority" // two nodes cut from each other; both reach the third (each keeps a majority)
	partOneWay    kind = "partition-oneway"   // packets from one node to another dropped
	leaderChange  kind = "leader-change"      // SIGSTOP the leader's blixard for less than --node-timeout: a new leader, nobody marked down
	restartNewBin kind = "restart-new-binary" // SIGTERM blixard, start the other binary
)

// allKinds with their weights in the random part of a schedule.
var allKinds = []struct {
	k      kind
	weight int
}{
	{kill9, 3}, {nodeKill, 2}, {freeze, 3}, {partMinority, 3}, {partLeader, 3},
	{partMajority, 2}, {partOneWay, 2}, {leaderChange, 2}, {restartNewBin, 2},
}

// coverage is the first round of every schedule, in a seeded order, with
// holds that outlast --node-timeout (so VMs move and overlaps happen).
// Even seeds add extraCoverage, held for less than the timeout, so the
// short CI run exercises every kind across its two seeds.
var (
	coverage      = []kind{kill9, nodeKill, freeze, partMinority, partLeader, restartNewBin}
	extraCoverage = []kind{partMajority, partOneWay, leaderChange}
)

// coverageFor is seed's coverage round, before shuffling.
func coverageFor(seed uint64) []kind {
	if seed%2 == 0 {
		return slices.Concat(coverage, extraCoverage)
	}
	return slices.Clone(coverage)
}

// fault is one scheduled fault. Targets are resolved when it is injected
// (the leader then, a follower then): Pick chooses among the candidates.
type fault struct {
	N    int // 1-based
	Kind kind
	Hold time.Duration // from injection to heal
	Gap  time.Duration // after the cluster recovered, before the next fault
	Pick uint64
}

// push is one scheduled push.
type push struct {
	N      int           // 1-based (0 is the initial commit)
	At     time.Duration // from the start of the faults
	Broken bool          // a flake that does not evaluate
	Bump   []string      // VMs whose runner version goes up
}

type schedule struct {
	Seed     uint64
	Duration time.Duration
	Faults   []fault
	Pushes   []push
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1)).Round(100*time.Millisecond)
}

// holdFor is a fault's hold: in the coverage round long enough for the
// leader to mark the node down (nodeTimeout + 0.5–2 s), later anything from a
// blip to well past the timeout.
func holdFor(rng *rand.Rand, k kind, coverageRound bool, nodeTimeout time.Duration) time.Duration {
	switch k {
	case restartNewBin:
		return between(rng, 200*time.Millisecond, 2*time.Second)
	case leaderChange:
		// Long enough for an election (1–2 s of silence, then a vote), short
		// of the node timeout.
		return between(rng, 3*time.Second, max(3*time.Second, nodeTimeout-1500*time.Millisecond))
	}
	if coverageRound && slices.Contains(extraCoverage, k) {
		return between(rng, 2*time.Second, max(2*time.Second, nodeTimeout-2*time.Second))
	}
	if coverageRound {
		return between(rng, nodeTimeout+500*time.Millisecond, nodeTimeout+2*time.Second)
	}
	return between(rng, 1*time.Second, 2*nodeTimeout+2*time.Second)
}

// estimate is a fault's least share of the run: its hold, a second to
// recover, its gap. Recoveries often take longer, so a schedule holds more
// faults than a run reaches; the run stops starting them at its duration.
func (f fault) estimate() time.Duration { return f.Hold + time.Second + f.Gap }

// newSchedule draws the schedule of a run from seed: the coverage round
// (every kind of coverage once, even when it does not fit in d), then
// random faults while they fit in d;
// pushes every 6–15 s on their own timeline, at least one of them broken
// and followed 3–6 s later by a fixed one. Everything but the targets'
// identities (the leader at that moment) is fixed by (seed, d).
func newSchedule(seed uint64, d time.Duration, nodeTimeout time.Duration) schedule {
	rng := rand.New(rand.NewPCG(seed, 0xb11a4d))
	s := schedule{Seed: seed, Duration: d}
	kinds := coverageFor(seed)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	var used time.Duration
	add := func(k kind, coverageRound bool) bool {
		f := fault{N: len(s.Faults) + 1, Kind: k, Hold: holdFor(rng, k, coverageRound, nodeTimeout),
			Gap: between(rng, 500*time.Millisecond, 2*time.Second), Pick: rng.Uint64()}
		if !coverageRound && used+f.estimate() > d {
			return false
		}
		s.Faults = append(s.Faults, f)
		used += f.estimate()
		return true
	}
	for _, k := range kinds {
		add(k, true)
	}
	total := 0
	for _, w := range allKinds {
		total += w.weight
	}
	for {
		x, k := rng.IntN(total), kind("")
		for _, w := range allKinds {
			if x < w.weight {
				k = w.k
				break
			}
			x -= w.weight
		}
		if !add(k, false) {
			break
		}
	}

	// Pushes, over the faults' span: the broken one lands at 30–50% of it,
	// its fix 3–6 s later.
	d = max(d, used)
	vms := make([]string, 0, len(testVMs))
	for _, vm := range testVMs {
		vms = append(vms, vm.name)
	}
	brokenAt := time.Duration(float64(d) * (0.3 + 0.2*rng.Float64())).Round(100 * time.Millisecond)
	last := d - 5*time.Second
	at := between(rng, 3*time.Second, 8*time.Second)
	brokenDone := false
	for at <= last {
		if !brokenDone && at >= brokenAt {
			s.Pushes = append(s.Pushes, push{N: len(s.Pushes) + 1, At: at, Broken: true})
			at += between(rng, 3*time.Second, 6*time.Second)
			brokenDone = true
			continue // the next push is the fix
		}
		bump := []string{vms[rng.IntN(len(vms))]}
		if rng.IntN(3) == 0 {
			bump = append(bump, vms[rng.IntN(len(vms))])
		}
		s.Pushes = append(s.Pushes, push{N: len(s.Pushes) + 1, At: at, Bump: bump})
		at += between(rng, 6*time.Second, 15*time.Second)
	}
	if !brokenDone { // a short run: broken then fixed near the middle
		mid := d / 2
		s.Pushes = append(s.Pushes, push{N: len(s.Pushes) + 1, At: mid, Broken: true},
			push{N: len(s.Pushes) + 2, At: mid + 4*time.Second, Bump: []string{vms[rng.IntN(len(vms))]}})
		slices.SortFunc(s.Pushes, func(a, b push) int { return cmpInt64(int64(a.At), int64(b.At)) })
		for i := range s.Pushes {
			s.Pushes[i].N = i + 1
		}
	}
	return s
}

func (s schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "schedule of seed %d over %v: %d faults, %d pushes\n", s.Seed, s.Duration, len(s.Faults), len(s.Pushes))
	for _, f := range s.Faults {
		fmt.Fprintf(&b, "  fault #%d %s hold %v, then %v\n", f.N, f.Kind, f.Hold, f.Gap)
	}
	for _, p := range s.Pushes {
		what := "bump " + strings.Join(p.Bump, ",")
		if p.Broken {
			what = "broken flake"
		}
		fmt.Fprintf(&b, "  push #%d at +%v: %s\n", p.N, p.At, what)
	}
	return b.String()
}

func TestScheduleIsAFunctionOfSeedAndDuration(t *testing.T) {
	a := newSchedule(7, 10*time.Minute, 5*time.Second)
	b := newSchedule(7, 10*time.Minute, 5*time.Second)
	if a.String() != b.String() {
		t.Fatalf("the same seed gave two schedules:\n%s\n%s", a, b)
	}
	if c := newSchedule(8, 10*time.Minute, 5*time.Second); c.String() == a.String() {
		t.Fatalf("seeds 7 and 8 gave the same schedule:\n%s", a)
	}
	// The coverage round comes first, and a short run still gets all of it
	// and a broken push followed by a fixed one.
	for _, seed := range []uint64{1, 2, 3} {
		s := newSchedule(seed, 40*time.Second, 5*time.Second)
		round := coverageFor(seed)
		var got []string
		for _, f := range s.Faults[:len(round)] {
			got = append(got, string(f.Kind))
		}
		slices.Sort(got)
		var want []string
		for _, k := range round {
			want = append(want, string(k))
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("seed %d: first faults %v, want the coverage round %v", seed, got, want)
		}
		broken := slices.IndexFunc(s.Pushes, func(p push) bool { return p.Broken })
		if broken < 0 || broken == len(s.Pushes)-1 || s.Pushes[broken+1].Broken {
			t.Errorf("seed %d: want a broken push followed by a fixed one:\n%s", seed, s)
		}
	}
	// A long run draws every kind.
	seen := map[kind]bool{}
	for _, f := range a.Faults {
		seen[f.Kind] = true
	}
	for _, w := range allKinds {
		if !seen[w.k] {
			t.Errorf("10 minutes of seed 7 never draw %s:\n%s", w.k, a)
		}
	}
}
