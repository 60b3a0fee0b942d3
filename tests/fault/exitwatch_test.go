package fault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// exitWatcher records when runners end. Runners killed with SIGKILL (by
// the harness, or by an agent fencing its node) cannot write a stop
// record, and polling /proc would date their end up to a poll late —
// enough to see a runner "overlap" its own successor on one node when an
// agent kills and restarts within milliseconds. A pidfd (pidfd_open(2),
// which works for processes that are not our children) becomes readable
// the moment the process exits.
type exitWatcher struct {
	mu       sync.Mutex
	watching map[string]bool // guarded by mu: interval keys
	record   func(line string)
	alive    func(pid int) bool // the PID is still the runner (not reused)
}

func newExitWatcher(record func(string), alive func(int) bool) *exitWatcher {
	return &exitWatcher{watching: map[string]bool{}, record: record, alive: alive}
}

// watch starts watching iv's runner unless it is watched already; its
// end is recorded as `gone NODE VM PID SECONDS`.
func (e *exitWatcher) watch(ctx context.Context, iv interval) {
	key := fmt.Sprintf("%d/%d/%d", iv.Node, iv.PID, iv.Start)
	e.mu.Lock()
	if e.watching[key] {
		e.mu.Unlock()
		return
	}
	e.watching[key] = true
	e.mu.Unlock()
	go func() {
		waitExit(ctx, iv.PID, e.alive)
		if ctx.Err() == nil {
			e.record(fmt.Sprintf("gone %d %s %d %s", iv.Node, iv.VM, iv.PID, secs(boottime())))
		}
	}()
}

// waitExit returns once pid exited (at once when it is gone or no longer
// the runner), or ctx ended.
func waitExit(ctx context.Context, pid int, alive func(int) bool) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // ESRCH: gone already
	}
	defer unix.Close(fd)
	if !alive(pid) { // the PID was reused before the pidfd was opened
		return
	}
	for ctx.Err() == nil {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if n > 0 {
			return
		}
	}
}

func TestWaitExitReturnsWhenTheProcessExits(t *testing.T) {
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		waitExit(context.Background(), cmd.Process.Pid, func(int) bool { return true })
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("waitExit returned while the process runs")
	case <-time.After(300 * time.Millisecond):
	}
	if err := cmd.Process.Signal(os.Kill); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("waitExit did not return after the process was killed")
	}
	cmd.Wait()
}
