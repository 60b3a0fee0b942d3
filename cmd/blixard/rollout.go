package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/reconciler"
)

// newRolloutCommands are the GitOps controls: `rollout status`, `suspend`,
// `resume`, `rollback` and `wait`.
func newRolloutCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{newRolloutCommand(g), newSuspendCommand(g), newResumeCommand(g), newRollbackCommand(g), newWaitCommand(g)}
}

func newRolloutCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Show rolling updates (VMs with an update block)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status [VM]",
		Short: "Show each VM's rolling update: waves, health, deadline, errors; and whether the cluster follows its ref",
		Long: strings.TrimSpace(`
A VM whose flake entry has an update block ({ maxUnavailable; canary;
minHealthySeconds; progressDeadline; autoRevert; }) moves to a revision that
changes its runner or resources in waves: the first canary instances alone,
then at most maxUnavailable at a time, each wave healthy for
minHealthySeconds before the next starts. A wave not healthy within
progressDeadline, or crash-looping, fails the rollout; with autoRevert the VM
goes back to the revision it was healthy on and the failed commit is not tried
again until a new commit changes the VM.

This shows, per VM, the rollout in progress or the last one: its phase,
commits, instances updated, the current wave with each instance's health, its
deadline, what the leader does next, the error and the reverted commits; and
whether the cluster follows its tracked ref (see suspend, resume, rollback),
with the fetched commit waiting while it does not.` + readsNote),
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			path := "/v1/rollouts"
			if len(args) == 1 {
				path += "/" + url.PathEscape(args[0])
			}
			var v api.RolloutsView
			fresh, err := c.Get(cmd.Context(), path, &v)
			if err != nil {
				return err
			}
			v.Freshness = fresh
			if g.json {
				api.WriteStale(g.stderr, fresh)
			}
			return g.show(v, func(w io.Writer) error { return api.WriteRollouts(w, v, time.Now()) })
		},
	})
	return cmd
}

func newSuspendCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "suspend",
		Short: "Stop following the tracked ref: pushes are fetched and listed as pending, not applied",
		Long: `Stop following the tracked ref, for every node (replicated). The leader keeps
fetching; ` + "`blixard rollout status`" + ` lists the newest fetched commit as pending.
Nothing new is applied until ` + "`blixard resume`" + `. A rollout in progress goes on:
it belongs to the revision already applied. Needs the operate role.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return followingCommand(g, cmd, func(ctx context.Context, c *api.Client) (api.FollowingAnswer, error) { return c.Suspend(ctx) })
		},
	}
}

func newResumeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume",
		Short: "Follow the tracked ref again (after suspend or rollback): the newest fetched commit is applied",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return followingCommand(g, cmd, func(ctx context.Context, c *api.Client) (api.FollowingAnswer, error) { return c.Resume(ctx) })
		},
	}
}

func newRollbackCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback [REVISION]",
		Short: "Apply an earlier revision's spec and suspend following until resume",
		Long: `Apply the spec of an earlier revision and suspend following the tracked ref
until ` + "`blixard resume`" + `. REVISION is a revision number (` + "`blixard history`" + `) or a
commit (at least 7 hex digits: its newest revision). Without it: the previous
revision, the newest one before the running revision whose commit differs
(while rolled back already, before the rollback's revision, so rolling back
again goes further back). The leader evaluates that commit again and commits
its plan; VMs with an update block move to it in waves. Needs the operate role.`,
		Example: `  blixard rollback            # the previous revision
  blixard rollback 42         # revision 42
  blixard rollback 3f2c9ab    # the newest revision of that commit
  blixard resume              # back to the head of the tracked ref`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rev := ""
			if len(args) == 1 {
				rev = args[0]
			}
			return followingCommand(g, cmd, func(ctx context.Context, c *api.Client) (api.FollowingAnswer, error) { return c.Rollback(ctx, rev) })
		},
	}
}

// followingCommand runs suspend, resume or rollback and shows the answer.
func followingCommand(g *globals, cmd *cobra.Command, call func(context.Context, *api.Client) (api.FollowingAnswer, error)) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	out, err := call(cmd.Context(), c)
	if err != nil {
		return err
	}
	return g.show(out, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "%s (see `blixard rollout status`)\n", out.Message)
		return err
	})
}

// Defaults of `blixard wait`.
const (
	defaultWaitTimeout = 5 * time.Minute
	defaultWaitPoll    = time.Second
)

// waitResult is what `blixard wait --json` prints.
type waitResult struct {
	reconciler.Convergence
	// TimedOut: --timeout passed before the commit converged or failed.
	TimedOut bool `json:"timedOut,omitempty"`
	// Waited is how long it waited, in seconds.
	Waited float64 `json:"waited"`
}

func newWaitCommand(g *globals) *cobra.Command {
	var commit string
	var timeout, poll time.Duration
	cmd := &cobra.Command{
		Use:   "wait",
		Short: "Wait until every instance runs a commit and is healthy (for CI after git push)",
		Long: `Wait until the cluster runs --commit (default: the running revision's commit)
on every instance, healthy, with no rollout in progress.

Exit code 0: converged. 1: the commit failed — a rollout of it failed or was
reverted, its evaluation failed for good, or its signature was refused —, or
--timeout passed (a commit that is not applied, or no longer, is waited for: a
fetch, a rollback or a resume may still apply it), or the cluster could not be
asked.
Progress goes to stderr (one line whenever it changes); the result to stdout
(with --json, as JSON). An unreachable node or a missing quorum is retried
until --timeout. While following is suspended the commit is not applied, and
wait says so and waits for ` + "`blixard resume`" + ` or --timeout.`,
		Example: `  git push && blixard wait --commit "$(git rev-parse HEAD)" --timeout 10m`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if commit != "" && !isHexCommit(commit) {
				return fmt.Errorf("--commit %q: want a commit SHA (at least 7 hex digits)", commit)
			}
			if timeout <= 0 || poll <= 0 {
				return fmt.Errorf("--timeout %s and --poll %s: want positive durations such as 5m and 1s", timeout, poll)
			}
			c, err := g.clientWithTimeout(min(api.DefaultClientTimeout, timeout))
			if err != nil {
				return err
			}
			res, err := waitFor(cmd.Context(), c, commit, timeout, poll, g.stderr)
			if err != nil {
				return err
			}
			if err := g.show(res, func(w io.Writer) error {
				if res.TimedOut {
					fmt.Fprintf(w, "timed out after %s: ", timeout)
				}
				return api.WriteConvergence(w, res.Convergence)
			}); err != nil {
				return err
			}
			if res.State != reconciler.Converged {
				return exitCode(exitError)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&commit, "commit", "", "the commit to wait for: a SHA or a prefix of at least 7 hex digits (default: the running revision's)")
	cmd.Flags().DurationVar(&timeout, "timeout", defaultWaitTimeout, "give up (exit 1) after this long")
	cmd.Flags().DurationVar(&poll, "poll", defaultWaitPoll, "how often to ask the cluster")
	return cmd
}

// isHexCommit: s may name a commit (7 to 64 lower-case hex digits).
func isHexCommit(s string) bool {
	if len(s) < 7 || len(s) > 64 {
		return false
	}
	return strings.Trim(s, "0123456789abcdef") == ""
}

// waitFor polls the convergence of commit ("" for the running revision's,
// fixed at the first answer) every poll until it converged or failed, or
// timeout passed, writing a progress line to progress whenever the state
// changes. Failing calls (a node restarting, no quorum) are retried until
// the timeout; the error is returned only when ctx ended.
func waitFor(ctx context.Context, c *api.Client, commit string, timeout, poll time.Duration, progress io.Writer) (waitResult, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var last waitResult
	lastLine, lastErr := "", ""
	for {
		v, err := c.Converge(ctx, commit)
		switch {
		case ctx.Err() != nil:
			return last, ctx.Err()
		case err != nil:
			if msg := err.Error(); msg != lastErr {
				fmt.Fprintf(progress, "%s  asking the cluster failed (retrying): %v\n", time.Now().Format(time.TimeOnly), err)
				lastErr = msg
			}
			var apiErr *api.Error
			if errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500 {
				return last, err // a request the cluster refuses: retrying cannot help
			}
		default:
			lastErr = ""
			last.Convergence = v.Convergence
			if commit == "" || len(v.Commit) > len(commit) {
				commit = v.Commit // follow this commit, not whatever comes next
			}
			line := fmt.Sprintf("%s: %s", v.State, v.Message)
			if len(v.Waiting) > 0 && v.State == reconciler.Progressing {
				var ws []string
				for _, h := range v.Waiting[:min(len(v.Waiting), 3)] {
					ws = append(ws, h.VM+" "+h.Status)
				}
				line += " (" + strings.Join(ws, "; ")
				if len(v.Waiting) > 3 {
					line += fmt.Sprintf("; %d more", len(v.Waiting)-3)
				}
				line += ")"
			}
			if line != lastLine {
				fmt.Fprintf(progress, "%s  commit %s: %s\n", time.Now().Format(time.TimeOnly), shortSHA(commit), line)
				lastLine = line
			}
		}
		last.Waited = time.Since(start).Seconds()
		if err == nil && last.State != reconciler.Progressing {
			return last, nil
		}
		wait := min(poll, time.Until(deadline))
		if wait <= 0 {
			last.TimedOut = true
			if last.State == "" {
				last.Commit, last.State, last.Message = commit, reconciler.Progressing, "no answer from the cluster: "+lastErr
			}
			return last, nil
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(wait):
		}
	}
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	if s == "" {
		return "(running)"
	}
	return s
}
