package fngateway_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/fngateway"
)

func pctMicros(ds []time.Duration, q float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[int(q*float64(len(s)-1))]) / float64(time.Microsecond)
}

// BenchmarkWarmAddedLatency sends small GETs to a warm instance directly
// and through the gateway, alternating, each over a kept-alive
// connection, and reports the p50 and p99 of both and what the gateway
// adds (through the gateway minus direct).
func BenchmarkWarmAddedLatency(b *testing.B) {
	inst := startInstance(b, "hello-0", 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }))
	g, base := startGateway(b, fngateway.Options{})
	g.Update([]fngateway.Function{hello(64, 1, inst)})
	c := client(b)
	direct := "http://" + inst.Addr.String()
	get := func(url string) time.Duration {
		req, err := http.NewRequest(http.MethodGet, url+"/fn/hello", nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Host = "fn.example.org"
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if err != nil || resp.StatusCode != http.StatusOK || n != 3 {
			b.Fatalf("GET %s: %d, %d bytes, %v", url, resp.StatusCode, n, err)
		}
		return took
	}
	for range 100 { // connections open and warm on both paths
		get(direct)
		get(base)
	}
	var ds, gw []time.Duration
	for b.Loop() {
		ds = append(ds, get(direct))
		gw = append(gw, get(base))
	}
	b.ReportMetric(pctMicros(ds, 0.50), "direct-p50-µs")
	b.ReportMetric(pctMicros(ds, 0.99), "direct-p99-µs")
	b.ReportMetric(pctMicros(gw, 0.50), "gateway-p50-µs")
	b.ReportMetric(pctMicros(gw, 0.99), "gateway-p99-µs")
	b.ReportMetric(pctMicros(gw, 0.50)-pctMicros(ds, 0.50), "added-p50-µs")
	b.ReportMetric(pctMicros(gw, 0.99)-pctMicros(ds, 0.99), "added-p99-µs")
}

// instantScaler makes an instance ready the moment the gateway asks, and
// notes when it was asked: what is measured is the gateway's own part of
// a cold start, up to the Scaler call, and its part after the instance is
// ready.
type instantScaler struct {
	g      *fngateway.Gateway
	inst   fngateway.Instance
	wantAt atomic.Int64 // Unix nanoseconds of the last Want
}

func (s *instantScaler) Want(string, fngateway.Demand) {
	s.wantAt.Store(time.Now().UnixNano())
	s.g.Update([]fngateway.Function{hello(1, 1, s.inst)})
}

// BenchmarkColdStartOverhead sends one request at a time to a function
// with no instance. It reports the gateway's share of a cold start's
// orchestration: from the request's arrival at the gateway's handler to
// the Scaler's Want (arrival-to-want), the same from the client's send
// (send-to-want: loopback and HTTP parsing included), and the whole cold
// request with an instance that is ready at once (cold-request: the wait
// machinery, the dispatch and the proxying).
func BenchmarkColdStartOverhead(b *testing.B) {
	inst := startInstance(b, "hello-0", 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }))
	sc := &instantScaler{inst: inst}
	g := fngateway.New(fngateway.Options{Scaler: sc})
	sc.g = g
	var arrivedAt atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrivedAt.Store(time.Now().UnixNano())
		g.ServeHTTP(w, r)
	}))
	b.Cleanup(func() {
		srv.Close()
		g.CloseIdleConnections()
	})
	c := client(b)
	cold := func() (arrivalToWant, sendToWant, whole time.Duration) {
		g.Update([]fngateway.Function{hello(1, 1)}) // scaled to zero
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/fn/hello", nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Host = "fn.example.org"
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		whole = time.Since(start)
		if err != nil || resp.StatusCode != http.StatusOK || n != 3 {
			b.Fatalf("cold GET: %d, %d bytes, %v", resp.StatusCode, n, err)
		}
		want := sc.wantAt.Load()
		return time.Duration(want - arrivedAt.Load()), time.Duration(want - start.UnixNano()), whole
	}
	for range 50 { // connections open and warm
		cold()
	}
	var atw, stw, all []time.Duration
	for b.Loop() {
		a, s, w := cold()
		atw, stw, all = append(atw, a), append(stw, s), append(all, w)
	}
	if st := g.Stats()[0]; st.ColdStarts != st.Requests {
		b.Fatalf("stats %+v: every request should have waited", st)
	}
	b.ReportMetric(pctMicros(atw, 0.50), "arrival-to-want-p50-µs")
	b.ReportMetric(pctMicros(atw, 0.99), "arrival-to-want-p99-µs")
	b.ReportMetric(pctMicros(stw, 0.50), "send-to-want-p50-µs")
	b.ReportMetric(pctMicros(stw, 0.99), "send-to-want-p99-µs")
	b.ReportMetric(pctMicros(all, 0.50), "cold-request-p50-µs")
	b.ReportMetric(pctMicros(all, 0.99), "cold-request-p99-µs")
}
