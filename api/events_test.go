package api

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// serveServer is serve, returning the server too (to signal Applied).
func serveServer(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(o)
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

func TestEventsAfter(t *testing.T) {
	log := func(idx ...uint64) []replicated.Event {
		var out []replicated.Event
		for _, i := range idx {
			out = append(out, replicated.Event{Index: i, Kind: "K"})
		}
		return out
	}
	full := make([]uint64, replicated.MaxEvents)
	for i := range full {
		full[i] = uint64(100 + i)
	}
	indexes := func(evs []replicated.Event) []uint64 {
		var out []uint64
		for _, e := range evs {
			out = append(out, e.Index)
		}
		return out
	}
	for _, tt := range []struct {
		name    string
		log     []replicated.Event
		after   uint64
		want    []uint64
		wantGap bool
	}{
		{"everything after 0", log(1, 2, 2, 5), 0, []uint64{1, 2, 2, 5}, false},
		{"after is exclusive and keeps an entry's events together", log(1, 2, 2, 5), 1, []uint64{2, 2, 5}, false},
		{"nothing after the last", log(1, 2, 2, 5), 5, nil, false},
		{"a short log has no gap", log(7, 9), 3, []uint64{7, 9}, false},
		{"a full log newer than after+1 may have lost events", log(full...), 50, full, true},
		{"a full log that goes on from after has none", log(full...), 99, full, false},
		{"a full log read from its middle has none", log(full...), 150, full[51:], false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, gap := EventsAfter(tt.log, tt.after)
			if !slices.Equal(indexes(got), tt.want) || gap != tt.wantGap {
				t.Fatalf("EventsAfter(%d) = %v gap %v, want %v gap %v", tt.after, indexes(got), gap, tt.want, tt.wantGap)
			}
		})
	}
}

func TestEventsQueryIsValidated(t *testing.T) {
	_, url := serveServer(t, Options{Replica: testkit.NewReplica(nil, 1, 1), Insecure: true})
	for q, want := range map[string]string{
		"after=x":            "want a Raft index",
		"after=-1":           "want a Raft index",
		"wait=2m":            "from 0s to 1m0s",
		"wait=soon":          "from 0s to 1m0s",
		"after=1&after=2":    "given 2 times",
		"follow=1":           `unknown query parameter \"follow\"`,
		"after=1&wait=-1s":   "from 0s to 1m0s",
		"after=1&wait=1s&x=": `unknown query parameter \"x\"`,
	} {
		resp, err := http.Get(url + "/v1/events?" + q)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), want) {
			t.Errorf("GET /v1/events?%s: HTTP %d %s; want 400 with %q", q, resp.StatusCode, body, want)
		}
	}
}

// poll GETs /v1/events?q and decodes the events.
func poll(t *testing.T, url, q string) ([]replicated.Event, *http.Response) {
	t.Helper()
	resp, err := http.Get(url + "/v1/events?" + q)
	if err != nil {
		t.Error(err)
		return nil, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var evs []replicated.Event
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &evs); err != nil {
			t.Errorf("GET /v1/events?%s: %v: %s", q, err, body)
		}
	}
	return evs, resp
}

// TestAWaitingPollAnswersWhenAnEventCommits: a poll after the last event
// waits; the event committed next is its answer, as soon as the server is
// told an entry was applied. The poll outlives the read and write timeouts.
func TestAWaitingPollAnswersWhenAnEventCommits(t *testing.T) {
	st := testkit.NewStore(nil)
	st.Propose(context.Background(), testkit.Register(1))
	srv, url := serveServer(t, Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true,
		ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
	type answer struct {
		evs  []replicated.Event
		resp *http.Response
	}
	got := make(chan answer, 1)
	go func() {
		evs, resp := poll(t, url, "after=1&wait=1m")
		got <- answer{evs, resp}
	}()
	// The poll is waiting once it holds a follower slot.
	testkit.WaitFor(t, 10*time.Second, "the poll waiting", testkit.Until(func() bool { return len(srv.eventFollowers) == 1 }))
	time.Sleep(300 * time.Millisecond) // past both timeouts: the answer must still come
	st.Propose(context.Background(), replicated.Command{Type: replicated.CmdSetNodeState, At: testkit.T0,
		SetNodeState: &replicated.SetNodeState{ID: 1, State: replicated.NodeCordoned}})
	srv.Applied()
	a := <-got
	if a.resp == nil || a.resp.StatusCode != http.StatusOK || len(a.evs) != 1 || a.evs[0].Kind != replicated.EventNodeStateChanged || a.evs[0].Index != 2 {
		t.Fatalf("the waiting poll answered %+v (%v), want the NodeStateChanged at index 2", a.evs, a.resp)
	}
	if h := a.resp.Header.Get(HeaderAppliedIndex); h != "2" {
		t.Errorf("%s = %q, want 2", HeaderAppliedIndex, h)
	}
	if len(srv.eventFollowers) != 0 {
		t.Errorf("%d follower slots still taken after the answer", len(srv.eventFollowers))
	}

	// An event already there is answered at once, and a wait that ends
	// without one answers an empty list.
	if evs, resp := poll(t, url, "after=1&wait=1m"); resp == nil || resp.StatusCode != 200 || len(evs) != 1 {
		t.Errorf("poll after 1: %+v", evs)
	}
	if evs, resp := poll(t, url, "after=2&wait=50ms"); resp == nil || resp.StatusCode != 200 || evs == nil || len(evs) != 0 {
		t.Errorf("poll after 2 that ended empty: %+v %v; want []", evs, resp)
	}
	// Without after and wait: the whole log, as before.
	if evs, _ := poll(t, url, ""); len(evs) != 2 {
		t.Errorf("the whole log: %+v", evs)
	}
}

func TestWaitingPollsBeyondTheLimitAre429(t *testing.T) {
	srv, url := serveServer(t, Options{Replica: testkit.NewReplica(nil, 1, 1), MaxEventFollowers: 1, Insecure: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/v1/events?after=0&wait=1m", nil)
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	testkit.WaitFor(t, 10*time.Second, "the first poll waiting", testkit.Until(func() bool { return len(srv.eventFollowers) == 1 }))
	_, resp := poll(t, url, "after=0&wait=1m")
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second waiting poll: %v, want 429 with Retry-After", resp)
	}
	// A poll that does not wait takes no slot.
	if _, resp := poll(t, url, "after=0"); resp == nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a poll without wait: %v", resp)
	}
	cancel()
	testkit.WaitFor(t, 10*time.Second, "the slot freed when the first poll's caller left",
		testkit.Until(func() bool { return len(srv.eventFollowers) == 0 }))
}
