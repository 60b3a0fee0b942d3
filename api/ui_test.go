package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
)

// serveUI runs o's server on loopback until the test ends and returns it
// (to signal Applied) with its base URL.
func serveUI(t *testing.T, o api.Options) (*api.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := api.NewServer(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	})
	return s, "http://" + ln.Addr().String()
}

// sseFrame is one server-sent event: its fields, or a comment.
type sseFrame struct {
	id, event, data, comment string
	retry                    int
}

// sseReader parses a text/event-stream as the HTML standard defines it.
type sseReader struct{ br *bufio.Reader }

// next returns the next frame (a blank line ends one).
func (r *sseReader) next() (sseFrame, error) {
	var f sseFrame
	var data []string
	seen := false
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			return f, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if seen {
				f.data = strings.Join(data, "\n")
				return f, nil
			}
			continue
		}
		seen = true
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			f.comment = value
		case "id":
			f.id = value
		case "event":
			f.event = value
		case "data":
			data = append(data, value)
		case "retry":
			f.retry, _ = strconv.Atoi(value)
		default:
			return f, fmt.Errorf("unknown field %q in line %q", field, line)
		}
	}
}

// nextView skips comments and the retry frame and decodes the next view.
func (r *sseReader) nextView(t *testing.T) (sseFrame, api.UIView) {
	t.Helper()
	for {
		f, err := r.next()
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if f.event == "" {
			continue
		}
		if f.event != "view" {
			t.Fatalf("event %q, want view", f.event)
		}
		var v api.UIView
		if err := json.Unmarshal([]byte(f.data), &v); err != nil {
			t.Fatalf("decoding a view: %v\n%s", err, f.data)
		}
		return f, v
	}
}

// openStream GETs /ui/events with the given headers; the stream closes
// when the test ends.
func openStream(t *testing.T, url string, hdr map[string]string) (*http.Response, *sseReader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", url+"/ui/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp, &sseReader{br: bufio.NewReader(resp.Body)}
}

func TestUIPageIsOneSelfContainedDocument(t *testing.T) {
	_, url := serveUI(t, api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1), Insecure: true})
	var nonces []string
	for range 2 {
		resp, err := http.Get(url + "/ui/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET /ui/: HTTP %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		csp := resp.Header.Get("Content-Security-Policy")
		m := regexp.MustCompile(`script-src 'nonce-([A-Za-z0-9+/=]+)'`).FindStringSubmatch(csp)
		if m == nil || !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Fatalf("Content-Security-Policy %q: want default-src 'none', a script nonce and connect-src 'self'", csp)
		}
		nonces = append(nonces, m[1])
		page := string(body)
		if strings.Count(page, `nonce="`+m[1]+`"`) != 2 || strings.Contains(page, "{{nonce}}") {
			t.Errorf("the page's script and style should carry the answer's nonce %s", m[1])
		}
		// No external assets: nothing is loaded from a URL.
		if ext := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?[a-z]+:|@import|url\(`).FindString(page); ext != "" {
			t.Errorf("the page loads something from elsewhere: %q", ext)
		}
		if !strings.Contains(page, `new EventSource("events")`) {
			t.Errorf("the page should follow the relative stream events")
		}
	}
	if nonces[0] == nonces[1] {
		t.Errorf("two answers share the nonce %s", nonces[0])
	}
	// /ui/ alone is the page; other paths under it are not.
	resp, err := http.Get(url + "/ui/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET /ui/other: HTTP %d, want 404", resp.StatusCode)
	}
}

func TestUIStreamSendsTheViewAtOnceAndAfterAppliedEntries(t *testing.T) {
	store := clusterState(t)
	s, url := serveUI(t, api.Options{Replica: testkit.NewReplica(store, 1, 1), Insecure: true,
		Reconciler: newFakeReconciler(), ReadTimeout: 200 * time.Millisecond})
	resp, sr := openStream(t, url, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /ui/events: HTTP %d, Content-Type %q, Cache-Control %q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"))
	}
	first, err := sr.next()
	if err != nil || first.retry <= 0 {
		t.Fatalf("first frame %+v, %v: want the reconnect delay (retry)", first, err)
	}
	f, v := sr.nextView(t)
	st, _ := store.Read(context.Background())
	if f.id != strconv.FormatUint(st.Applied, 10) {
		t.Errorf("first view's id %q, want the applied index %d", f.id, st.Applied)
	}
	if v.Status.Revision == nil || v.Status.Revision.Commit != commitA || len(v.Status.Nodes) != 2 || len(v.Status.VMs) != 2 ||
		v.Status.VMs[1].Name != "web" || v.Status.VMs[1].Phase != replicated.PhaseRunning || len(v.History) != 1 {
		t.Errorf("first view: %+v", v)
	}
	if n := v.Status.Nodes[0]; n.Capacity.VCPU == 0 || n.Allocated.VCPU == 0 {
		t.Errorf("node 1 should carry its capacity and allocation: %+v", n)
	}
	if len(v.Events) == 0 || len(v.Events) != len(st.Events) {
		t.Errorf("first view has %d events, want the log's %d", len(v.Events), len(st.Events))
	}

	// The stream outlives the server's ReadTimeout (and the write deadline
	// set for the first answer is renewed before every write).
	time.Sleep(3 * 200 * time.Millisecond)

	// A new entry: the view follows with only the new event.
	if res, err := store.Propose(context.Background(), replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdSetNodeState,
		At: testkit.T0, Actor: "alice", SetNodeState: &replicated.SetNodeState{ID: 2, State: replicated.NodeCordoned}}); err != nil || !res.OK() {
		t.Fatalf("cordon: %v %+v", err, res)
	}
	s.Applied()
	f2, v2 := sr.nextView(t)
	st2, _ := store.Read(context.Background())
	if f2.id != strconv.FormatUint(st2.Applied, 10) || v2.Status.Nodes[1].State != replicated.NodeCordoned {
		t.Errorf("after the cordon: id %s (applied %d), node 2 %s", f2.id, st2.Applied, v2.Status.Nodes[1].State)
	}
	if len(v2.Events) != 1 || v2.Events[0].Kind != "NodeStateChanged" {
		t.Errorf("after the cordon the view should carry just its event, got %+v", v2.Events)
	}

	// A browser that reconnects with Last-Event-ID gets what it missed.
	_, sr2 := openStream(t, url, map[string]string{"Last-Event-ID": f.id})
	_, v3 := sr2.nextView(t)
	if len(v3.Events) != 1 || v3.Events[0].Kind != "NodeStateChanged" {
		t.Errorf("reconnected after %s: events %+v, want the cordon's", f.id, v3.Events)
	}
}

// TestUIStreamCoalescesBursts: a burst of entries, each signalled, gives
// views whose ids only grow and whose last shows the last entry, and the
// stream lists every event of the burst once.
func TestUIStreamCoalescesBursts(t *testing.T) {
	store := clusterState(t)
	s, url := serveUI(t, api.Options{Replica: testkit.NewReplica(store, 1, 1), Insecure: true})
	_, sr := openStream(t, url, nil)
	f, _ := sr.nextView(t)
	const burst = 40
	for i := range burst {
		state := replicated.NodeCordoned
		if i%2 == 1 {
			state = replicated.NodeReady
		}
		if res, err := store.Propose(context.Background(), replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdSetNodeState,
			At: testkit.T0, SetNodeState: &replicated.SetNodeState{ID: 2, State: state}}); err != nil || !res.OK() {
			t.Fatalf("%d: %v %+v", i, err, res)
		}
		s.Applied()
	}
	st, _ := store.Read(context.Background())
	last, _ := strconv.ParseUint(f.id, 10, 64)
	events, views := 0, 0
	for last < st.Applied {
		fr, v := sr.nextView(t)
		id, _ := strconv.ParseUint(fr.id, 10, 64)
		if id <= last {
			t.Fatalf("view id %d after %d: ids must grow", id, last)
		}
		last, views = id, views+1
		events += len(v.Events)
	}
	if events != burst {
		t.Errorf("the burst's views carried %d events, want %d (each once)", events, burst)
	}
	t.Logf("%d entries applied in a burst came as %d views", burst, views)
}

func TestUIStreamsAreCapped(t *testing.T) {
	_, url := serveUI(t, api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1), Insecure: true, MaxUIStreams: 1})
	_, sr := openStream(t, url, nil)
	sr.nextView(t) // the first stream holds the only slot
	resp, err := http.Get(url + "/ui/events")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a second stream: HTTP %d (Retry-After %q) %s; want 429", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	errorSays("already streams 1 status pages")(t, nil, body)
	// The page itself is not capped.
	if resp, err := http.Get(url + "/ui/"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /ui/ while the streams are full: %v", err)
	} else {
		resp.Body.Close()
	}
}

func TestUIStreamRefusesABadLastEventID(t *testing.T) {
	_, url := serveUI(t, api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1), Insecure: true})
	resp, _ := openStream(t, url, map[string]string{"Last-Event-ID": "yesterday"})
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 {
		t.Fatalf("HTTP %d %s, want 400", resp.StatusCode, body)
	}
	errorSays("Last-Event-ID")(t, nil, body)
}

// TestUINeedsTheReadRole: with authentication on, the page and its stream
// need credentials like every status endpoint; a token counts only in the
// Authorization header, never in the URL or a cookie.
func TestUINeedsTheReadRole(t *testing.T) {
	p := newTestPKI(t)
	addr := serveTLS(t, api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1), TLS: p.server(t, "node-1")})
	tok, err := p.client(t, addr, "carol", "").CreateToken(context.Background(), "dashboard", "read")
	if err != nil {
		t.Fatal(err)
	}
	cert, key := p.files("alice")
	withCert, err := pki.ClientTLS(p.ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: mustClientTLS(t, p.ca)}}
	certified := &http.Client{Transport: &http.Transport{TLSClientConfig: withCert}}
	get := func(c *http.Client, path string, hdr map[string]string) (int, string) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		// Enough to tell the page or the first frame from an error.
		b := make([]byte, 512)
		n, _ := io.ReadAtLeast(resp.Body, b, 1)
		return resp.StatusCode, string(b[:n])
	}
	for _, path := range []string{"/ui/", "/ui/events"} {
		for _, tt := range []struct {
			name string
			c    *http.Client
			hdr  map[string]string
			path string
			want int
		}{
			{"no credentials", anon, nil, path, 401},
			{"a token in the query", anon, nil, path + "?token=" + tok.Token, 401},
			{"a token in a cookie", anon, map[string]string{"Cookie": "token=" + tok.Token}, path, 401},
			{"an unknown token", anon, map[string]string{"Authorization": "Bearer " + api.TokenPrefix + "guessed"}, path, 401},
			{"a read token", anon, map[string]string{"Authorization": "Bearer " + tok.Token}, path, 200},
			{"a read certificate", certified, nil, path, 200},
		} {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				if code, body := get(tt.c, tt.path, tt.hdr); code != tt.want {
					t.Fatalf("HTTP %d, want %d: %s", code, tt.want, body)
				}
			})
		}
	}
}

func TestNewUIViewBoundsHistoryAndEvents(t *testing.T) {
	st := &replicated.State{Nodes: map[uint64]*replicated.Node{}}
	for i := range 15 {
		st.History = append(st.History, replicated.Revision{ID: uint64(10 + i)})
	}
	for i := range 80 {
		st.Events = append(st.Events, replicated.Event{Index: uint64(100 + i), Kind: "K"})
	}
	for _, tt := range []struct {
		name        string
		after       uint64
		first       bool
		wantEvents  int
		firstEvent  uint64
		wantHistory []uint64
	}{
		{"a new stream gets the last UIEvents events", 0, true, api.UIEvents, 130, []uint64{24, 23, 22, 21, 20, 19, 18, 17, 16, 15}},
		{"a reconnected stream gets every event it missed", 110, true, 69, 111, nil},
		{"a running stream gets the new ones", 175, false, 4, 176, nil},
		{"nothing new", 179, false, 0, 0, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := api.NewUIView(st, 1, 1, nil, nil, tt.after, tt.first, testkit.T0)
			if len(v.Events) != tt.wantEvents || (tt.wantEvents > 0 && v.Events[0].Index != tt.firstEvent) {
				t.Errorf("%d events from %+v, want %d from %d", len(v.Events), v.Events, tt.wantEvents, tt.firstEvent)
			}
			if len(v.History) != api.UIHistory {
				t.Errorf("history has %d revisions, want %d", len(v.History), api.UIHistory)
			}
			for i, id := range tt.wantHistory {
				if v.History[i].ID != id {
					t.Errorf("history[%d] = %d, want %d (newest first)", i, v.History[i].ID, id)
				}
			}
		})
	}
}

// BenchmarkUIViewMessage measures one stream message for 3 nodes and 300
// VMs: building the view from the state and encoding it (what each open
// page costs per applied entry, at most every 250 ms).
func BenchmarkUIViewMessage(b *testing.B) {
	store := testkit.NewStore(nil)
	var as []replicated.Assignment
	for i := range 300 {
		as = append(as, testkit.Assign(fmt.Sprintf("vm%03d", i), uint64(1+i%3), "v1"))
	}
	for _, cmd := range []replicated.Command{testkit.Register(1), testkit.Register(2), testkit.Register(3), testkit.Plan(0, commitA, as...)} {
		cmd.V = replicated.CommandVersion
		if res, err := store.Propose(context.Background(), cmd); err != nil || !res.OK() {
			b.Fatalf("%s: %v %+v", cmd.Type, err, res)
		}
	}
	st, _ := store.Read(context.Background())
	b.ReportAllocs()
	var size int
	for b.Loop() {
		data, err := json.Marshal(api.NewUIView(st, 1, 1, nil, nil, 0, true, testkit.T0))
		if err != nil {
			b.Fatal(err)
		}
		size = len(data)
	}
	b.ReportMetric(float64(size), "bytes/msg")
}
