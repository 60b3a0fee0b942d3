package nodeagent

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// startTimes wraps a ProcessBackend to record when a runner has started.
type startTimes struct {
	*ProcessBackend
	started chan string
}

func (s startTimes) Start(ctx context.Context, name string) error {
	err := s.ProcessBackend.Start(ctx, name)
	if err == nil {
		s.started <- name
	}
	return err
}

// BenchmarkNixCommitToRunnerStarted measures the time from a new state
// (an assignment added, Notify called as the replica would) to the backend
// having started the runner, when the runner's closure is already present.
func BenchmarkNixCommitToRunnerStarted(b *testing.B) {
	e := newEnv(b)
	r := makeRunner(b, runnerSpec{marker: "bench"}).build(b)
	be := startTimes{
		ProcessBackend: NewProcessBackend(ProcessOptions{StateDir: e.dir, TermTimeout: 5 * time.Second}),
		started:        make(chan string, 16),
	}
	ra := e.start(func(o *Options) {
		o.Backend = be
		o.Interval = time.Hour // only Notify triggers passes
		o.Heartbeat = time.Hour
	})
	var lat []time.Duration
	prev := ""
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("vm-%d", i)
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
			waitFor(b, prev+" stopped", func() (bool, string) {
				s, err := be.Status(prev)
				return err == nil && !s.Active, fmt.Sprintf("%+v", s)
			})
		}
		prev = name
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
}
