package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ProcessOptions configures a [ProcessBackend]. Zero durations take the defaults.
type ProcessOptions struct {
	// StateDir holds one directory per VM (default /var/lib/microvms).
	StateDir string
	// ShutdownTimeout bounds microvm-shutdown plus the wait for the runner
	// to exit after it (default 30s); then SIGTERM is sent.
	ShutdownTimeout time.Duration
	// TermTimeout is the wait after SIGTERM before SIGKILL (default 10s).
	TermTimeout time.Duration
	// RestartBackoff is the first delay before restarting a crashed runner
	// (default 250ms); it doubles on each crash up to MaxRestartBackoff
	// (default 30s) and resets once a runner stayed up ResetBackoffAfter
	// (default 10s).
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	ResetBackoffAfter time.Duration
	// MaxLogBytes caps each STATE/NAME/console.log (default 10 MiB;
	// negative: no cap). A log over the cap is rotated: its last
	// MaxLogBytes go to console.log.1, replacing the older one, and it is
	// truncated (see [rotateLog] for why it is copied and truncated rather
	// than renamed, and what that costs). The cap is checked before a
	// runner starts, for adopted runners when Run starts, and every
	// LogCheckInterval (default 1s) while runners run.
	MaxLogBytes      int64
	LogCheckInterval time.Duration
	// Clock is the backend's time (default: the system's): when a runner
	// started and exited, when its restart is due, and how long Stop waits
	// for a runner to exit. Tests pass one they advance, so that crash
	// backoff takes no real time. Only microvm-shutdown's own deadline and
	// the log size checks (LogCheckInterval, housekeeping) are real time.
	Clock  Clock
	Logger *slog.Logger
}

// DefaultMaxLogBytes is the default [ProcessOptions.MaxLogBytes].
const DefaultMaxLogBytes = 10 << 20

// Clock is a source of time and timers ([ProcessOptions.Clock]).
type Clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer (reporting whether it was still running).
	NewTimer(d time.Duration) (c <-chan time.Time, stop func() bool)
}

// systemClock is the system's clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// ProcessBackend is a [Backend] that supervises runners itself: each unit is
// a STATE/NAME/current/bin/microvm-run process started in its own session
// (so it outlives the agent and gets no terminal signals), with working
// directory STATE/NAME and its stdout and stderr appended to
// STATE/NAME/console.log ([LogPath]). It records STATE/NAME/pid ("PID
// STARTTIME", the start time from /proc/PID/stat guarding against PID reuse)
// and STATE/NAME/booted; Run adopts every runner whose pid file names a live
// process and watches it through a pidfd (or by polling /proc where pidfds
// are unavailable). Console logs are capped at ProcessOptions.MaxLogBytes,
// with one older log kept as console.log.1.
type ProcessBackend struct {
	o      ProcessOptions
	log    *slog.Logger
	events chan string
	ready  chan struct{} // closed when Run has adopted the running units
	done   chan struct{} // closed when Run has returned
	wake   chan struct{} // buffered(1): the restart schedule changed

	mu     sync.Mutex
	units  map[string]*procUnit // guarded by mu
	runCtx context.Context      // set once by Run before ready is closed

	watchers sync.WaitGroup // watch and autoRestart goroutines
	runOnce  sync.Once
}

// procUnit is one unit. op serialises Start, Stop, Restart and automatic
// restarts of the unit; the other fields are guarded by ProcessBackend.mu.
type procUnit struct {
	name string
	op   sync.Mutex

	h           *procHandle   // nil while no runner runs
	cmd         *exec.Cmd     // the runner when it is our child (not adopted)
	exited      chan struct{} // closed when h's process has exited
	booted      string
	stopping    bool // Stop in progress: an exit is not a crash
	kills       int  // Kill calls waiting for the runner to exit: neither is an exit of theirs
	restarting  bool // crashed; restart due at nextRestart
	inFlight    bool // an autoRestart goroutine owns the restart
	nextRestart time.Time
	restarts    int
	backoff     time.Duration
	startedAt   time.Time
	exitCode    int
	result      string
	since       time.Time
}

// NewProcessBackend returns a backend; it starts nothing until Run.
func NewProcessBackend(o ProcessOptions) *ProcessBackend {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if o.TermTimeout <= 0 {
		o.TermTimeout = 10 * time.Second
	}
	if o.RestartBackoff <= 0 {
		o.RestartBackoff = 250 * time.Millisecond
	}
	if o.MaxRestartBackoff <= 0 {
		o.MaxRestartBackoff = 30 * time.Second
	}
	if o.ResetBackoffAfter <= 0 {
		o.ResetBackoffAfter = 10 * time.Second
	}
	if o.MaxLogBytes == 0 {
		o.MaxLogBytes = DefaultMaxLogBytes
	}
	if o.LogCheckInterval <= 0 {
		o.LogCheckInterval = time.Second
	}
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ProcessBackend{
		o:      o,
		log:    log.With("backend", "process"),
		events: make(chan string, 256),
		ready:  make(chan struct{}),
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
		units:  map[string]*procUnit{},
	}
}

// Events implements [Backend].
func (b *ProcessBackend) Events() <-chan string { return b.events }

// Run implements [Backend]. It may be called once.
func (b *ProcessBackend) Run(ctx context.Context) error {
	first := false
	b.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("nodeagent: ProcessBackend.Run called twice")
	}
	defer close(b.done)
	b.mu.Lock()
	b.runCtx = ctx
	b.mu.Unlock()
	if err := os.MkdirAll(b.o.StateDir, 0o755); err != nil {
		close(b.ready)
		return fmt.Errorf("nodeagent: state directory: %w", err)
	}
	b.adopt()
	close(b.ready)

	// Real time: the log cap is housekeeping, not behaviour that tests
	// step through on a fake Clock.
	logCheck := time.NewTicker(b.o.LogCheckInterval)
	defer logCheck.Stop()
	for {
		now := b.o.Clock.Now()
		next := time.Time{}
		b.mu.Lock()
		for _, u := range b.units {
			if !u.restarting || u.inFlight {
				continue
			}
			if !u.nextRestart.After(now) {
				u.inFlight = true
				b.watchers.Add(1)
				go b.autoRestart(ctx, u)
				continue
			}
			if next.IsZero() || u.nextRestart.Before(next) {
				next = u.nextRestart
			}
		}
		b.mu.Unlock()
		wait := time.Hour
		if !next.IsZero() {
			wait = next.Sub(now)
		}
		timer, stop := b.o.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			stop()
			b.watchers.Wait()
			return nil
		case <-b.wake:
		case <-timer:
		case <-logCheck.C:
			b.capRunningLogs()
		}
		stop()
	}
}

// adopt takes over the runners recorded in STATE/*/pid that still run and
// kills those an earlier agent started ahead and left unadopted.
func (b *ProcessBackend) adopt() {
	adopted := map[procIdentity]bool{}
	defer func() { b.killAheadLeftovers(adopted) }()
	entries, err := os.ReadDir(b.o.StateDir)
	if err != nil {
		b.log.Warn("cannot list the state directory to adopt runners", "dir", b.o.StateDir, "err", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		dir := filepath.Join(b.o.StateDir, name)
		pidPath := filepath.Join(dir, "pid")
		id, err := readPidFile(pidPath)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			b.log.Warn("ignoring unreadable pid file", "vm", name, "err", err)
			continue
		}
		h, err := openProc(id)
		if err != nil {
			b.log.Info("recorded runner no longer runs", "vm", name, "pid", id.PID)
			_ = os.Remove(pidPath)
			continue
		}
		booted, _ := readLink(filepath.Join(dir, "booted"))
		b.capLog(name) // it grew unchecked while no agent ran
		now := b.o.Clock.Now()
		u := &procUnit{name: name, h: h, exited: make(chan struct{}), booted: booted, startedAt: now, since: now}
		b.units[name] = u
		adopted[id] = true
		b.watchers.Add(1)
		go b.watch(u, h, nil, u.exited)
		b.log.Info("adopted running runner", "vm", name, "pid", id.PID, "booted", booted)
	}
}

// waitReady waits until Run has adopted the running units.
func (b *ProcessBackend) waitReady(ctx context.Context) error {
	return waitRunning(ctx, b.ready, b.done)
}

func (b *ProcessBackend) unit(name string) *procUnit {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.units[name]
	if u == nil {
		u = &procUnit{name: name}
		b.units[name] = u
	}
	return u
}

// Start implements [Backend].
func (b *ProcessBackend) Start(ctx context.Context, name string) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	u := b.unit(name)
	u.op.Lock()
	defer u.op.Unlock()
	// The lock may have been held for long (a Stop's shutdown): a caller
	// that gave up meanwhile (a fenced agent cancels its operations) must
	// not start a runner.
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.startOpLocked(u)
}

// Restart implements [Backend].
func (b *ProcessBackend) Restart(ctx context.Context, name string) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	u := b.unit(name)
	u.op.Lock()
	defer u.op.Unlock()
	if err := b.stopOpLocked(ctx, u); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err // cancelled while stopping (a fenced agent): start nothing
	}
	return b.startOpLocked(u)
}

// Stop implements [Backend].
func (b *ProcessBackend) Stop(ctx context.Context, name string) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	u := b.unit(name)
	u.op.Lock()
	defer u.op.Unlock()
	return b.stopOpLocked(ctx, u)
}

// startOpLocked starts u's runner unless it runs. u.op must be held.
func (b *ProcessBackend) startOpLocked(u *procUnit) error {
	b.mu.Lock()
	running := u.h != nil
	ctx := b.runCtx
	b.mu.Unlock()
	if running {
		return nil
	}
	if ctx.Err() != nil {
		return ErrBackendStopped
	}
	h, cmd, out, err := b.spawn(u.name)
	now := b.o.Clock.Now()
	b.mu.Lock()
	if err != nil {
		u.result = "start failed: " + err.Error()
		u.since = now
		b.mu.Unlock()
		return err
	}
	u.h, u.cmd, u.exited, u.booted = h, cmd, make(chan struct{}), out
	u.restarting, u.startedAt, u.since = false, now, now
	exited := u.exited
	b.watchers.Add(1)
	b.mu.Unlock()
	go b.watch(u, h, cmd, exited)
	b.log.Info("runner started", "vm", u.name, "pid", h.id.PID, "out", out)
	return nil
}

// spawn starts STATE/name/current/bin/microvm-run in its own session.
func (b *ProcessBackend) spawn(name string) (*procHandle, *exec.Cmd, string, error) {
	dir := filepath.Join(b.o.StateDir, name)
	out, err := readLink(filepath.Join(dir, "current"))
	if err != nil {
		return nil, nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	if out == "" {
		return nil, nil, "", fmt.Errorf("start %s: %s does not exist (the agent links it to the runner first)", name, filepath.Join(dir, "current"))
	}
	h, cmd, err := b.execRunner(name, dir, out, "booted", "pid")
	if err != nil {
		return nil, nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	return h, cmd, out, nil
}

// execRunner starts out's bin/microvm-run for instance name in its own
// session, with working directory dir and its output appended to name's
// console log, and records it in dir: a link booted → out when booted is
// not "", and its pid file. On an error nothing of it runs.
func (b *ProcessBackend) execRunner(name, dir, out, booted, pidFile string) (*procHandle, *exec.Cmd, error) {
	began := time.Now()
	b.capLog(name)
	logf, err := os.OpenFile(LogPath(b.o.StateDir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("console log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(out, "bin", "microvm-run"))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own session: the runner outlives the agent and gets no terminal signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	opened := time.Since(began)
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("%w (is %s a runner with bin/microvm-run?)", err, out)
	}
	pid := cmd.Process.Pid
	// Start returned once the runner was exec'd: where a cold start's
	// orchestration ends (the lab reads this line's time).
	b.log.Debug("runner exec'd", "vm", name, "pid", pid, "log_opened", opened, "exec", time.Since(began)-opened)
	fail := func(err error) (*procHandle, *exec.Cmd, error) {
		// The group too: a runner may have started children already.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, err
	}
	// Our unreaped child cannot vanish, even if it exits at once (a zombie
	// keeps its /proc entry and its pidfd), so its identity is stable here.
	id, err := identify(pid)
	if err != nil {
		return fail(err)
	}
	h := &procHandle{id: id}
	if fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK); err == nil {
		h.pidfd = os.NewFile(uintptr(fd), "pidfd")
	}
	if booted != "" {
		if err := symlinkAtomic(out, filepath.Join(dir, booted)); err != nil {
			h.close()
			return fail(fmt.Errorf("record booted: %w", err))
		}
	}
	if err := writePidFile(filepath.Join(dir, pidFile), id); err != nil {
		h.close()
		return fail(fmt.Errorf("record pid: %w", err))
	}
	return h, cmd, nil
}

// watch waits for the runner h to exit and records it; an exit that Stop
// did not ask for is a crash: it schedules a restart and emits an event.
func (b *ProcessBackend) watch(u *procUnit, h *procHandle, cmd *exec.Cmd, exited chan struct{}) {
	defer b.watchers.Done()
	if err := h.wait(b.runCtx); err != nil {
		h.close() // Run ends: the runner keeps running, unwatched.
		return
	}
	code, result := -1, "exited (adopted runner, exit code unknown)"
	if cmd != nil {
		_ = cmd.Wait()
		if ps := cmd.ProcessState; ps != nil {
			code = ps.ExitCode()
			if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				result = "killed by signal: " + ws.Signal().String()
			} else {
				result = fmt.Sprintf("exited with code %d", code)
			}
		}
	}
	pidPath := filepath.Join(b.o.StateDir, u.name, "pid")
	if id, err := readPidFile(pidPath); err == nil && id == h.id {
		_ = os.Remove(pidPath)
	}
	now := b.o.Clock.Now()
	b.mu.Lock()
	u.h, u.cmd = nil, nil
	close(exited)
	u.exitCode, u.result, u.since = code, result, now
	crash := !u.stopping && u.kills == 0
	if crash {
		b.scheduleRestartLocked(u, now)
	}
	delay := u.nextRestart.Sub(now)
	b.mu.Unlock()
	// Closed only now that u.h no longer names it: Kill signals through the
	// handle under b.mu, and a closed pidfd would make it fall back to the
	// PID, which the reaped runner no longer owns.
	h.close()
	if crash {
		b.log.Warn("runner exited; restarting it", "vm", u.name, "pid", h.id.PID, "result", result,
			"in", delay.Round(time.Millisecond), "console", LogPath(b.o.StateDir, u.name))
		b.emit(u.name)
		b.poke()
	}
}

// scheduleRestartLocked sets u to restart after its backoff. b.mu must be held.
func (b *ProcessBackend) scheduleRestartLocked(u *procUnit, now time.Time) {
	if !u.startedAt.IsZero() && now.Sub(u.startedAt) >= b.o.ResetBackoffAfter {
		u.restarts, u.backoff = 0, 0
	}
	switch {
	case u.backoff == 0:
		u.backoff = b.o.RestartBackoff
	default:
		u.backoff = min(2*u.backoff, b.o.MaxRestartBackoff)
	}
	u.restarts++
	u.restarting = true
	u.nextRestart = now.Add(u.backoff)
}

// autoRestart restarts a crashed unit whose backoff has passed.
func (b *ProcessBackend) autoRestart(ctx context.Context, u *procUnit) {
	defer b.watchers.Done()
	u.op.Lock()
	defer u.op.Unlock()
	b.mu.Lock()
	due := u.restarting && u.h == nil && ctx.Err() == nil
	u.inFlight = false
	b.mu.Unlock()
	if !due {
		return
	}
	if err := b.startOpLocked(u); err != nil {
		b.mu.Lock()
		now := b.o.Clock.Now()
		u.startedAt = now
		b.scheduleRestartLocked(u, now)
		b.mu.Unlock()
		b.log.Warn("restarting runner failed", "vm", u.name, "err", err)
		b.poke()
	}
	b.emit(u.name)
}

// stopOpLocked stops u's runner and waits until it has exited. u.op must be held.
func (b *ProcessBackend) stopOpLocked(ctx context.Context, u *procUnit) error {
	dir := filepath.Join(b.o.StateDir, u.name)
	b.mu.Lock()
	u.restarting = false
	h, exited, booted := u.h, u.exited, u.booted
	if h != nil {
		u.stopping = true
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		u.stopping = false
		if u.h == nil {
			u.booted = ""
			u.restarts, u.backoff = 0, 0
			u.since = b.o.Clock.Now()
		}
		b.mu.Unlock()
	}()
	if h != nil {
		if err := b.stopProcess(ctx, u.name, h, exited, booted); err != nil {
			return err
		}
	}
	for _, p := range []string{filepath.Join(dir, "booted"), filepath.Join(dir, "pid")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stop %s: %w", u.name, err)
		}
	}
	return nil
}

// Kill implements [Backend]. It does not take the unit's op lock, which a
// Stop or Restart holds through microvm-shutdown and the SIGTERM grace
// (minutes): it signals the runner's process group under b.mu, while the
// handle is valid (the watcher closes its pidfd only after clearing u.h
// under b.mu, so the signal goes through the pidfd and a reaped runner's
// PID or group is never signalled), and waits for the watcher to see the
// exit. A Stop in progress then finds its runner gone and returns.
func (b *ProcessBackend) Kill(ctx context.Context, name string) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	u := b.units[name]
	if u == nil {
		b.mu.Unlock()
		return nil
	}
	u.restarting = false // a crashed runner's restart is dropped
	h, exited := u.h, u.exited
	var serr error
	if h != nil {
		u.kills++
		serr = h.signal(syscall.SIGKILL, true)
	}
	b.mu.Unlock()
	if h != nil {
		defer func() {
			b.mu.Lock()
			u.kills--
			b.mu.Unlock()
		}()
		if serr != nil {
			return fmt.Errorf("kill %s: SIGKILL to runner (pid %d): %w", name, h.id.PID, serr)
		}
		select {
		case <-exited:
		case <-ctx.Done():
			return fmt.Errorf("kill %s: runner (pid %d) still running after SIGKILL: %w (a process stuck in the kernel, see /proc/%d/stack, outlives any signal)",
				name, h.id.PID, ctx.Err(), h.id.PID)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if u.h != nil {
		// A Start that raced the kill runs a new runner: its records stay,
		// and the caller kills it on its next pass.
		return nil
	}
	u.booted = ""
	u.restarts, u.backoff = 0, 0
	u.since = b.o.Clock.Now()
	dir := filepath.Join(b.o.StateDir, name)
	if err := os.Remove(filepath.Join(dir, "booted")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	if h != nil {
		// The watcher removed the pid file when it named this runner; one
		// that names another process is not ours to remove.
		if id, err := readPidFile(filepath.Join(dir, "pid")); err == nil && id == h.id {
			_ = os.Remove(filepath.Join(dir, "pid"))
		}
	}
	return nil
}

// stopProcess: booted/bin/microvm-shutdown when present, then SIGTERM, then
// SIGKILL, each step waiting for the runner to exit.
func (b *ProcessBackend) stopProcess(ctx context.Context, name string, h *procHandle, exited <-chan struct{}, booted string) error {
	// The runner may exit at any point (a Kill, microvm-shutdown): then
	// the watcher has closed h, there is nothing left to signal, and the
	// stop has succeeded whatever else happened meanwhile.
	gone := func() bool {
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	waitExit := func(d time.Duration) bool {
		timer, stop := b.o.Clock.NewTimer(d)
		defer stop()
		select {
		case <-exited:
			return true
		case <-timer:
		case <-ctx.Done():
		}
		return gone()
	}
	dir := filepath.Join(b.o.StateDir, name)
	start := b.o.Clock.Now()
	if shutdown := filepath.Join(booted, "bin", "microvm-shutdown"); booted != "" && isExecutable(shutdown) {
		sctx, cancel := context.WithTimeout(ctx, b.o.ShutdownTimeout)
		err := b.runShutdown(sctx, name, dir, shutdown)
		cancel()
		if err != nil {
			b.log.Warn("microvm-shutdown failed; terminating the runner", "vm", name, "err", err)
		} else if waitExit(b.o.ShutdownTimeout - b.o.Clock.Now().Sub(start)) {
			return nil
		}
	}
	if err := h.signal(syscall.SIGTERM, true); err != nil && !gone() {
		return fmt.Errorf("stop %s: SIGTERM: %w", name, err)
	}
	if waitExit(b.o.TermTimeout) {
		return nil
	}
	if ctx.Err() == nil {
		b.log.Warn("runner ignored SIGTERM; killing it", "vm", name, "pid", h.id.PID, "after", b.o.TermTimeout)
		if err := h.signal(syscall.SIGKILL, true); err != nil && !gone() {
			return fmt.Errorf("stop %s: SIGKILL: %w", name, err)
		}
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		if gone() {
			return nil
		}
		return fmt.Errorf("stop %s: runner (pid %d) still running: %w", name, h.id.PID, ctx.Err())
	}
}

func (b *ProcessBackend) runShutdown(ctx context.Context, name, dir, shutdown string) error {
	logf, err := os.OpenFile(LogPath(b.o.StateDir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, shutdown)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w (see %s)", shutdown, err, LogPath(b.o.StateDir, name))
	}
	return nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// Status implements [Backend].
func (b *ProcessBackend) Status(name string) (UnitStatus, error) {
	if err := b.waitReady(context.Background()); err != nil {
		return UnitStatus{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.units[name]
	if u == nil {
		return UnitStatus{}, nil
	}
	s := UnitStatus{
		Active:     u.h != nil,
		Restarting: u.restarting,
		Restarts:   u.restarts,
		ExitCode:   u.exitCode,
		Result:     u.result,
		Since:      u.since,
	}
	if s.Active {
		s.PID = u.h.id.PID
	}
	if s.Active || s.Restarting {
		s.Booted = u.booted
	}
	if s.Restarting {
		s.NextRestart = u.nextRestart
	}
	return s, nil
}

// List implements [Backend].
func (b *ProcessBackend) List() ([]string, error) {
	if err := b.waitReady(context.Background()); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var names []string
	for name, u := range b.units {
		if u.h != nil || u.restarting {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names, nil
}

func (b *ProcessBackend) emit(name string) {
	select {
	case b.events <- name:
	default:
	}
}

func (b *ProcessBackend) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}
