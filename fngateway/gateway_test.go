package fngateway_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/fngateway"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/spec"
)

const waitLong = 10 * time.Second // only ever a deadlock guard, never a measure

func TestRoutingByHostAndPathAnd404(t *testing.T) {
	g, base := startGateway(t, fngateway.Options{})
	g.Update([]fngateway.Function{
		hello(4, 1, startInstance(t, "hello-0", 0, namer("hello-0"))),
		{Name: "hello-v2", Host: "fn.example.org", Path: "/fn/hello/v2", Concurrency: 4, MaxInstances: 1,
			Instances: []fngateway.Instance{startInstance(t, "v2-0", 0, namer("v2-0"))}},
		{Name: "root", Host: "other.example.org", Path: "/", Concurrency: 4, MaxInstances: 1,
			Instances: []fngateway.Instance{startInstance(t, "root-0", 0, namer("root-0"))}},
	})
	c := client(t)
	for _, tc := range []struct{ host, path, instance string }{
		{"fn.example.org", "/fn/hello", "hello-0"},
		{"FN.Example.org:8443", "/fn/hello/x?y=1", "hello-0"},
		{"fn.example.org", "/fn/hello/v2/deep", "v2-0"}, // the longest prefix wins
		{"other.example.org", "/anything", "root-0"},
	} {
		a := send(c, http.MethodGet, base, tc.host, tc.path, "")
		if a.err != nil || a.status != http.StatusOK || a.instance != tc.instance {
			t.Fatalf("GET %s%s: %d from %q (%v): %s; want 200 from %s", tc.host, tc.path, a.status, a.instance, a.err, a.body, tc.instance)
		}
	}
	a := send(c, http.MethodPost, base, "fn.example.org", "/fn/hello/x?y=1", "a=b")
	if want := "hello-0 POST /fn/hello/x?y=1 host=fn.example.org xff=127.0.0.1 body=a=b"; a.body != want {
		t.Fatalf("the instance saw %q, want %q: the request unchanged, the client's host, the gateway's X-Forwarded-For", a.body, want)
	}
	for _, tc := range []struct{ host, path string }{
		{"fn.example.org", "/fn/helloworld"}, // prefixes match whole segments
		{"fn.example.org", "/"},
		{"nobody.example.org", "/fn/hello"},
	} {
		a := send(c, http.MethodGet, base, tc.host, tc.path, "")
		if a.status != http.StatusNotFound || !strings.Contains(a.body, "no function answers host") {
			t.Fatalf("GET %s%s: %d %q, want 404 saying no function answers", tc.host, tc.path, a.status, a.body)
		}
	}
	if s := stats(g, "hello"); s.Requests != 3 || s.ColdStarts != 0 || s.InFlight != 0 {
		t.Fatalf("hello's stats = %+v, want 3 requests, no cold start, nothing in flight", s)
	}
}

func TestConcurrencyIsNeverExceededAndTheRestWaits(t *testing.T) {
	gt := newGate()
	defer gt.release()
	var insts []fngateway.Instance
	for i := range 3 {
		name := fmt.Sprintf("hello-%d", i)
		insts = append(insts, startInstance(t, name, 0, gt.handler(name)))
	}
	g, base := startGateway(t, fngateway.Options{})
	g.Update([]fngateway.Function{hello(2, 3, insts...)})
	c := client(t)

	const n = 10
	answers := make(chan answer, n)
	for range n {
		go func() { answers <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	}
	// 3 instances × concurrency 2 take 6; the other 4 wait.
	testkit.WaitFor(t, waitLong, "6 requests in flight and 4 queued", func() error {
		if s := stats(g, "hello"); s.InFlight != 6 || s.Queued != 4 {
			return fmt.Errorf("in flight %d, queued %d", s.InFlight, s.Queued)
		}
		return nil
	})
	testkit.WaitFor(t, waitLong, "each instance holding 2 requests (concurrency 2)", func() error {
		now, _ := gt.counts()
		if len(now) != 3 || now["hello-0"] != 2 || now["hello-1"] != 2 || now["hello-2"] != 2 {
			return fmt.Errorf("instances hold %v", now)
		}
		return nil
	})
	if s := stats(g, "hello"); s.InFlight != 6 || s.Queued != 4 {
		t.Fatalf("stats = %+v, want still 6 in flight and 4 queued", s)
	}
	gt.release()
	for range n {
		if a := <-answers; a.err != nil || a.status != http.StatusOK {
			t.Fatalf("answer %d %v: %s", a.status, a.err, a.body)
		}
	}
	_, peak := gt.counts()
	for name, p := range peak {
		if p > 2 {
			t.Fatalf("%s held %d requests at once, more than concurrency 2 (peaks %v)", name, p, peak)
		}
	}
	s := stats(g, "hello")
	if s.Requests != n || s.ColdStarts != 4 || s.InFlight != 0 || s.Queued != 0 {
		t.Fatalf("stats = %+v, want %d requests, 4 that waited, none left", s, n)
	}
}

func TestSlowAndFastInstancesUnderLoadStayWithinConcurrency(t *testing.T) {
	var mu sync.Mutex
	cur, peak := map[string]int{}, map[string]int{}
	handler := func(name string, delay time.Duration) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			cur[name]++
			peak[name] = max(peak[name], cur[name])
			mu.Unlock()
			time.Sleep(delay)
			mu.Lock()
			cur[name]--
			mu.Unlock()
			w.Header().Set("X-Instance", name)
		})
	}
	g, base := startGateway(t, fngateway.Options{})
	g.Update([]fngateway.Function{hello(3, 3,
		startInstance(t, "slow", 0, handler("slow", 50*time.Millisecond)),
		startInstance(t, "fast-0", 0, handler("fast-0", time.Millisecond)),
		startInstance(t, "fast-1", 0, handler("fast-1", time.Millisecond)),
	)})
	c := client(t)
	var wg sync.WaitGroup
	served := map[string]int{}
	var smu sync.Mutex
	for range 120 {
		wg.Go(func() {
			a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
			if a.err != nil || a.status != http.StatusOK {
				t.Errorf("answer %d %v: %s", a.status, a.err, a.body)
				return
			}
			smu.Lock()
			served[a.instance]++
			smu.Unlock()
		})
	}
	wg.Wait()
	for name, p := range peak {
		if p > 3 {
			t.Fatalf("%s held %d requests at once, more than concurrency 3 (peaks %v)", name, p, peak)
		}
	}
	if served["fast-0"]+served["fast-1"] <= served["slow"] {
		t.Fatalf("served %v: least in flight should send most requests to the fast instances", served)
	}
	t.Logf("served %v, peaks %v", served, peak)
}

func TestColdStartQueuesUntilAnInstanceAppears(t *testing.T) {
	sc := &wants{}
	g, base := startGateway(t, fngateway.Options{Scaler: sc})
	g.Update([]fngateway.Function{hello(2, 4)})
	c := client(t)

	const n = 5
	answers := make(chan answer, n)
	for range n {
		go func() { answers <- send(c, http.MethodPost, base, "fn.example.org", "/fn/hello", "cold") }()
	}
	testkit.WaitFor(t, waitLong, "5 requests queued, each telling the Scaler", testkit.Until(func() bool {
		_, calls := sc.last()
		return stats(g, "hello").Queued == n && calls == n
	}))
	sc.mu.Lock()
	most := slices.MaxFunc(sc.calls, func(a, b fngateway.Demand) int { return a.Queued - b.Queued })
	sc.mu.Unlock()
	if most != (fngateway.Demand{Queued: n, Want: 3}) || !most.ScaleOut() {
		t.Fatalf("the Scaler's call with the longest queue: %+v; want 5 queued wanting 3 instances (concurrency 2), which scales out", most)
	}

	// The scaler starts an instance: first starting, then ready.
	inst := startInstance(t, "hello-0", 0, namer("hello-0"))
	starting := inst
	starting.Ready = false
	g.Update([]fngateway.Function{hello(2, 4, starting)})
	if s := stats(g, "hello"); s.Starting != 1 || s.Queued != n {
		t.Fatalf("with the instance starting: %+v, want 1 starting and every request still queued", s)
	}
	g.Update([]fngateway.Function{hello(2, 4, inst)})
	for range n {
		a := <-answers
		if a.err != nil || a.status != http.StatusOK || a.body != "hello-0 POST /fn/hello host=fn.example.org xff=127.0.0.1 body=cold" {
			t.Fatalf("queued request: %d %v %q", a.status, a.err, a.body)
		}
	}
	s := stats(g, "hello")
	if s.Requests != n || s.ColdStarts != n || s.InFlight != 0 || s.Queued != 0 || s.QueueWaitP50 <= 0 || s.QueueWaitP99 < s.QueueWaitP50 {
		t.Fatalf("stats = %+v, want %d requests that all waited, a positive wait p50 ≤ p99", s, n)
	}
}

func TestQueueFullAnswers503WithRetryAfter(t *testing.T) {
	g, base := startGateway(t, fngateway.Options{QueueLimit: 2, RetryAfter: 1500 * time.Millisecond})
	g.Update([]fngateway.Function{hello(1, 1)})
	c := client(t)
	answers := make(chan answer, 2)
	for range 2 {
		go func() { answers <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	}
	testkit.WaitFor(t, waitLong, "2 requests queued", testkit.Until(func() bool { return stats(g, "hello").Queued == 2 }))

	a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
	if a.status != http.StatusServiceUnavailable || a.retryAfter != "2" || !strings.Contains(a.body, "function hello is at capacity") {
		t.Fatalf("third request: %d Retry-After %q %q, want 503 with Retry-After 2 (1.5s rounded up)", a.status, a.retryAfter, a.body)
	}
	// The queued ones are still served.
	g.Update([]fngateway.Function{hello(1, 1, startInstance(t, "hello-0", 0, namer("hello-0")))})
	for range 2 {
		if a := <-answers; a.status != http.StatusOK {
			t.Fatalf("queued request: %d %v %s", a.status, a.err, a.body)
		}
	}
	if s := stats(g, "hello"); s.QueueFull != 1 || s.Requests != 3 {
		t.Fatalf("stats = %+v, want 1 refused for a full queue of 3 requests", s)
	}
}

func TestNoInstanceWithinTheTimeoutAnswers504WithTheReason(t *testing.T) {
	g, base := startGateway(t, fngateway.Options{QueueTimeout: 100 * time.Millisecond})
	c := client(t)

	g.Update([]fngateway.Function{hello(1, 1)})
	a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
	if a.status != http.StatusGatewayTimeout || !strings.Contains(a.body, "function hello had no free instance within") ||
		!strings.Contains(a.body, "no instance is running or starting") {
		t.Fatalf("without instances: %d %q, want 504 saying none runs or starts", a.status, a.body)
	}

	g.Update([]fngateway.Function{hello(1, 1, fngateway.Instance{Name: "hello-0", Ready: false})})
	a = send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
	if a.status != http.StatusGatewayTimeout || !strings.Contains(a.body, "its instances are still starting") {
		t.Fatalf("with an instance starting: %d %q, want 504 saying it is still starting", a.status, a.body)
	}

	gt := newGate()
	defer gt.release()
	g.Update([]fngateway.Function{hello(1, 1, startInstance(t, "hello-0", 0, gt.handler("hello-0")))})
	held := make(chan answer, 1)
	go func() { held <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, waitLong, "the instance busy", testkit.Until(func() bool { return stats(g, "hello").InFlight == 1 }))
	a = send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
	if a.status != http.StatusGatewayTimeout || !strings.Contains(a.body, "its 1 ready instance(s) stayed busy") {
		t.Fatalf("with the only instance busy: %d %q, want 504 saying it stayed busy", a.status, a.body)
	}
	if s := stats(g, "hello"); s.TimedOut != 3 || s.ColdStarts != 3 {
		t.Fatalf("stats = %+v, want 3 timed out after waiting", s)
	}
}

func TestFailedStartAnswers502AndEndsWaits(t *testing.T) {
	sc := &wants{}
	g, base := startGateway(t, fngateway.Options{Scaler: sc})
	g.Update([]fngateway.Function{hello(1, 2)})
	c := client(t)
	answers := make(chan answer, 2)
	for range 2 {
		go func() { answers <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	}
	testkit.WaitFor(t, waitLong, "2 requests queued, each telling the Scaler", testkit.Until(func() bool {
		_, calls := sc.last()
		return stats(g, "hello").Queued == 2 && calls == 2
	}))

	const reason = "runner /nix/store/x-hello exited with status 1: kvm: permission denied"
	failed := hello(1, 2)
	failed.StartFailure = reason
	g.Update([]fngateway.Function{failed})
	for range 2 {
		a := <-answers
		if a.status != http.StatusBadGateway || !strings.Contains(a.body, "function hello could not start") {
			t.Fatalf("queued request after the failed start: %d %q, want 502", a.status, a.body)
		}
		if strings.Contains(a.body, "kvm") || strings.Contains(a.body, "/nix/store") {
			t.Fatalf("the 502 body %q shows the failure's details; they belong in the log and events", a.body)
		}
	}
	_, before := sc.last()
	a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
	if a.status != http.StatusBadGateway {
		t.Fatalf("new request while the start failed: %d %q, want 502 at once", a.status, a.body)
	}
	if d, after := sc.last(); after != before+1 || d.Want != 1 {
		t.Fatalf("Scaler calls %d → %d, last %+v: a refused request still tells the scaler demand exists", before, after, d)
	}
	s := stats(g, "hello")
	if s.StartFailed != 3 || s.StartFailure != reason {
		t.Fatalf("stats = %+v, want 3 answered 502 and the reason", s)
	}

	// A ready instance wins over an old failure.
	recovered := hello(1, 2, startInstance(t, "hello-1", 0, namer("hello-1")))
	recovered.StartFailure = reason
	g.Update([]fngateway.Function{recovered})
	if a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", ""); a.status != http.StatusOK {
		t.Fatalf("with a ready instance: %d %q", a.status, a.body)
	}
}

func TestRefusingInstanceIsSkipped(t *testing.T) {
	g, base := startGateway(t, fngateway.Options{DownFor: time.Hour})
	c := client(t)
	refusing := refusingInstance(t, "hello-0")
	g.Update([]fngateway.Function{hello(4, 2, refusing, startInstance(t, "hello-1", 0, namer("hello-1")))})
	for i := range 6 { // the first one meets hello-0 in turn, whatever the method
		a := send(c, http.MethodPost, base, "fn.example.org", "/fn/hello", fmt.Sprintf("order=%d", i))
		if a.status != http.StatusOK || a.instance != "hello-1" || !strings.HasSuffix(a.body, fmt.Sprintf("body=order=%d", i)) {
			t.Fatalf("POST %d with hello-0 refusing: %d from %q: %s; want hello-1 with the whole body", i, a.status, a.instance, a.body)
		}
	}

	// Only refusing instances and none starting: 502.
	g.Update([]fngateway.Function{hello(4, 2, refusingInstance(t, "hello-2"))})
	a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
	if a.status != http.StatusBadGateway || !strings.Contains(a.body, "function hello could not be reached") || strings.Contains(a.body, "127.0.0.1") {
		t.Fatalf("with the only instance refusing: %d %q, want 502 without addresses", a.status, a.body)
	}
	if s := stats(g, "hello"); s.Unreachable != 1 {
		t.Fatalf("stats = %+v, want 1 unreachable", s)
	}

	// A refusing one and one starting: the request waits for the other.
	sc := &wants{}
	g2, base2 := startGateway(t, fngateway.Options{Scaler: sc, DownFor: time.Hour})
	refusing3 := refusingInstance(t, "hello-3")
	g2.Update([]fngateway.Function{hello(4, 2, refusing3, fngateway.Instance{Name: "hello-4"})})
	answers := make(chan answer, 1)
	go func() { answers <- send(c, http.MethodGet, base2, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, waitLong, "the request queued", testkit.Until(func() bool { return stats(g2, "hello").Queued == 1 }))
	g2.Update([]fngateway.Function{hello(4, 2, refusing3, startInstance(t, "hello-4", 0, namer("hello-4")))})
	if a := <-answers; a.status != http.StatusOK || a.instance != "hello-4" {
		t.Fatalf("after hello-4 became ready: %d from %q %s", a.status, a.instance, a.body)
	}
}

func TestInstancesOnThisNodeArePreferred(t *testing.T) {
	gt := newGate()
	g, base := startGateway(t, fngateway.Options{Node: 1})
	g.Update([]fngateway.Function{hello(1, 2,
		startInstance(t, "remote", 2, namer("remote")),
		startInstance(t, "local", 1, gt.handler("local")),
	)})
	c := client(t)
	gt.release()
	for range 5 {
		if a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", ""); a.instance != "local" {
			t.Fatalf("request went to %q (%d), want the instance on this node", a.instance, a.status)
		}
	}
	// The local instance busy (concurrency 1): the remote one takes the next.
	busy := newGate()
	defer busy.release()
	g.Update([]fngateway.Function{hello(1, 2,
		startInstance(t, "remote", 2, namer("remote")),
		startInstance(t, "local-busy", 1, busy.handler("local-busy")),
	)})
	go send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "")
	testkit.WaitFor(t, waitLong, "the local instance busy", testkit.Until(func() bool {
		now, _ := busy.counts()
		return now["local-busy"] == 1
	}))
	if a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", ""); a.instance != "remote" {
		t.Fatalf("with the local instance busy the request went to %q (%d), want remote", a.instance, a.status)
	}
}

func TestStreamingBodiesBothWays(t *testing.T) {
	more := make(chan struct{})
	inst := startInstance(t, "hello-0", 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fn/hello/echo-hash": // reads the whole upload, answers its hash and a large body
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
			block := make([]byte, 64<<10)
			for i := range 256 { // 16 MiB, with a length nobody knows in advance
				for j := range block {
					block[j] = byte(i + j)
				}
				w.Write(block)
			}
		case "/fn/hello/chunks": // the second chunk only after the client read the first
			w.Write([]byte("first\n"))
			w.(http.Flusher).Flush()
			select {
			case <-more:
			case <-r.Context().Done():
				return
			}
			w.Write([]byte("second\n"))
		}
	}))
	g, base := startGateway(t, fngateway.Options{})
	g.Update([]fngateway.Function{hello(2, 1, inst)})
	c := client(t)

	upload := make([]byte, 8<<20)
	rand.Read(upload)
	sum := sha256.Sum256(upload)
	req, _ := http.NewRequest(http.MethodPut, base+"/fn/hello/echo-hash", io.NopCloser(strings.NewReader(string(upload))))
	req.Host = "fn.example.org"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != fmt.Sprintf("%d %s\n", len(upload), hex.EncodeToString(sum[:])) {
		t.Fatalf("the instance got %q (%v), want all %d bytes of the upload", line, err, len(upload))
	}
	want := sha256.New()
	block := make([]byte, 64<<10)
	for i := range 256 {
		for j := range block {
			block[j] = byte(i + j)
		}
		want.Write(block)
	}
	got := sha256.New()
	n, err := io.Copy(got, br)
	resp.Body.Close()
	if err != nil || n != 16<<20 || hex.EncodeToString(got.Sum(nil)) != hex.EncodeToString(want.Sum(nil)) {
		t.Fatalf("downloaded %d bytes (%v), want the instance's 16 MiB unchanged", n, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitLong) // a deadlock guard, if the gateway buffered
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, base+"/fn/hello/chunks", nil)
	req.Host = "fn.example.org"
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br = bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "first\n" {
		t.Fatalf("first chunk: %q, %v: the gateway must pass a chunk on before the instance sends the next", line, err)
	}
	close(more)
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "second\n" {
		t.Fatalf("second chunk: %q, %v", rest, err)
	}
	if s := stats(g, "hello"); s.InFlight != 0 {
		t.Fatalf("after the streams ended: %d in flight, want 0", s.InFlight)
	}
}

func TestUpdateKeepsRequestsInFlightAndLoad(t *testing.T) {
	gt := newGate()
	defer gt.release()
	g, base := startGateway(t, fngateway.Options{})
	a0 := startInstance(t, "hello-0", 0, gt.handler("hello-0"))
	g.Update([]fngateway.Function{hello(1, 2, a0)})
	c := client(t)
	first := make(chan answer, 1)
	go func() { first <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, waitLong, "a request in flight", testkit.Until(func() bool { return stats(g, "hello").InFlight == 1 }))

	// The same instance passed again keeps its load: the next request waits.
	g.Update([]fngateway.Function{hello(1, 2, a0)})
	second := make(chan answer, 1)
	go func() { second <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, waitLong, "the second request queued", testkit.Until(func() bool { return stats(g, "hello").Queued == 1 }))

	// The instance removed from the function: the request running there
	// finishes, and the one waiting goes to the new instance.
	g.Update([]fngateway.Function{hello(1, 2, startInstance(t, "hello-1", 0, namer("hello-1")))})
	if a := <-second; a.status != http.StatusOK || a.instance != "hello-1" {
		t.Fatalf("the waiting request: %d from %q", a.status, a.instance)
	}
	gt.release()
	if a := <-first; a.status != http.StatusOK || a.instance != "hello-0" {
		t.Fatalf("the request in flight across the Updates: %d from %q (%v)", a.status, a.instance, a.err)
	}
	if s := stats(g, "hello"); s.InFlight != 0 || s.Ready != 1 {
		t.Fatalf("stats = %+v, want nothing in flight and the one new instance", s)
	}
}

func TestRemovedFunctionEndsItsWaitsWith404(t *testing.T) {
	g, base := startGateway(t, fngateway.Options{})
	g.Update([]fngateway.Function{hello(1, 1)})
	c := client(t)
	answers := make(chan answer, 1)
	go func() { answers <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, waitLong, "the request queued", testkit.Until(func() bool { return stats(g, "hello").Queued == 1 }))
	g.Update(nil)
	if a := <-answers; a.status != http.StatusNotFound {
		t.Fatalf("waiting request of a removed function: %d %q, want 404", a.status, a.body)
	}
	if len(g.Stats()) != 0 {
		t.Fatalf("Stats = %+v after the function was removed", g.Stats())
	}
}

func TestClientLeavingTheQueueIsCounted(t *testing.T) {
	g, base := startGateway(t, fngateway.Options{})
	g.Update([]fngateway.Function{hello(1, 1)})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/fn/hello", nil)
	req.Host = "fn.example.org"
	done := make(chan error, 1)
	go func() {
		resp, err := client(t).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	testkit.WaitFor(t, waitLong, "the request queued", testkit.Until(func() bool { return stats(g, "hello").Queued == 1 }))
	cancel()
	<-done
	testkit.WaitFor(t, waitLong, "the queue empty", func() error {
		if s := stats(g, "hello"); s.Queued != 0 || s.Canceled != 1 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
}

func TestStatsLastActiveFeedsScaleIn(t *testing.T) {
	clock := testkit.NewClock(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))
	g, base := startGateway(t, fngateway.Options{Now: clock.Now})
	f := fngateway.FromSpec(map[string]spec.Function{"hello": {
		HTTP: spec.FunctionHTTP{Host: "fn.example.org", Path: "/fn/hello", Port: 8080}, MinInstances: 0, MaxInstances: 2,
		Concurrency: 1, IdleTimeout: time.Minute}})
	if len(f) != 1 || !reflect.DeepEqual(f[0], fngateway.Function{Name: "hello", Host: "fn.example.org", Path: "/fn/hello", Concurrency: 1, MaxInstances: 2}) {
		t.Fatalf("FromSpec = %+v", f)
	}
	f[0].Instances = []fngateway.Instance{startInstance(t, "hello-0", 0, namer("hello-0"))}
	g.Update(f)
	start := clock.Now()
	if s := stats(g, "hello"); !s.LastActive.Equal(start) {
		t.Fatalf("LastActive = %s before any request, want when the gateway learned of the function (%s)", s.LastActive, start)
	}
	clock.Advance(30 * time.Second)
	if a := send(client(t), http.MethodGet, base, "fn.example.org", "/fn/hello", ""); a.status != http.StatusOK {
		t.Fatalf("GET: %d %s", a.status, a.body)
	}
	s := stats(g, "hello")
	if !s.LastActive.Equal(start.Add(30 * time.Second)) {
		t.Fatalf("LastActive = %s, want the request's time %s", s.LastActive, start.Add(30*time.Second))
	}
	for _, tc := range []struct {
		after time.Duration
		want  bool
	}{{59 * time.Second, false}, {time.Minute, true}} {
		n, ok := fngateway.ScaleIn(s.LastActive.Add(tc.after), s.LastActive, time.Minute, s.InFlight, s.Queued, s.Ready+s.Starting, 0)
		if ok != tc.want || (ok && n != 0) {
			t.Fatalf("ScaleIn %s after the last request = %d, %t; want %t", tc.after, n, ok, tc.want)
		}
	}
}

func TestInstanceDownForAMomentTakesTheQueueWhenItsMarkExpires(t *testing.T) {
	clock := testkit.NewClock(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))
	const downFor = 20 * time.Millisecond
	g, base := startGateway(t, fngateway.Options{Now: clock.Now, DownFor: downFor})
	c := client(t)
	inst := refusingInstance(t, "hello-0")
	g.Update([]fngateway.Function{hello(1, 1, inst)})
	if a := send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", ""); a.status != http.StatusBadGateway {
		t.Fatalf("with the only instance refusing: %d %q, want 502", a.status, a.body)
	}

	// The instance's server comes up on its address; the gateway still
	// has it down (the clock stands still), so the next request waits…
	ln, err := net.Listen("tcp", inst.Addr.String())
	if err != nil {
		t.Fatalf("listening again on %s: %v", inst.Addr, err)
	}
	srv := httptest.NewUnstartedServer(namer("hello-0"))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	answers := make(chan answer, 1)
	go func() { answers <- send(c, http.MethodGet, base, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, waitLong, "the request queued", testkit.Until(func() bool { return stats(g, "hello").Queued == 1 }))

	// …until the mark expires: then it goes there, with no Update and no
	// other request to wake the queue.
	clock.Advance(downFor)
	if a := <-answers; a.status != http.StatusOK || a.instance != "hello-0" {
		t.Fatalf("after the down mark expired: %d from %q (%v) %s", a.status, a.instance, a.err, a.body)
	}
}
