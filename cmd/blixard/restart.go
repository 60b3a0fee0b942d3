package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
)

// newVMRestartCommand is `blixard vm restart NAME`: rolling by default.
func newVMRestartCommand(g *globals) *cobra.Command {
	var (
		allAtOnce bool
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "restart NAME",
		Short: "Restart a running VM's instances one at a time, each running again (and healthy) before the next",
		Long: `Restart an instance (web-1), or every instance of a declared VM (web) one at a
time: each is restarted, then the next waits until it runs again on its node
and, when its VM has a health check, is healthy. Progress goes to stderr; the
outcome to stdout (--json: one object). An instance that does not run again
within --instance-timeout stops the restart there (exit 1): the instances
after it are left as they were.

The rolling is done by this command, over the restart call of each instance:
the cluster keeps no state of it, so Ctrl-C stops it between two instances
(or while one is awaited) and nothing resumes it. --all-at-once asks the
cluster to restart every instance at once and returns without waiting.

A VM kept stopped (autostart = false or ` + "`blixard vm stop`" + `) is refused: start it
with ` + "`blixard vm start`" + `.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := g.client()
			if err != nil {
				return err
			}
			if allAtOnce {
				out, err := client.SetVMRunState(cmd.Context(), args[0], api.VMRestart)
				if err != nil {
					return err
				}
				return g.show(out, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "%s (see `blixard status`)\n", out.Message)
					return err
				})
			}
			res, err := client.RestartRolling(cmd.Context(), args[0], api.RollingOptions{InstanceTimeout: timeout,
				Progress: func(s api.RestartStep, i, n int) { writeRestartStep(g.stderr, s, i, n) }})
			if len(res.Instances) > 0 {
				// The outcome also when it failed: which instances were restarted.
				if serr := g.show(res, func(w io.Writer) error { return writeRollingRestart(w, res) }); serr != nil && err == nil {
					err = serr
				}
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&allAtOnce, "all-at-once", false, "restart every instance at once and return without waiting (the cluster's own restart)")
	cmd.Flags().DurationVar(&timeout, "instance-timeout", 5*time.Minute, "how long to wait for each instance to run again (and be healthy) before giving up")
	return cmd
}

// writeRestartStep is a progress line on stderr.
func writeRestartStep(w io.Writer, s api.RestartStep, i, n int) {
	switch s.Status {
	case api.RestartRestarting:
		fmt.Fprintf(w, "[%d/%d] restarting %s on node %d\n", i+1, n, s.Instance, s.Node)
	case api.RestartRestarted:
		fmt.Fprintf(w, "[%d/%d] %s runs again on node %d after %.1fs (restart %d)\n", i+1, n, s.Instance, s.Node, s.Seconds, s.Restart)
	case api.RestartFailed:
		fmt.Fprintf(w, "[%d/%d] %s: %s\n", i+1, n, s.Instance, s.Message)
	}
}

// writeRollingRestart is the outcome: one line per instance.
func writeRollingRestart(w io.Writer, r api.RollingRestart) error {
	for _, s := range r.Instances {
		line := fmt.Sprintf("%s: %s", s.Instance, s.Status)
		switch s.Status {
		case api.RestartRestarted:
			line += fmt.Sprintf(" on node %d in %.1fs", s.Node, s.Seconds)
		case api.RestartFailed:
			line += " (" + s.Message + ")"
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}
