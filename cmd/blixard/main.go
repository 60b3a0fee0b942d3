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
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/node"
)

// Exit codes that scripts can rely on (as `terraform plan -detailed-exitcode`).
const (
	exitOK      = 0
	exitError   = 1
	exitChanges = 2
	// exitDataLost: `serve` found this node's Raft data lost or corrupt and
	// killed its VMs; restarting cannot help (the NixOS module sets
	// RestartPreventExitStatus to it). Replace the node (docs/reliability.md).
	exitDataLost = 3
)

// exitCode lets a command end with a code other than 0/1 without printing an error.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// globals are the flags every command takes.
type globals struct {
	server   string
	creds    api.Credentials
	json     bool
	logLevel string
	// timeout bounds one API call (`plan --commit` takes planTimeout
	// unless --timeout is given).
	timeout time.Duration
	stdout  io.Writer
	stderr  io.Writer
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
	case errors.Is(err, node.ErrDataLost):
		fmt.Fprintf(stderr, "blixard: %v\n", err)
		return exitDataLost
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

Exit codes: 0 success (plan/diff: no changes), 1 error, 2 plan/diff found changes,
3 serve: this node's Raft data is lost or corrupt (replace the node; see docs/reliability.md).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	defServer := os.Getenv("BLIXARD_SERVER")
	if defServer == "" {
		defServer = "127.0.0.1:7070"
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", defServer, "API address of any Blixard node: HOST:PORT (HTTPS with --ca, else plain HTTP) or a URL (env BLIXARD_SERVER)")
	pf.StringVar(&g.creds.CAFile, "ca", os.Getenv("BLIXARD_CA"), "the cluster CA's ca.crt, to check the server; turns on HTTPS (env BLIXARD_CA)")
	pf.StringVar(&g.creds.CertFile, "cert", os.Getenv("BLIXARD_CERT"), "your client certificate, from `blixard cert issue --user` (env BLIXARD_CERT)")
	pf.StringVar(&g.creds.KeyFile, "key", os.Getenv("BLIXARD_KEY"), "the key of --cert (env BLIXARD_KEY)")
	pf.StringVar(&g.creds.TokenFile, "token-file", os.Getenv("BLIXARD_TOKEN_FILE"), "file holding a bearer token, from `blixard token create` (env BLIXARD_TOKEN_FILE)")
	pf.BoolVar(&g.json, "json", false, "print machine-readable JSON")
	pf.DurationVar(&g.timeout, "timeout", api.DefaultClientTimeout, "limit for one call to the API: reads answer at once (marked stale without a quorum), a change not committed "+
		"by then may still be (plan --commit: "+planTimeout.String()+" unless given, as the node evaluates first)")
	pf.StringVar(&g.logLevel, "log-level", "", "log level: debug, info, warn, error (default: info for serve, warn otherwise)")
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		if g.logLevel == "" {
			// Client commands and dev print their own output; the daemon logs.
			g.logLevel = "warn"
			if cmd.Name() == "serve" {
				g.logLevel = "info"
			}
		}
	}
	root.AddCommand(newServeCommand(g), newDevCommand(g), newPlanCommand(g), newNodeCommand(g), newVMCommand(g), newLogsCommand(g),
		newTokenCommand(g), newCACommand(g), newCertCommand(g))
	root.AddCommand(newReadCommands(g)...)
	return root
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(g.logLevel))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	if level <= slog.LevelDebug {
		// Debug logs are read to break a cold start's milliseconds down:
		// their times carry microseconds.
		opts.ReplaceAttr = microsecondTimes
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
}

// microsecondTimes writes a record's time with microseconds (the text
// handler's default has milliseconds).
func microsecondTimes(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime {
		return slog.String(slog.TimeKey, a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
	}
	return a
}

// client is a client of --server with the credentials of --ca, --cert,
// --key and --token-file, whose calls last at most --timeout.
func (g *globals) client() (*api.Client, error) {
	return g.clientWithTimeout(g.timeout)
}

// clientWithTimeout is client with calls lasting at most timeout.
func (g *globals) clientWithTimeout(timeout time.Duration) (*api.Client, error) {
	if timeout <= 0 {
		return nil, fmt.Errorf("--timeout %v: want a positive duration such as 10s", timeout)
	}
	o, err := g.creds.Options()
	if err != nil {
		return nil, err
	}
	o.Timeout = timeout
	return api.NewClient(g.server, o)
}

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
