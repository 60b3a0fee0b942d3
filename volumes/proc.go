package volumes

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// procID names one process across PID reuse: its PID and its start time in
// clock ticks since boot (field 22 of /proc/PID/stat), as the node agent's
// process backend records its runners.
type procID struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

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

// identify returns the identity of the running process pid.
func identify(pid int) (procID, error) {
	start, _, err := procStat(pid)
	if err != nil {
		return procID{}, err
	}
	return procID{PID: pid, Start: start}, nil
}

// startOf returns pid's start time, 0 when it is gone.
func startOf(pid int) uint64 {
	start, _, _ := procStat(pid)
	return start
}

// alive reports whether p still runs (a zombie does not).
func (p procID) alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, state, err := procStat(p.PID)
	return err == nil && start == p.Start && state != 'Z' && state != 'X'
}

// args returns p's command line, nil when p no longer runs.
func (p procID) args() []string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.PID), "cmdline"))
	if err != nil || !p.alive() {
		return nil
	}
	return strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
}

// signal sends sig to p, through a pidfd when the kernel has them so that a
// reused PID is never signalled. A process that is gone is not an error.
func (p procID) signal(sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		// No pidfds here: check the start time, then signal the PID.
		if !p.alive() {
			return nil
		}
		if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		return nil
	}
	defer unix.Close(fd)
	// The pidfd names the process that had the PID when it was opened:
	// checking the start time now rules out a reused PID.
	if !p.alive() {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}
