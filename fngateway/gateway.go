package fngateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/spec"
)

// Defaults of [Options].
const (
	// DefaultQueueLimit bounds the requests waiting for one function's
	// instances. A waiting request holds a goroutine and a connection;
	// a thousand is a cold start's worth of a busy function's traffic.
	DefaultQueueLimit = 1000
	// DefaultQueueTimeout bounds how long a request waits for an
	// instance: long enough for a microVM to boot without a snapshot.
	DefaultQueueTimeout = 30 * time.Second
	// DefaultRetryAfter is the Retry-After of a 503 (queue full).
	DefaultRetryAfter = time.Second
	// DefaultDialTimeout bounds connecting to an instance, as ingress's.
	DefaultDialTimeout = ingress.DefaultDialTimeout
	// DefaultDownFor is how long an instance that refused a connection is
	// not picked: shorter than ingress's, since a function's instances are
	// few and a refusing one is often still starting its server.
	DefaultDownFor = time.Second
	// DefaultIdleConnTimeout closes idle connections to instances.
	DefaultIdleConnTimeout = ingress.DefaultIdleTimeout
)

// Options configure a [Gateway]. The zero value is usable.
type Options struct {
	// Node is this node's id: its own instances are preferred (0: none is).
	Node uint64
	// Scaler is told when a function needs more instances (nil: nobody
	// is; requests wait for the instances the source adds by itself).
	Scaler Scaler
	// QueueLimit bounds each function's queue (default DefaultQueueLimit).
	QueueLimit int
	// QueueTimeout bounds a request's wait for an instance (default
	// DefaultQueueTimeout); there is no bound on the request once an
	// instance has it (streams).
	QueueTimeout time.Duration
	// RetryAfter is the Retry-After of a 503 (default DefaultRetryAfter).
	RetryAfter time.Duration
	// DialTimeout bounds each connection attempt to an instance (default
	// DefaultDialTimeout).
	DialTimeout time.Duration
	// DownFor is how long an instance that refused a connection is not
	// picked (default DefaultDownFor).
	DownFor time.Duration
	// IdleConnTimeout closes idle connections to instances (default
	// DefaultIdleConnTimeout).
	IdleConnTimeout time.Duration
	// Metrics receives the latencies of the function requests (nil:
	// nothing does; [Gateway.Stats] and [Front.Latency] keep their own).
	Metrics Metrics
	// Ahead, when set, is told of a peer's notice (AheadPath) that its
	// scale-out places an instance on this node, with the request's
	// context; the notice is answered when it returns (the sender proposes
	// once its notices are answered, so it should return once what it
	// started runs, and soon). Nil: notices are answered 404.
	Ahead func(context.Context, AheadNotice)
	// Now is the clock of the bookkeeping (LastActive, queue waits, down
	// marks); default time.Now. The queue's timeout runs on real time.
	Now    func() time.Time
	Logger *slog.Logger
}

// Gateway is one node's function gateway: an http.Handler that routes a
// request by host and path to a function, and proxies it to one of the
// function's instances, holding it in the function's queue while none is
// free. Construct with [New]; feed it with [Gateway.Update].
type Gateway struct {
	o       Options
	log     *slog.Logger          // non-nil
	updates sync.Mutex            // serialises Update
	cur     atomic.Pointer[table] // non-nil after New
	proxy   *httputil.ReverseProxy
	conns   *http.Transport
	// peers are the addresses the other nodes' gateways connect from
	// (SetPeers): only their requests may name an instance.
	peers atomic.Pointer[map[netip.Addr]bool]
}

// table is one Update's functions: the routes (ingress's routing rule,
// with function names as entries) and the state of each function, which
// outlives tables while the function exists.
type table struct {
	routes *ingress.Table
	fns    map[string]*fnState
}

// New returns a gateway without functions: every request gets 404 until
// the first [Gateway.Update].
func New(o Options) *Gateway {
	if o.QueueLimit <= 0 {
		o.QueueLimit = DefaultQueueLimit
	}
	setDefault(&o.QueueTimeout, DefaultQueueTimeout)
	setDefault(&o.RetryAfter, DefaultRetryAfter)
	setDefault(&o.DialTimeout, DefaultDialTimeout)
	setDefault(&o.DownFor, DefaultDownFor)
	setDefault(&o.IdleConnTimeout, DefaultIdleConnTimeout)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{o: o, log: o.Logger}
	g.cur.Store(&table{routes: ingress.NewTable(nil, nil), fns: map[string]*fnState{}})
	// Dial errors are marked (ingress.IsDialError): nothing was sent, so
	// another instance may take the request, whatever its method.
	g.conns = ingress.InstanceTransport(o.DialTimeout, o.IdleConnTimeout)
	g.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The transport picks the instance; the URL's host is only a
			// placeholder until then.
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "instance.invalid"
			if pr.In.Header.Get(HeaderInstance) != "" {
				// Passed on by another gateway: the client's address stays
				// first, the gateway's is appended (the rightmost entry is
				// the one this node vouches for).
				pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
				pr.Out.Header.Del(HeaderInstance)
			}
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host // the function sees the host the client asked for
		},
		Transport:    &transport{g: g},
		ErrorHandler: g.proxyError,
		ErrorLog:     slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		// FlushInterval 0: what has no length (streams) is flushed at once.
	}
	return g
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Update makes fns the functions the gateway serves (a function named
// twice: the last one). It is the instance source's only call: after
// every change of a function's instances (one became ready, one started,
// stopped or failed to start) it passes every function again. Requests
// waiting for a function are dispatched to the instances that became
// ready or free; requests in flight keep their instance even when it is
// gone from fns. Waiting requests of a removed function get 404. Safe for
// concurrent use.
func (g *Gateway) Update(fns []Function) {
	type want struct {
		fn string
		d  Demand
	}
	var wants []want
	g.updates.Lock()
	now := g.o.Now()
	prev := g.cur.Load()
	next := &table{fns: make(map[string]*fnState, len(fns))}
	entries := make(map[string]spec.Ingress, len(fns))
	byName := make(map[string]Function, len(fns))
	for _, f := range fns {
		byName[f.Name] = f
		entries[f.Name] = spec.Ingress{Host: f.Host, Path: f.Path, To: f.Name, Protocol: spec.IngressHTTP}
		st := prev.fns[f.Name]
		if st == nil {
			st = newFnState(g, f.Name, now)
		}
		next.fns[f.Name] = st
	}
	next.routes = ingress.NewTable(entries, nil)
	for name, st := range next.fns {
		if d := st.update(byName[name], now); d != nil {
			wants = append(wants, want{name, *d})
		}
	}
	g.cur.Store(next)
	for name, st := range prev.fns {
		if next.fns[name] == nil {
			st.remove()
		}
	}
	g.updates.Unlock()
	for _, w := range wants {
		g.want(w.fn, w.d)
	}
}

func (g *Gateway) want(fn string, d Demand) {
	if g.o.Scaler != nil {
		g.o.Scaler.Want(fn, d)
	}
}

// Stats returns every function's bookkeeping, sorted by function name.
func (g *Gateway) Stats() []Stats {
	t := g.cur.Load()
	out := make([]Stats, 0, len(t.fns))
	for _, name := range slices.Sorted(maps.Keys(t.fns)) {
		out = append(out, t.fns[name].stats())
	}
	return out
}

// CloseIdleConnections closes the gateway's idle connections to
// instances (when the node stops serving).
func (g *Gateway) CloseIdleConnections() { g.conns.CloseIdleConnections() }

// match returns the function routing host and path: ingress's rule (host
// in any case, port stripped; the longest path prefix by whole segments).
// The table has no backends, so a match is a NoInstance error from
// ingress's point of view.
func (t *table) match(host, path string) (*fnState, bool) {
	r, err := t.routes.Match(host, path)
	var ie *ingress.Error
	if err != nil && !(errors.As(err, &ie) && ie.Kind == ingress.NoInstance) {
		return nil, false
	}
	f := t.fns[r.To]
	return f, f != nil
}

type requestKey struct{}

// SetPeers makes addrs the addresses whose requests may name an instance
// in [HeaderInstance] (the other nodes' gateways); from anyone else the
// header is dropped, so a client cannot take a request past the count of
// the instance's node. Safe for concurrent use.
func (g *Gateway) SetPeers(addrs []netip.Addr) {
	set := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		set[a.Unmap()] = true
	}
	g.peers.Store(&set)
}

// fromPeer reports whether r came from an address SetPeers named.
func (g *Gateway) fromPeer(r *http.Request) bool {
	set := g.peers.Load()
	if set == nil {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && (*set)[ap.Addr().Unmap()]
}

// ServeHTTP routes r to its function and proxies it to an instance, or
// answers it with a plain-text [*Error].
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == AheadPath {
		g.serveAhead(w, r)
		return
	}
	f, ok := g.cur.Load().match(r.Host, r.URL.Path)
	if !ok {
		g.writeError(w, &Error{Kind: NoRoute, Host: r.Host, Path: r.URL.Path})
		return
	}
	// Stream both ways (see ingress.Server.ServeHTTP).
	_ = http.NewResponseController(w).EnableFullDuplex()
	if r.Header.Get(HeaderInstance) != "" && !g.fromPeer(r) {
		r.Header.Del(HeaderInstance) // a client's: routed like any request
	}
	now := time.Now()
	rq := &request{f: f, arrived: now, deadline: now.Add(g.o.QueueTimeout), pin: r.Header.Get(HeaderInstance)}
	g.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, rq)))
}

// proxyError answers a request the gateway could not pass on.
func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	var ge *Error
	switch {
	case errors.As(err, &ge):
		if ge.Host == "" {
			ge.Host, ge.Path = r.Host, r.URL.Path
		}
		switch ge.Kind {
		case Unreachable:
			g.log.Warn("fngateway: no instance accepted the connection", "function", ge.Function, "err", ge)
		case StartFailed, Timeout:
			g.log.Debug("fngateway: request refused", "function", ge.Function, "err", ge)
		}
		g.writeError(w, ge)
	case r.Context().Err() != nil:
		// The client went away (or the server is stopping): nobody reads
		// the answer.
		w.WriteHeader(http.StatusBadGateway)
	default:
		g.log.Warn("fngateway: instance failed", "host", r.Host, "path", r.URL.Path, "err", err)
		writePlain(w, http.StatusBadGateway, "the function failed before it answered; the gateway node's log says why")
	}
}

func (g *Gateway) writeError(w http.ResponseWriter, e *Error) {
	if e.Kind == QueueFull {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(g.o.RetryAfter.Seconds()))))
	}
	writePlain(w, e.Status(), e.public())
}

func writePlain(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

// transport sends a request to the instance acquire gives it. An
// instance that refused the connection got nothing of the request: it is
// marked down and the request acquires another (its body not yet read).
// Any other failure ends the request with 502: the instance may have
// acted on it, and a body partly sent cannot be sent again.
type transport struct{ g *Gateway }

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	rq, _ := req.Context().Value(requestKey{}).(*request)
	if rq == nil {
		return nil, errors.New("fngateway: the transport got a request ServeHTTP did not route")
	}
	var body *keepOpenBody
	if req.Body != nil && req.Body != http.NoBody {
		// http.Transport closes the body when it cannot connect; the next
		// instance still needs it (nothing was read).
		body = &keepOpenBody{ReadCloser: req.Body}
	}
	for {
		gr := rq.f.acquire(req.Context(), rq)
		if gr.err != nil {
			return nil, gr.err
		}
		s, inst := gr.s, gr.inst
		out := req.WithContext(req.Context())
		u := *req.URL
		u.Host = inst.Addr.String()
		if via := gr.via(); via != "" {
			// To the instance's node's gateway, which holds it to the
			// function's concurrency there.
			u.Host = via
			out.Header = req.Header.Clone()
			out.Header.Set(HeaderInstance, inst.Name)
		}
		out.URL = &u
		if body != nil {
			out.Body = body
		}
		sent := time.Now()
		resp, err := t.g.conns.RoundTrip(out)
		if err == nil {
			if rq.waited {
				// A cold start: where its time went (arrival → instance
				// handed out → the instance's answer).
				t.g.log.Debug("fngateway: cold-start request answered", "function", rq.f.name, "instance", inst.Name,
					"waited", sent.Sub(rq.arrived).Round(time.Millisecond), "answer", time.Since(sent).Round(time.Millisecond),
					"status", resp.StatusCode)
			}
			resp.Body = releaseOnClose(resp.Body, rq.f, s, rq.pin != "")
			return resp, nil
		}
		if !ingress.IsDialError(err) || req.Context().Err() != nil {
			rq.f.release(s, rq.pin != "")
			return nil, fmt.Errorf("function %s, instance %s (%s): %w", rq.f.name, inst.Name, inst.Addr, err)
		}
		rq.f.refused(s, rq.pin != "")
		t.g.log.Warn("fngateway: instance refused a connection; trying another", "function", rq.f.name,
			"instance", inst.Name, "addr", inst.Addr, "for", t.g.o.DownFor, "err", err)
		if rq.tried == nil {
			rq.tried = map[*slot]bool{}
		}
		rq.tried[s] = true
		rq.triedNames = append(rq.triedNames, inst.Name)
		rq.lastErr = fmt.Errorf("instance %s (%s): %w", inst.Name, inst.Addr, err)
	}
}

// keepOpenBody is a request body that attempts cannot close: ReverseProxy
// closes the client's body when the request is done.
type keepOpenBody struct{ io.ReadCloser }

func (keepOpenBody) Close() error { return nil }

// releaseOnClose wraps an answer's body so that the request (passed on by
// a peer: peer) counts as in flight on s until the body is closed: a
// stream holds its instance (and one of its concurrency) for as long as it
// runs.
func releaseOnClose(rc io.ReadCloser, f *fnState, s *slot, peer bool) io.ReadCloser {
	r := &released{ReadCloser: rc, f: f, s: s, peer: peer}
	if rwc, ok := rc.(io.ReadWriteCloser); ok {
		// A 101 Switching Protocols answer's body is the connection
		// itself; ReverseProxy writes to it.
		return &releasedRW{released: r, w: rwc}
	}
	return r
}

type released struct {
	io.ReadCloser
	f    *fnState
	s    *slot
	peer bool
	once sync.Once
}

func (r *released) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(func() { r.f.release(r.s, r.peer) })
	return err
}

type releasedRW struct {
	*released
	w io.Writer
}

func (r *releasedRW) Write(p []byte) (int, error) { return r.w.Write(p) }
