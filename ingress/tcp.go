package ingress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// ServeTCP passes TCP connections through until ctx ends: for every TCP
// entry of the current table it listens on Options.TCPHost and the entry's
// listenPort, and splices each connection to one of the entry's instances
// (balanced like HTTP; an instance that refuses is marked down and the
// next one tried). It follows [Server.Update]:
//
//   - A new entry gets its listener.
//   - An entry whose instances change keeps its listener and connections;
//     new connections go to the new instances.
//   - An entry the table drops (or whose listenPort changes) has its
//     listener closed and its connections closed: a removed entry stops
//     exposing its VM at once, long-lived connections included.
//
// A port it cannot listen on (in use) is logged and retried every
// Options.ListenRetry. When ctx ends every listener and connection is
// closed and ServeTCP returns nil once all of them are. Run at most one
// ServeTCP per Server: the listeners are its own.
func (s *Server) ServeTCP(ctx context.Context) error {
	open := map[int]*passthrough{}
	failed := map[int]string{} // port → the last listen error logged
	defer func() {
		for _, p := range open {
			p.close()
		}
	}()
	retry := time.NewTimer(s.o.ListenRetry)
	retry.Stop()
	defer retry.Stop()
	for {
		if s.syncListeners(ctx, open, failed) {
			retry.Reset(s.o.ListenRetry)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
		case <-retry.C:
		}
	}
}

// syncListeners opens and closes listeners so that open holds one per TCP
// entry of the current table, and reports whether a port could not be
// listened on.
func (s *Server) syncListeners(ctx context.Context, open map[int]*passthrough, failed map[int]string) bool {
	t := s.cur.Load().table
	for port, p := range open {
		if _, ok := t.TCPRoute(port); !ok {
			p.close()
			delete(open, port)
			s.log.Info("ingress: closed TCP listener of a removed entry", "entry", p.entry, "port", port)
		}
	}
	for port := range failed {
		if _, ok := t.TCPRoute(port); !ok {
			delete(failed, port)
		}
	}
	anyFailed := false
	for _, r := range t.TCP() {
		if _, ok := open[r.ListenPort]; ok {
			continue
		}
		addr := net.JoinHostPort(s.o.TCPHost, strconv.Itoa(r.ListenPort))
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			anyFailed = true
			if msg := err.Error(); failed[r.ListenPort] != msg {
				failed[r.ListenPort] = msg
				s.log.Error("ingress: cannot listen for a TCP entry; free the port, or change ingress.ENTRY.listenPort in the flake",
					"entry", r.Entry, "addr", addr, "retryEvery", s.o.ListenRetry, "err", err)
			}
			continue
		}
		delete(failed, r.ListenPort)
		p := &passthrough{s: s, entry: r.Entry, port: r.ListenPort, ln: ln, conns: map[net.Conn]struct{}{}}
		p.ctx, p.cancel = context.WithCancel(ctx)
		open[r.ListenPort] = p
		p.wg.Add(1)
		go p.accept()
		s.log.Info("ingress: listening for TCP entry", "entry", r.Entry, "addr", ln.Addr(), "to", r.To)
	}
	return anyFailed
}

// passthrough is the listener of one TCP entry and its connections.
type passthrough struct {
	s      *Server
	entry  string // the entry it was opened for (the route is looked up by port)
	port   int
	ln     net.Listener
	ctx    context.Context // ends when the listener is closed
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection's goroutine

	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu; nil once closed
}

// close stops accepting, closes every connection and waits for their
// goroutines.
func (p *passthrough) close() {
	p.cancel()
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// track adds c to the connections close closes; false (and c closed) when
// the listener is closed already.
func (p *passthrough) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *passthrough) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns != nil {
		delete(p.conns, c)
	}
	c.Close()
}

func (p *passthrough) accept() {
	defer p.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, as net/http
			// does, rather than spin.
			p.s.log.Warn("ingress: accepting a TCP connection failed", "entry", p.entry, "err", err, "retryIn", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-p.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.handle(c)
		}()
	}
}

// handle connects client to an instance of the entry's current route and
// splices the two until both sides are done.
func (p *passthrough) handle(client net.Conn) {
	s := p.s
	sn := s.cur.Load()
	r, ok := sn.table.TCPRoute(p.port)
	if !ok {
		return // dropped from the table since the accept; close is on its way
	}
	if len(r.Backends) == 0 {
		s.log.Debug("ingress: TCP connection closed", "err", &Error{Kind: NoInstance, Entry: r.Entry, To: r.To}, "client", client.RemoteAddr())
		return
	}
	dialer := net.Dialer{Timeout: s.o.DialTimeout, KeepAlive: 30 * time.Second}
	var tried []string
	var last error
	for _, tg := range sn.targets(r.Entry, r.Backends, s.o.Now()) {
		tried = append(tried, tg.Instance)
		backend, err := dialer.DialContext(p.ctx, "tcp", tg.Addr.String())
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			last = fmt.Errorf("instance %s (%s): %w", tg.Instance, tg.Addr, err)
			if tg.h.markDown(s.o.Now(), s.o.DownFor) {
				s.log.Warn("ingress: instance refused a connection; trying the others first for a while",
					"entry", r.Entry, "instance", tg.Instance, "addr", tg.Addr, "for", s.o.DownFor, "err", err)
			}
			continue
		}
		if tg.h.markUp(s.o.Now()) {
			s.log.Info("ingress: instance answers again", "entry", r.Entry, "instance", tg.Instance, "addr", tg.Addr)
		}
		if !p.track(backend) {
			return
		}
		tg.h.inflight.Add(1)
		splice(client, backend)
		tg.h.inflight.Add(-1)
		p.untrack(backend)
		return
	}
	s.log.Warn("ingress: TCP connection closed", "err", &Error{Kind: Unreachable, Entry: r.Entry, To: r.To, Tried: tried, Err: last},
		"client", client.RemoteAddr())
}

// splice copies a to b and b to a until both directions are done. A side
// that ends cleanly is passed on as a half-close (the other direction goes
// on, as TCP allows); an error in either direction closes both, since the
// stream is broken. io.Copy between TCP connections uses splice(2).
func splice(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
	a.Close()
	b.Close()
}

func copyHalf(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		src.Close()
		dst.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}
