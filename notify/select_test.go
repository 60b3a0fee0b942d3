package notify

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func ev(index uint64, kind, msg string) replicated.Event {
	return replicated.Event{Index: index, At: t0.Add(time.Duration(index) * time.Second), Kind: kind, Message: msg}
}

// logState is a state whose event log is events, with revisions 5 and 9 in
// its history.
func logState(events ...replicated.Event) *replicated.State {
	s := replicated.NewState()
	s.Desired = &spec.Cluster{Name: "prod"}
	s.History = []replicated.Revision{{ID: 5, Commit: "c5"}, {ID: 9, Commit: "c9"}}
	s.Events = events
	if n := len(events); n > 0 {
		s.Applied = events[n-1].Index + 1
	}
	return s
}

func TestWanted(t *testing.T) {
	defaults := DefaultKinds()
	for _, tt := range []struct {
		name  string
		ev    replicated.Event
		kinds []string
		want  bool
	}{
		{"a committed plan is sent by default", ev(5, replicated.EventPlanCommitted, "revision 5 (parent 0) of commit c5"), defaults, true},
		{"a node marked down is sent by default", ev(6, replicated.EventNodeStateChanged, "node 3: ready -> down (silent for 30s)"), defaults, true},
		{"a node cordoned is not", ev(6, replicated.EventNodeStateChanged, "node 3: ready -> cordoned (by alice)"), defaults, false},
		{"a node made ready after down is not", ev(6, replicated.EventNodeStateChanged, "node 3: down -> ready (by alice)"), defaults, false},
		{"a reason that mentions down does not make a node down", ev(6, replicated.EventNodeStateChanged, "node 3: ready -> draining (x -> down)"), defaults, false},
		{"rollout kinds are matched by name", ev(7, KindRolloutFailed, "revision 9: web-2 unhealthy"), defaults, true},
		{"a reverted rollout too", ev(7, KindRolloutReverted, "reverted to revision 5"), defaults, true},
		{"a registration is not sent by default", ev(1, replicated.EventNodeRegistered, "node 1 registered"), defaults, false},
		{"NodeStateChanged configured sends every state change", ev(6, replicated.EventNodeStateChanged, "node 3: ready -> cordoned"),
			[]string{replicated.EventNodeStateChanged}, true},
		{"configured kinds replace the defaults", ev(5, replicated.EventPlanCommitted, "revision 5"), []string{replicated.EventEvalFailed}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Wanted(tt.ev, tt.kinds); got != tt.want {
				t.Fatalf("Wanted = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	alice := ev(9, replicated.EventPlanCommitted, "revision 9 (parent 5) of commit c9 (by alice)")
	alice.Actor = "alice"
	s := logState(
		ev(2, replicated.EventNodeRegistered, "node 1 registered"),
		ev(5, replicated.EventHistoryRewritten, "history rewritten (force-push): commit x was replaced; revision 5 follows commit c5"),
		ev(5, replicated.EventPlanCommitted, "revision 5 (parent 0) of commit c5"),
		ev(7, replicated.EventNodeStateChanged, "node 3: ready -> down (silent for 30s); fenced 10.0.0.3:0/1"),
		alice,
		ev(10, KindRolloutFailed, "rollout of revision 9 failed: web-2 unhealthy"),
		ev(10, KindRolloutFailed, "rollout of revision 77 failed: the revision is older than the history"),
		ev(11, KindRolloutReverted, "reverted without naming a revision"),
		ev(12, KindRolloutFailed, "web: rollout of commit c9 failed and stops where it is (1 of 3 moved; autoRevert is off): web-1 unhealthy"),
		ev(13, KindRolloutReverted, "api: rollout of commit cX reverted to commit c5 (2 instances put back): unhealthy; commit cX is not tried again"),
		ev(14, replicated.EventEvalFailed, "commit (none): nothing fetched yet"),
	)
	ids := func(ns []Notification) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.ID)
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		after uint64
		kinds []string
		want  []string
	}{
		{"everything after 0 of the default kinds", 0, DefaultKinds(), []string{"5-PlanCommitted", "7-NodeStateChanged", "9-PlanCommitted",
			"10-RolloutFailed", "10-RolloutFailed-2", "11-RolloutReverted", "12-RolloutFailed", "13-RolloutReverted"}},
		{"after is exclusive", 11, DefaultKinds(), []string{"12-RolloutFailed", "13-RolloutReverted"}},
		{"after the last event nothing", 14, DefaultKinds(), nil},
		{"other kinds when asked", 0, []string{replicated.EventNodeRegistered, replicated.EventHistoryRewritten},
			[]string{"2-NodeRegistered", "5-HistoryRewritten"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids(Select(s, tt.after, tt.kinds)); !slices.Equal(got, tt.want) {
				t.Fatalf("Select ids = %v, want %v", got, tt.want)
			}
		})
	}

	got := map[string]Notification{}
	for _, n := range Select(s, 0, append(DefaultKinds(), replicated.EventHistoryRewritten, replicated.EventEvalFailed)) {
		got[n.ID] = n
	}
	for id, want := range map[string]Notification{
		"5-PlanCommitted":    {Cluster: "prod", Kind: replicated.EventPlanCommitted, Index: 5, Revision: 5, Commit: "c5"},
		"5-HistoryRewritten": {Cluster: "prod", Kind: replicated.EventHistoryRewritten, Index: 5, Revision: 5, Commit: "c5"},
		"7-NodeStateChanged": {Cluster: "prod", Kind: replicated.EventNodeStateChanged, Index: 7, Node: 3, State: "down"},
		"9-PlanCommitted":    {Cluster: "prod", Kind: replicated.EventPlanCommitted, Index: 9, Revision: 9, Commit: "c9", Actor: "alice"},
		"10-RolloutFailed":   {Cluster: "prod", Kind: KindRolloutFailed, Index: 10, Revision: 9, Commit: "c9"},
		"10-RolloutFailed-2": {Cluster: "prod", Kind: KindRolloutFailed, Index: 10},
		"11-RolloutReverted": {Cluster: "prod", Kind: KindRolloutReverted, Index: 11},
		"12-RolloutFailed":   {Cluster: "prod", Kind: KindRolloutFailed, Index: 12, Revision: 9, Commit: "c9", VM: "web"},
		"13-RolloutReverted": {Cluster: "prod", Kind: KindRolloutReverted, Index: 13, Commit: "cX", VM: "api"},
		"14-EvalFailed":      {Cluster: "prod", Kind: replicated.EventEvalFailed, Index: 14},
	} {
		n, ok := got[id]
		if !ok {
			t.Errorf("no notification %s", id)
			continue
		}
		if n.Cluster != want.Cluster || n.Kind != want.Kind || n.Index != want.Index || n.Revision != want.Revision ||
			n.Commit != want.Commit || n.Node != want.Node || n.State != want.State || n.Actor != want.Actor || n.VM != want.VM {
			t.Errorf("%s = %+v, want %+v", id, n, want)
		}
		if n.Message == "" || !n.At.Equal(t0.Add(time.Duration(n.Index)*time.Second)) {
			t.Errorf("%s lost the event's message or time: %+v", id, n)
		}
	}

	// Before the first plan there is no cluster name, and a plan older than
	// the history keeps its revision without a commit.
	early := logState(ev(3, replicated.EventPlanCommitted, "revision 3 (parent 0) of commit c3"))
	early.Desired = nil
	if ns := Select(early, 0, DefaultKinds()); len(ns) != 1 || ns[0].Cluster != "" || ns[0].Revision != 3 || ns[0].Commit != "" {
		t.Fatalf("Select before a desired spec: %+v", ns)
	}
}

func TestResumeAfter(t *testing.T) {
	s := logState(ev(10, "A", ""), ev(20, "B", ""), ev(20, "C", ""), ev(30, "D", "")) // at t0+10s, +20s, +20s, +30s
	skewed := logState(ev(10, "A", ""), ev(20, "B", ""), ev(30, "C", ""))
	skewed.Events[2].At = t0 // a proposer whose clock is behind
	for _, tt := range []struct {
		name   string
		s      *replicated.State
		since  time.Time
		window time.Duration
		want   uint64
	}{
		{"events within the window are sent again", s, t0.Add(25 * time.Second), 10 * time.Second, 19},
		{"an event exactly at the threshold is sent again", s, t0.Add(30 * time.Second), 10 * time.Second, 19},
		{"a window covering the whole log sends it all", s, t0.Add(time.Minute), time.Hour, 9},
		{"nothing recent: start after the applied index", s, t0.Add(time.Hour), time.Minute, 31},
		{"everything after the first recent event, whatever its clock", skewed, t0.Add(25 * time.Second), 10 * time.Second, 19},
		{"an empty log starts after the applied index", &replicated.State{Applied: 4}, t0, time.Minute, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ResumeAfter(tt.s, tt.since, tt.window); got != tt.want {
				t.Fatalf("ResumeAfter = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestBackoffRetryableAndRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		attempt    int
		retryAfter time.Duration
		want       time.Duration
	}{
		{1, 0, time.Second}, {2, 0, 2 * time.Second}, {4, 0, 8 * time.Second}, {6, 0, MaxBackoff}, {60, 0, MaxBackoff},
		{1, 5 * time.Second, 5 * time.Second}, {1, time.Hour, MaxBackoff},
	} {
		if got := Backoff(time.Second, tt.attempt, tt.retryAfter); got != tt.want {
			t.Errorf("Backoff(1s, %d, %v) = %v, want %v", tt.attempt, tt.retryAfter, got, tt.want)
		}
	}
	for code, want := range map[int]bool{200: false, 301: false, 400: false, 401: false, 404: false, 408: true, 410: false,
		429: true, 500: true, 502: true, 503: true} {
		if got := Retryable(code); got != want {
			t.Errorf("Retryable(%d) = %v, want %v", code, got, want)
		}
	}
	for h, want := range map[string]time.Duration{"": 0, "3": 3 * time.Second, "-1": 0, "Wed, 21 Oct 2015 07:28:00 GMT": 0,
		"999999": time.Hour} {
		if got := RetryAfter(h); got != want {
			t.Errorf("RetryAfter(%q) = %v, want %v", h, got, want)
		}
	}
}

func TestURLsAreCheckedAndRedacted(t *testing.T) {
	for _, tt := range []struct{ url, redacted, err string }{
		{"https://hooks.example.org/services/T000/B000/XXXXSECRET", "https://hooks.example.org/…", ""},
		{"https://user:pa55@example.org", "https://example.org", ""},
		{"http://127.0.0.1:9000/?token=SECRET", "http://127.0.0.1:9000/…", ""},
		{"http://127.0.0.1:9000/", "http://127.0.0.1:9000", ""},
		{"ftp://example.org/SECRET", "ftp://example.org/…", "want http:// or https://"},
		{"https:///SECRET", "(a receiver URL that does not parse)", "no host"},
		{"https://example.org/x#SECRET", "https://example.org/…", "fragment"},
		{"://SECRET", "(a receiver URL that does not parse)", "not a URL"},
	} {
		if got := Redact(tt.url); got != tt.redacted {
			t.Errorf("Redact(%q) = %q, want %q", tt.url, got, tt.redacted)
		}
		err := CheckURL(tt.url)
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("CheckURL(%q) = %v, want %q", tt.url, err, tt.err)
		}
		if err != nil && strings.Contains(err.Error(), "SECRET") {
			t.Errorf("CheckURL(%q) shows the secret: %v", tt.url, err)
		}
	}
	for k, ok := range map[string]bool{"PlanCommitted": true, "NodeDown": true, "planCommitted": false, "": false, "Plan Committed": false} {
		if err := CheckKind(k); (err == nil) != ok {
			t.Errorf("CheckKind(%q) = %v", k, err)
		}
	}
}

func TestSignIsHMACSHA256(t *testing.T) {
	// RFC 4231, test case 2.
	want := "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
	if got := Sign([]byte("Jefe"), []byte("what do ya want for nothing?")); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

// TestSelectReadsStructuredFields: events that carry replicated.About are
// read from it, whatever their message says; older ones from the message.
func TestSelectReadsStructuredFields(t *testing.T) {
	about := func(e replicated.Event, a replicated.About) replicated.Event {
		e.About = a
		return e
	}
	s := logState(
		about(ev(7, replicated.EventNodeStateChanged, "a message in another form"), replicated.About{Node: 4, State: "down"}),
		about(ev(8, KindRolloutFailed, "rollout failed"), replicated.About{VM: "db", Commit: "c9"}),
		about(ev(9, KindRolloutReverted, "reverted"), replicated.About{VM: "api", Commit: "c-not-in-history"}),
		about(ev(10, replicated.EventNodeStateChanged, "node 4: down -> ready"), replicated.About{Node: 4, State: "ready"}),
	)
	got := Select(s, 0, DefaultKinds())
	if len(got) != 3 {
		t.Fatalf("Select = %+v, want the node going down and both rollouts (not it coming back)", got)
	}
	if n := got[0]; n.Node != 4 || n.State != "down" {
		t.Errorf("NodeStateChanged: %+v, want node 4 down from its fields", n)
	}
	if n := got[1]; n.VM != "db" || n.Commit != "c9" || n.Revision != 9 {
		t.Errorf("RolloutFailed: %+v, want vm db, commit c9 at revision 9", n)
	}
	if n := got[2]; n.VM != "api" || n.Commit != "c-not-in-history" || n.Revision != 0 {
		t.Errorf("RolloutReverted: %+v, want vm api and its commit, no revision", n)
	}
}
