package notify

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Kinds a receiver can ask for beyond the event log's own (every event
// kind of package replicated selects its events by name).
const (
	// KindNodeDown selects the NodeStateChanged events that mark a node
	// down (the leader found it silent for --node-timeout); the
	// notification's kind stays NodeStateChanged, with State "down".
	KindNodeDown = "NodeDown"
	// KindRolloutFailed and KindRolloutReverted are the rollout's events,
	// matched by name.
	KindRolloutFailed   = "RolloutFailed"
	KindRolloutReverted = "RolloutReverted"
)

// DefaultKinds are the kinds sent when none are configured: what an
// operator is paged or told about — a new revision, a rollout that failed
// or was reverted, a node marked down.
func DefaultKinds() []string {
	return []string{replicated.EventPlanCommitted, KindNodeDown, KindRolloutFailed, KindRolloutReverted}
}

// kindRE is the shape of event kinds: CamelCase names.
var kindRE = regexp.MustCompile(`^[A-Z][A-Za-z0-9]{0,63}$`)

// CheckKind refuses a kind that cannot name events.
func CheckKind(k string) error {
	if !kindRE.MatchString(k) {
		return fmt.Errorf("--notify-kind %q: want an event kind such as %s or %s (see `blixard events`)", k,
			replicated.EventPlanCommitted, KindNodeDown)
	}
	return nil
}

// CheckURL refuses a receiver URL that is not http:// or https:// with a
// host. Its errors show the URL redacted, as the logs do.
func CheckURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("--notify-url %s: not a URL", Redact(raw))
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("--notify-url %s: want http:// or https://", Redact(raw))
	case u.Host == "":
		return fmt.Errorf("--notify-url %s: no host", Redact(raw))
	case u.Fragment != "":
		return fmt.Errorf("--notify-url %s: a #fragment is never sent; drop it", Redact(raw))
	}
	return nil
}

// Redact shows a receiver URL as scheme://host, with "/…" when it has a
// path or query: Slack-style webhook URLs carry their secret in the path,
// others in the query or as user:password@, and logs are not secret.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(a receiver URL that does not parse)"
	}
	s := u.Scheme + "://" + u.Host
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		s += "/…"
	}
	return s
}

// Notification is the JSON body of one POST.
type Notification struct {
	// ID names the event: "INDEX-KIND" (with "-N" for the Nth event of a
	// kind in one entry), the same from every leader, so a receiver can
	// drop the duplicates a leader change may send.
	ID string `json:"id"`
	// Cluster is the cluster's name (the flake's `cluster`; "" before the
	// first revision).
	Cluster string    `json:"cluster"`
	Kind    string    `json:"kind"`
	Index   uint64    `json:"index"` // Raft index of the entry that recorded it
	At      time.Time `json:"at"`    // the proposer's clock
	Message string    `json:"message"`
	// Actor is who asked through the API; "" for the cluster's own doing.
	Actor string `json:"actor,omitempty"`
	// Revision and Commit: PlanCommitted's revision; else the first
	// revision of the history an event's message names, or the first
	// commit it names (a rollout's) and the newest revision of it.
	Revision uint64 `json:"revision,omitempty"`
	Commit   string `json:"commit,omitempty"`
	// VM is the declared VM a rollout event concerns.
	VM string `json:"vm,omitempty"`
	// Node and State: NodeStateChanged's node and its new state.
	Node  uint64 `json:"node,omitempty"`
	State string `json:"state,omitempty"`
}

// nodeStateRE reads replicated's NodeStateChanged message, "node N: OLD ->
// NEW …", for events recorded before events carried structured fields
// (replicated.About).
var nodeStateRE = regexp.MustCompile(`^node (\d+): \S+ -> (\S+)`)

// revisionRE and commitRE find the first revision and commit an event's
// message names; rolloutRE the VM a rollout's message starts with.
var (
	revisionRE = regexp.MustCompile(`\brevision (\d+)\b`)
	commitRE   = regexp.MustCompile(`\bcommit ([0-9A-Za-z][0-9A-Za-z._-]*[0-9A-Za-z])`)
	rolloutRE  = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._-]*): `)
)

// nodeState is the node and new state of a NodeStateChanged event.
func nodeState(ev replicated.Event) (uint64, replicated.NodeState, bool) {
	if ev.Kind != replicated.EventNodeStateChanged {
		return 0, "", false
	}
	if ev.Node != 0 && ev.State != "" {
		return ev.Node, replicated.NodeState(ev.State), true
	}
	m := nodeStateRE.FindStringSubmatch(ev.Message)
	if m == nil {
		return 0, "", false
	}
	id, err := strconv.ParseUint(m[1], 10, 64)
	return id, replicated.NodeState(m[2]), err == nil
}

// Wanted reports whether ev is of one of kinds.
func Wanted(ev replicated.Event, kinds []string) bool {
	for _, k := range kinds {
		if k == ev.Kind {
			return true
		}
		if k == KindNodeDown {
			if _, st, ok := nodeState(ev); ok && st == replicated.NodeDown {
				return true
			}
		}
	}
	return false
}

// Select returns the notifications for the events of s after the Raft
// index after that are of one of kinds, oldest first.
func Select(s *replicated.State, after uint64, kinds []string) []Notification {
	var out []Notification
	seen := map[string]int{} // kind → events of it at index
	var index uint64
	for _, ev := range s.Events {
		if ev.Index != index {
			index = ev.Index
			clear(seen)
		}
		seen[ev.Kind]++
		if ev.Index <= after || !Wanted(ev, kinds) {
			continue
		}
		n := Notification{ID: fmt.Sprintf("%d-%s", ev.Index, ev.Kind), Kind: ev.Kind, Index: ev.Index, At: ev.At,
			Message: ev.Message, Actor: ev.Actor}
		if k := seen[ev.Kind]; k > 1 {
			n.ID += "-" + strconv.Itoa(k)
		}
		if s.Desired != nil {
			n.Cluster = s.Desired.Name
		}
		n.Revision, n.Commit = revisionOf(s, ev)
		switch {
		case ev.VM != "":
			n.VM = ev.VM
		case strings.HasPrefix(ev.Kind, "Rollout"):
			if m := rolloutRE.FindStringSubmatch(ev.Message); m != nil {
				n.VM = m[1]
			}
		}
		if id, st, ok := nodeState(ev); ok {
			n.Node, n.State = id, string(st)
		}
		out = append(out, n)
	}
	return out
}

// revisionOf is the revision and commit an event concerns: PlanCommitted's
// own; else its structured revision or commit (replicated.About), a commit
// with the newest revision of it in the history (0 when none); for events
// of older builds, the first revision its message names that the history
// still holds, else the first commit it names.
func revisionOf(s *replicated.State, ev replicated.Event) (uint64, string) {
	byID := func(id uint64) (replicated.Revision, bool) {
		for _, r := range s.History {
			if r.ID == id {
				return r, true
			}
		}
		return replicated.Revision{}, false
	}
	if ev.Kind == replicated.EventPlanCommitted {
		if r, ok := byID(ev.Index); ok {
			return r.ID, r.Commit
		}
		return ev.Index, ev.Commit // older than the bounded history
	}
	if ev.Revision != 0 {
		if r, ok := byID(ev.Revision); ok {
			return r.ID, r.Commit
		}
		return ev.Revision, ev.Commit
	}
	if ev.Commit != "" {
		for i := len(s.History) - 1; i >= 0; i-- {
			if s.History[i].Commit == ev.Commit {
				return s.History[i].ID, ev.Commit
			}
		}
		return 0, ev.Commit
	}
	// Events of older builds name them in their message only.
	if m := revisionRE.FindStringSubmatch(ev.Message); m != nil {
		id, _ := strconv.ParseUint(m[1], 10, 64)
		if r, ok := byID(id); ok {
			return r.ID, r.Commit
		}
	}
	if m := commitRE.FindStringSubmatch(ev.Message); m != nil {
		for i := len(s.History) - 1; i >= 0; i-- {
			if s.History[i].Commit == m[1] {
				return s.History[i].ID, m[1]
			}
		}
		return 0, m[1]
	}
	return 0, ""
}

// ResumeAfter is where a node that became leader at since starts: after
// the events of s committed before since-window, so that every event the
// old leader may not have delivered yet is sent again (those committed
// within the window before the change: a duplicate is better than a loss).
// Events are ordered by index, not by their proposers' clocks, so the cut
// is before the first event at or after the threshold, and everything after
// it is sent. With no such event it is s.Applied: nothing to send again.
func ResumeAfter(s *replicated.State, since time.Time, window time.Duration) uint64 {
	threshold := since.Add(-window)
	for _, ev := range s.Events {
		if !ev.At.Before(threshold) {
			return ev.Index - 1
		}
	}
	return s.Applied
}

// Backoff is the wait before attempt+1 after attempt (from 1) failed: first,
// doubling, at most MaxBackoff — or what the receiver asked for with
// Retry-After (retryAfter > 0), within the same cap.
func Backoff(first time.Duration, attempt int, retryAfter time.Duration) time.Duration {
	d := first
	for i := 1; i < attempt && d < MaxBackoff; i++ {
		d *= 2
	}
	d = max(d, retryAfter)
	return min(d, MaxBackoff)
}

// Retryable says whether an answer with HTTP status code may succeed when
// sent again: timeouts, rate limits and server errors may; redirects (not
// followed: a POST would become a GET) and other client errors will not.
func Retryable(code int) bool {
	return code == 408 || code == 425 || code == 429 || code >= 500
}

// RetryAfter reads a Retry-After header given in seconds (0: none or a date,
// which receivers of webhooks do not send).
func RetryAfter(h string) time.Duration {
	n, err := strconv.Atoi(h)
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(min(n, 3600)) * time.Second
}
