package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/replicated"
)

func newEventsCommand(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "List the cluster's recent events, oldest first, with who asked for each change; -f follows",
		Long: strings.TrimSpace(`The replicated event log (the last 200 events): nodes registered and changed, plans committed, failures,
tokens and members; a change made through the API names who made it.

With -f (--follow) it prints the log, then every new event as it commits, until
Ctrl-C; with --json one JSON object per line. It long-polls the node (GET
/v1/events?after=INDEX&wait=30s) and, when the node goes away, tries again
every few seconds, saying so on stderr.` + readsNote),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if !follow {
				var evs []replicated.Event
				fresh, err := c.Get(cmd.Context(), "/v1/events", &evs)
				if err != nil {
					return err
				}
				if g.json {
					api.WriteStale(g.stderr, fresh)
				}
				return g.show(evs, func(w io.Writer) error {
					api.WriteStale(w, fresh)
					return api.WriteEvents(w, evs)
				})
			}
			return followEvents(cmd.Context(), c, g, api.DefaultEventWait)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they commit, until Ctrl-C")
	return cmd
}

// eventsClient is what following needs of the API client.
type eventsClient interface {
	EventsAfter(ctx context.Context, after uint64, wait time.Duration) (api.EventsPage, error)
}

// followEvents prints the event log, then new events as they commit, until
// ctx ends (Ctrl-C: exit 0). A failed poll is made again after a pause
// that grows to 10s; an answer that refuses the caller (a 4xx other than
// 429) ends the command.
func followEvents(ctx context.Context, c eventsClient, g *globals, wait time.Duration) error {
	var (
		after     uint64
		printed   bool // the header (text) or the stale warning
		failures  int
		lastStale bool
	)
	enc := json.NewEncoder(g.stdout)
	enc.SetEscapeHTML(false) // "node 1: ready -> down" stays readable
	for {
		page, err := c.EventsAfter(ctx, after, wait)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code >= 400 && ae.Code < 500 && ae.Code != http.StatusTooManyRequests {
				return err
			}
			failures++
			pause := min(time.Duration(failures)*time.Second, 10*time.Second)
			if failures == 1 || failures%10 == 0 {
				fmt.Fprintf(g.stderr, "blixard events -f: %v; trying again every %v\n", err, pause)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(pause):
			}
			continue
		}
		if failures > 0 {
			fmt.Fprintln(g.stderr, "blixard events -f: following again")
			failures = 0
		}
		// A stale answer is said once per stretch of them, on stderr: the
		// events themselves go on stdout.
		if page.Stale && !lastStale {
			api.WriteStale(g.stderr, page.Freshness)
		}
		lastStale = page.Stale
		if page.Gap {
			fmt.Fprintf(g.stderr, "WARNING: events after index %d may have been pushed out of the bounded event log (%d events) before they were read\n",
				after, replicated.MaxEvents)
		}
		if !g.json && !printed {
			fmt.Fprintln(g.stdout, eventLine("INDEX", "TIME", "KIND", "MESSAGE"))
			printed = true
		}
		for _, e := range page.Events {
			if g.json {
				if err := enc.Encode(e); err != nil {
					return err
				}
			} else if _, err := fmt.Fprintln(g.stdout, eventLine(fmt.Sprint(e.Index), e.At.Local().Format(time.RFC3339), e.Kind,
				strings.ReplaceAll(e.Message, "\n", " "))); err != nil {
				return err
			}
			after = max(after, e.Index)
		}
	}
}

// eventLine is one line of `events -f`: fixed columns, since rows arrive
// one by one and cannot be aligned as a table.
func eventLine(index, at, kind, msg string) string {
	return fmt.Sprintf("%-8s  %-25s  %-18s  %s", index, at, kind, msg)
}
