package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of [Options].
const (
	// DefaultDialTimeout bounds connecting to an instance: an instance
	// that does not accept within it is skipped like one that refuses.
	DefaultDialTimeout = 2 * time.Second
	// DefaultDownFor is how long an instance that refused a connection is
	// tried only after the others.
	DefaultDownFor = 5 * time.Second
	// DefaultReadHeaderTimeout bounds reading a request's header, so slow
	// clients do not hold connections; bodies have no bound (streams).
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout closes idle keep-alive connections, of clients
	// and to instances.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultListenRetry is how often ServeTCP tries again to listen on
	// the port of an entry it could not listen on.
	DefaultListenRetry = 5 * time.Second
	// shutdownGrace is how long Serve lets requests finish after its
	// context ended; their own contexts have ended too, so only the
	// writing of what they already have is left.
	shutdownGrace = 5 * time.Second
)

// Options configure a [Server]. The zero value is usable.
type Options struct {
	// DialTimeout bounds each connection attempt to an instance (default
	// DefaultDialTimeout). There is no bound on a whole request, so
	// streams and uploads run as long as both ends keep them open.
	DialTimeout time.Duration
	// DownFor is how long an instance that refused a connection is marked
	// down (default DefaultDownFor).
	DownFor time.Duration
	// ReadHeaderTimeout and IdleTimeout bound the clients' connections
	// (defaults DefaultReadHeaderTimeout, DefaultIdleTimeout).
	ReadHeaderTimeout, IdleTimeout time.Duration
	// TCPHost is the address ServeTCP listens on, with each TCP entry's
	// listenPort: the host of serve --ingress-addr ("": every address).
	TCPHost string
	// ListenRetry is how often ServeTCP retries a port it could not
	// listen on (default DefaultListenRetry).
	ListenRetry time.Duration
	// Now is the clock of the passive health checks (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Server is one node's ingress: an HTTP reverse proxy (it is an
// http.Handler; [Server.Serve] serves it) and TCP passthrough
// ([Server.ServeTCP]), both routing by the table given to
// [Server.Update]. Construct with [New]; it starts nothing.
type Server struct {
	o       Options
	log     *slog.Logger             // non-nil
	cur     atomic.Pointer[snapshot] // non-nil after New
	updates sync.Mutex               // serialises Update, so health carries over from the latest snapshot
	changed chan struct{}            // one pending wake-up for ServeTCP
	proxy   *httputil.ReverseProxy   // non-nil
	conns   *http.Transport          // connections to instances; non-nil
}

// New returns a server with an empty table: every request gets 404 until
// the first [Server.Update].
func New(o Options) *Server {
	setDefault(&o.DialTimeout, DefaultDialTimeout)
	setDefault(&o.DownFor, DefaultDownFor)
	setDefault(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDefault(&o.IdleTimeout, DefaultIdleTimeout)
	setDefault(&o.ListenRetry, DefaultListenRetry)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, log: o.Logger, changed: make(chan struct{}, 1)}
	s.cur.Store(newSnapshot(nil, nil))
	s.conns = InstanceTransport(o.DialTimeout, o.IdleTimeout)
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The transport picks the instance; the URL's host is only a
			// placeholder until then.
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "instance.invalid"
			// Rewrite mode dropped the client's X-Forwarded-* (they
			// cannot be trusted at the edge); these are ingress's own.
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host // instances see the host the client asked for
		},
		Transport:    &transport{s: s},
		ErrorHandler: s.proxyError,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// FlushInterval 0: ReverseProxy flushes at once whatever has no
		// length (streams, server-sent events), and buffers the rest.
	}
	return s
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Update makes t the routing table (nil: empty). It is atomic: a request
// or connection uses the table that was current when it arrived, to its
// end, so nothing in flight is dropped; new ones use t. TCP listeners
// follow t's TCP entries as soon as ServeTCP notices. The health learned
// about an address carries over to t. Safe for concurrent use.
func (s *Server) Update(t *Table) {
	s.updates.Lock()
	s.cur.Store(newSnapshot(t, s.cur.Load()))
	s.updates.Unlock()
	select {
	case s.changed <- struct{}{}:
	default: // a wake-up is pending already; ServeTCP reads the latest table
	}
}

// Table returns the current routing table.
func (s *Server) Table() *Table { return s.cur.Load().table }

// routing is what ServeHTTP hands the transport through the request's
// context: the route matched and the snapshot it came from.
type routing struct {
	route Route
	sn    *snapshot
}

type routingKey struct{}

// ServeHTTP routes r by its host and path, and proxies it to one of the
// route's instances. No route answers 404, a route without running
// instance 503, and instances that all fail 502, each with a plain-text
// body that says so.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sn := s.cur.Load()
	route, err := sn.table.Match(r.Host, r.URL.Path)
	if err != nil {
		s.proxyError(w, r, err)
		return
	}
	// Stream both ways: without this an HTTP/1 server reads the rest of
	// the client's body before the instance's answer may start, which
	// holds back bidirectional streams and large uploads answered early.
	// (HTTP/2 is full duplex already and answers ErrNotSupported.)
	_ = http.NewResponseController(w).EnableFullDuplex()
	ctx := context.WithValue(r.Context(), routingKey{}, &routing{route: route, sn: sn})
	s.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// proxyError answers a request ingress could not pass on.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	var ie *Error
	switch {
	case errors.As(err, &ie):
		if ie.Kind == Unreachable {
			s.log.Warn("ingress: no instance answered", "host", r.Host, "path", r.URL.Path, "err", err)
		}
		writeError(w, ie.Status(), ie.public())
	case r.Context().Err() != nil:
		// The client went away (or the server is stopping): nobody reads
		// the answer.
		w.WriteHeader(http.StatusBadGateway)
	default:
		// The instance failed after it had the request: a reset, a
		// malformed answer, a request that cannot be retried.
		s.log.Warn("ingress: instance failed", "host", r.Host, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusBadGateway, "the instance failed before it answered; the ingress node's log says why")
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

// Serve serves the HTTP ingress on ln until ctx ends, then shuts it down:
// requests still running see their context end (streams included), and
// what is left of them gets a few seconds. It returns nil after ctx ended,
// or the error that stopped the server. ln is closed. For HTTPS, pass a
// tls.NewListener.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.o.ReadHeaderTimeout,
		IdleTimeout:       s.o.IdleTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("ingress: serving HTTP on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	s.conns.CloseIdleConnections()
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("ingress: serving HTTP on %s: %w", ln.Addr(), err)
	}
	return nil
}
