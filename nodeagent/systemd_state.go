package nodeagent

// Reading a microvm@ unit's state over D-Bus: properties, the cache invalidated by signals, and what they mean.

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type cachedState struct {
	gen uint64
	s   unitState
}

// invalidate drops the cached state of VM name's unit.
func (b *SystemdBackend) invalidate(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gens[name]++
	delete(b.cache, name)
}

// invalidateAll drops every cached state.
func (b *SystemdBackend) invalidateAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name := range b.cache {
		b.gens[name]++
	}
	clear(b.cache)
}

// cachedStateOf returns VM name's unit state, from the cache while no
// change was signalled since it was read.
func (b *SystemdBackend) cachedStateOf(ctx context.Context, name string) (unitState, error) {
	b.mu.Lock()
	gen := b.gens[name]
	c, ok := b.cache[name]
	b.mu.Unlock()
	if ok && c.gen == gen {
		return c.s, nil
	}
	s, err := b.state(ctx, b.unit(name))
	if err != nil || s.LoadState != "loaded" {
		return s, err
	}
	b.mu.Lock()
	if b.gens[name] == gen {
		b.cache[name] = cachedState{gen: gen, s: s}
	}
	b.mu.Unlock()
	return s, nil
}

// unitState is what the backend reads of one unit.
type unitState struct {
	LoadState, ActiveState, SubState string
	ConditionResult                  bool
	Changed                          time.Time // StateChangeTimestamp
	MainPID                          int
	Result                           string // the service's Result ("success", "exit-code", …)
	ExecMainCode                     int    // CLD_EXITED (1), CLD_KILLED (2), CLD_DUMPED (3), 0 before any exit
	ExecMainStatus                   int
	NRestarts                        int
	RestartDelay                     time.Duration // RestartUSec
	// JobQueued: a job is pending for the unit. Between two automatic
	// restarts systemd briefly shows inactive (dead) with the restart's start
	// job queued; that is still a restart, not a stopped unit.
	JobQueued bool
}

// state reads unit's properties (two GetAll calls: Unit and Service).
func (b *SystemdBackend) state(ctx context.Context, unit string) (unitState, error) {
	var s unitState
	u, err := b.conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return s, fmt.Errorf("read %s: %w", unit, err)
	}
	s.LoadState, _ = u["LoadState"].(string)
	s.ActiveState, _ = u["ActiveState"].(string)
	s.SubState, _ = u["SubState"].(string)
	s.ConditionResult, _ = u["ConditionResult"].(bool)
	if us, ok := u["StateChangeTimestamp"].(uint64); ok && us > 0 {
		s.Changed = time.UnixMicro(int64(us))
	}
	// Job is (job id, object path); id 0 means no job.
	if job, ok := u["Job"].([]interface{}); ok && len(job) > 0 {
		if id, ok := job[0].(uint32); ok && id != 0 {
			s.JobQueued = true
		}
	}
	if s.LoadState != "loaded" {
		return s, nil
	}
	v, err := b.conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
	if err != nil {
		return s, fmt.Errorf("read %s: %w", unit, err)
	}
	if pid, ok := v["MainPID"].(uint32); ok {
		s.MainPID = int(pid)
	}
	s.Result, _ = v["Result"].(string)
	if c, ok := v["ExecMainCode"].(int32); ok {
		s.ExecMainCode = int(c)
	}
	if c, ok := v["ExecMainStatus"].(int32); ok {
		s.ExecMainStatus = int(c)
	}
	if n, ok := v["NRestarts"].(uint32); ok {
		s.NRestarts = int(n)
	}
	if us, ok := v["RestartUSec"].(uint64); ok {
		s.RestartDelay = time.Duration(us) * time.Microsecond
	}
	return s, nil
}

// running: a runner process is alive (or being started or stopped).
func (s unitState) running() bool {
	switch s.ActiveState {
	case "active", "reloading", "deactivating":
		return true
	case "activating":
		return s.SubState != "auto-restart" && s.MainPID != 0
	}
	return false
}

func (s unitState) restarting() bool {
	return (s.ActiveState == "activating" && s.SubState == "auto-restart") ||
		(s.ActiveState == "inactive" && s.JobQueued)
}

// result describes the last exit in systemd's words, with where its logs are.
func (s unitState) result(unit string) string {
	var what string
	switch s.ExecMainCode {
	case 1: // CLD_EXITED
		what = fmt.Sprintf("exited with code %d", s.ExecMainStatus)
	case 2, 3: // CLD_KILLED, CLD_DUMPED
		what = "killed by signal " + unix.SignalName(syscall.Signal(s.ExecMainStatus))
	}
	switch {
	case what == "" && (s.Result == "" || s.Result == "success"):
		return ""
	case what == "":
		return fmt.Sprintf("%s (journalctl -u %s)", s.Result, unit)
	default:
		return fmt.Sprintf("%s: %s (journalctl -u %s)", s.Result, what, unit)
	}
}

func (s unitState) exitCode() int {
	if s.ExecMainCode == 1 {
		return s.ExecMainStatus
	}
	if s.ExecMainCode == 0 {
		return 0
	}
	return -1
}
