package ingress_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/spec"
)

func TestProxyBothInstancesAnswerASeriesOfRequests(t *testing.T) {
	f := startFleet(t, 10, []string{"web-0", "web-1"}, namer)
	s, base := startProxy(t, ingress.Options{})
	s.Update(f.table("web", "web.example.org"))
	c := client(t)

	answered := map[string]int{}
	for range 20 {
		a := send(t, c, http.MethodGet, base, "Web.Example.org:8443", "/hello?x=1", "")
		if a.status != http.StatusOK {
			t.Fatalf("GET: %d %s", a.status, a.body)
		}
		answered[a.instance]++
	}
	if answered["web-0"] == 0 || answered["web-1"] == 0 {
		t.Fatalf("answers by instance = %v, want both web-0 and web-1", answered)
	}

	a := send(t, c, http.MethodPost, base, "web.example.org", "/form", "a=b")
	want := " POST /form host=web.example.org xff=127.0.0.1 xfh=web.example.org xfp=http body=a=b"
	if !strings.HasSuffix(a.body, want) {
		t.Fatalf("instance saw %q, want it to end with %q: the request unchanged, the client's host, ingress's own X-Forwarded-*", a.body, want)
	}
}

func TestProxyStoppedInstanceLeavesEveryRequestAnswered(t *testing.T) {
	f := startFleet(t, 20, []string{"web-0", "web-1"}, namer)
	s, base := startProxy(t, ingress.Options{})
	s.Update(f.table("web", "web.example.org"))
	c := client(t)
	for range 4 { // both instances hold connections from the proxy now
		send(t, c, http.MethodGet, base, "web.example.org", "/", "")
	}

	f.servers["web-0"].Close()
	for i := range 20 {
		method, body := http.MethodGet, ""
		if i%4 == 1 || i%4 == 2 { // both turns of the rotation
			method, body = http.MethodPost, "order=42" // not idempotent: sent only where nothing was sent before
		}
		a := send(t, c, method, base, "web.example.org", "/", body)
		if a.status != http.StatusOK || a.instance != "web-1" || !strings.HasSuffix(a.body, "body="+body) {
			t.Fatalf("request %d (%s) with web-0 stopped: %d from %q: %s", i, method, a.status, a.instance, a.body)
		}
	}

	f.servers["web-1"].Close()
	a := send(t, c, http.MethodGet, base, "web.example.org", "/", "")
	if a.status != http.StatusBadGateway || !strings.Contains(a.body, "no instance of web accepted the connection (tried 2)") {
		t.Fatalf("with every instance stopped: %d %q, want 502 saying no instance accepted", a.status, a.body)
	}
	if strings.Contains(a.body, "127.0.0.") {
		t.Fatalf("the 502 body %q shows instance addresses; they belong in the node's log", a.body)
	}
}

func TestProxyRefusedConnectionRetriesAnyRequest(t *testing.T) {
	f := startFleet(t, 30, []string{"web-0", "web-1"}, namer)
	f.servers["web-0"].Close() // first in turn, and not yet known to be down
	s, base := startProxy(t, ingress.Options{})
	s.Update(f.table("web", "web.example.org"))

	a := send(t, client(t), http.MethodPost, base, "web.example.org", "/pay", "amount=10")
	if a.status != http.StatusOK || a.instance != "web-1" || !strings.HasSuffix(a.body, "body=amount=10") {
		t.Fatalf("POST with web-0 refusing: %d from %q: %s; want web-1 with the whole body", a.status, a.instance, a.body)
	}
}

func TestProxyFailureAfterSendingRetriesOnlyIdempotentRequests(t *testing.T) {
	var got counter
	f := startFleet(t, 40, []string{"web-0", "web-1"}, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got.add(name + " " + r.Method)
			if name == "web-0" { // accepts, reads the request, then hangs up
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
				return
			}
			w.Header().Set("X-Instance", name)
		})
	})
	s, base := startProxy(t, ingress.Options{})
	// Two entries, each with its own turn: web-0 is first for both.
	s.Update(f.table("web", "get.example.org", "post.example.org"))
	c := client(t)

	if a := send(t, c, http.MethodGet, base, "get.example.org", "/", ""); a.status != http.StatusOK || a.instance != "web-1" {
		t.Fatalf("GET after web-0 hung up: %d from %q %s, want web-1", a.status, a.instance, a.body)
	}
	a := send(t, c, http.MethodPost, base, "post.example.org", "/", "charge")
	if a.status != http.StatusBadGateway || !strings.Contains(a.body, "the instance failed before it answered") {
		t.Fatalf("POST after web-0 hung up: %d %q, want 502", a.status, a.body)
	}
	if got.get("web-0 GET") != 1 || got.get("web-0 POST") != 1 || got.get("web-1 POST") != 0 {
		t.Fatalf("instances got %v: the POST web-0 may have acted on must not be sent again", got.n)
	}
}

func TestProxyUpdateKeepsStreamInFlight(t *testing.T) {
	release := make(chan struct{})
	f := startFleet(t, 50, []string{"web-0", "web-1"}, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Instance", name)
			if r.URL.Path != "/stream" {
				return
			}
			io.WriteString(w, "chunk 1\n")
			http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, "chunk 2\n")
		})
	})
	s, base := startProxy(t, ingress.Options{})
	only := func(i int) *ingress.Table {
		return ingress.NewTable(map[string]spec.Ingress{"site": httpEntry("web.example.org", "/", "web", f.port)},
			map[string][]ingress.Instance{"web": {f.insts[i]}})
	}
	s.Update(only(0))
	c := client(t)

	req, _ := http.NewRequest(http.MethodGet, base+"/stream", nil)
	req.Host = "web.example.org"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	if line, err := rd.ReadString('\n'); err != nil || line != "chunk 1\n" {
		t.Fatalf("first chunk of the stream: %q, %v", line, err)
	}

	s.Update(only(1)) // web-0 leaves the table while its stream runs
	if a := send(t, c, http.MethodGet, base, "web.example.org", "/", ""); a.instance != "web-1" {
		t.Fatalf("request after the update went to %q, want web-1", a.instance)
	}
	s.Update(ingress.NewTable(nil, nil)) // and then the entry itself goes
	if a := send(t, c, http.MethodGet, base, "web.example.org", "/", ""); a.status != http.StatusNotFound {
		t.Fatalf("request after the entry was removed: %d, want 404", a.status)
	}

	close(release)
	rest, err := io.ReadAll(rd)
	if err != nil || string(rest) != "chunk 2\n" {
		t.Fatalf("rest of the stream after two updates: %q, %v; want the stream to finish whole", rest, err)
	}
}

func TestProxyStreamsBothWays(t *testing.T) {
	// The instance echoes each line as it arrives; the client sends the
	// next line only after reading the echo of the previous one, so this
	// finishes only if neither direction is buffered.
	f := startFleet(t, 60, []string{"echo"}, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rc := http.NewResponseController(w)
			if err := rc.EnableFullDuplex(); err != nil {
				t.Errorf("EnableFullDuplex: %v", err)
			}
			w.WriteHeader(http.StatusOK)
			rc.Flush()
			sc := bufio.NewScanner(r.Body)
			for sc.Scan() {
				io.WriteString(w, "echo "+sc.Text()+"\n")
				rc.Flush()
			}
		})
	})
	s, base := startProxy(t, ingress.Options{})
	s.Update(f.table("echo", "echo.example.org"))

	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, base+"/", pr)
	req.Host = "echo.example.org"
	respc := make(chan *http.Response, 1)
	errc := make(chan error, 1)
	go func() {
		resp, err := client(t).Do(req)
		if err != nil {
			errc <- err
			return
		}
		respc <- resp
	}()
	io.WriteString(pw, "line 1\n")
	var resp *http.Response
	select {
	case resp = <-respc:
	case err := <-errc:
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	for i := 1; i <= 3; i++ {
		if i > 1 {
			io.WriteString(pw, "line "+string(rune('0'+i))+"\n")
		}
		line, err := rd.ReadString('\n')
		if want := "echo line " + string(rune('0'+i)) + "\n"; err != nil || line != want {
			t.Fatalf("echo %d: %q, %v; want %q", i, line, err, want)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(rd); err != nil || len(rest) != 0 {
		t.Fatalf("after the request body ended: %q, %v; want a clean end", rest, err)
	}
}

func TestProxyUpgradedConnectionPassesThrough(t *testing.T) {
	f := startFleet(t, 70, []string{"ws"}, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Upgrade") != "echo" {
				http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
				return
			}
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
			brw.Flush()
			io.Copy(conn, brw)
		})
	})
	s, base := startProxy(t, ingress.Options{})
	s.Update(f.table("ws", "ws.example.org"))

	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /socket HTTP/1.1\r\nHost: ws.example.org\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	rd := bufio.NewReader(conn)
	resp, err := http.ReadResponse(rd, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answer: %v %v, want 101", resp, err)
	}
	for _, msg := range []string{"ping\n", "pong\n"} {
		io.WriteString(conn, msg)
		if got, err := rd.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("over the upgraded connection: %q, %v; want %q", got, err, msg)
		}
	}
}

func TestProxyAnswersWhatItCannotRoute(t *testing.T) {
	f := startFleet(t, 80, []string{"api-0"}, namer)
	s, base := startProxy(t, ingress.Options{})
	c := client(t)
	if a := send(t, c, http.MethodGet, base, "web.example.org", "/", ""); a.status != http.StatusNotFound {
		t.Fatalf("before the first Update: %d %q, want 404", a.status, a.body)
	}
	s.Update(ingress.NewTable(map[string]spec.Ingress{
		"site": httpEntry("web.example.org", "/", "web", f.port),
		"api":  httpEntry("web.example.org", "/api", "api", f.port),
	}, map[string][]ingress.Instance{"api": f.insts}))

	for _, tc := range []struct {
		name, host, path string
		status           int
		body             string
	}{
		{"unknown host answers 404 naming host and path", "other.example.org", "/x", http.StatusNotFound,
			`no ingress route for host "other.example.org" and path "/x"`},
		{"VM without running instance answers 503", "web.example.org", "/index.html", http.StatusServiceUnavailable,
			"no running instance of web"},
		{"route with a running instance answers", "web.example.org", "/api/v1", http.StatusOK, "api-0 GET /api/v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := send(t, c, http.MethodGet, base, tc.host, tc.path, "")
			if a.status != tc.status || !strings.Contains(a.body, tc.body) {
				t.Fatalf("GET %s%s: %d %q, want %d with %q", tc.host, tc.path, a.status, a.body, tc.status, tc.body)
			}
		})
	}
}

func TestServeContextEndsStreams(t *testing.T) {
	f := startFleet(t, 120, []string{"web-0"}, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "start\n")
			http.NewResponseController(w).Flush()
			<-r.Context().Done() // a stream that never ends on its own
		})
	})
	s := ingress.New(ingress.Options{})
	s.Update(f.table("web", "web.example.org"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()

	req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
	req.Host = "web.example.org"
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	if line, err := rd.ReadString('\n'); err != nil || line != "start\n" {
		t.Fatalf("stream start: %q, %v", line, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after its context ended: %v, want nil", err)
	}
	if rest, err := io.ReadAll(rd); err == nil {
		t.Fatalf("stream after Serve returned: %q and a clean end; want it cut", rest)
	}
}

func TestProxyRefusingInstanceIsTriedLastUntilDownForPasses(t *testing.T) {
	f := startFleet(t, 130, []string{"web-0", "web-1"}, namer)
	addr0 := f.servers["web-0"].Listener.Addr().String()
	f.servers["web-0"].Close()
	clock := testkit.NewClock(testkit.T0)
	s, base := startProxy(t, ingress.Options{Now: clock.Now, DownFor: 5 * time.Second})
	s.Update(f.table("web", "web.example.org"))
	c := client(t)
	if a := send(t, c, http.MethodGet, base, "web.example.org", "/", ""); a.instance != "web-1" {
		t.Fatalf("first request with web-0 refusing: %d from %q", a.status, a.instance)
	}

	// web-0 comes back at its address: still marked down, it gets nothing
	// while web-1 answers.
	ln, err := net.Listen("tcp", addr0)
	if err != nil {
		t.Fatal(err)
	}
	back := httptest.NewUnstartedServer(namer("web-0"))
	back.Listener.Close()
	back.Listener = ln
	back.Start()
	defer back.Close()
	answered := map[string]int{}
	for range 10 {
		answered[send(t, c, http.MethodGet, base, "web.example.org", "/", "").instance]++
	}
	if answered["web-1"] != 10 {
		t.Fatalf("answers while web-0 is marked down = %v, want all from web-1", answered)
	}

	clock.Advance(5 * time.Second)
	answered = map[string]int{}
	for range 10 {
		answered[send(t, c, http.MethodGet, base, "web.example.org", "/", "").instance]++
	}
	if answered["web-0"] == 0 || answered["web-1"] == 0 {
		t.Fatalf("answers once the mark expired = %v, want both instances again", answered)
	}
}
