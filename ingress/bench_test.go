package ingress_test

import (
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/ingress"
)

// BenchmarkProxyAddedLatency sends small GETs to an instance directly and
// through the ingress proxy, alternating, each over a kept-alive
// connection, and reports the p50 and p99 of both and what the proxy adds
// to each (proxied minus direct).
func BenchmarkProxyAddedLatency(b *testing.B) {
	f := startFleet(b, 110, []string{"web-0"}, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	})
	s, base := startProxy(b, ingress.Options{})
	s.Update(f.table("web", "web.example.org"))
	c := client(b)
	instance := f.servers["web-0"].URL
	get := func(url string) time.Duration {
		req, err := http.NewRequest(http.MethodGet, url+"/small", nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Host = "web.example.org"
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
		get(instance)
		get(base)
	}
	var direct, proxied []time.Duration
	for b.Loop() {
		direct = append(direct, get(instance))
		proxied = append(proxied, get(base))
	}
	pct := func(ds []time.Duration, q float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[int(q*float64(len(s)-1))]) / float64(time.Microsecond)
	}
	b.ReportMetric(pct(direct, 0.50), "direct-p50-µs")
	b.ReportMetric(pct(direct, 0.99), "direct-p99-µs")
	b.ReportMetric(pct(proxied, 0.50), "proxied-p50-µs")
	b.ReportMetric(pct(proxied, 0.99), "proxied-p99-µs")
	b.ReportMetric(pct(proxied, 0.50)-pct(direct, 0.50), "added-p50-µs")
	b.ReportMetric(pct(proxied, 0.99)-pct(direct, 0.99), "added-p99-µs")
}
