// Package agentlink is an agent-only node's link to the servers (`serve
// --agent-only --servers URL,…`): it long-polls the node's view from a
// server's GET /v1/agent/view, rebuilds a *replicated.State from it for the
// agent, the cache sharing, the network component and the function
// gateway (nodeagent.StateReader), and commits their commands through
// POST /v1/agent/propose (nodeagent.Proposer), failing over to the next
// server on a connection error, a 5xx answer or a timeout.
//
// It must not hold a Raft replica or reach Raft (raftstore, Dragonboat),
// plan, run programs or touch the host: it carries views and commands, and
// decides nothing about them.
package agentlink

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/replicated"
)

// Options configure a [Client].
type Options struct {
	// Servers are the servers' API addresses: URLs (https://host:port) or
	// HOST:PORT (https with TLS, http without). Required.
	Servers []string
	// NodeID is this node's id; the servers check it against TLS's
	// certificate. Required.
	NodeID uint64
	// TLS is the node's client configuration (pki.ClientTLS with the
	// node's certificate); nil: plain HTTP to an API without
	// authentication (--insecure).
	TLS    *tls.Config
	Logger *slog.Logger
	// Optional are the opt-in view parts (replicated.OptionalViewParts):
	// every instance's placement and status, which the network component,
	// ingress, the function gateway and the binary cache need. Without
	// them the state holds this node's own work only.
	Optional []replicated.ViewPart
	// Wait is how long one view poll waits for a change (default
	// api.DefaultAgentWait).
	Wait time.Duration
}

// Client is the link. Its methods are safe for concurrent use.
type Client struct {
	o    Options
	urls []*url.URL
	http *http.Client
	log  *slog.Logger

	changed chan struct{} // buffered 1
	ready   chan struct{} // closed with the first view

	mu   sync.Mutex
	view *replicated.AgentView // guarded by mu; nil before the first
	// state is built from view when first read after a merge (guarded by
	// mu; nil: not yet): most merges are a heartbeat's answer that nobody
	// reads the state for.
	state *replicated.State
	// ahead is state with the instances started ahead of their commit
	// (Ahead), built likewise when first read.
	ahead  *replicated.State
	server int // guarded by mu; the server used now
}

// Backoff between failed attempts, doubling.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// maxConns bounds the connections to one server (see New).
const maxConns = 3

// New checks o and returns a client; it connects to nothing until Run or
// Propose.
func New(o Options) (*Client, error) {
	if o.NodeID == 0 {
		return nil, errors.New("agentlink: Options.NodeID is required (the node's --node-id)")
	}
	if len(o.Servers) == 0 {
		return nil, errors.New("agentlink: no servers: give --servers URL[,URL…] (the API addresses of the Raft nodes)")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Wait <= 0 {
		o.Wait = api.DefaultAgentWait
	}
	for _, p := range o.Optional {
		if _, err := replicated.ParseViewPart(string(p)); err != nil {
			return nil, fmt.Errorf("agentlink: Options.Optional: %w", err)
		}
	}
	c := &Client{o: o, log: o.Logger.With("component", "agentlink"), changed: make(chan struct{}, 1), ready: make(chan struct{})}
	for _, s := range o.Servers {
		u, err := serverURL(s, o.TLS != nil)
		if err != nil {
			return nil, fmt.Errorf("agentlink: --servers %q: %w", s, err)
		}
		c.urls = append(c.urls, u)
	}
	// Nodes start at different servers (node ID order): a thousand agents
	// given the same --servers list would otherwise all load the first
	// server (up to maxConns connections each against its connection cap)
	// until it fails. Node 1 of 3 servers starts at the first.
	c.server = int((o.NodeID - 1) % uint64(len(c.urls)))
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = o.TLS
	tr.Proxy = nil // the servers are the cluster's own
	tr.ResponseHeaderTimeout = 0
	// A view poll and the pipelined heartbeats are in flight at once, over
	// HTTP/1.1 (the API speaks nothing else): with the default of 2 idle
	// connections a server, every burst closed connections that the next
	// one dialed again (a TLS handshake each, on both sides), and a slow
	// server made every agent open one more connection per heartbeat
	// period. The server caps its connections (api.DefaultMaxConns, 1,024)
	// for all the nodes it serves, so a link holds at most maxConns to a
	// server and keeps them: the poll and two proposals at once; further
	// proposals wait for one of them (their deadline still runs).
	tr.MaxConnsPerHost = maxConns
	tr.MaxIdleConnsPerHost = maxConns
	// A dead server must cost a connect timeout, not the kernel's minutes.
	tr.DialContext = (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 15 * time.Second}).DialContext
	c.http = &http.Client{Transport: tr}
	return c, nil
}

// serverURL parses one --servers entry.
func serverURL(s string, secure bool) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		scheme := "http"
		if secure {
			scheme = "https"
		}
		s = scheme + "://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, errors.New("want https://HOST:PORT or HOST:PORT")
	}
	if secure && u.Scheme != "https" {
		return nil, errors.New("http:// with TLS configured: the node's certificate goes over HTTPS only")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// Changed is signalled (buffered 1, never blocking the link) after the
// view changed.
func (c *Client) Changed() <-chan struct{} { return c.changed }

// Ready is closed once the first view arrived.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// LocalRead returns the state rebuilt from the newest view: a copy the
// caller may keep. It fails until the first view arrived.
func (c *Client) LocalRead() (*replicated.State, error) {
	st, err := c.SharedRead()
	if err != nil {
		return nil, err
	}
	return st.Clone(), nil
}

// SharedRead returns the state rebuilt from the newest view without
// copying it: the caller must not change it (nodeagent's observe reads it
// on every pass; a deep copy per pass of a state with 1,000 nodes was most
// of an agent's CPU). It fails like LocalRead.
func (c *Client) SharedRead() (*replicated.State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.view == nil {
		return nil, fmt.Errorf("agentlink: node %d has no view from the servers yet (%s): are they reachable?", c.o.NodeID, c.serversString())
	}
	if c.state == nil {
		c.state = c.view.State(c.o.NodeID)
	}
	return c.state, nil
}

// Ahead is the link as the node's agent and network read it: the state
// with the instances a server started ahead of their commit, which the
// link's own reads leave out (replicated.AgentView.StateAhead), so that
// they run at once while the gateway dispatches only to committed ones.
func (c *Client) Ahead() AheadReader { return AheadReader{c} }

// AheadReader reads the link's state with the instances started ahead;
// it proposes through the link.
type AheadReader struct{ c *Client }

// LocalRead is [Client.LocalRead] with the instances started ahead.
func (r AheadReader) LocalRead() (*replicated.State, error) {
	st, err := r.SharedRead()
	if err != nil {
		return nil, err
	}
	return st.Clone(), nil
}

// SharedRead is [Client.SharedRead] with the instances started ahead.
func (r AheadReader) SharedRead() (*replicated.State, error) {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.view == nil {
		return nil, fmt.Errorf("agentlink: node %d has no view from the servers yet (%s): are they reachable?", c.o.NodeID, c.serversString())
	}
	if c.ahead == nil {
		c.ahead = c.view.StateAhead(c.o.NodeID)
	}
	return c.ahead, nil
}

// Propose is [Client.Propose].
func (r AheadReader) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	return r.c.Propose(ctx, cmd)
}

func (c *Client) serversString() string {
	s := make([]string, len(c.urls))
	for i, u := range c.urls {
		s[i] = u.Host
	}
	return strings.Join(s, ", ")
}

// Run long-polls the view until ctx ends, then returns nil. A server that
// fails (no connection, 5xx, no answer in time, an answer that does not
// decode) is left for the next one, after a backoff that doubles up to 5 s
// and resets on success; a refusal (4xx: a wrong certificate or node id)
// is logged and retried at the longest backoff, since only a person can
// fix it.
func (c *Client) Run(ctx context.Context) error {
	backoff := minBackoff
	for ctx.Err() == nil {
		srv, err := c.poll(ctx)
		if err == nil {
			backoff = minBackoff
			continue
		}
		if ctx.Err() != nil {
			break
		}
		var refused *refusedError
		if errors.As(err, &refused) {
			c.log.Error("a server refuses this node's view; fix the certificate or --node-id", "server", srv, "err", err)
			backoff = maxBackoff
		} else {
			c.log.Warn("view poll failed; trying the next server", "server", srv, "err", err, "retryIn", backoff)
		}
		c.next(srv)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
	return nil
}

// current is the server to use now.
func (c *Client) current() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server
}

// next moves on from server i (unless another caller moved already).
func (c *Client) next(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.server == i {
		c.server = (i + 1) % len(c.urls)
	}
}

// have returns the view's versions and applied index.
func (c *Client) have() (map[replicated.ViewPart]string, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.view == nil {
		return nil, 0
	}
	out := make(map[replicated.ViewPart]string, len(c.view.Versions))
	for p, v := range c.view.Versions {
		out[p] = v
	}
	return out, c.view.Applied
}

// poll makes one long poll to the current server and merges its answer.
func (c *Client) poll(ctx context.Context) (int, error) {
	i := c.current()
	have, applied := c.have()
	q := url.Values{"node": {strconv.FormatUint(c.o.NodeID, 10)}, "wait": {c.o.Wait.String()}}
	if applied > 0 {
		q.Set("after", strconv.FormatUint(applied, 10))
	}
	for p, v := range have {
		q.Set(string(p), v)
	}
	if len(c.o.Optional) > 0 {
		names := make([]string, len(c.o.Optional))
		for j, p := range c.o.Optional {
			names[j] = string(p)
		}
		q.Set("optional", strings.Join(names, ","))
	}
	// The server answers by its wait; one that does not within 10 s more
	// is as good as dead.
	pctx, cancel := context.WithTimeout(ctx, c.o.Wait+10*time.Second)
	defer cancel()
	var ans api.AgentViewAnswer
	if err := c.do(pctx, i, http.MethodGet, "/v1/agent/view", q, nil, &ans); err != nil {
		return i, err
	}
	return i, c.merge(ans)
}

// merge takes an answer's parts when they are from a state at least as
// new as the view's (an answer from a lagging server, or one overtaken by
// a proposal's answer, is dropped: the next poll asks again).
func (c *Client) merge(ans api.AgentViewAnswer) error {
	if ans.Node != c.o.NodeID {
		return fmt.Errorf("the server answered for node %d, not %d", ans.Node, c.o.NodeID)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := c.view
	if cur == nil {
		cur = &replicated.AgentView{}
	}
	if c.view != nil && ans.Applied < cur.Applied {
		return nil
	}
	if c.view != nil && len(ans.Parts) == 0 {
		cur.Applied = max(cur.Applied, ans.Applied)
		return nil
	}
	v, err := cur.Merge(ans.Applied, ans.Parts)
	if err != nil {
		return fmt.Errorf("decoding the view: %w", err)
	}
	first := c.view == nil
	quiet := !first && onlyHeartbeat(c.view, v, ans.Parts)
	c.view, c.state, c.ahead = v, nil, nil
	if first {
		close(c.ready)
	}
	if quiet {
		return nil
	}
	select {
	case c.changed <- struct{}{}:
	default:
	}
	return nil
}

// onlyHeartbeat reports whether the parts that made next from prev changed
// nothing but this node's heartbeat bookkeeping (its sequence, time and
// report order): what a committed liveness-only heartbeat changes. A
// replica wakes nobody for such an entry (raftstore's quiet entries), so
// the link does not signal Changed for it either; the agent renews its
// lease from the heartbeat's answer, not from the view.
func onlyHeartbeat(prev, next *replicated.AgentView, parts map[replicated.ViewPart]replicated.EncodedPart) bool {
	if len(parts) != 1 || prev.Self == nil || next.Self == nil {
		return false
	}
	if _, ok := parts[replicated.ViewSelf]; !ok {
		return false
	}
	a, b := *prev.Self, *next.Self
	for _, n := range []*replicated.Node{&a, &b} {
		n.LastHeartbeatAt, n.LastHeartbeatSeq, n.ReportEpoch, n.ReportSeq, n.StatusSeq = time.Time{}, 0, 0, 0, 0
	}
	return reflect.DeepEqual(a, b)
}

// Propose commits cmd through a server and returns once it committed and
// the view holds the state it committed in (so a caller that reads
// LocalRead next sees every command committed before it, as on a replica).
// A server that fails is left for the next, until ctx ends: the commands
// an agent sends may be applied twice. A refusal by the server (4xx) is
// returned at once.
func (c *Client) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	backoff := minBackoff
	for {
		i := c.current()
		have, _ := c.have()
		body, err := json.Marshal(api.AgentProposal{Command: cmd, Have: have, Optional: c.o.Optional})
		if err != nil {
			return replicated.Result{}, fmt.Errorf("agentlink: encoding %s: %w", cmd.Type, err)
		}
		var ans api.AgentProposeAnswer
		q := url.Values{"node": {strconv.FormatUint(c.o.NodeID, 10)}}
		err = c.do(ctx, i, http.MethodPost, "/v1/agent/propose", q, body, &ans)
		if err == nil {
			if merr := c.merge(ans.View); merr != nil {
				c.log.Warn("the view in a proposal's answer did not decode; the next poll fetches it", "err", merr)
			}
			return ans.Result, nil
		}
		var refused *refusedError
		if errors.As(err, &refused) {
			return replicated.Result{}, fmt.Errorf("agentlink: proposing %s: %w", cmd.Type, err)
		}
		if ctx.Err() != nil {
			return replicated.Result{}, fmt.Errorf("agentlink: proposing %s through %s: %w", cmd.Type, c.urls[i].Host, err)
		}
		c.log.Debug("proposal failed; trying the next server", "type", cmd.Type, "server", c.urls[i].Host, "err", err)
		c.next(i)
		select {
		case <-ctx.Done():
			return replicated.Result{}, fmt.Errorf("agentlink: proposing %s: no server committed it before the deadline (last: %s): %w", cmd.Type, c.urls[i].Host, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// refusedError is a 4xx answer: retrying elsewhere cannot help.
type refusedError struct {
	code int
	msg  string
}

func (e *refusedError) Error() string { return fmt.Sprintf("refused (%d): %s", e.code, e.msg) }

// do sends one request to server i and decodes the JSON answer into out.
func (c *Client) do(ctx context.Context, i int, method, path string, q url.Values, body []byte, out any) error {
	u := *c.urls[i]
	u.Path += path
	u.RawQuery = q.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e api.ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			return &refusedError{code: resp.StatusCode, msg: msg}
		}
		return fmt.Errorf("%s %s: %s: %s", method, u.Host, resp.Status, msg)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, u.Host, err)
	}
	// The decoder may stop after the value, before the encoder's newline
	// or a chunked body's end: a body not read to its end closes the
	// connection instead of returning it to the pool, and the next request
	// dials (and shakes hands) anew.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return nil
}
