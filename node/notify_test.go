package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/notify"
	"github.com/blixard/blixard/replicated"
)

func TestNotifyConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	urls := write("urls", "# receivers\nhttps://hooks.example.org/services/SECRET\n\n  http://127.0.0.1:9000/hook  \n")
	secret := write("secret", "s3cret\n")
	for _, tt := range []struct {
		name     string
		c        NotifyConfig
		checkErr string // from check, "" none
		optErr   string // from options, "" none
		urls     []string
		secret   string
	}{
		{"nothing configured", NotifyConfig{}, "", "", nil, ""},
		{"URLs, a URL file and a secret", NotifyConfig{URLs: []string{"https://a.example.org/x"}, URLFile: urls, SecretFile: secret,
			Kinds: []string{"PlanCommitted"}}, "", "",
			[]string{"https://a.example.org/x", "https://hooks.example.org/services/SECRET", "http://127.0.0.1:9000/hook"}, "s3cret"},
		{"a secret without a receiver", NotifyConfig{SecretFile: secret}, "need a receiver", "", nil, ""},
		{"kinds without a receiver", NotifyConfig{Kinds: []string{"PlanCommitted"}}, "need a receiver", "", nil, ""},
		{"a bad URL, shown redacted", NotifyConfig{URLs: []string{"ftp://h/SECRET"}}, "--notify-url ftp://h/…: want http://", "", nil, ""},
		{"a bad kind", NotifyConfig{URLs: []string{"http://h"}, Kinds: []string{"node down"}}, "--notify-kind", "", nil, ""},
		{"a missing URL file is named at start", NotifyConfig{URLFile: filepath.Join(dir, "gone")}, "", "--notify-url-file", nil, ""},
		{"a bad line of the URL file names its line", NotifyConfig{URLFile: write("bad", "http://ok\nmailto:x@SECRET\n")}, "",
			"line 2", nil, ""},
		{"an empty URL file and no URL", NotifyConfig{URLFile: write("empty", "# none yet\n")}, "", "holds no URL", nil, ""},
		{"an empty secret file", NotifyConfig{URLs: []string{"http://h"}, SecretFile: write("blank", "\n")}, "", "is empty", nil, ""},
		{"a missing secret file", NotifyConfig{URLs: []string{"http://h"}, SecretFile: filepath.Join(dir, "gone")}, "",
			"--notify-secret-file", nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.check()
			if tt.checkErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.checkErr) {
					t.Fatalf("check: %v, want %q", err, tt.checkErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			o, ok, err := tt.c.options(testLogger(t))
			if tt.optErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.optErr) || strings.Contains(err.Error(), "SECRET") {
					t.Fatalf("options: %v, want %q without the URL's secret", err, tt.optErr)
				}
				return
			}
			if err != nil || ok != (tt.urls != nil) || !slices.Equal(o.URLs, tt.urls) || string(o.Secret) != tt.secret {
				t.Fatalf("options: %+v ok %v, %v; want URLs %v, secret %q", o, ok, err, tt.urls, tt.secret)
			}
		})
	}
}

// TestANodeNotifiesWhileItLeadsAndIsNeverHeldUpByTheReceiver runs a real
// one-voter node with a receiver and a secret: a node state changed
// through the API arrives signed; while the receiver hangs, further changes
// commit all the same (the API answers each), and once it answers again the
// newest arrives.
func TestANodeNotifiesWhileItLeadsAndIsNeverHeldUpByTheReceiver(t *testing.T) {
	var (
		mu   sync.Mutex
		got  []notify.Notification
		hang = make(chan struct{})
	)
	hanging := false
	secret := []byte("s3cret")
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var n notify.Notification
		if err := json.Unmarshal(body, &n); err != nil || r.Header.Get(notify.HeaderSignature) != notify.Sign(secret, body) {
			t.Errorf("notification %s (%v) signed %q", body, err, r.Header.Get(notify.HeaderSignature))
		}
		mu.Lock()
		got = append(got, n)
		h := hanging
		mu.Unlock()
		if h {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		}
	}))
	defer recv.Close()
	var once sync.Once
	release := func() { once.Do(func() { close(hang) }) }
	defer release()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan net.Addr, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{NodeID: 1, DataDir: t.TempDir(), APIListener: ln, Heartbeat: 50 * time.Millisecond, Insecure: true,
			QuietRaftLog: true, Logger: testLogger(t), OnReady: func(a net.Addr) { ready <- a },
			Notify: NotifyConfig{URLs: []string{recv.URL + "/hook"}, SecretFile: secretFile, Kinds: []string{replicated.EventNodeStateChanged}}})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run returned before the node was ready: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the node did not get ready within 60s")
	}
	c, err := api.NewClient(ln.Addr().String(), api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setState := func(st replicated.NodeState) {
		t.Helper()
		if _, err := c.SetNodeState(context.Background(), 1, st); err != nil {
			t.Fatalf("node 1 %s: %v", st, err)
		}
	}
	last := func() (notify.Notification, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			return notify.Notification{}, 0
		}
		return got[len(got)-1], len(got)
	}

	setState(replicated.NodeCordoned)
	testkit.WaitFor(t, 30*time.Second, "the cordon notified", testkit.Detail(func() (bool, string) {
		n, _ := last()
		return n.Node == 1 && n.State == "cordoned", fmt.Sprintf("last %+v", n)
	}))

	mu.Lock()
	hanging = true
	mu.Unlock()
	for i := range 10 {
		setState([]replicated.NodeState{replicated.NodeReady, replicated.NodeCordoned}[i%2])
	}
	setState(replicated.NodeDraining)
	// The change is committed (the API answered); the receiver is still
	// held. Let it go: the newest change arrives.
	release()
	testkit.WaitFor(t, 30*time.Second, "the drain notified", testkit.Detail(func() (bool, string) {
		n, count := last()
		return n.State == "draining", fmt.Sprintf("%d notifications, last %+v", count, n)
	}))

	// Its counters are on /metrics.
	testkit.WaitFor(t, 30*time.Second, "the notifier's counters on /metrics", testkit.Detail(func() (bool, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(l, `blixard_notifications_total{result="sent"} `); ok {
				sent, err := strconv.Atoi(v)
				return err == nil && sent >= 2, l
			}
		}
		return false, "no blixard_notifications_total{result=\"sent\"} series"
	}))
}

func testLogger(*testing.T) *slog.Logger { return slog.New(slog.DiscardHandler) }
