package fngateway_test

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/fngateway"
)

// scalerStandIn plays the Raft-backed scaler: when the gateway wants more
// instances than are ready or starting, it starts them (up to max), each
// a real HTTP server that becomes ready after startDelay, as a cold start
// does; it passes the instances to the gateway as the instance source
// would.
type scalerStandIn struct {
	t          testing.TB
	g          *fngateway.Gateway
	fn         func(insts ...fngateway.Instance) fngateway.Function
	max        int
	startDelay time.Duration
	handler    func(name string) http.Handler

	mu     sync.Mutex
	insts  []fngateway.Instance
	starts sync.WaitGroup
}

func (s *scalerStandIn) Want(_ string, d fngateway.Demand) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.insts) < min(d.Want, s.max) {
		name := "hello-" + strconv.Itoa(len(s.insts))
		s.insts = append(s.insts, fngateway.Instance{Name: name}) // starting
		s.publish()
		s.starts.Go(func() { // Want must not block
			time.Sleep(s.startDelay)
			inst := startInstance(s.t, name, 0, s.handler(name))
			s.mu.Lock()
			defer s.mu.Unlock()
			for i := range s.insts {
				if s.insts[i].Name == name {
					s.insts[i] = inst
				}
			}
			s.publish()
		})
	}
}

// publish passes the instances to the gateway; called with mu held, so
// that Updates follow the order of the changes.
func (s *scalerStandIn) publish() {
	s.g.Update([]fngateway.Function{s.fn(slices.Clone(s.insts)...)})
}

// TestThousandRequestsOverTenSeconds sends 1,000 requests at an even pace
// over 10 s to a function with concurrency 4 and maxInstances 8 that
// starts with no instance; each request takes 100–300 ms at the instance
// (about 20 in flight at that pace: 5 instances' worth, more while the
// first ones start and the queue fills).
// Every request must be answered by an instance with its own answer, and
// no instance may hold more than 4 at once. It logs the instances used,
// the latency percentiles and the queue waits; it asserts no time.
func TestThousandRequestsOverTenSeconds(t *testing.T) {
	const (
		total        = 1000
		over         = 10 * time.Second
		concurrency  = 4
		maxInstances = 8
		startDelay   = 300 * time.Millisecond
	)
	var mu sync.Mutex
	cur, peak := map[string]int{}, map[string]int{}
	sc := &scalerStandIn{t: t, max: maxInstances, startDelay: startDelay,
		fn: func(insts ...fngateway.Instance) fngateway.Function {
			return hello(concurrency, maxInstances, insts...)
		},
		handler: func(name string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				cur[name]++
				peak[name] = max(peak[name], cur[name])
				mu.Unlock()
				id, _ := strconv.Atoi(r.URL.Query().Get("id"))
				time.Sleep(time.Duration(100+(id%5)*50) * time.Millisecond)
				mu.Lock()
				cur[name]--
				mu.Unlock()
				w.Header().Set("X-Instance", name)
				fmt.Fprintf(w, "answer %d", id)
			})
		}}
	g, base := startGateway(t, fngateway.Options{Scaler: sc})
	sc.g = g
	g.Update([]fngateway.Function{hello(concurrency, maxInstances)})
	c := client(t)

	type result struct {
		id      int
		a       answer
		latency time.Duration
	}
	results := make(chan result, total)
	start := time.Now()
	for i := range total {
		time.Sleep(time.Until(start.Add(time.Duration(i) * over / total)))
		go func() {
			t0 := time.Now()
			a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello?id="+strconv.Itoa(i), "")
			results <- result{id: i, a: a, latency: time.Since(t0)}
		}()
	}
	var latencies []time.Duration
	byInstance := map[string]int{}
	for range total {
		r := <-results
		if r.a.err != nil || r.a.status != http.StatusOK || r.a.body != "answer "+strconv.Itoa(r.id) {
			t.Fatalf("request %d: %d %v %q: lost", r.id, r.a.status, r.a.err, r.a.body)
		}
		latencies = append(latencies, r.latency)
		byInstance[r.a.instance]++
	}
	elapsed := time.Since(start)
	sc.starts.Wait()

	for name, p := range peak {
		if p > concurrency {
			t.Fatalf("%s held %d requests at once, more than concurrency %d (peaks %v)", name, p, concurrency, peak)
		}
	}
	sc.mu.Lock()
	started := len(sc.insts)
	sc.mu.Unlock()
	if started > maxInstances {
		t.Fatalf("%d instances started, more than maxInstances %d", started, maxInstances)
	}
	slices.Sort(latencies)
	q := func(p float64) time.Duration {
		return latencies[int(p*float64(len(latencies)-1))].Round(time.Millisecond)
	}
	s := stats(g, "hello")
	if s.Requests != total || s.InFlight != 0 || s.Queued != 0 {
		t.Fatalf("stats = %+v, want %d requests and nothing left", s, total)
	}
	t.Logf("%d requests in %s, all answered; instances started %d, used %d (max %d), requests per instance %v",
		total, elapsed.Round(time.Millisecond), started, len(byInstance), maxInstances, byInstance)
	t.Logf("latency (instance time 100–300 ms, cold start %s): p50 %s, p99 %s, max %s; waited in the queue: %d (queue wait p50 %s, p99 %s)",
		startDelay, q(0.50), q(0.99), latencies[len(latencies)-1].Round(time.Millisecond), s.ColdStarts,
		s.QueueWaitP50.Round(time.Millisecond), s.QueueWaitP99.Round(time.Millisecond))
}
