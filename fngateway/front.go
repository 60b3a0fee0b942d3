package fngateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/internal/stats"
)

// Front is a node's ingress listener's handler: a request goes to the
// ingress route or the function route that matches it (spec validation
// keeps routes distinct across both); when both match, the longer path
// prefix wins, as within either table. It records each function request's
// latency (arrival to the end of the answer) for [Front.Latency].
type Front struct {
	ingress *ingress.Server
	g       *Gateway

	mu  sync.Mutex
	lat map[string]*latencyRing // by function
}

// NewFront returns the handler serving in and g on one listener.
func NewFront(in *ingress.Server, g *Gateway) *Front {
	return &Front{ingress: in, g: g, lat: map[string]*latencyRing{}}
}

func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == AheadPath {
		f.g.serveAhead(w, r)
		return
	}
	ir, ierr := f.ingress.Table().Match(r.Host, r.URL.Path)
	fn, fok := f.g.cur.Load().match(r.Host, r.URL.Path)
	fpath := ""
	if fok {
		fr, _ := f.g.cur.Load().routes.Match(r.Host, r.URL.Path)
		fpath = fr.Path
	}
	if !UseFunction(ir, ierr, fpath, fok) {
		f.ingress.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	f.g.ServeHTTP(w, r)
	f.observe(fn.name, time.Since(start))
}

// UseFunction decides between an ingress match (route, err) and a
// function match (its path prefix, ok): the function when ingress has no
// route or a shorter prefix.
func UseFunction(ir ingress.Route, ierr error, fpath string, fok bool) bool {
	if !fok {
		return false
	}
	var ie *ingress.Error
	if ierr != nil && errors.As(ierr, &ie) && ie.Kind == ingress.NoRoute {
		return true
	}
	return len(fpath) > len(ir.Path)
}

// latencyWindow is how many request latencies per function the
// percentiles are over.
const latencyWindow = 1000

type latencyRing struct {
	d    []time.Duration
	next int
}

func (f *Front) observe(fn string, d time.Duration) {
	if m := f.g.o.Metrics; m != nil {
		m.ObserveRequest(fn, d)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.lat[fn]
	if r == nil {
		r = &latencyRing{}
		f.lat[fn] = r
	}
	if len(r.d) < latencyWindow {
		r.d = append(r.d, d)
		return
	}
	r.d[r.next] = d
	r.next = (r.next + 1) % latencyWindow
}

// Latency returns the p50 and p99 of function fn's last requests through
// this front (0 for none).
func (f *Front) Latency(fn string) (p50, p99 time.Duration) {
	f.mu.Lock()
	var ds []time.Duration
	if r := f.lat[fn]; r != nil {
		ds = slices.Clone(r.d)
	}
	f.mu.Unlock()
	return stats.Quantile(ds, 0.50), stats.Quantile(ds, 0.99)
}

// Serve serves the front on ln until ctx ends, with ingress's timeouts,
// then shuts down as ingress.Server.Serve does: requests still running
// get a few seconds. ln is closed.
func (f *Front) Serve(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           f,
		ReadHeaderTimeout: ingress.DefaultReadHeaderTimeout,
		IdleTimeout:       ingress.DefaultIdleTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving ingress and functions on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	f.g.CloseIdleConnections()
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving ingress and functions on %s: %w", ln.Addr(), err)
	}
	return nil
}
