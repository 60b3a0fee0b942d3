package nodeagent

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// startRecorder wraps a Backend to record when a unit has started.
type startRecorder struct {
	Backend
	started chan string
}

func (s startRecorder) Start(ctx context.Context, name string) error {
	err := s.Backend.Start(ctx, name)
	if err == nil {
		s.started <- name
	}
	return err
}

// startAgentWith runs an agent on be whose passes only Notify triggers.
func startAgentWith(e *env, be startRecorder) *runningAgent {
	return e.start(func(o *Options) {
		o.Backend = be
		o.Interval = time.Hour // only Notify triggers passes
		o.Heartbeat = time.Hour
	})
}

// measureCommitToStart assigns b.N VMs named prefix-i one after the other
// and returns, for each, the time from the assignment (and Notify, as the
// replica would) to the backend having started it; the previous VM is
// stopped outside the measurement. Every VM it assigns is appended to
// *assigned when assigned is not nil (for a cleanup).
func measureCommitToStart(b *testing.B, e *env, ra *runningAgent, be startRecorder, r runner, prefix string, assigned *[]string) []time.Duration {
	var lat []time.Duration
	prev := ""
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		if assigned != nil {
			*assigned = append(*assigned, name)
		}
		t0 := time.Now()
		e.state.assign(name, testNode, r)
		ra.agent.Notify()
		if got := <-be.started; got != name {
			b.Fatalf("started %s, want %s", got, name)
		}
		lat = append(lat, time.Since(t0))

		b.StopTimer() // stop the previous VM outside the measurement
		if prev != "" {
			e.state.unassign(prev)
			ra.agent.Notify()
			testkit.WaitFor(b, waitTimeout, prev+" stopped", func() error {
				if s, err := be.Status(prev); err != nil || s.Active {
					return fmt.Errorf("%+v, %v", s, err)
				}
				return nil
			})
		}
		prev = name
		b.StartTimer()
	}
	b.StopTimer()
	return lat
}

// reportPercentiles reports the p50 and p99 of d as WHAT-p50-ms and
// WHAT-p99-ms (p50-ms and p99-ms when what is empty).
func reportPercentiles(b *testing.B, what string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	if what != "" {
		what += "-"
	}
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, what+"p50-ms")
	b.ReportMetric(float64(d[(len(d)*99)/100].Microseconds())/1000, what+"p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkNixCommitToRunnerStarted measures the time from a new state
// (an assignment added, Notify called as the replica would) to the backend
// having started the runner, when the runner's closure is already present.
func BenchmarkNixCommitToRunnerStarted(b *testing.B) {
	e := newEnv(b)
	r := makeRunner(b, runnerSpec{marker: "bench"}).build(b)
	be := startRecorder{
		Backend: NewProcessBackend(ProcessOptions{StateDir: e.dir, TermTimeout: 5 * time.Second}),
		started: make(chan string, 16),
	}
	ra := startAgentWith(e, be)
	reportPercentiles(b, "", measureCommitToStart(b, e, ra, be, r, "vm", nil))
}
