package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// group runs the daemon's long-lived goroutines and waits for them.
type group struct{ wg sync.WaitGroup }

func (g *group) Go(fn func()) {
	g.wg.Add(1)
	go func() { defer g.wg.Done(); fn() }()
}

func (g *group) Wait() { g.wg.Wait() }

// appliedSignal returns a replica OnApply hook and the channel it signals
// (coalesced, never blocking Raft's apply loop).
func appliedSignal() (func(uint64), <-chan struct{}) {
	ch := make(chan struct{}, 1)
	return func(uint64) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}, ch
}

// forwardApplied calls notify for every applied-entry signal until ctx
// ends, so the agent acts on a new plan at once rather than at its resync.
func forwardApplied(ctx context.Context, applied <-chan struct{}, notify func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-applied:
			notify()
		}
	}
}

// serveAPI serves h on ln until ctx ends, then shuts the server down
// gracefully; a failing server cancels the daemon.
func serveAPI(ctx context.Context, g *group, ln net.Listener, h http.Handler, log *slog.Logger, cancel context.CancelFunc) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("API server stopped", "err", err)
			cancel()
		}
	})
	g.Go(func() {
		<-ctx.Done()
		sctx, done := context.WithTimeout(context.Background(), 5*time.Second)
		defer done()
		_ = srv.Shutdown(sctx)
	})
}
