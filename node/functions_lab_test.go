package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/stats"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// The function lab: the network lab's three `blixard serve --network`
// nodes (nodes 1 and 2 offer four vCPUs, node 3 none, so it can run no
// instance) with two functions. hello's runner (testdata/fnlab/runner.sh)
// is the network lab's plain runner serving "hello from NAME" at / and,
// after a second, "slow from NAME" at /cgi-bin/slow; broken's exits at
// once. Every request goes to node 3's ingress listener, so every answer
// crosses the overlay from an instance on another node.

func fnLabFlake(extra string) string {
	return `{
  outputs = { self }: let
    runner = builtins.derivation {
      name = "fnlab-runner";
      system = "x86_64-linux";
      builder = "/bin/sh";
      run = builtins.readFile ./runner.sh;
      dhcp = builtins.readFile ./udhcpc.sh;
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '%s' \"$run\" > $out/bin/microvm-run && printf '%s' \"$dhcp\" > $out/bin/udhcpc-script && /bin/chmod +x $out/bin/microvm-run $out/bin/udhcpc-script" ];
    };
    broken = builtins.derivation {
      name = "fnlab-broken";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\necho \"broken: this runner cannot start\"\\nexit 1\\n' > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
  in {
    blixard = {
      cluster = "fnlab";
      network.cidr = "` + labCIDR + `";
      functions.hello = { inherit runner; vcpu = 1; memMiB = 64; http = { host = "fn.lab.test"; path = "/"; port = 8080; };
        maxInstances = 8; concurrency = 4; idleTimeout = "3s"; };
      functions.broken = { runner = broken; vcpu = 1; memMiB = 64; http = { host = "broken.lab.test"; path = "/"; port = 8080; };
        idleTimeout = "3s"; };
` + extra + `
    };
  };
}
`
}

func newFnLab(t *testing.T) *lab {
	return newFnLabWith(t, "", func(i int) int {
		if i == 3 {
			return 0
		}
		return 4
	})
}

// newFnLabWith is newFnLab with more of the flake's blixard attributes
// (extra, Nix) and node i given vcpu(i) vCPUs.
func newFnLabWith(t *testing.T, extra string, vcpu func(i int) int) *lab {
	files := map[string][]byte{"flake.nix": []byte(fnLabFlake(extra))}
	for name, src := range map[string]string{"runner.sh": "testdata/fnlab/runner.sh", "udhcpc.sh": "testdata/netlab/udhcpc.sh"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	return newLab(t, labConfig{files: files, vcpu: vcpu})
}

// fnGet sends GET path for host to node i's ingress listener and returns
// the status and the body, trimmed.
func (l *lab) fnGet(i int, host, path string, timeout time.Duration) (int, string, error) {
	code, body, _, err := l.fnGetSent(i, host, path, timeout)
	return code, body, err
}

// fnGetSent is fnGet that also returns when the client had written the
// request to its connection (zero if it never did): the latest time the
// test's side can tell before the node has the request.
func (l *lab) fnGetSent(i int, host, path string, timeout time.Duration) (int, string, time.Time, error) {
	req, err := http.NewRequest("GET", "http://"+l.net.Addr(i)+":8080"+path, nil)
	if err != nil {
		return 0, "", time.Time{}, err
	}
	req.Host = host
	var mu sync.Mutex
	var sent time.Time
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) {
			mu.Lock()
			sent = time.Now()
			mu.Unlock()
		},
	}))
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		return 0, "", sent, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), sent, err
}

// fnRunners lists the processes whose working directory is a function
// instance's directory (fn-NAME-N) on any node: runners and what they
// started.
func (l *lab) fnRunners(fn string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cwd")
	for _, p := range procs {
		cwd, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(cwd, l.root+"/") {
			continue
		}
		if strings.HasPrefix(filepath.Base(cwd), "fn-"+fn+"-") && filepath.Base(filepath.Dir(cwd)) == "state" {
			out = append(out, filepath.Base(filepath.Dir(p))+" in "+strings.TrimPrefix(cwd, l.root+"/"))
		}
	}
	return out
}

func (l *lab) functions(i int) (api.FunctionsView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return l.api(i).Functions(ctx)
}

func fnView(v api.FunctionsView, name string) api.FunctionView {
	for _, f := range v.Functions {
		if f.Name == name {
			return f
		}
	}
	return api.FunctionView{}
}

// execTimes reads the exec.ns of hello's instances on nodes 1 and 2.
func (l *lab) execTimes() map[string]time.Time {
	out := map[string]time.Time{}
	for i := 1; i <= 2; i++ {
		m, _ := filepath.Glob(filepath.Join(l.dir(i, "state"), "fn-hello-*", "exec.ns"))
		for _, f := range m {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err == nil {
				out[fmt.Sprintf("%d/%s", i, filepath.Base(filepath.Dir(f)))] = time.Unix(0, ns)
			}
		}
	}
	return out
}

// TestFunctionsColdStartScaleIdleAcrossNodes runs functions for real:
// three nodes, requests to the node that cannot run an instance, cold
// starts through Raft, the agents and the overlay, scale-out under
// concurrent slow requests, scale to zero with no runner left, a 404 for
// an unknown route and a 502 with an event for a runner that cannot start.
func TestFunctionsColdStartScaleIdleAcrossNodes(t *testing.T) {
	l := newFnLab(t)
	l.startAll(3, 3*time.Minute)

	// Unknown route: 404 from the front door (neither ingress nor a function).
	if code, body, err := l.fnGet(3, "nothing.lab.test", "/", 10*time.Second); err != nil || code != http.StatusNotFound {
		t.Fatalf("unknown host: %d %q %v; want 404", code, body, err)
	}

	// Before any request the nodes that may run hello keep its runner
	// (realised and rooted: the first cold start runs no nix); node 3,
	// without a vCPU for it, does not.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := l.api(3).State(sctx)
	cancel()
	if err != nil || st.Desired == nil {
		t.Fatalf("state: %v", err)
	}
	helloOut := st.Desired.Functions["hello"].Runner.Out
	kept := func(i int) bool {
		target, err := os.Readlink(filepath.Join(l.dir(i, "data"), "function-runners", filepath.Base(helloOut)))
		return err == nil && target == helloOut
	}
	testkit.WaitFor(t, 2*time.Minute, "hello's runner kept on nodes 1 and 2 before any request", func() error {
		for i := 1; i <= 2; i++ {
			if !kept(i) {
				return fmt.Errorf("node %d has no root of %s yet", i, helloOut)
			}
		}
		return nil
	})
	if kept(3) {
		t.Errorf("node 3, which cannot run hello, keeps its runner")
	}

	// First request: a cold start. Node 3 cannot fit the function, so the
	// instance runs on node 1 or 2 and the answer crosses the overlay.
	coldStart := func(what string) {
		t.Helper()
		arrived := time.Now()
		code, body, err := l.fnGet(3, "fn.lab.test", "/", 60*time.Second)
		took := time.Since(arrived)
		if err != nil || code != http.StatusOK || !strings.HasPrefix(body, "hello from fn-hello-") {
			t.Fatalf("%s: %d %q %v; want 200 and the guest's answer", what, code, body, err)
		}
		var exec time.Time
		for k, at := range l.execTimes() {
			if at.After(arrived) && strings.HasSuffix(k, "/fn-hello-0") {
				exec = at
			}
		}
		overhead := "unknown"
		if !exec.IsZero() {
			overhead = exec.Sub(arrived).Round(time.Millisecond).String()
		}
		t.Logf("%s: 200 %q after %s (request arrival → runner exec'd: %s)", what, body, took.Round(time.Millisecond), overhead)
	}
	coldStart("first request (cold start)")
	v, err := l.functions(3)
	if err != nil {
		t.Fatal(err)
	}
	hello := fnView(v, "hello")
	if len(hello.Instances) != 1 || hello.Instances[0].Node == 3 || hello.Local == nil || hello.Local.ColdStarts != 1 {
		t.Fatalf("after the first request: %+v (local %+v); want one instance on node 1 or 2 and one cold start at node 3", hello, hello.Local)
	}

	// Idle: after idleTimeout the leader scales hello to zero; its
	// runner and everything it started are gone.
	idle := func() {
		t.Helper()
		testkit.WaitFor(t, 60*time.Second, "hello scaled to zero, no runner left", func() error {
			v, err := l.functions(1)
			if err != nil {
				return err
			}
			if f := fnView(v, "hello"); f.Want != 0 || len(f.Instances) != 0 {
				return fmt.Errorf("want %d, instances %+v", f.Want, f.Instances)
			}
			if ps := l.fnRunners("hello"); len(ps) > 0 {
				return fmt.Errorf("processes left: %v", ps)
			}
			return nil
		})
	}
	idle()
	// The next request cold-starts again.
	coldStart("request after scale to zero (cold start again)")
	idle()

	// 20 concurrent slow requests, concurrency 4: at least 3 instances,
	// never more than maxInstances (8), every request answered.
	var most atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if v, err := l.functions(1); err == nil {
				n := int64(len(fnView(v, "hello").Instances))
				for cur := most.Load(); n > cur && !most.CompareAndSwap(cur, n); cur = most.Load() {
				}
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	start := time.Now()
	for k := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body, err := l.fnGet(3, "fn.lab.test", "/cgi-bin/slow", 90*time.Second)
			if err != nil || code != http.StatusOK || !strings.HasPrefix(body, "slow from fn-hello-") {
				errs <- fmt.Errorf("slow request %d: %d %q %v", k, code, body, err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-watched
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("20 concurrent slow requests (1 s each, concurrency 4) from zero instances: all answered in %s; at most %d instances",
		time.Since(start).Round(time.Millisecond), most.Load())
	if n := most.Load(); n < 3 || n > 8 {
		t.Errorf("hello ran at most %d instances under 20 concurrent slow requests; want 3 to 8 (maxInstances)", n)
	}
	l.checkOneCommitScaleOuts(t, "hello")
	if v, err := l.functions(3); err == nil {
		var b strings.Builder
		for _, f := range v.Functions {
			if f.Local != nil {
				fmt.Fprintf(&b, "%s: requests %d, cold starts %d, cold p50/p99 %s/%s, request p50/p99 %s/%s; ", f.Name, f.Local.Requests,
					f.Local.ColdStarts, f.Local.ColdStartP50, f.Local.ColdStartP99, f.Local.RequestP50, f.Local.RequestP99)
			}
		}
		t.Logf("node 3's gateway: %s", b.String())
	}

	// A runner that cannot start: 502, and the reason in the events.
	code, body, err := l.fnGet(3, "broken.lab.test", "/", 60*time.Second)
	if err != nil || code != http.StatusBadGateway {
		t.Fatalf("broken function: %d %q %v; want 502", code, body, err)
	}
	testkit.WaitFor(t, 30*time.Second, "a FunctionStartFailed event for broken", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		evs, err := l.api(2).Events(ctx)
		if err != nil {
			return err
		}
		var kinds []string
		for _, e := range evs {
			if e.Kind == "FunctionStartFailed" && strings.Contains(e.Message, "broken") {
				t.Logf("event: %s", e.Message)
				return nil
			}
			kinds = append(kinds, e.Kind)
		}
		return fmt.Errorf("no FunctionStartFailed event for broken among %v", slices.Compact(kinds))
	})
}

// TestFunctionsLoadAcrossNodes measures (and logs; it asserts only that
// nothing is lost and maxInstances holds) what the gateway adds to a warm
// request against a direct request to the instance, both by curl from
// node 1's namespace, and a steady load: 1,000 requests over 10 s to node
// 3's ingress (which runs no instance), concurrency 4, maxInstances 8.
func TestFunctionsLoadAcrossNodes(t *testing.T) {
	l := newFnLab(t)
	l.startAll(3, 3*time.Minute)
	if code, body, err := l.fnGet(1, "fn.lab.test", "/", 60*time.Second); err != nil || code != http.StatusOK {
		t.Fatalf("warm-up: %d %q %v", code, body, err)
	}
	v, err := l.functions(1)
	if err != nil {
		t.Fatal(err)
	}
	insts := fnView(v, "hello").Instances
	if len(insts) != 1 || insts[0].Address == "" {
		t.Fatalf("instances %+v", insts)
	}

	// Warm: 300 sequential requests each way, from node 1's namespace.
	// Requests straight to the instance are no activity for the gateways:
	// one through the gateway every second keeps hello from scaling to
	// zero after its idleTimeout (3 s) while they run.
	keepWarm, warmed := make(chan struct{}), make(chan struct{})
	stopWarm := sync.OnceFunc(func() { close(keepWarm); <-warmed })
	defer stopWarm() // also when a curl fails the test
	go func() {
		defer close(warmed)
		for {
			select {
			case <-keepWarm:
				return
			case <-time.After(time.Second):
			}
			_, _, _ = l.fnGet(1, "fn.lab.test", "/", 10*time.Second)
		}
	}()
	curlTimes := func(host, url string) []time.Duration { return l.curlTimes(t, 1, host, url, 300) }
	pct := func(ds []time.Duration, q float64) time.Duration {
		return stats.Quantile(ds, q).Round(time.Microsecond)
	}
	direct := curlTimes("fn.lab.test", "http://"+insts[0].Address+":8080/")
	via := curlTimes("fn.lab.test", "http://"+l.net.Addr(1)+":8080/")
	stopWarm()
	t.Logf("warm, 300 sequential requests from node 1's namespace (instance on node %d): direct p50 %s p99 %s; through node 1's gateway p50 %s p99 %s",
		insts[0].Node, pct(direct, 0.5), pct(direct, 0.99), pct(via, 0.5), pct(via, 0.99))

	// Load: 1,000 requests over 10 s to node 3.
	var most atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if v, err := l.functions(1); err == nil {
				n := int64(len(fnView(v, "hello").Instances))
				for cur := most.Load(); n > cur && !most.CompareAndSwap(cur, n); cur = most.Load() {
				}
			}
		}
	}()
	const n = 1000
	lat := make([]time.Duration, n)
	codes := make([]int, n)
	var wg sync.WaitGroup
	tick := time.NewTicker(10 * time.Millisecond)
	for k := range n {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := time.Now()
			code, _, err := l.fnGet(3, "fn.lab.test", "/", 60*time.Second)
			lat[k] = time.Since(s)
			if err != nil {
				code = -1
			}
			codes[k] = code
		}()
	}
	tick.Stop()
	wg.Wait()
	close(stop)
	<-watched
	lost := 0
	for k, c := range codes {
		if c != http.StatusOK {
			lost++
			if lost <= 5 {
				t.Errorf("load request %d: status %d", k, c)
			}
		}
	}
	t.Logf("load: %d requests over 10 s to node 3 (no instance there): %d not answered 200; latency p50 %s p99 %s max %s; at most %d instances",
		n, lost, pct(lat, 0.5), pct(lat, 0.99), slices.Max(lat).Round(time.Millisecond), most.Load())
	if m := most.Load(); m > 8 {
		t.Errorf("%d instances, above maxInstances 8", m)
	}
}

// checkOneCommitScaleOuts checks that scale-outs of fn carried their plan:
// the entry that scaled fn out is the one that placed its instances (a
// PlanCommitted event at the same index). A plan made from a state that
// moved before its commit is left to the leader, by design, so one such
// scale-out is enough; none means the plans never ride along.
func (l *lab) checkOneCommitScaleOuts(t *testing.T, fn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	events, err := l.api(3).Events(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	placed := map[uint64]bool{}
	for _, e := range events {
		if e.Kind == replicated.EventPlanCommitted {
			placed[e.Index] = true
		}
	}
	outs, together := 0, 0
	for _, e := range events {
		if e.Kind == replicated.EventFunctionScaled && e.About.Function == fn && strings.Contains(e.Message, "scaled out") {
			outs++
			if placed[e.Index] {
				together++
			}
		}
	}
	t.Logf("%d of %s's %d scale-outs placed their instances in the same entry", together, fn, outs)
	if together == 0 {
		t.Errorf("none of %s's %d scale-outs committed a plan in its own entry; want one commit from request to assignment", fn, outs)
	}
}

// curlTimes sends n sequential GETs of url with Host host from node
// from's namespace (one curl, connections kept alive) and returns their
// times; any answer but 200 fails the test.
func (l *lab) curlTimes(t *testing.T, from int, host, url string, n int) []time.Duration {
	t.Helper()
	args := []string{"-s", "-w", "%{http_code} %{time_total}\n", "-H", "Host: " + host}
	for range n {
		args = append(args, "-o", "/dev/null", url) // -o holds for one URL
	}
	out, err := l.net.Command(from, "curl", args...).Output()
	if err != nil {
		t.Fatalf("curl %s: %v", url, err)
	}
	var ds []time.Duration
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || f[0] != "200" {
			t.Fatalf("curl %s: %q", url, line)
		}
		s, _ := strconv.ParseFloat(f[1], 64)
		ds = append(ds, time.Duration(s*float64(time.Second)))
	}
	return ds
}
