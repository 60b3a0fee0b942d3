package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// hookReceiver records the notifications POSTed to it, checking each
// one's HMAC signature the way a receiver would (its own code, not
// Blixard's).
type hookReceiver struct {
	t      *testing.T
	secret []byte
	mu     sync.Mutex
	got    []hookNote
}

type hookNote struct {
	ID, Cluster, Kind, Message, Commit, State string
	Index, Revision, Node                     uint64
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	m := hmac.New(sha256.New, h.secret)
	m.Write(body)
	if got, want := r.Header.Get("X-Blixard-Signature"), "sha256="+hex.EncodeToString(m.Sum(nil)); got != want {
		h.t.Errorf("notification signed %q, want %q: %s", got, want, body)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var n hookNote
	if err := json.Unmarshal(body, &n); err != nil {
		h.t.Errorf("notification %s: %v", body, err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	h.got = append(h.got, n)
	h.mu.Unlock()
}

// find returns the first notification that ok accepts.
func (h *hookReceiver) find(ok func(hookNote) bool) (hookNote, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.got {
		if ok(n) {
			return n, true
		}
	}
	return hookNote{}, false
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNixGitRaftNotifiesTheLeadersEventsAndEventsFollows runs three real
// nodes with a notification receiver and a secret, and `blixard events -f
// --json` following one of them. A push is notified as PlanCommitted with
// its commit; killing the leader gets it marked down by the new leader,
// which notifies that too — signed — and the follower prints both events.
func TestNixGitRaftNotifiesTheLeadersEventsAndEventsFollows(t *testing.T) {
	requireTools(t, "nix", "git")
	secret := []byte("hook-s3cret")
	secretFile := filepath.Join(t.TempDir(), "notify-secret")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	recv := &hookReceiver{t: t, secret: secret}
	hs := httptest.NewServer(recv)
	defer hs.Close()

	r := newRepo(t)
	commit := r.push(lightRunnerFlake("e2e", ""), "no VMs yet")
	c := startCluster(t, r.url(), []nodeSpec{{2, 2048, ""}, {2, 2048, ""}, {2, 2048, ""}},
		"--node-timeout", "3s", "--agent=false", "--notify-url", hs.URL+"/hooks/blixard?token=x", "--notify-secret-file", secretFile)
	st := waitRevision(t, c, commit)

	// Follow the events on a node that will survive.
	var follow *node
	for _, n := range c.nodes {
		if n.id != st.Leader {
			follow = n
			break
		}
	}
	var out, errb lockedBuffer
	ev := exec.Command(blixardBin, "events", "-f", "--json", "--server", follow.api)
	ev.Stdout, ev.Stderr = &out, &errb
	if err := ev.Start(); err != nil {
		t.Fatal(err)
	}
	evDone := make(chan error, 1)
	go func() { evDone <- ev.Wait() }()
	evExited := false
	defer func() {
		if !evExited {
			_ = ev.Process.Kill()
			<-evDone
		}
	}()

	plan, ok := hookNote{}, false
	testkit.WaitFor(t, 60*time.Second, "the revision notified", func() error {
		if plan, ok = recv.find(func(n hookNote) bool { return n.Kind == "PlanCommitted" && n.Commit == commit }); !ok {
			return fmt.Errorf("no PlanCommitted of %s yet", commit[:12])
		}
		return nil
	})
	if plan.Revision != st.Revision.ID || plan.Index != st.Revision.ID || plan.Cluster != "e2e" ||
		plan.ID != fmt.Sprintf("%d-PlanCommitted", st.Revision.ID) {
		t.Errorf("PlanCommitted notification %+v, want revision %d of cluster e2e", plan, st.Revision.ID)
	}

	// The leader dies: the new one marks it down after --node-timeout and
	// notifies it.
	var victim *node
	for _, n := range c.nodes {
		if n.id == st.Leader {
			victim = n
		}
	}
	victim.kill9()
	down := hookNote{}
	testkit.WaitFor(t, 90*time.Second, fmt.Sprintf("node %d's down notified", victim.id), func() error {
		if down, ok = recv.find(func(n hookNote) bool { return n.Kind == "NodeStateChanged" && n.Node == victim.id }); !ok {
			return fmt.Errorf("no NodeStateChanged of node %d yet", victim.id)
		}
		return nil
	})
	if down.State != "down" || !strings.Contains(down.Message, fmt.Sprintf("node %d:", victim.id)) {
		t.Errorf("node down notification %+v", down)
	}
	recv.mu.Lock()
	for _, n := range recv.got {
		if n.Kind != "PlanCommitted" && !(n.Kind == "NodeStateChanged" && n.State == "down") {
			t.Errorf("notification of a kind not asked for: %+v", n)
		}
	}
	recv.mu.Unlock()

	// The follower printed both events, each once, as JSON lines.
	testkit.WaitFor(t, 30*time.Second, "events -f printing both", func() error {
		var plans, downs int
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var e struct {
				Index   uint64
				Kind    string
				Message string
			}
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				return fmt.Errorf("line %q: %v", line, err)
			}
			switch {
			case e.Kind == "PlanCommitted" && e.Index == plan.Index:
				plans++
			case e.Kind == "NodeStateChanged" && e.Index == down.Index:
				downs++
			}
		}
		if plans != 1 || downs != 1 {
			return fmt.Errorf("printed the plan %d and the node down %d times:\n%s%s", plans, downs, out.String(), errb.String())
		}
		return nil
	})
	_ = ev.Process.Signal(syscall.SIGINT)
	err := <-evDone
	evExited = true
	if err != nil {
		t.Errorf("events -f after SIGINT: %v\n%s", err, errb.String())
	}
}
