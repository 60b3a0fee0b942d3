package nixeval

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// nixConfig is appended to the caller's NIX_CONFIG: no build sandbox (eval
// only builds for import-from-derivation, and hosts may lack user
// namespaces) and no substituters (an unreachable cache costs seconds).
const nixConfig = "sandbox = false\nsubstituters ="

// waitDelay bounds how long Wait waits for nix's stdout/stderr to close
// after nix exited or was killed (a stray child could hold them open).
const waitDelay = 5 * time.Second

var (
	errTimeout        = errors.New("evaluation timeout")
	errOutputTooLarge = errors.New("nix output too large")
)

// nixArgs is the nix command line evaluating flakeRef#attr through the
// apply function.
func nixArgs(flakeRef, attr string) []string {
	return []string{
		"--extra-experimental-features", "nix-command flakes",
		"eval", "--json", "--no-write-lock-file",
		"--apply", applyFunction,
		flakeRef + "#" + attr,
	}
}

// nixEnv returns environ with a single NIX_CONFIG entry: the values of
// all NIX_CONFIG entries of environ, in order, then nixConfig.
func nixEnv(environ []string) []string {
	out := make([]string, 0, len(environ)+1)
	var cfg []string
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "NIX_CONFIG="); ok {
			if v = strings.Trim(v, "\n"); v != "" {
				cfg = append(cfg, v)
			}
			continue
		}
		out = append(out, kv)
	}
	return append(out, "NIX_CONFIG="+strings.Join(append(cfg, nixConfig), "\n"))
}

// run runs nix eval once and returns what it printed on stdout. On timeout,
// cancellation or too much output it kills nix's whole process group.
func (e *Evaluator) run(ctx context.Context, flakeRef, attr string) ([]byte, *Error) {
	fail := func(kind ErrorKind, err error, format string, args ...any) *Error {
		return &Error{Kind: kind, FlakeRef: flakeRef, Attr: attr, Err: err, Message: fmt.Sprintf(format, args...)}
	}
	nix, err := exec.LookPath(e.opts.Nix)
	if err != nil {
		return nil, fail(NixNotFound, err, "cannot run nix (%v); install Nix (on a development machine: scripts/setup.sh) or configure the path of the nix binary", err)
	}
	if ctx.Err() != nil {
		return nil, contextError(ctx, flakeRef, attr, context.Cause(ctx))
	}

	tctx, cancelTimeout := context.WithTimeoutCause(ctx, e.opts.Timeout, errTimeout)
	defer cancelTimeout()
	rctx, cancel := context.WithCancelCause(tctx)
	defer cancel(nil)

	cmd := exec.CommandContext(rctx, nix, nixArgs(flakeRef, attr)...)
	cmd.Env = nixEnv(append(os.Environ(), e.opts.Env...))
	// nix in its own process group, so a kill reaches everything it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	stdout := &cappedBuffer{max: e.opts.MaxOutput, overflow: func() { cancel(errOutputTooLarge) }}
	stderr := &tailBuffer{max: e.opts.MaxStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr

	if err := cmd.Start(); err != nil {
		return nil, fail(NixNotFound, err, "cannot run %s (%v); install Nix (on a development machine: scripts/setup.sh) or configure the path of the nix binary", nix, err)
	}
	e.log.Debug("nix eval started", "pid", cmd.Process.Pid, "flake", flakeRef, "attr", attr)
	err = cmd.Wait()
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		err = nil // nix succeeded; a stray child held a pipe open
	}

	switch cause := context.Cause(rctx); {
	case stdout.overflowed:
		return nil, fail(OutputTooLarge, errOutputTooLarge, "nix printed more than %d bytes of JSON (the limit); is %q the blixard output?", e.opts.MaxOutput, attr)
	case err == nil:
		return stdout.buf.Bytes(), nil
	case errors.Is(cause, errTimeout):
		return nil, fail(Timeout, context.DeadlineExceeded, "evaluation did not finish within %v, so nix and everything it started were killed; look for an endless loop in the flake, or raise the evaluation timeout if it is only slow", e.opts.Timeout)
	case ctx.Err() != nil:
		return nil, contextError(ctx, flakeRef, attr, context.Cause(ctx))
	}

	msg := cleanMessage(stderr.String())
	if msg == "" {
		msg = fmt.Sprintf("nix exited with %v and printed no error", err)
	}
	ee := fail(EvalFailed, err, "%s", msg)
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ee.retry = true // killed from outside (e.g. out of memory): may work next time
		}
	} else {
		ee.retry = true // not an exit status: an I/O error of ours
	}
	return nil, ee
}

// cappedBuffer keeps up to max bytes; past that it discards everything,
// sets overflowed and calls overflow once (which kills nix).
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
	b := t.b
	if len(b) > t.max {
		b, t.dropped = b[len(b)-t.max:], true
	}
	if t.dropped {
		// Start at a line boundary so no line is cut.
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
		return "(earlier output dropped)\n" + string(b)
	}
	return string(b)
}
