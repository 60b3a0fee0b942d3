// Command blixard is the Blixard node daemon and its command-line client.
//
// This package only parses flags and configuration files into a
// node.Config (serve, dev) or API calls (every other command), and formats
// their answers. The node's assembly lives in node, the HTTP API and its
// client in api, planning in reconciler.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
)

// Exit codes that scripts can rely on (as `terraform plan -detailed-exitcode`).
const (
	exitOK      = 0
	exitError   = 1
	exitChanges = 2
)

// exitCode lets a command end with a code other than 0/1 without printing an error.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// globals are the flags every command takes.
type globals struct {
	server   string
	json     bool
	logLevel string
	stdout   io.Writer
	stderr   io.Writer
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	var ec exitCode
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ec):
		return int(ec)
	default:
		fmt.Fprintf(stderr, "blixard: %v\n", err)
		return exitError
	}
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "blixard",
		Short: "GitOps reconciler for microVMs on NixOS hosts",
		Long: `Blixard follows a git repository holding a cluster flake, evaluates the desired
microVMs with nix, places them on the cluster's nodes and commits the plan
through Raft; an agent on every node converges it.

Exit codes: 0 success (plan/diff: no changes), 1 error, 2 plan/diff found changes.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	defServer := os.Getenv("BLIXARD_SERVER")
	if defServer == "" {
		defServer = "http://127.0.0.1:7070"
	}
	root.PersistentFlags().StringVar(&g.server, "server", defServer, "API address of any Blixard node (env BLIXARD_SERVER)")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print machine-readable JSON")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "", "log level: debug, info, warn, error (default: info for serve, warn otherwise)")
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		if g.logLevel == "" {
			// Client commands and dev print their own output; the daemon logs.
			g.logLevel = "warn"
			if cmd.Name() == "serve" {
				g.logLevel = "info"
			}
		}
	}
	root.AddCommand(newServeCommand(g), newDevCommand(g), newPlanCommand(g), newNodeCommand(g), newVMCommand(g), newLogsCommand(g))
	root.AddCommand(newReadCommands(g)...)
	return root
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(g.logLevel))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level})), nil
}

func (g *globals) client() *api.Client { return api.NewClient(g.server) }

// isTerminal reports whether w is a terminal, for colour.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	if os.Getenv("NO_COLOR") != "" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
