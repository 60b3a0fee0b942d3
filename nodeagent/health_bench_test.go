package nodeagent

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// BenchmarkProbeHTTP measures one HTTP probe of a local server that
// answers at once: a new connection, GET, the answer.
func BenchmarkProbeHTTP(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	ap := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	h := spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: int(ap.Port()), Path: "/healthz"}}.WithDefaults()
	t := probeTarget{check: &h, addr: ap.Addr()}
	p := newProber(time.Now, slog.New(slog.DiscardHandler), func(string) {})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.probe(b.Context(), "web", t); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProberSync1000 measures what health costs an agent's pass on a
// node running 1000 instances, half of them with a check, once their
// probing goroutines run: the prober's sync with unchanged targets, and
// stamping every status.
func BenchmarkProberSync1000(b *testing.B) {
	p := newProber(time.Now, slog.New(slog.DiscardHandler), func(string) {})
	defer p.stop()
	// The checks probe a closed port once an hour: the goroutines exist,
	// the benchmark measures sync and stamp.
	h := spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 1}, Interval: time.Hour, Timeout: time.Second}.WithDefaults()
	running := map[string]probeTarget{}
	for i := range 1000 {
		t := probeTarget{}
		if i%2 == 0 {
			c := h
			t = probeTarget{check: &c, addr: netip.AddrFrom4([4]byte{127, 0, 0, 1})}
		}
		running[fmt.Sprintf("vm-%d", i)] = t
	}
	p.sync(b.Context(), running, nil)
	st := replicated.VMStatus{Phase: replicated.PhaseRunning}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p.sync(b.Context(), running, nil)
		for name := range running {
			st.VM = name
			p.stamp(&st)
		}
	}
}

// BenchmarkHealthDetection measures the time from an instance's endpoint
// starting to fail (at a random moment) to the prober reporting it
// unhealthy, with interval 100ms (the minimum) and unhealthyAfter 1: up to
// one interval plus the probe. (The agent's heartbeat follows ~100ms
// later, its debounce; with the defaults, 5s and 3, detection takes 10–15s.)
func BenchmarkHealthDetection(b *testing.B) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ap := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	h := spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: int(ap.Port()), Path: "/"}, Interval: spec.MinHealthInterval,
		Timeout: 50 * time.Millisecond, HealthyAfter: 1, UnhealthyAfter: 1}
	changed := make(chan struct{}, 1)
	p := newProber(time.Now, slog.New(slog.DiscardHandler), func(string) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer p.stop()
	health := func() replicated.HealthState {
		st := replicated.VMStatus{VM: "web", Phase: replicated.PhaseRunning}
		p.stamp(&st)
		return st.Health
	}
	waitFor := func(want replicated.HealthState) {
		for health() != want {
			select {
			case <-changed:
			case <-time.After(10 * time.Second):
				b.Fatalf("not %s within 10s", want)
			}
		}
	}
	p.sync(b.Context(), map[string]probeTarget{"web": {check: &h, addr: ap.Addr()}}, nil)
	waitFor(replicated.Healthy)
	time.Sleep(rand.N(h.Interval))
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		failing.Store(true)
		waitFor(replicated.Unhealthy)
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		failing.Store(false)
		waitFor(replicated.Healthy)
		// Fail at a random moment between two probes, as a real
		// endpoint would, rather than right after one.
		time.Sleep(rand.N(h.Interval))
		b.StartTimer()
	}
	b.StopTimer()
	reportPercentiles(b, "", lat)
}
