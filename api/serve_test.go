package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// serve runs a Server on a loopback port until the test ends.
func serve(t *testing.T, o Options) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(o).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	})
	return ln.Addr().String()
}

func TestSlowRequestBodyDoesNotHoldTheConnection(t *testing.T) {
	addr := serve(t, Options{Replica: testkit.NewReplica(nil, 1, 1), ReadTimeout: 200 * time.Millisecond, Insecure: true})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Promise 100 bytes, send one, then nothing.
	if _, err := io.WriteString(c, "POST /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("stalled body: HTTP %d, want 400", resp.StatusCode)
	}
	// And then the server closes the connection.
	io.Copy(io.Discard, resp.Body)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection stayed open after the read timeout")
	}
}

func TestServeAnswersUntilItsContextEnds(t *testing.T) {
	addr := serve(t, Options{Replica: testkit.NewReplica(nil, 7, 7), Insecure: true})
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), `"node": 7`) {
		t.Fatalf("healthz: %s", b)
	}
}

func TestConnectionsBeyondTheLimitWaitForOneToClose(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := limitListener(inner, 1)
	defer ln.Close()
	for range 2 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	select {
	case <-accepted:
		t.Fatal("a second connection was accepted while the first is open")
	case <-time.After(100 * time.Millisecond):
	}
	first.Close()
	first.Close() // closing twice gives back one slot
	select {
	case c, ok := <-accepted:
		if !ok {
			t.Fatal("Accept failed")
		}
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the second connection was not accepted after the first closed")
	}
	ln.Close()
	if _, err := ln.Accept(); err == nil {
		t.Fatal("Accept after Close succeeded")
	}
}

// slowLogs writes one line, then another after a pause (if ctx is alive).
type slowLogs struct{ pause time.Duration }

func (s slowLogs) Tail(ctx context.Context, _ string, _ bool, w io.Writer) error {
	io.WriteString(w, "first\n")
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(s.pause):
	}
	_, err := io.WriteString(w, "second\n")
	return err
}

func TestFollowedLogsOutliveTheReadTimeout(t *testing.T) {
	st := testkit.NewStore(nil)
	st.Update(func(s *replicated.State) {
		s.Assignments["web"] = testkit.Assign("web", 1, "v1")
	})
	addr := serve(t, Options{Replica: testkit.NewReplica(st, 1, 1), Logs: slowLogs{pause: 600 * time.Millisecond},
		ReadTimeout: 150 * time.Millisecond, Insecure: true})
	resp, err := http.Get("http://" + addr + "/v1/vms/web/logs?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "first\nsecond\n" {
		t.Fatalf("followed log %q, %v; want both lines", b, err)
	}
}

// blockingLogs writes one line, then blocks until the request ends.
type blockingLogs struct{}

func (blockingLogs) Tail(ctx context.Context, _ string, _ bool, w io.Writer) error {
	io.WriteString(w, "first\n")
	<-ctx.Done()
	return nil
}

func TestFollowersBeyondTheLimitAre429(t *testing.T) {
	st := testkit.NewStore(nil)
	st.Update(func(s *replicated.State) { s.Assignments["web"] = testkit.Assign("web", 1, "v1") })
	addr := serve(t, Options{Replica: testkit.NewReplica(st, 1, 1), Logs: blockingLogs{}, MaxLogFollowers: 1, Insecure: true})
	first, err := http.Get("http://" + addr + "/v1/vms/web/logs?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	// The first line arrived: the first follower holds its slot.
	line, err := bufio.NewReader(first.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first follower: %q, %v", line, err)
	}
	second, err := http.Get("http://" + addr + "/v1/vms/web/logs?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(second.Body)
	second.Body.Close()
	if second.StatusCode != http.StatusTooManyRequests || second.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "limit") {
		t.Fatalf("second follower: HTTP %d, Retry-After %q: %s", second.StatusCode, second.Header.Get("Retry-After"), body)
	}
	// Reading without following takes no slot.
	resp, err := http.Get("http://" + addr + "/v1/vms/web/logs")
	if err == nil {
		resp.Body.Close()
	}
	first.Body.Close()
	testkit.WaitFor(t, 10*time.Second, "a slot after the first follower left", func() error {
		resp, err := http.Get("http://" + addr + "/v1/vms/web/logs?follow=1")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	})
}

func TestLogsQueryIsValidated(t *testing.T) {
	for q, want := range map[string]string{
		"follow=yes":        "want 0 or 1",
		"follow=1&follow=1": "once",
		"tail=10":           "unknown query parameter",
	} {
		if _, err := logsQuery(mustQuery(t, q)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("logsQuery(%q): %v, want %q", q, err, want)
		}
	}
	if p, err := logsQuery(mustQuery(t, "follow=1&local=0")); err != nil || !p.follow || p.local {
		t.Errorf("logsQuery(follow=1&local=0) = %+v, %v", p, err)
	}
}

func mustQuery(t *testing.T, q string) url.Values {
	t.Helper()
	v, err := url.ParseQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestConnectionCapStaysBelowTheFileLimit(t *testing.T) {
	for _, tt := range []struct {
		max   int
		files uint64
		want  int
	}{
		{1024, 0, 1024},       // unknown limit: as configured
		{1024, 65536, 1024},   // plenty of descriptors
		{1024, 1024, 768},     // a low limit keeps 256 for the node
		{1024, 4096, 1024},    // …or a quarter of it
		{4096, 4096, 3072},    // a quarter of a larger one
		{1024, 20, 16},        // never fewer than 16…
		{1, 65536, 1},         // …unless configured so
		{1024, 1 << 62, 1024}, // huge limits do not overflow
	} {
		if got := connLimit(tt.max, tt.files); got != tt.want {
			t.Errorf("connLimit(%d, %d) = %d, want %d", tt.max, tt.files, got, tt.want)
		}
	}
}

func TestRaftAddressesAreValidated(t *testing.T) {
	for _, bad := range []string{"h", "h:0", "h:70000", "h:x", ":7001", "a/b:7001", "a b:7001"} {
		if err := checkRaftAddr(bad); err == nil {
			t.Errorf("checkRaftAddr(%q) accepted it", bad)
		}
	}
	for _, good := range []string{"10.0.0.4:7001", "node4.example.org:7001", "[fd00::4]:7001"} {
		if err := checkRaftAddr(good); err != nil {
			t.Errorf("checkRaftAddr(%q): %v", good, err)
		}
	}
}
