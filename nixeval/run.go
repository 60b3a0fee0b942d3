package nixeval

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/blixard/blixard/nixrun"
)

// nixConfig is appended to the caller's NIX_CONFIG: no build sandbox (eval
// only builds for import-from-derivation, and hosts may lack user
// namespaces) and no substituters (an unreachable cache costs seconds).
const nixConfig = "sandbox = false\nsubstituters ="

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

// run runs nix eval once and returns what it printed on stdout. On timeout,
// cancellation or too much output nixrun kills nix and what it started.
func (e *Evaluator) run(ctx context.Context, flakeRef, attr string) ([]byte, *Error) {
	fail := func(kind ErrorKind, err error, format string, args ...any) *Error {
		return &Error{Kind: kind, FlakeRef: flakeRef, Attr: attr, Err: err, Message: fmt.Sprintf(format, args...)}
	}
	runner := nixrun.Runner{Nix: e.opts.Nix, Env: e.opts.Env, Logger: e.log}
	out, err := runner.Run(ctx, nixrun.Command{
		Program:     "nix",
		Args:        nixArgs(flakeRef, attr),
		Timeout:     e.opts.Timeout,
		MaxStdout:   e.opts.MaxOutput,
		MaxStderr:   e.opts.MaxStderr,
		ExtraConfig: nixConfig,
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
	switch re.Kind {
	case nixrun.NotFound:
		return nil, fail(NixNotFound, re, "cannot run nix (%v); install Nix (on a development machine: scripts/setup.sh) or configure the path of the nix binary", re.Err)
	case nixrun.OutputTooLarge:
		return nil, fail(OutputTooLarge, re, "nix printed more than %d bytes of JSON (the limit); is %q the blixard output?", e.opts.MaxOutput, attr)
	case nixrun.Timeout, nixrun.Canceled:
		if ctx.Err() == nil {
			return nil, fail(Timeout, re, "evaluation did not finish within %v, so %s; look for an endless loop in the flake, or raise the evaluation timeout if it is only slow", e.opts.Timeout, re.Stopped)
		}
		ee := contextError(ctx, flakeRef, attr, context.Cause(ctx))
		if re.Stopped != "" {
			ee.Message += "; " + re.Stopped
		}
		ee.Err = re
		return nil, ee
	}
	msg := re.Message
	if msg == "" {
		msg = fmt.Sprintf("nix exited with %v and printed no error", re.Err)
	}
	ee := fail(EvalFailed, re, "%s", msg)
	// Killed by a signal from outside (e.g. out of memory) or an I/O error
	// of ours, or a source nix could not fetch: may work next time.
	ee.retry = re.Temporary() || fetchFailure(msg)
	return nil, ee
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
