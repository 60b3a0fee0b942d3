package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procIdentity names one process across PID reuse: its PID and its start
// time in clock ticks since boot (field 22 of /proc/PID/stat).
type procIdentity struct {
	PID   int
	Start uint64
}

func (p procIdentity) String() string { return fmt.Sprintf("%d %d", p.PID, p.Start) }

// procStat returns the start time and state letter of pid from /proc.
func procStat(pid int) (start uint64, state byte, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return start, f[0][0], nil
}

// alive reports whether the process p still runs (a zombie does not).
func (p procIdentity) alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, state, err := procStat(p.PID)
	return err == nil && start == p.Start && state != 'Z' && state != 'X'
}

// identify returns the identity of the running process pid.
func identify(pid int) (procIdentity, error) {
	start, _, err := procStat(pid)
	if err != nil {
		return procIdentity{}, err
	}
	return procIdentity{PID: pid, Start: start}, nil
}

// readPidFile reads a "PID STARTTIME" file written by writePidFile.
func readPidFile(path string) (procIdentity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procIdentity{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return procIdentity{}, fmt.Errorf("%s: want \"PID STARTTIME\", got %q", path, strings.TrimSpace(string(b)))
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return procIdentity{}, fmt.Errorf("%s: %w", path, err)
	}
	return procIdentity{PID: pid, Start: start}, nil
}

func writePidFile(path string, p procIdentity) error {
	return writeFileAtomic(path, []byte(p.String()+"\n"))
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// symlinkAtomic points link at target: a new symlink link.tmp renamed over link.
func symlinkAtomic(target, link string) error {
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// readLink returns where link points ("" when it does not exist).
func readLink(link string) (string, error) {
	t, err := os.Readlink(link)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if !filepath.IsAbs(t) {
		t = filepath.Join(filepath.Dir(link), t)
	}
	return t, nil
}

// procHandle watches one process that may not be our child.
type procHandle struct {
	id    procIdentity
	pidfd *os.File // nil when pidfd_open is not available: then /proc is polled
}

// openProc returns a handle on p, or an error when p no longer runs.
func openProc(p procIdentity) (*procHandle, error) {
	fd, err := unix.PidfdOpen(p.PID, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("process %d has exited", p.PID)
		}
		if !p.alive() {
			return nil, fmt.Errorf("process %d has exited", p.PID)
		}
		return &procHandle{id: p}, nil // no pidfd here: poll /proc
	}
	h := &procHandle{id: p, pidfd: os.NewFile(uintptr(fd), "pidfd")}
	// The pidfd names the process that had the PID when it was opened:
	// checking the start time now rules out a reused PID.
	if !p.alive() {
		h.close()
		return nil, fmt.Errorf("process %d has exited (or its PID was reused)", p.PID)
	}
	return h, nil
}

func (h *procHandle) close() {
	if h.pidfd != nil {
		_ = h.pidfd.Close()
	}
}

// wait blocks until the process exits (nil) or ctx ends (ctx.Err()).
func (h *procHandle) wait(ctx context.Context) error {
	if h.pidfd == nil {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for h.id.alive() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		}
		return nil
	}
	rc, err := h.pidfd.SyscallConn()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = h.pidfd.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		// A pidfd becomes readable when its process exits.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			perr = err
			return true
		}
		return n > 0
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		// Not pollable after all: fall back to /proc.
		h2 := &procHandle{id: h.id}
		return h2.wait(ctx)
	}
	return perr
}

// signal sends sig to the process (through its pidfd when there is one,
// so a reused PID is never signalled) and, when group is set, to its process
// group as well (runners run in their own session, so PGID = PID).
func (h *procHandle) signal(sig syscall.Signal, group bool) error {
	if h.pidfd != nil {
		rc, err := h.pidfd.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); err != nil {
			return err
		}
		if errors.Is(serr, unix.ESRCH) {
			return nil // already gone
		}
		if serr != nil {
			return serr
		}
	} else {
		if !h.id.alive() {
			return nil
		}
		if err := syscall.Kill(h.id.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
	}
	if group {
		if err := syscall.Kill(-h.id.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
	}
	return nil
}
