package ingress_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/spec"
)

// echoFleet starts TCP instances that greet with their name and then echo
// until the client half-closes, then half-close themselves.
func echoFleet(t *testing.T, base byte, names []string) (insts []ingress.Instance, stop map[string]func(), port int) {
	t.Helper()
	lns, port := listenSamePort(t, base, len(names))
	stop = map[string]func(){}
	for i, name := range names {
		ln := lns[i]
		var wg sync.WaitGroup
		var mu sync.Mutex
		conns := map[net.Conn]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns[c] = true
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					fmt.Fprintf(c, "%s\n", name)
					io.Copy(c, c)
					c.(*net.TCPConn).CloseWrite()
				}()
			}
		}()
		var once sync.Once
		stop[name] = func() {
			once.Do(func() {
				ln.Close()
				mu.Lock()
				for c := range conns {
					c.Close()
				}
				mu.Unlock()
				wg.Wait()
			})
		}
		t.Cleanup(stop[name])
		insts = append(insts, ingress.Instance{Name: name, Addr: ln.Addr().(*net.TCPAddr).AddrPort().Addr()})
	}
	return insts, stop, port
}

// freePort is a TCP port nothing listens on at 127.0.0.1 right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// roundTrip connects to addr, reads the instance's greeting, sends msg,
// half-closes and reads the echo to the end.
func roundTrip(addr, msg string) (greeting, echo string, err error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	greeting, err = rd.ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("reading the greeting: %w", err)
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return "", "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(rd)
	return strings.TrimSpace(greeting), string(b), err
}

func TestTCPPassthrough(t *testing.T) {
	insts, stop, port := echoFleet(t, 90, []string{"db-0", "db-1"})
	listen := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", listen)
	table := func(entries map[string]spec.Ingress) *ingress.Table {
		return ingress.NewTable(entries, map[string][]ingress.Instance{"db": insts})
	}
	dbEntry := map[string]spec.Ingress{"db": {To: "db", Port: port, Protocol: spec.IngressTCP, ListenPort: listen, Path: "/"}}

	s := ingress.New(ingress.Options{TCPHost: "127.0.0.1"})
	s.Update(table(dbEntry))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeTCP(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeTCP: %v", err)
		}
	}()
	testkit.WaitFor(t, 10*time.Second, "the TCP entry's listener", func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})

	t.Run("connections reach both instances and echo whole", func(t *testing.T) {
		seen := map[string]int{}
		for i := range 10 {
			msg := fmt.Sprintf("hello %d\nand more\n", i)
			greeting, echo, err := roundTrip(addr, msg)
			if err != nil || echo != msg {
				t.Fatalf("connection %d: echo %q, %v; want %q", i, echo, err, msg)
			}
			seen[greeting]++
		}
		if seen["db-0"] == 0 || seen["db-1"] == 0 {
			t.Fatalf("connections by instance = %v, want both", seen)
		}
	})

	t.Run("stopped instance leaves every connection served", func(t *testing.T) {
		stop["db-0"]()
		for i := range 6 {
			greeting, echo, err := roundTrip(addr, "still there\n")
			if err != nil || greeting != "db-1" || echo != "still there\n" {
				t.Fatalf("connection %d with db-0 stopped: %q %q %v; want db-1 echoing", i, greeting, echo, err)
			}
		}
	})

	t.Run("dropping the entry closes its listener and connections", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rd := bufio.NewReader(c)
		if g, err := rd.ReadString('\n'); err != nil || g != "db-1\n" {
			t.Fatalf("greeting %q, %v", g, err)
		}
		s.Update(table(nil))
		if rest, err := io.ReadAll(rd); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Fatalf("open connection after the entry was dropped: read %q, %v; want it closed", rest, err)
		}
		testkit.WaitFor(t, 10*time.Second, "the dropped entry's port to refuse connections", func() error {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
				return errors.New("still accepting")
			}
			return nil
		})
	})

	t.Run("entry added again is served again", func(t *testing.T) {
		s.Update(table(dbEntry))
		testkit.WaitFor(t, 10*time.Second, "the listener of the entry added again", func() error {
			_, echo, err := roundTrip(addr, "back\n")
			if err == nil && echo != "back\n" {
				return fmt.Errorf("echo %q", echo)
			}
			return err
		})
	})
}

// logBuffer collects a logger's output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

func TestTCPPassthroughPortInUseIsRetried(t *testing.T) {
	insts, _, port := echoFleet(t, 100, []string{"db"})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := taken.Addr().(*net.TCPAddr).Port
	var logs logBuffer
	s := ingress.New(ingress.Options{TCPHost: "127.0.0.1", ListenRetry: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	s.Update(ingress.NewTable(map[string]spec.Ingress{"db": {To: "db", Port: port, Protocol: spec.IngressTCP, ListenPort: listen, Path: "/"}},
		map[string][]ingress.Instance{"db": insts}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeTCP(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeTCP: %v", err)
		}
	}()

	testkit.WaitFor(t, 10*time.Second, "the listen error in the log", func() error {
		want := fmt.Sprintf(`cannot listen for a TCP entry; free the port, or change ingress.ENTRY.listenPort in the flake" entry=db addr=127.0.0.1:%d`, listen)
		if !strings.Contains(logs.String(), want) {
			return fmt.Errorf("log %q does not say %q and what to do", logs.String(), want)
		}
		return nil
	})
	taken.Close() // whatever held the port lets go of it
	addr := fmt.Sprintf("127.0.0.1:%d", listen)
	testkit.WaitFor(t, 10*time.Second, "ingress to listen once the port is free", func() error {
		g, echo, err := roundTrip(addr, "x\n")
		if err == nil && (g != "db" || echo != "x\n") {
			return fmt.Errorf("greeting %q echo %q", g, echo)
		}
		return err
	})
}
