package fault

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// fenceSlack is how long after its lease expired a cut-off node may still
// run a runner: the agent's kill (SIGKILL, milliseconds) and a pass that
// came late on a busy host. A cut held longer than lease + fenceSlack
// whose runners still ran at its heal is a violation.
const fenceSlack = 2 * time.Second

// fencing is how fast partitioned nodes stopped their runners: for every
// window of a partition kind that cut a node off from the majority for
// longer than the lease plus fenceSlack, the time from the cut to the end
// of the last runner that was running on that node when it was cut.
type fencing struct {
	Cuts     int             // partitions that outlasted the lease + fenceSlack
	Latency  []time.Duration // cut → last runner gone, per cut with runners
	Survived []string        // runners of a cut-off node still running when the cut healed
}

// cutsOffFromMajority: a fault of kind k separates its target from the
// majority, so the target's heartbeats stop committing (a minority node,
// or the old leader). A majority split leaves both sides a quorum, a
// one-way drop may or may not stop heartbeats: neither is measured.
func cutsOffFromMajority(k kind) bool { return k == partMinority || k == partLeader }

// measureFencing applies [fencing]'s definition to the runners' intervals.
func measureFencing(ivs []interval, windows []window, lease time.Duration) fencing {
	var f fencing
	for _, w := range windows {
		if !cutsOffFromMajority(w.Kind) || w.Ongoing || time.Duration(w.End-w.Start) <= lease+fenceSlack {
			continue
		}
		f.Cuts++
		var last int64
		running := 0
		for _, iv := range ivs {
			if iv.Node != w.Node || iv.Start > w.Start || (!iv.Open && iv.End <= w.Start) {
				continue
			}
			running++
			if iv.Open || iv.End > w.End {
				f.Survived = append(f.Survived, fmt.Sprintf("%s (pid %d) on node %d through %s", iv.VM, iv.PID, iv.Node, w.Fault))
				continue
			}
			last = max(last, iv.End)
		}
		if running > 0 && last > 0 {
			f.Latency = append(f.Latency, time.Duration(last-w.Start))
		}
	}
	slices.Sort(f.Latency)
	return f
}

// String is the summary line.
func (f fencing) String() string {
	if len(f.Latency) == 0 {
		return fmt.Sprintf("%d cuts beyond the lease, none with runners on the cut-off node", f.Cuts)
	}
	s := fmt.Sprintf("%d cuts beyond the lease; cut → its runners stopped: p50 %.2fs, max %.2fs over %d cuts with runners",
		f.Cuts, f.Latency[(len(f.Latency)-1)/2].Seconds(), f.Latency[len(f.Latency)-1].Seconds(), len(f.Latency))
	if len(f.Survived) > 0 {
		s += fmt.Sprintf("; %d runners survived their cut: %v", len(f.Survived), f.Survived)
	}
	return s
}

func TestMeasureFencing(t *testing.T) {
	sec := func(s float64) int64 { return int64(s * 1e9) }
	ivs := []interval{
		{VM: "web-0", Node: 1, PID: 10, Start: sec(1), End: sec(14.0)},  // cut at 10: stopped 4.0 s later
		{VM: "web-1", Node: 1, PID: 11, Start: sec(2), End: sec(13.9)},  // stopped earlier: the last one counts
		{VM: "db", Node: 2, PID: 20, Start: sec(1), Open: true},         // another node: not measured
		{VM: "web-2", Node: 1, PID: 12, Start: sec(11), End: sec(12.5)}, // started after the cut: not measured
		{VM: "cache", Node: 3, PID: 30, Start: sec(1), Open: true},      // survives its cut
	}
	windows := []window{
		{Node: 1, Kind: partMinority, Fault: "#1 partition-minority", Start: sec(10), End: sec(20)},
		{Node: 3, Kind: partLeader, Fault: "#2 partition-leader", Start: sec(30), End: sec(40)},
		{Node: 2, Kind: partMinority, Fault: "#3 partition-minority", Start: sec(50), End: sec(54)}, // shorter than lease + slack
		{Node: 2, Kind: freeze, Fault: "#4 freeze", Start: sec(60), End: sec(70)},                   // not a partition
	}
	f := measureFencing(ivs, windows, 3*time.Second)
	if f.Cuts != 2 {
		t.Errorf("cuts = %d, want 2 (the short partition and the freeze are not measured)", f.Cuts)
	}
	if want := []time.Duration{4 * time.Second}; !slices.Equal(f.Latency, want) {
		t.Errorf("latency = %v, want %v", f.Latency, want)
	}
	if len(f.Survived) != 1 {
		t.Errorf("survived = %v, want the cache runner of node 3", f.Survived)
	}
}
