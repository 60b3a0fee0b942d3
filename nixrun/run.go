package nixrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Defaults for zero Command limits.
const (
	DefaultMaxStdout = 64 << 20
	DefaultMaxStderr = 1 << 20
)

// waitDelay bounds how long Wait waits for nix's stdout/stderr to close
// after nix exited or was killed (a stray child could hold them open).
const waitDelay = 5 * time.Second

// cleanupTimeout bounds how long Run waits for the run's cgroup to empty
// after killing it; a process stuck in the kernel (D state) can outlast
// SIGKILL for a while.
const cleanupTimeout = 10 * time.Second

var (
	errTimeout        = errors.New("nix run timeout")
	errOutputTooLarge = errors.New("nix output too large")
)

// Runner runs nix programs. The zero value runs the nix programs found on
// PATH with this process's environment. Runs share nothing, so a Runner is
// safe for concurrent use.
type Runner struct {
	// Nix is the nix binary, a path or a name looked up in PATH (default
	// "nix"). The other programs (nix-store, nix-instantiate) are taken
	// from the same directory when Nix is a path, else from PATH.
	Nix string
	// Env adds KEY=VALUE entries to the programs' environment, after
	// (overriding) the process's own. A NIX_CONFIG given here is merged
	// like the process's.
	Env []string
	// Logger gets a debug line per run and a line per kill (default: none).
	Logger *slog.Logger
	// User, when set, runs the programs as this user (a name, or a numeric
	// uid) with its primary and supplementary groups, in directory "/";
	// switching needs root (or CAP_SETUID and CAP_SETGID). The programs then see only part of this
	// process's environment (PATH, locale, proxies, certificates,
	// NIX_CONFIG and NIX_REMOTE; see keptForUser), the user's HOME, USER
	// and LOGNAME, and Env. "" runs them as this process's user with its
	// whole environment.
	User string

	// cgroups restricts how runs are grouped, for tests of each way.
	cgroups cgroupMode
}

// Command is one run of a nix program.
type Command struct {
	// Program is "nix", "nix-store", "nix-instantiate", … (default "nix"),
	// found as Runner.Nix says; a path is used as it is.
	Program string
	Args    []string
	// Timeout bounds the run; 0 means only the caller's context does.
	Timeout time.Duration
	// MaxStdout caps stdout (bytes, default DefaultMaxStdout); more kills
	// the run with an OutputTooLarge error.
	MaxStdout int64
	// MaxStderr caps the stderr kept (bytes, default DefaultMaxStderr);
	// the end, where nix puts its error, is kept.
	MaxStderr int
	// ExtraConfig is appended to the merged NIX_CONFIG (nix.conf lines),
	// after the caller's, so it wins.
	ExtraConfig string
	// MaxMemory limits the address space (RLIMIT_AS, bytes) of the program
	// and, separately, of each process it starts; 0 means no limit. A nix
	// that runs out of memory under it fails with a MemoryLimit error. The
	// limit is applied by starting the program through /bin/sh (see
	// limitShell).
	MaxMemory int64
	// Lines, when set, is called with every line nix prints on stderr, as
	// it prints it (colours removed, blank lines skipped), so that a caller
	// can show progress (nix's latest log line) while a long run goes on.
	// It runs on the goroutine that copies stderr: it must be quick.
	Lines func(line string)
}

// Run runs c and returns what it printed on stdout. Failures are *Error
// values. When Run returns, nothing the run started is left running, unless
// no cgroup could be made (the error of a killed run says so).
func (r Runner) Run(ctx context.Context, c Command) ([]byte, error) {
	program := c.Program
	if program == "" {
		program = "nix"
	}
	line := cmdline(program, c.Args)
	fail := func(kind Kind, err error, format string, args ...any) *Error {
		return &Error{Kind: kind, Cmdline: line, Err: err, Message: fmt.Sprintf(format, args...)}
	}
	bin, err := exec.LookPath(r.programPath(program))
	if err != nil {
		return nil, fail(NotFound, err, "cannot run %s (%v)", program, err)
	}
	environ := append(os.Environ(), r.Env...)
	var as *runAs
	if r.User != "" {
		if as, err = lookupUser(r.User); err != nil {
			return nil, fail(NotFound, err, "cannot run %s as user %s (%v)", program, r.User, err)
		}
		environ = append(userEnviron(os.Environ(), as), r.Env...)
	}
	path, args := bin, c.Args
	if c.MaxMemory > 0 {
		path, args = withMemoryLimit(bin, c.Args, c.MaxMemory)
	}
	if ctx.Err() != nil {
		return nil, callerError(ctx, line, "")
	}
	maxStdout, maxStderr := c.MaxStdout, c.MaxStderr
	if maxStdout <= 0 {
		maxStdout = DefaultMaxStdout
	}
	if maxStderr <= 0 {
		maxStderr = DefaultMaxStderr
	}
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	tctx := ctx
	if c.Timeout > 0 {
		var cancelTimeout context.CancelFunc
		tctx, cancelTimeout = context.WithTimeoutCause(ctx, c.Timeout, errTimeout)
		defer cancelTimeout()
	}
	rctx, cancel := context.WithCancelCause(tctx)
	defer cancel(nil)
	stdout := &cappedBuffer{max: maxStdout, overflow: func() { cancel(errOutputTooLarge) }}
	stderr := &tailBuffer{max: maxStderr}
	env := nixEnv(environ, c.ExtraConfig)

	var (
		cmd     *exec.Cmd
		stopped string // what the kill killed; written by cmd.Cancel, read after Wait
		// started is closed once the starting thread is out of the run's v1
		// cgroup: a kill before that could freeze a thread of this process.
		started = make(chan struct{})
	)
	newCmd := func(g *cgroup, noCgroup error) *exec.Cmd {
		cmd := exec.CommandContext(rctx, path, args...)
		cmd.Env = env
		// nix leads its own process group, so a kill without a cgroup still
		// reaches what nix started in the same session.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if as != nil {
			// The other user may not be allowed into this process's
			// working directory.
			cmd.Dir = "/"
			cmd.SysProcAttr.Credential = as.cred
		}
		cmd.Cancel = func() error {
			<-started
			stopped = kill(cmd.Process.Pid, g, noCgroup, filepath.Base(program))
			log.Info("nix run stopped", "cmd", line, "cause", context.Cause(rctx), "killed", stopped)
			return nil
		}
		cmd.WaitDelay = waitDelay
		cmd.Stdout, cmd.Stderr = stdout, io.Writer(stderr)
		if c.Lines != nil {
			cmd.Stderr = &lineWriter{next: stderr, line: c.Lines}
		}
		return cmd
	}

	g, cgErr := newCgroup(r.cgroups)
	if g != nil {
		cmd = newCmd(g, nil)
		if err := g.start(cmd); err != nil {
			log.Debug("nix did not start in its cgroup", "cgroup", g.path(), "err", err)
			cgErr = fmt.Errorf("starting %s in %s: %w", program, g, err)
			g.remove(log, false)
			g = nil
		}
	}
	if g == nil {
		log.Debug("nix runs without a cgroup", "reason", cgErr)
		cmd = newCmd(nil, cgErr)
		if err := cmd.Start(); err != nil {
			close(started)
			return nil, fail(NotFound, err, "cannot run %s (%v)", path, err)
		}
	}
	close(started)
	log.Debug("nix started", "cmd", line, "pid", cmd.Process.Pid, "cgroup", g.path(), "user", r.User, "maxMemory", c.MaxMemory)

	err = cmd.Wait()
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		err = nil // nix succeeded; a stray child held a pipe open
	}
	if g != nil {
		// Whatever the run left behind goes with it, so the cgroup can go.
		if survivors := g.remove(log, stopped != ""); len(survivors) > 0 && stopped != "" {
			stopped += fmt.Sprintf("; yet processes %v in it were still alive %v later", survivors, cleanupTimeout)
		}
	}

	if stopped == "" {
		// The kill found nothing to do: nix ended as it was being stopped.
		stopped = filepath.Base(program) + " had already exited"
	}
	switch cause := context.Cause(rctx); {
	case stdout.overflowed:
		return nil, &Error{Kind: OutputTooLarge, Cmdline: line, Err: errOutputTooLarge, Stopped: stopped,
			Message: fmt.Sprintf("printed more than %d bytes on stdout (the limit), so %s", maxStdout, stopped)}
	case err == nil:
		return stdout.buf.Bytes(), nil
	case errors.Is(cause, errTimeout):
		return nil, &Error{Kind: Timeout, Cmdline: line, Err: context.DeadlineExceeded, Stopped: stopped,
			Message: fmt.Sprintf("did not finish within %v, so %s", c.Timeout, stopped)}
	case ctx.Err() != nil:
		return nil, callerError(ctx, line, stopped)
	}

	ee := fail(Failed, err, "%s", cleanMessage(stderr.String()))
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ee.Kind = Killed
		} else if c.MaxMemory > 0 && outOfMemory(stderr.String()) {
			ee.Kind = MemoryLimit
			ee.Message = fmt.Sprintf("ran out of memory under its limit of %d MiB (address space per process)", c.MaxMemory>>20)
		}
	}
	return nil, ee
}

// programPath is where program is found: next to r.Nix when that is a
// path, else looked up in PATH.
func (r Runner) programPath(program string) string {
	nix := r.Nix
	if nix == "" {
		nix = "nix"
	}
	switch {
	case strings.ContainsRune(program, '/'):
		return program
	case program == "nix":
		return nix
	case strings.ContainsRune(nix, '/'):
		return filepath.Join(filepath.Dir(nix), program)
	}
	return program
}

// callerError describes why the caller's ctx ended: Timeout for a
// deadline, Canceled otherwise.
func callerError(ctx context.Context, line, stopped string) *Error {
	cause := context.Cause(ctx)
	e := &Error{Kind: Canceled, Cmdline: line, Err: cause, Stopped: stopped}
	what := "canceled"
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		e.Kind, what = Timeout, "the caller's deadline passed"
	}
	if stopped == "" {
		e.Message = fmt.Sprintf("%s before it started (%v)", what, cause)
	} else {
		e.Message = fmt.Sprintf("%s (%v), so %s", what, cause, stopped)
	}
	return e
}

// kill ends the run whose leader is pid: the whole cgroup g when there is
// one (else noCgroup says why not), and always nix's process group. It
// returns what it killed, as a clause for messages.
func kill(pid int, g *cgroup, noCgroup error, program string) string {
	var cgErr error
	if g != nil {
		cgErr = g.kill()
	}
	pgErr := syscall.Kill(-pid, syscall.SIGKILL)
	if errors.Is(pgErr, syscall.ESRCH) {
		pgErr = nil // the group is already empty
	}
	switch {
	case g != nil && cgErr == nil:
		return fmt.Sprintf("%s and every process it started (all of %s) were killed", program, g)
	case g != nil && pgErr != nil:
		return fmt.Sprintf("neither %s (%v) nor %s's process group (%v) could be killed; they may survive", g, cgErr, program, pgErr)
	case g != nil:
		return fmt.Sprintf("%s's process group was killed, but killing the rest of %s failed (%v); builders in their own session may survive", program, g, cgErr)
	case pgErr != nil:
		return fmt.Sprintf("%s's process group could not be killed (%v); it may survive", program, pgErr)
	}
	return fmt.Sprintf("%s's process group was killed; builders in their own session may survive (no cgroup for this run: %v)", program, noCgroup)
}

// nixEnv returns environ with a single NIX_CONFIG entry: the values of all
// NIX_CONFIG entries of environ, in order, then extra. There is none when
// all of them are empty.
func nixEnv(environ []string, extra string) []string {
	out := make([]string, 0, len(environ)+1)
	var cfg []string
	for _, kv := range append(environ, "NIX_CONFIG="+extra) {
		if v, ok := strings.CutPrefix(kv, "NIX_CONFIG="); ok {
			if v = strings.Trim(v, "\n"); v != "" {
				cfg = append(cfg, v)
			}
			continue
		}
		out = append(out, kv)
	}
	if len(cfg) == 0 {
		return out
	}
	return append(out, "NIX_CONFIG="+strings.Join(cfg, "\n"))
}

// cappedBuffer keeps up to max bytes; past that it discards everything,
// sets overflowed and calls overflow once (which kills the run). exec.Cmd
// copies stdout from one goroutine, so it needs no lock.
type cappedBuffer struct {
	buf        bytes.Buffer
	max        int64
	overflow   func()
	overflowed bool
}

func (w *cappedBuffer) Write(p []byte) (int, error) {
	if w.overflowed {
		return len(p), nil
	}
	if int64(w.buf.Len())+int64(len(p)) > w.max {
		w.overflowed = true
		w.buf = bytes.Buffer{}
		w.overflow()
		return len(p), nil
	}
	return w.buf.Write(p)
}

// tailBuffer keeps the last max bytes written: nix prints its error last.
type tailBuffer struct {
	b       []byte
	max     int
	dropped bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 2*t.max {
		n := copy(t.b, t.b[len(t.b)-t.max:])
		t.b = t.b[:n]
		t.dropped = true
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	b, dropped := t.b, t.dropped
	if len(b) > t.max {
		b, dropped = b[len(b)-t.max:], true
	}
	if dropped {
		// Start at a line boundary so no line is cut.
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
		return "(earlier output dropped)\n" + string(b)
	}
	return string(b)
}

// lineWriter passes what it is given on to next and hands every complete
// line to line. exec.Cmd copies stderr from one goroutine, so it needs no
// lock. A line longer than maxLine is handed over cut, so a builder that
// prints without newlines cannot grow it without bound.
type lineWriter struct {
	next    io.Writer
	line    func(string)
	partial []byte
}

// maxLine bounds one reported line (bytes).
const maxLine = 4096

func (w *lineWriter) Write(p []byte) (int, error) {
	n, err := w.next.Write(p)
	rest := p
	for len(rest) > 0 {
		i := bytes.IndexAny(rest, "\r\n")
		if i < 0 {
			w.partial = append(w.partial, rest...)
			if len(w.partial) >= maxLine {
				w.emit()
			}
			break
		}
		w.partial = append(w.partial, rest[:i]...)
		w.emit()
		rest = rest[i+1:]
	}
	return n, err
}

// emit hands the partial line over, cleaned, unless it is blank.
func (w *lineWriter) emit() {
	line := strings.TrimSpace(ansiRE.ReplaceAllString(strings.ToValidUTF8(string(w.partial), "?"), ""))
	w.partial = w.partial[:0]
	if len(line) > maxLine {
		line = line[:maxLine]
	}
	if line != "" {
		w.line(line)
	}
}
