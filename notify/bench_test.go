package notify_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/notify"
	"github.com/blixard/blixard/replicated"
)

// BenchmarkCommitToNotification measures, on a real one-voter replica, one
// node state change from its proposal until the receiver (a local HTTP
// server) has its notification: ns/op is commit plus delivery; deliver-ms
// the median from the committed proposal's return to the POST's arrival
// (the apply signal, the local read, the queue and the POST).
func BenchmarkCommitToNotification(b *testing.B) {
	s := startStores(b, 1)[0]
	r := newReceiver(b, []byte("k"), nil)
	r.arrived = make(chan string, 1024)
	run(b, s, notify.Options{URLs: []string{r.srv.URL}, Secret: []byte("k"), Kinds: []string{replicated.EventNodeStateChanged}})
	propose(b, s, testkit.Register(1))
	var deliver []time.Duration
	b.ResetTimer()
	for i := range b.N {
		state := []replicated.NodeState{replicated.NodeCordoned, replicated.NodeReady}[i%2]
		propose(b, s, replicated.Command{Type: replicated.CmdSetNodeState, SetNodeState: &replicated.SetNodeState{ID: 1, State: state}})
		committed := time.Now()
		<-r.arrived // one notification per change, in order
		deliver = append(deliver, time.Since(committed))
	}
	b.StopTimer()
	slices.Sort(deliver)
	b.ReportMetric(float64(deliver[len(deliver)/2].Microseconds())/1000, "deliver-ms")
	b.ReportMetric(float64(deliver[len(deliver)*99/100].Microseconds())/1000, "deliver-p99-ms")
}

// BenchmarkSelectFullLog is the pure selection over a full event log (200
// events), as the leader runs it after every applied entry that added one.
func BenchmarkSelectFullLog(b *testing.B) {
	s := replicated.NewState()
	for i := range replicated.MaxEvents {
		kind := []string{replicated.EventPlanCommitted, replicated.EventNodeStateChanged, replicated.EventVMRunState}[i%3]
		s.Events = append(s.Events, replicated.Event{Index: uint64(i + 1), Kind: kind, Message: fmt.Sprintf("node %d: ready -> down", i)})
	}
	s.Applied = replicated.MaxEvents
	kinds := notify.DefaultKinds()
	b.ReportAllocs()
	for b.Loop() {
		if len(notify.Select(s, replicated.MaxEvents-1, kinds)) > 1 {
			b.Fatal("more than the last event selected")
		}
	}
}
