package fault

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperMain runs the test binary as a tiny network program inside a
// namespace (FAULT_HELPER=listen:ADDR or dial:ADDR) and reports whether it
// did; ok is false when the process is not a helper.
func helperMain() (code int, ok bool) {
	mode, addr, found := strings.Cut(os.Getenv("FAULT_HELPER"), ":")
	if !found {
		return 0, false
	}
	switch mode {
	case "listen":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1, true
		}
		for {
			c, err := l.Accept()
			if err != nil {
				return 1, true
			}
			fmt.Fprintln(c, "ok")
			c.Close()
		}
	case "dial":
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1, true
		}
		c.Close()
		return 0, true
	}
	return 2, true
}

// TestNetPartitionsDropPacketsOneWay checks the network the harness builds:
// nodes reach each other and the root namespace reaches them; a block
// drops packets one way (which stops TCP both ways), a cut only between
// the two nodes named, and the test process keeps reaching every node.
func TestNetPartitionsDropPacketsOneWay(t *testing.T) {
	requireTools(t)
	n, err := NewNet(3)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Teardown(); err != nil {
			t.Error(err)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), n.prefix()) {
			t.Errorf("namespaces left after Teardown:\n%s", out)
		}
	}()
	port := "7999"
	var listeners []*exec.Cmd
	for i := 1; i <= 3; i++ {
		cmd := n.Command(i, os.Args[0])
		cmd.Env = append(os.Environ(), "FAULT_HELPER=listen:"+n.Addr(i)+":"+port)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, cmd)
	}
	defer func() {
		for _, l := range listeners {
			_ = l.Process.Kill()
			_ = l.Wait()
		}
	}()
	fromRoot := func(to int) error {
		c, err := net.DialTimeout("tcp", n.Addr(to)+":"+port, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	from := func(a, b int) bool {
		cmd := n.Command(a, os.Args[0])
		cmd.Env = append(os.Environ(), "FAULT_HELPER=dial:"+n.Addr(b)+":"+port)
		return cmd.Run() == nil
	}
	for i := 1; i <= 3; i++ {
		if err := poll(context.Background(), 5*time.Second, 50*time.Millisecond, func() error { return fromRoot(i) }); err != nil {
			t.Fatalf("root → node %d: %v", i, err)
		}
	}
	want := func(what string, pairs map[[2]int]bool) {
		t.Helper()
		for a := 1; a <= 3; a++ {
			for b := 1; b <= 3; b++ {
				if a == b {
					continue
				}
				if got := from(a, b); got != pairs[[2]int{a, b}] {
					t.Errorf("%s: node %d → node %d connects: %v, want %v", what, a, b, got, !got)
				}
			}
			if err := fromRoot(a); err != nil {
				t.Errorf("%s: the root namespace no longer reaches node %d: %v", what, a, err)
			}
		}
	}
	all := map[[2]int]bool{{1, 2}: true, {1, 3}: true, {2, 1}: true, {2, 3}: true, {3, 1}: true, {3, 2}: true}
	want("no fault", all)

	if err := n.Block(1, 2); err != nil {
		t.Fatal(err)
	}
	// Packets 1 → 2 are dropped: 1 cannot connect to 2, and 2's SYN reaches 1
	// but 1's answer does not come back.
	oneWay := map[[2]int]bool{{1, 3}: true, {2, 3}: true, {3, 1}: true, {3, 2}: true}
	want("1 → 2 blocked", oneWay)
	if got := n.Blocked(); fmt.Sprint(got) != "[[1 2]]" {
		t.Errorf("Blocked() = %v", got)
	}
	if err := n.HealAll(); err != nil {
		t.Fatal(err)
	}
	if err := n.Isolate(3); err != nil {
		t.Fatal(err)
	}
	want("3 isolated", map[[2]int]bool{{1, 2}: true, {2, 1}: true})
	if err := n.HealAll(); err != nil {
		t.Fatal(err)
	}
	want("healed", all)

	// Every process of a node is found by its namespace.
	pids, err := n.PIDs(2)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 1 || pids[0] != listeners[1].Process.Pid {
		t.Errorf("PIDs(2) = %v, want [%d] (the listener)", pids, listeners[1].Process.Pid)
	}
	if _, err := n.Signal(2, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := listeners[1].Wait(); err == nil {
		t.Error("the listener of node 2 survived Signal(SIGKILL)")
	}
}
