package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestCountProbe(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	const refused = "connection refused"
	tests := []struct {
		name             string
		healthy, unhappy int      // healthyAfter, unhealthyAfter
		probes           []string // "" passes, anything else fails with that error; probe i ends at at(i)
		want             healthRecord
	}{
		{"no probe yet: not judged", 1, 3, nil, healthRecord{}},
		{"one pass with healthyAfter 1: healthy at once", 1, 3, []string{""},
			healthRecord{State: replicated.Healthy, Since: at(0), Passes: 1}},
		{"passes below healthyAfter: not judged yet", 3, 3, []string{"", ""},
			healthRecord{Passes: 2}},
		{"healthyAfter passes in a row: healthy since the last of them", 3, 3, []string{"", "", ""},
			healthRecord{State: replicated.Healthy, Since: at(2), Passes: 3}},
		{"a failure breaks the streak of passes", 2, 3, []string{"", refused, ""},
			healthRecord{Passes: 1, Err: refused}},
		{"failures below unhealthyAfter: not judged, the error shown", 1, 3, []string{refused, "timeout"},
			healthRecord{Failures: 2, Err: "timeout"}},
		{"unhealthyAfter failures in a row: unhealthy with the last error", 1, 3, []string{refused, refused, "timeout"},
			healthRecord{State: replicated.Unhealthy, Since: at(2), Failures: 3, Err: "timeout"}},
		{"a healthy instance stays healthy through fewer failures, with no error", 1, 3, []string{"", refused, refused},
			healthRecord{State: replicated.Healthy, Since: at(0), Failures: 2}},
		{"healthy, then unhealthyAfter failures: unhealthy", 1, 2, []string{"", refused, refused},
			healthRecord{State: replicated.Unhealthy, Since: at(2), Failures: 2, Err: refused}},
		{"unhealthy keeps its since through further failures, with the newest error", 1, 2, []string{refused, refused, "timeout"},
			healthRecord{State: replicated.Unhealthy, Since: at(1), Failures: 3, Err: "timeout"}},
		{"unhealthy, a pass below healthyAfter: still unhealthy with the last failure's error", 2, 1, []string{refused, ""},
			healthRecord{State: replicated.Unhealthy, Since: at(0), Passes: 1, Err: refused}},
		{"unhealthy, then healthyAfter passes: healthy, error cleared", 2, 1, []string{refused, "", ""},
			healthRecord{State: replicated.Healthy, Since: at(2), Passes: 2}},
		{"healthy keeps its since through further passes", 1, 1, []string{"", "", ""},
			healthRecord{State: replicated.Healthy, Since: at(0), Passes: 3}},
		{"flapping below both thresholds never judges", 2, 2, []string{"", refused, "", refused, ""},
			healthRecord{Passes: 1, Err: refused}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r healthRecord
			for i, p := range tt.probes {
				r = countProbe(r, p, at(i), tt.healthy, tt.unhappy)
			}
			if r != tt.want {
				t.Errorf("after %q: %+v, want %+v", tt.probes, r, tt.want)
			}
		})
	}
}

func TestTargetOf(t *testing.T) {
	addr := netip.MustParseAddr("10.100.0.7")
	nw := &replicated.Network{Identities: map[string]replicated.Identity{"web": {Address: addr}}}
	check := &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 22}}
	withDefaults := check.WithDefaults()
	tests := []struct {
		name    string
		as      replicated.Assignment
		nw      *replicated.Network
		cluster bool
		want    probeTarget
	}{
		{"no check: nothing to probe", replicated.Assignment{VM: "web"}, nw, true, probeTarget{}},
		{"cluster network: the instance's address", replicated.Assignment{VM: "web", Health: check}, nw, true,
			probeTarget{check: &withDefaults, addr: addr}},
		{"no cluster network: loopback", replicated.Assignment{VM: "web", Health: check}, nw, false,
			probeTarget{check: &withDefaults, addr: netip.MustParseAddr("127.0.0.1"), devMode: true}},
		{"cluster network, no identity: no address", replicated.Assignment{VM: "db", Health: check}, nw, true,
			probeTarget{check: &withDefaults}},
		{"cluster network, no plan's network: no address", replicated.Assignment{VM: "web", Health: check}, nil, true,
			probeTarget{check: &withDefaults}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := targetOf(tt.as, tt.nw, tt.cluster)
			if !got.equal(tt.want) {
				t.Errorf("targetOf = %+v (check %v), want %+v (check %v)", got, got.check, tt.want, tt.want.check)
			}
		})
	}
	if withDefaults.Interval != spec.DefaultHealthInterval || withDefaults.Timeout != spec.DefaultHealthTimeout ||
		withDefaults.HealthyAfter != spec.DefaultHealthyAfter || withDefaults.UnhealthyAfter != spec.DefaultUnhealthyAfter {
		t.Errorf("WithDefaults = %+v", withDefaults)
	}
}

func TestProbeTargetEqual(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1")
	mk := func(edit func(h *spec.HealthCheck)) probeTarget {
		h := spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: 80, Path: "/"}}.WithDefaults()
		edit(&h)
		return probeTarget{check: &h, addr: a}
	}
	base := mk(func(*spec.HealthCheck) {})
	for _, tt := range []struct {
		name  string
		other probeTarget
		equal bool
	}{
		{"same values, other pointers", mk(func(*spec.HealthCheck) {}), true},
		{"other path", mk(func(h *spec.HealthCheck) { h.HTTP = &spec.HTTPHealthCheck{Port: 80, Path: "/x"} }), false},
		{"tcp instead of http", mk(func(h *spec.HealthCheck) { h.HTTP, h.TCP = nil, &spec.TCPHealthCheck{Port: 80} }), false},
		{"other interval", mk(func(h *spec.HealthCheck) { h.Interval = time.Minute }), false},
		{"other threshold", mk(func(h *spec.HealthCheck) { h.UnhealthyAfter = 9 }), false},
		{"other address", probeTarget{check: base.check, addr: netip.MustParseAddr("10.0.0.2")}, false},
		{"no check", probeTarget{addr: a}, false},
	} {
		if got := base.equal(tt.other); got != tt.equal {
			t.Errorf("%s: equal = %v, want %v", tt.name, got, tt.equal)
		}
	}
}

// closedPort returns a loopback host:port nothing listens on (it did a
// moment ago).
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(l.Addr().String())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return ap
}

func testProber(t *testing.T) *prober {
	return newProber(time.Now, slog.New(slog.DiscardHandler), func(string) {})
}

// TestProbeAgainstRealServers runs single probes against local HTTP and
// TCP servers: answering, failing, refusing and hanging ones.
func TestProbeAgainstRealServers(t *testing.T) {
	hang := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		// A redirect is an answer; following it would fail (nothing
		// listens there).
		http.Redirect(w, r, "http://"+closedPort(t).String()+"/", http.StatusFound)
	})
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "database down", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(hang) }) // runs first: the hanging handlers end before Close waits for them
	httpAP := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))

	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	tcpAP := netip.MustParseAddrPort(tcp.Addr().String())
	// The kernel completes the handshake into the backlog: nothing needs
	// to accept for a TCP probe to pass.
	closed := closedPort(t)

	httpCheck := func(ap netip.AddrPort, path string) probeTarget {
		h := spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: int(ap.Port()), Path: path}, Interval: time.Second,
			Timeout: 300 * time.Millisecond}.WithDefaults()
		return probeTarget{check: &h, addr: ap.Addr()}
	}
	tcpCheck := func(ap netip.AddrPort) probeTarget {
		h := spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: int(ap.Port())}, Interval: time.Second,
			Timeout: 300 * time.Millisecond}.WithDefaults()
		return probeTarget{check: &h, addr: ap.Addr()}
	}
	noAddr := tcpCheck(tcpAP)
	noAddr.addr = netip.Addr{}
	devMode := func(t probeTarget) probeTarget {
		t.devMode = true
		return t
	}
	p := testProber(t)
	for _, tt := range []struct {
		name   string
		target probeTarget
		want   []string // nil: passes; else substrings of the error
	}{
		{"HTTP 200 passes", httpCheck(httpAP, "/ok"), nil},
		{"HTTP 302 passes and is not followed", httpCheck(httpAP, "/moved"), nil},
		{"HTTP 503 fails with the status", httpCheck(httpAP, "/broken"),
			[]string{"GET http://" + httpAP.String() + "/broken", "503 Service Unavailable", "200–399"}},
		{"HTTP 404 fails with the status", httpCheck(httpAP, "/nothing-here"), []string{"404 Not Found"}},
		{"HTTP to a closed port fails refused", httpCheck(closed, "/"), []string{"connection refused", closed.String()}},
		{"HTTP to a hanging server fails at the timeout", httpCheck(httpAP, "/hang"),
			[]string{"no answer within the timeout, 300ms"}},
		{"TCP to a listener passes", tcpCheck(tcpAP), nil},
		{"TCP to a closed port fails refused", tcpCheck(closed), []string{"connect to " + closed.String(), "connection refused"}},
		{"no address fails saying so", noAddr, []string{"no cluster address for web"}},
		{"dev mode says where it probed", devMode(tcpCheck(closed)), []string{"connection refused", "probed on 127.0.0.1", "serve --network"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := p.probe(t.Context(), "web", tt.target)
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("probe failed: %v", err)
			case tt.want != nil && err == nil:
				t.Fatalf("probe passed, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestProberJudgesAndStops runs the prober's goroutines against a real
// HTTP server that answers, fails, and answers again; an instance without
// a check is healthy at once; stop ends every goroutine.
func TestProberJudgesAndStops(t *testing.T) {
	var mu sync.Mutex
	status := http.StatusOK
	var requests int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		requests++
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	setStatus := func(s int) {
		mu.Lock()
		defer mu.Unlock()
		status = s
	}
	ap := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	h := spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: int(ap.Port()), Path: "/healthz"},
		Interval: spec.MinHealthInterval, Timeout: 50 * time.Millisecond, HealthyAfter: 2, UnhealthyAfter: 2}

	changes := make(chan string, 100)
	p := newProber(time.Now, slog.New(slog.DiscardHandler), func(vm string) {
		select {
		case changes <- vm:
		default:
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	p.sync(ctx, map[string]probeTarget{
		"web":  {check: &h, addr: ap.Addr()},
		"idle": {}, // no check
	}, nil)
	health := func(vm string) replicated.VMStatus {
		st := replicated.VMStatus{VM: vm, Phase: replicated.PhaseRunning}
		p.stamp(&st)
		return st
	}
	if s := health("idle"); s.Health != replicated.Healthy || s.HealthSince.IsZero() || s.HealthError != "" {
		t.Errorf("idle without a check: %+v, want healthy since now", s)
	}
	waitHealth := func(vm string, want replicated.HealthState, errHas string) replicated.VMStatus {
		t.Helper()
		var s replicated.VMStatus
		testkit.WaitFor(t, waitTimeout, fmt.Sprintf("%s %s", vm, want), func() error {
			s = health(vm)
			if s.Health != want || !strings.Contains(s.HealthError, errHas) {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		return s
	}
	healthy := waitHealth("web", replicated.Healthy, "")
	if healthy.HealthSince.IsZero() || healthy.HealthError != "" {
		t.Errorf("healthy web: %+v", healthy)
	}
	setStatus(http.StatusInternalServerError)
	sick := waitHealth("web", replicated.Unhealthy, "500 Internal Server Error")
	if !sick.HealthSince.After(healthy.HealthSince) {
		t.Errorf("unhealthy since %s, not after healthy since %s", sick.HealthSince, healthy.HealthSince)
	}
	setStatus(http.StatusNoContent)
	waitHealth("web", replicated.Healthy, "")
	if len(changes) == 0 {
		t.Error("no change was signalled")
	}

	// A status that is not running carries no health.
	st := replicated.VMStatus{VM: "web", Phase: replicated.PhaseStarting, Health: replicated.Healthy}
	p.stamp(&st)
	if st.Health != "" || !st.HealthSince.IsZero() {
		t.Errorf("starting VM stamped %+v", st)
	}

	// web stops running here: its goroutine ends and its record goes.
	p.sync(ctx, map[string]probeTarget{"idle": {}}, nil)
	if s := health("web"); s.Health != "" {
		t.Errorf("web after it stopped running here: %+v", s)
	}
	p.stop()
	mu.Lock()
	after := requests
	mu.Unlock()
	if after == 0 {
		t.Fatal("the server saw no probe")
	}
	if s := health("idle"); s.Health != "" {
		t.Errorf("idle after stop: %+v", s)
	}
}

// healthRunner builds a runner that serves its working directory's www
// over HTTP on addr with busybox httpd (www/healthz says ok), as a guest
// would serve its health endpoint.
func healthRunner(t *testing.T, addr netip.AddrPort) runner {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox is missing (its httpd serves the test runner's health endpoint): run scripts/setup-microvm.sh: %v", err)
	}
	run := fmt.Sprintf("#!/bin/sh\n%[1]s mkdir -p www\necho ok > www/healthz\nexec %[1]s httpd -f -p %[2]s -h www\n", bb, addr)
	shutdown := "#!/bin/sh\nread p s < pid\nkill $p\n"
	return systemdRunnerScripts(t, run, shutdown)
}

// TestAgentReportsHealth runs an agent (process backend, real runners)
// on a node with the cluster network, where web's committed address is a
// loopback address other than 127.0.0.1: web's endpoint answers, then fails (404), then
// hangs (its server stopped), and the heartbeats say healthy → unhealthy
// with the probe's error → healthy, while idle, without a check, is
// healthy once it runs. Health is never reported for a VM that does not
// run.
func TestAgentReportsHealth(t *testing.T) {
	e := newEnv(t)
	// A free port on a random loopback address 127.X.Y.Z other than
	// 127.0.0.1: only a probe of the committed address reaches it.
	webAddr := netip.MustParseAddrPort(testkit.FreeLoopbackAddr(t))
	web := healthRunner(t, webAddr)
	idle := makeRunner(t, runnerSpec{marker: "idle"}).build(t)
	e.state.Update(func(st *replicated.State) {
		st.Network = &replicated.Network{Identities: map[string]replicated.Identity{"web": {Address: webAddr.Addr()}}}
	})
	check := &spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: int(webAddr.Port()), Path: "/healthz"},
		Interval: spec.MinHealthInterval, Timeout: 80 * time.Millisecond, HealthyAfter: 2, UnhealthyAfter: 2}
	e.state.put(replicated.Assignment{VM: "web", Declared: "web", Node: testNode, Drv: web.drv, OutPath: web.out, Health: check})
	e.state.assign("idle", testNode, idle)
	e.start(func(o *Options) { o.ClusterNetwork = true })

	up := e.waitPhase("web", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.Health == replicated.Healthy })
	if up.HealthSince.IsZero() || up.HealthError != "" {
		t.Errorf("healthy web: %+v", up)
	}
	e.waitPhase("idle", replicated.PhaseRunning, func(s replicated.VMStatus) bool {
		return s.Health == replicated.Healthy && !s.HealthSince.IsZero()
	})

	// The endpoint fails: unhealthy with the probe's error, still running.
	healthz := filepath.Join(e.dir, "web", "www", "healthz")
	if err := os.Remove(healthz); err != nil {
		t.Fatal(err)
	}
	down := e.waitPhase("web", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.Health == replicated.Unhealthy })
	if !strings.Contains(down.HealthError, "404") || !strings.Contains(down.HealthError, webAddr.String()+"/healthz") ||
		strings.Contains(down.HealthError, "without the cluster network") {
		t.Errorf("unhealthy web's error %q does not name the 404 of %s/healthz", down.HealthError, webAddr)
	}
	if !down.HealthSince.After(up.HealthSince) {
		t.Errorf("unhealthy since %s, not after healthy since %s", down.HealthSince, up.HealthSince)
	}
	if err := os.WriteFile(healthz, []byte("ok\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.waitPhase("web", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.Health == replicated.Healthy })

	// The server stops answering (stopped, not gone: connections queue
	// unanswered): unhealthy at the probe's timeout.
	pid := e.pid("web").PID
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	defer cont()
	hung := e.waitPhase("web", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.Health == replicated.Unhealthy })
	t.Logf("failing endpoint: %s; hung server: %s", down.HealthError, hung.HealthError)
	if !strings.Contains(hung.HealthError, "no answer within the timeout") {
		t.Errorf("hung web's error %q does not name the timeout", hung.HealthError)
	}
	cont()
	e.waitPhase("web", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.Health == replicated.Healthy })

	// Stopped: no health.
	e.state.unassign("web")
	testkit.WaitFor(t, waitTimeout, "web reported stopped", testkit.Until(func() bool { return e.ever("web", replicated.PhaseStopped) }))
	for _, hb := range e.state.heartbeats(e.since) {
		for _, s := range hb {
			if s.Health != "" && s.Phase != replicated.PhaseRunning {
				t.Errorf("a heartbeat reports %s %s with health %q", s.VM, s.Phase, s.Health)
			}
		}
	}
}

func TestClipHealthError(t *testing.T) {
	short := "connection refused"
	if got := clipHealthError(short); got != short {
		t.Errorf("clip(%q) = %q", short, got)
	}
	long := strings.Repeat("é", maxHealthError) // 2 bytes each
	got := clipHealthError(long)
	if len(got) > maxHealthError+len("…") || !strings.HasSuffix(got, "…") || !utf8.ValidString(got) {
		t.Errorf("clip of %d bytes = %d bytes %q…", len(long), len(got), got[:10])
	}
}

// TestProberStartsFromASeed: a restarted agent's prober starts from the
// verdict this node committed, not from nothing, and judges on from there
// by the same thresholds.
func TestProberStartsFromASeed(t *testing.T) {
	var mu sync.Mutex
	status := http.StatusInternalServerError
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.WriteHeader(status)
	}))
	defer srv.Close()
	ap := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	h := spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: int(ap.Port()), Path: "/"},
		Interval: time.Hour, Timeout: time.Second, HealthyAfter: 1, UnhealthyAfter: 1}
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newProber(time.Now, slog.New(slog.DiscardHandler), func(string) {})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	defer p.stop()
	// The interval is an hour: the one probe made at the start is the
	// only one; before it ends the seed is what is reported.
	mu.Lock()
	p.sync(ctx, map[string]probeTarget{"web": {check: &h, addr: ap.Addr()}},
		map[string]healthRecord{"web": {State: replicated.Healthy, Since: since}})
	st := replicated.VMStatus{VM: "web", Phase: replicated.PhaseRunning}
	p.stamp(&st)
	mu.Unlock()
	if st.Health != replicated.Healthy || !st.HealthSince.Equal(since) {
		t.Fatalf("before its first probe: %+v, want the seeded verdict healthy since %s", st, since)
	}
	testkit.WaitFor(t, waitTimeout, "the first probe's 500 judged", func() error {
		st := replicated.VMStatus{VM: "web", Phase: replicated.PhaseRunning}
		p.stamp(&st)
		if st.Health != replicated.Unhealthy || !strings.Contains(st.HealthError, "500") {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	// A seed is only for a new record: a VM the prober already judges
	// keeps its own verdict.
	p.sync(ctx, map[string]probeTarget{"web": {check: &h, addr: ap.Addr()}},
		map[string]healthRecord{"web": {State: replicated.Healthy, Since: since}})
	st = replicated.VMStatus{VM: "web", Phase: replicated.PhaseRunning}
	p.stamp(&st)
	if st.Health != replicated.Unhealthy {
		t.Fatalf("a seed replaced a verdict the prober made itself: %+v", st)
	}
}

// TestObserveTakesTheCommittedVerdict: the seed is this node's committed
// verdict of an instance running its assignment's runner here, and
// nothing else's.
func TestObserveTakesTheCommittedVerdict(t *testing.T) {
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	as := func(node uint64, out string) replicated.Assignment {
		return replicated.Assignment{VM: "web", Node: node, OutPath: out}
	}
	committed := func(node uint64, phase replicated.Phase, booted string) replicated.VMStatus {
		return replicated.VMStatus{VM: "web", Node: node, Phase: phase, BootedOut: booted, Health: replicated.Unhealthy,
			HealthSince: since, HealthError: "GET /: 500"}
	}
	want := Judged{Health: replicated.Unhealthy, Since: since, Err: "GET /: 500"}
	for _, tc := range []struct {
		name string
		as   replicated.Assignment
		c    replicated.VMStatus
		want Judged
	}{
		{"running its runner here", as(1, "/nix/store/v1"), committed(1, replicated.PhaseRunning, "/nix/store/v1"), want},
		{"reported by another node", as(1, "/nix/store/v1"), committed(2, replicated.PhaseRunning, "/nix/store/v1"), Judged{}},
		{"assigned elsewhere now", as(2, "/nix/store/v1"), committed(1, replicated.PhaseRunning, "/nix/store/v1"), Judged{}},
		{"an older runner", as(1, "/nix/store/v2"), committed(1, replicated.PhaseRunning, "/nix/store/v1"), Judged{}},
		{"not running", as(1, "/nix/store/v1"), committed(1, replicated.PhaseStarting, "/nix/store/v1"), Judged{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Node: 1, Assignments: map[string]replicated.Assignment{"web": tc.as}}
			observeVMs(&in, newRecords(time.Second, time.Second, time.Second), nil,
				map[string]replicated.VMStatus{"web": tc.c}, map[uint64]*replicated.Node{1: {ID: 1}, 2: {ID: 2}},
				func(string) (UnitStatus, error) { return UnitStatus{}, nil }, func(string) string { return "" }, func(string) string { return "" })
			if got := in.VMs["web"].Judged; got != tc.want {
				t.Fatalf("Judged = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestSeedsOnlyTheAdoptedRunner: a committed verdict seeds the prober only
// for the runner that already ran when the agent started (same PID), never
// for one started since — a function instance stopped and started again
// must not look healthy before its first probe.
func TestSeedsOnlyTheAdoptedRunner(t *testing.T) {
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 1}, Interval: time.Hour, Timeout: time.Second, HealthyAfter: 1, UnhealthyAfter: 3}
	as := replicated.Assignment{VM: "fn-0", Node: 1, OutPath: "/nix/store/v1", Health: &h}
	in := func(pid int) Input {
		return Input{Node: 1, Assignments: map[string]replicated.Assignment{"fn-0": as},
			VMs: map[string]Observed{"fn-0": {Unit: UnitStatus{Active: true, PID: pid, Booted: "/nix/store/v1"},
				Judged: Judged{Health: replicated.Healthy, Since: since}}}}
	}
	running := Decision{VMs: []VMDecision{{VM: "fn-0", Status: &replicated.VMStatus{VM: "fn-0", Phase: replicated.PhaseRunning}}}}
	stopped := Decision{VMs: []VMDecision{{VM: "fn-0", Status: &replicated.VMStatus{VM: "fn-0", Phase: replicated.PhaseStopped}}}}
	stamp := func(a *Agent) replicated.VMStatus {
		st := replicated.VMStatus{VM: "fn-0", Phase: replicated.PhaseRunning}
		a.probes.stamp(&st)
		return st
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	a := &Agent{probes: newProber(time.Now, slog.New(slog.DiscardHandler), func(string) {})}
	defer a.probes.stop()
	a.syncProbes(ctx, in(100), running, nil)
	if st := stamp(a); st.Health != replicated.Healthy || !st.HealthSince.Equal(since) {
		t.Fatalf("the runner adopted at start: %+v, want the committed verdict", st)
	}
	// It stops, and a new runner (another PID) starts: no seed, although
	// the committed status still says healthy.
	a.syncProbes(ctx, in(100), stopped, nil)
	a.syncProbes(ctx, in(200), running, nil)
	if st := stamp(a); st.Health == replicated.Healthy {
		t.Fatalf("a runner started after the agent: %+v, want no verdict from the old runner's", st)
	}
}

// TestProberRetriesAStartingInstanceSoon: a new instance that fails its
// first probes and passes a moment later is judged healthy then, not an
// interval later, and the failures before are not counted.
func TestProberRetriesAStartingInstanceSoon(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ap := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	// An hour between counted probes: only the starting retries can see
	// the pass within the test.
	h := spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: int(ap.Port()), Path: "/"},
		Interval: time.Hour, Timeout: time.Second, HealthyAfter: 1, UnhealthyAfter: 1}
	var logs lockedBuffer
	p := newProber(time.Now, slog.New(slog.NewTextHandler(&logs, nil)), func(string) {})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	defer p.stop()
	p.sync(ctx, map[string]probeTarget{"web": {check: &h, addr: ap.Addr()}}, nil)
	testkit.WaitFor(t, waitTimeout, "the instance judged healthy", func() error {
		st := replicated.VMStatus{VM: "web", Phase: replicated.PhaseRunning}
		p.stamp(&st)
		if st.Health != replicated.Healthy {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	mu.Lock()
	n := calls
	mu.Unlock()
	if n != 3 {
		t.Errorf("%d probes; want 3 (two failed while starting, then the pass)", n)
	}
	if strings.Contains(logs.String(), "health=unhealthy") {
		t.Errorf("a starting instance's failed probes were counted:\n%s", logs.String())
	}
}

func TestStartingRetry(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct{ took, interval, want time.Duration }{
		{ms(1), ms(100), ms(99)},      // refused at once: the next a period after it began
		{ms(80), ms(100), ms(20)},     // timed out (a function's 80 ms): soon after
		{ms(95), ms(100), ms(10)},     // never closer than 10 ms
		{ms(1), ms(50), ms(49)},       // an interval below startingProbe bounds the period
		{ms(2000), ms(5000), ms(10)},  // a VM's long timeout
		{0, 5 * time.Second, ms(100)}, // a VM's default interval
	} {
		if got := startingRetry(tc.took, tc.interval); got != tc.want {
			t.Errorf("startingRetry(%s, %s) = %s, want %s", tc.took, tc.interval, got, tc.want)
		}
	}
}
