package nixrun

import (
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
)

// Kind classifies a failed run.
type Kind string

const (
	// NotFound: the program could not be found or started (Error.Err is a
	// *UserError when it could not run as Runner.User).
	NotFound Kind = "NotFound"
	// Timeout: the run did not finish within Command.Timeout or the
	// caller's deadline; Error.Stopped says what was killed.
	Timeout Kind = "Timeout"
	// Canceled: the caller's context was canceled; Error.Stopped says what
	// was killed.
	Canceled Kind = "Canceled"
	// OutputTooLarge: the program printed more than Command.MaxStdout
	// bytes on stdout; Error.Stopped says what was killed.
	OutputTooLarge Kind = "OutputTooLarge"
	// Failed: the program exited with a non-zero status (Error.Message is
	// its error), or reading its output failed.
	Failed Kind = "Failed"
	// Killed: a signal from outside this package (the OOM killer, an
	// operator) ended the program.
	Killed Kind = "Killed"
	// MemoryLimit: the program ran out of memory under Command.MaxMemory
	// (Error.Err is its exit status). Not temporary: the same command needs
	// as much again.
	MemoryLimit Kind = "MemoryLimit"
)

// Error is a failed run, as a value.
type Error struct {
	Kind Kind
	// Cmdline is the program and its arguments as a shell would read
	// them, each argument shortened to its first line and 200 bytes.
	Cmdline string
	// Message is what a user reads. For Failed and Killed it is the end of
	// nix's stderr (its own error, with file and line), without colours,
	// warnings and the --show-trace hint; "" when nix printed nothing.
	// For the other kinds it says what happened and, when the run had
	// started, what was killed.
	Message string
	// Stopped says what was killed to end a run early (Timeout, Canceled,
	// OutputTooLarge): "killed nix and every process it started (cgroup
	// …)", or that only nix's process group was killed. "" when nothing
	// had started.
	Stopped string
	// Err is the underlying error: the *exec.ExitError, the cause of the
	// caller's context, context.DeadlineExceeded for Command.Timeout, or
	// the error of finding or starting the program.
	Err error
}

func (e *Error) Error() string {
	switch {
	case e.Kind != Failed && e.Kind != Killed:
		return e.Cmdline + ": " + e.Message
	case e.Message == "":
		return fmt.Sprintf("%s: %v and printed no error", e.Cmdline, e.Err)
	default:
		return fmt.Sprintf("%s: %v:\n%s", e.Cmdline, e.Err, e.Message)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the same command may succeed if run again:
// after a timeout, a cancellation, a kill from outside, a missing program
// or an I/O error of ours. A non-zero exit status, too much output or too
// much memory is the command's own result.
func (e *Error) Temporary() bool {
	switch e.Kind {
	case NotFound, Timeout, Canceled, Killed:
		return true
	case Failed:
		var exitErr *exec.ExitError
		return !errors.As(e.Err, &exitErr)
	}
	return false
}

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)`)

// cleanMessage turns nix's stderr into the message a user needs: colour
// codes, warnings (e.g. "warning: Git tree '…' is dirty", the Boehm GC's
// "GC Warning: Failed to expand heap", repeated for every attempt), errors
// nix itself ignored and the --show-trace hint removed; errors, their
// file:line and code excerpts, and any preceding git/trace/build output
// kept.
func cleanMessage(stderr string) string {
	stderr = ansiRE.ReplaceAllString(stderr, "")
	stderr = strings.ReplaceAll(stderr, "\r\n", "\n")
	var keep []string
	gcWarning := false
	for _, line := range strings.Split(stderr, "\n") {
		// The GC continues some warnings on a line of their own, indented.
		continued := gcWarning && strings.HasPrefix(line, "\t")
		gcWarning = strings.HasPrefix(line, "GC Warning: ") || continued
		line = strings.TrimRight(line, " \t\r")
		switch {
		case gcWarning, strings.HasPrefix(line, "warning: "), strings.HasPrefix(line, "error (ignored): "):
			continue
		case strings.TrimSpace(line) == "(use '--show-trace' to show detailed location information)":
			continue
		}
		keep = append(keep, line)
	}
	return strings.Trim(strings.Join(keep, "\n"), "\n")
}

// shellWord quotes s for a shell when it needs quoting, shortened to its
// first line and max bytes (nixeval's --apply function alone is a page of
// Nix).
func shellWord(s string, max int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
		s = s[:i] + "…"
	}
	if len(s) > max {
		s = strings.ToValidUTF8(s[:max], "") + "…"
	}
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=+,@#%?&", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func cmdline(program string, args []string) string {
	words := []string{shellWord(program, 200)}
	for _, a := range args {
		words = append(words, shellWord(a, 200))
	}
	return strings.Join(words, " ")
}
