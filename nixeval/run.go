package nixeval

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/blixard/blixard/nixrun"
	"github.com/blixard/blixard/progress"
)

// nixConfig is appended to the caller's NIX_CONFIG, after it, so it wins
// over the caller's settings, nix.conf and the flake's own nixConfig. A
// flake is code from whoever can push; evaluating it must build and run
// nothing, and read nothing of the host beyond what its inputs name:
//
//   - allow-import-from-derivation = false: no builder runs during
//     evaluation (a builder is a program of the flake's choosing, run as
//     nix's user, without a sandbox on hosts that lack one). apply.nix
//     reads only drvPath and outPath, which need no build; the nodes build
//     the runners later.
//   - max-jobs = 0 and builders = (no remote builders): should anything
//     still want a build, nix refuses it rather than running it.
//   - pure-eval = true: no absolute paths outside the flake, no
//     builtins.getEnv, currentTime or storePath, even when the caller's
//     nix.conf turned pure evaluation off.
//   - allow-unsafe-native-code-during-evaluation = false: no
//     builtins.exec.
//   - accept-flake-config = false: the flake's nixConfig cannot change
//     these.
//   - substituters = (none): an unreachable cache costs seconds, and
//     evaluation fetches nothing from caches.
const nixConfig = `allow-import-from-derivation = false
max-jobs = 0
builders =
pure-eval = true
allow-unsafe-native-code-during-evaluation = false
accept-flake-config = false
substituters =`

// userEnv returns what nix's environment gets when it evaluates as another user
// (Options.User): nix's git fetcher reads the mirror, which that user does
// not own, and git refuses repositories of other owners unless told
// otherwise. The evaluation user runs no code of the repository (hooks,
// filters) since nix only fetches from it.
func userEnv() []string {
	return []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=safe.directory", "GIT_CONFIG_VALUE_0=*"}
}

// nixArgs is the nix command line evaluating flakeRef#attr through the
// apply function, in store ("" for nix's default).
func nixArgs(flakeRef, attr, store string) []string {
	args := []string{"--extra-experimental-features", "nix-command flakes", "eval"}
	if store != "" {
		args = append(args, "--store", store)
	}
	return append(args,
		"--json", "--no-write-lock-file",
		"--apply", applyFunction,
		flakeRef+"#"+attr,
	)
}

// run runs nix eval once and returns what it printed on stdout. On timeout,
// cancellation or too much output nixrun kills nix and what it started.
func (e *Evaluator) run(ctx context.Context, flakeRef, attr string) ([]byte, *Error) {
	fail := func(kind ErrorKind, err error, format string, args ...any) *Error {
		return &Error{Kind: kind, FlakeRef: flakeRef, Attr: attr, Err: err, Message: fmt.Sprintf(format, args...)}
	}
	runner := nixrun.Runner{Nix: e.opts.Nix, Env: e.opts.Env, Logger: e.log, User: e.opts.User}
	if e.opts.User != "" {
		runner.Env = append(userEnv(), e.opts.Env...)
	}
	out, err := runner.Run(ctx, nixrun.Command{
		Program:     "nix",
		Args:        nixArgs(flakeRef, attr, e.opts.Store),
		Timeout:     e.opts.Timeout,
		MaxStdout:   e.opts.MaxOutput,
		MaxStderr:   e.opts.MaxStderr,
		MaxMemory:   max(e.opts.MaxMemory, 0),
		ExtraConfig: nixConfig,
		// Whoever asked for this evaluation may show nix's latest line
		// (`blixard plan`: fetching inputs, traces).
		Lines: progress.From(ctx),
	})
	if err == nil {
		return out, nil
	}
	var re *nixrun.Error
	if !errors.As(err, &re) {
		ee := fail(EvalFailed, err, "%v", err)
		ee.retry = true // not nix's verdict on the flake
		return nil, ee
	}
	// Messages say what happened without the host's details (cgroup paths,
	// what exactly was killed): nixrun logs those for the operator, and
	// these messages reach whoever can read the cluster's status.
	if ue := (*nixrun.UserError)(nil); errors.As(re, &ue) {
		return nil, fail(NixNotFound, re, "cannot evaluate as user %s (%v); create that user, or configure another evaluation user", ue.User, ue.Err)
	}
	switch re.Kind {
	case nixrun.NotFound:
		return nil, fail(NixNotFound, re, "cannot run nix (%v); install Nix (on a development machine: scripts/setup.sh) or configure the path of the nix binary", re.Err)
	case nixrun.OutputTooLarge:
		return nil, fail(OutputTooLarge, re, "nix printed more than %d bytes of JSON (the limit); is %q the blixard output?", e.opts.MaxOutput, attr)
	case nixrun.MemoryLimit:
		return nil, fail(MemoryLimit, re, "evaluation exceeded the memory limit of %d MiB; look for a list, string or recursion in the flake "+
			"that grows without end, or raise the evaluation memory limit if the flake really needs more", e.opts.MaxMemory>>20)
	case nixrun.Timeout, nixrun.Canceled:
		if ctx.Err() == nil {
			return nil, fail(Timeout, re, "evaluation did not finish within %v and was stopped; look for an endless loop in the flake, or raise the evaluation timeout if it is only slow", e.opts.Timeout)
		}
		ee := contextError(ctx, flakeRef, attr, context.Cause(ctx))
		ee.Err = re
		return nil, ee
	}
	msg := re.Message
	if msg == "" {
		msg = fmt.Sprintf("nix exited with %v and printed no error", re.Err)
	}
	ee := fail(EvalFailed, re, "%s%s", msg, explain(msg))
	// Killed by a signal from outside (e.g. out of memory) or an I/O error
	// of ours, or a source nix could not fetch: may work next time.
	ee.retry = re.Temporary() || fetchFailure(msg)
	return nil, ee
}

// explain returns what blixard adds to nix's message when nix refused
// something blixard's evaluation settings forbid (nixConfig), so the
// flake's author learns why and what to do instead; "" otherwise.
func explain(msg string) string {
	switch {
	case strings.Contains(msg, "'allow-import-from-derivation' is disabled"):
		return "\n\nblixard evaluates flakes with import-from-derivation disabled: evaluation runs on the cluster's leader, " +
			"and a derivation built during evaluation would run a program of the flake's choosing there. " +
			"Use derivations as runners (or in them): the nodes build those after evaluation."
	case strings.Contains(msg, "in pure eval mode"), strings.Contains(msg, "in pure evaluation mode"):
		return "\n\nblixard always evaluates flakes in pure mode (--impure is not available): " +
			"refer to files of the flake (./file) or of its inputs, not to paths or the environment of the evaluating host."
	}
	return ""
}

// fetchFailures are nix's (and git's, curl's) words for "could not get the
// source", which say nothing about the flake itself: a commit the mirror
// does not have yet, an input behind a network that is down.
var fetchFailures = []string{
	"Cannot find Git revision",
	"unable to download",
	"unable to access",
	"Couldn't resolve host",
	"Could not resolve host",
	"Failed to connect",
	"Couldn't connect to server",
	"Connection refused",
	"Connection timed out",
	"Operation timed out",
	"Network is unreachable",
}

// fetchFailure reports whether nix's message says a source could not be
// fetched, so the failure is temporary (retried, never cached) rather than
// a verdict on the commit.
func fetchFailure(msg string) bool {
	for _, f := range fetchFailures {
		if strings.Contains(msg, f) {
			return true
		}
	}
	return false
}
