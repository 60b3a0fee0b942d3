package nixeval

import (
	"fmt"

	"github.com/blixard/blixard/spec"
)

// ErrorKind classifies an evaluation failure.
type ErrorKind string

const (
	// EvalFailed: nix reported an error (syntax error, throw, infinite
	// recursion, missing attribute, git fetch failure, …). Fix the flake.
	EvalFailed ErrorKind = "EvalFailed"
	// InvalidSpec: nix evaluated, but the value does not follow schema v1;
	// Error.Err is the *spec.Error listing every problem with its path.
	InvalidSpec ErrorKind = "InvalidSpec"
	// Timeout: nix did not finish within Options.Timeout (or the caller's
	// deadline) and was killed, with everything it started when the run had
	// a cgroup (the log says what was killed; Err, a *nixrun.Error, too).
	// Transient: never cached.
	Timeout ErrorKind = "Timeout"
	// Canceled: the caller's context was canceled. Transient: never cached.
	Canceled ErrorKind = "Canceled"
	// OutputTooLarge: nix printed more than Options.MaxOutput bytes of JSON.
	OutputTooLarge ErrorKind = "OutputTooLarge"
	// NixNotFound: the nix binary could not be run, or not as
	// Options.User. Transient: never cached.
	NixNotFound ErrorKind = "NixNotFound"
	// MemoryLimit: the evaluation needed more memory than
	// Options.MaxMemory. Not transient: the same commit needs as much
	// again.
	MemoryLimit ErrorKind = "MemoryLimit"
)

// Error is an evaluation failure, as a value.
type Error struct {
	Kind     ErrorKind
	FlakeRef string
	Attr     string
	// Message is what a user reads: nix's own error (with file:line and the
	// code excerpt, minus warnings, colours and the --show-trace hint), or
	// the schema problems one per line, or what was exceeded and killed.
	Message string
	// Err is the underlying error, if any: a *spec.Error for InvalidSpec,
	// the *nixrun.Error of a failed nix run (which wraps the
	// *exec.ExitError, context.Canceled or context.DeadlineExceeded), ….
	Err error

	retry bool // failed for a reason outside the flake (nix killed by a signal): do not cache
}

func (e *Error) Error() string {
	target := e.FlakeRef + "#" + e.Attr
	switch e.Kind {
	case InvalidSpec:
		return fmt.Sprintf("%s is not a valid blixard cluster (schema v%d); fix these attributes in the flake:\n%s", target, spec.SchemaVersion, e.Message)
	case EvalFailed:
		return fmt.Sprintf("nix eval %s failed:\n%s", target, e.Message)
	default:
		return fmt.Sprintf("nix eval %s: %s", target, e.Message)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the same evaluation may succeed if run again (a
// timeout, nix missing or killed): callers should retry later rather than
// treat the commit as broken.
func (e *Error) Temporary() bool { return e.transient() }

// transient reports whether the same evaluation may succeed if run again,
// so its result must not be cached.
func (e *Error) transient() bool {
	if e.retry {
		return true
	}
	switch e.Kind {
	case Timeout, Canceled, NixNotFound:
		return true
	}
	return false
}
