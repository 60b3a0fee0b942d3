package ingress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// transport sends a request that ServeHTTP routed to the route's
// instances, in balancing order, until one answers:
//
//   - An instance that refused the connection (or did not accept it within
//     the dial timeout) got nothing of the request: it is marked down and
//     the next one is tried, whatever the method, with the body not yet
//     read.
//   - Any other failure before an answer (a reset, a connection closed
//     early) is retried on the next instance only for an idempotent
//     request without a body: the instance may have acted on the request,
//     and a body partly sent cannot be sent again.
//   - An answer, whatever its status, ends the search: the instance works,
//     and is marked up.
type transport struct{ s *Server }

// dialError is a failure to connect to an instance: nothing was sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// IsDialError reports whether err (from a transport made by
// InstanceTransport) is a failure to connect: nothing was sent, so another
// instance may take the request, whatever its method.
func IsDialError(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}

// InstanceTransport is the connection pool to instances that the ingress
// proxy and the function gateway share: dial errors are marked (see
// IsDialError), instances are reached directly (never through
// HTTP_PROXY), and there is no ResponseHeaderTimeout — an instance may
// think long before it answers (long polling); the client decides how long
// to wait.
func InstanceTransport(dialTimeout, idleConnTimeout time.Duration) *http.Transport {
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &dialError{err: err}
			}
			return c, nil
		},
		Proxy:                 nil,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       idleConnTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	s := t.s
	rt, _ := req.Context().Value(routingKey{}).(*routing)
	if rt == nil {
		return nil, errors.New("ingress: the transport got a request ServeHTTP did not route")
	}
	var body *keepOpenBody
	if req.Body != nil && req.Body != http.NoBody {
		// http.Transport closes the body when it cannot connect; the next
		// instance still needs it (nothing was read).
		body = &keepOpenBody{ReadCloser: req.Body}
	}
	retryAny := body == nil && idempotent(req)
	var tried []string
	var last error
	for _, tg := range rt.sn.targets(rt.route.Entry, rt.route.Backends, s.o.Now()) {
		out := req.WithContext(req.Context())
		u := *req.URL
		u.Host = tg.Addr.String()
		out.URL = &u
		if body != nil {
			out.Body = body
		}
		tried = append(tried, tg.Instance)
		tg.h.inflight.Add(1)
		resp, err := s.conns.RoundTrip(out)
		if err == nil {
			if tg.h.markUp(s.o.Now()) {
				s.log.Info("ingress: instance answers again", "entry", rt.route.Entry, "instance", tg.Instance, "addr", tg.Addr)
			}
			resp.Body = countBody(resp.Body, tg.h)
			return resp, nil
		}
		tg.h.inflight.Add(-1)
		if req.Context().Err() != nil {
			return nil, err // the client went away: try nobody else
		}
		last = fmt.Errorf("instance %s (%s): %w", tg.Instance, tg.Addr, err)
		switch {
		case IsDialError(err):
			if tg.h.markDown(s.o.Now(), s.o.DownFor) {
				s.log.Warn("ingress: instance refused a connection; trying the others first for a while",
					"entry", rt.route.Entry, "instance", tg.Instance, "addr", tg.Addr, "for", s.o.DownFor, "err", err)
			}
		case retryAny:
			s.log.Debug("ingress: instance failed; retrying an idempotent request elsewhere",
				"entry", rt.route.Entry, "instance", tg.Instance, "err", err)
		default:
			return nil, fmt.Errorf("ingress entry %q: %w (%s %s is not retried: it is not idempotent or has a body)",
				rt.route.Entry, last, req.Method, req.URL.Path)
		}
	}
	return nil, &Error{Kind: Unreachable, Host: rt.route.Host, Path: req.URL.Path, Entry: rt.route.Entry, To: rt.route.To,
		Tried: tried, Err: last}
}

// idempotent reports whether sending req twice does what sending it once
// does, by its method (RFC 9110 §9.2.2) or an idempotency key header, as
// http.Transport judges it for its own retries.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// keepOpenBody is a request body that attempts cannot close: ReverseProxy
// closes the client's body when the request is done.
type keepOpenBody struct{ io.ReadCloser }

func (keepOpenBody) Close() error { return nil }

// countBody wraps an answer's body so that the request counts as in
// flight on h until the body is closed: a stream holds its instance for as
// long as it runs.
func countBody(rc io.ReadCloser, h *health) io.ReadCloser {
	if rwc, ok := rc.(io.ReadWriteCloser); ok {
		// A 101 Switching Protocols answer's body is the connection
		// itself; ReverseProxy needs to write to it.
		return &countedRW{counted: counted{ReadCloser: rc, h: h}, w: rwc}
	}
	return &counted{ReadCloser: rc, h: h}
}

type counted struct {
	io.ReadCloser
	h    *health
	once sync.Once
}

func (c *counted) Close() error {
	c.once.Do(func() { c.h.inflight.Add(-1) })
	return c.ReadCloser.Close()
}

type countedRW struct {
	counted
	w io.Writer
}

func (c *countedRW) Write(p []byte) (int, error) { return c.w.Write(p) }
