package api

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// MaxRequestBody bounds the JSON body of a request (the webhook has its
// own, larger bound).
const MaxRequestBody = 1 << 20

// maxHeaderBytes bounds a request's header: the API's requests carry a
// few short headers, a bearer token at most.
const maxHeaderBytes = 64 << 10

// Defaults of [Options].
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = time.Minute
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxConns          = 1024
	DefaultMaxLogFollowers   = 64
)

// Replica is the node's replica of the state, as the API needs it;
// *raftstore.Store satisfies it.
type Replica interface {
	// Read returns a linearizable copy of the state; an error means no
	// quorum answered in time.
	Read(ctx context.Context) (*replicated.State, error)
	// LocalRead returns the local replica's state, possibly stale.
	LocalRead() (*replicated.State, error)
	// Propose commits cmd through Raft; an error means the outcome is
	// unknown, a refusal comes back as the Result.
	Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error)
	// Leader is the leader's id as known locally (ok false: none known).
	Leader() (id uint64, ok bool)
	// NodeID is this node's id.
	NodeID() uint64
	// AddReplica adds a (non-voting) member to the shard.
	AddReplica(ctx context.Context, id uint64, raftAddr string, nonVoting bool) error
}

// Reconciler is the node's leader loop, as the API needs it;
// *reconciler.Reconciler satisfies it.
type Reconciler interface {
	// Trigger asks for a fetch and a pass now; it never blocks.
	Trigger()
	// Triggers is the channel behind Trigger, for the webhook handler.
	Triggers() chan<- struct{}
	// Status is the loop's own view on this node (not replicated).
	Status() reconciler.Status
}

// ConsoleLogs reads the console logs of the VMs that run on this node.
type ConsoleLogs interface {
	// Tail copies VM name's console log to w; with follow it keeps copying
	// what is appended until ctx ends. When this node has no log for the
	// VM it returns an error wrapping fs.ErrNotExist before writing.
	Tail(ctx context.Context, name string, follow bool, w io.Writer) error
}

// Options configure a [Server]. Replica is required; nil parts turn their
// endpoints into 409 answers that say what the node lacks.
type Options struct {
	Replica Replica
	// Reconciler is nil when the node follows no repository: POST /v1/sync
	// and GET /v1/reconciler answer 409 and there is no webhook route.
	Reconciler Reconciler
	// Evaluator answers POST /v1/plan (nil: 409) through
	// reconciler.PlanCommit; Source, when set, is fetched first (the commit
	// may be newer than the mirror).
	Source    reconciler.Source
	Evaluator reconciler.Evaluator
	// Logs serves GET /v1/vms/NAME/logs for VMs on this node (nil: 404).
	Logs ConsoleLogs
	// Metrics is what GET /metrics serves (the node's registry, package
	// metrics); nil: a registry of the local replica's gauges alone.
	Metrics prometheus.Gatherer
	// Functions is the node's function gateway, for GET /v1/functions and
	// /metrics (nil: the node runs none; its answers lack local counts).
	Functions FunctionStats
	// ScaleOuts proposes the scale-outs that agent-only nodes' gateways
	// send (POST /v1/agent/propose) the way this node's own gateway's are
	// (nil: the plan made from this replica is attached here and the
	// command proposed as it is).
	ScaleOuts ScaleOuts
	// AgentAhead lends agent-only nodes' views the instances started
	// ahead of their scale-out's commit (nil: none); see
	// [Server.WakeAgentViews].
	AgentAhead AgentAhead
	// WebhookSecret is the HMAC secret of POST /v1/webhook ("" accepts any
	// POST).
	WebhookSecret string

	// TLS makes [Server.Serve] speak HTTPS (HTTP/1.1) with this
	// configuration, as pki.ServerTLSClientCertIfGiven makes it: callers
	// authenticate with a client certificate the cluster CA signed or with
	// a bearer token. Without it Serve refuses to run unless Insecure.
	TLS *tls.Config
	// PeerTLS reaches other nodes' APIs (logs of VMs elsewhere) over HTTPS
	// with this node's certificate (pki.ClientTLS); nil: plain HTTP.
	PeerTLS *tls.Config
	// Insecure turns authentication off: every caller acts as admin and
	// the event log names it "anonymous". It is for plain HTTP on loopback
	// (`blixard dev`, `serve --insecure`) and excludes TLS.
	Insecure bool

	// ReadHeaderTimeout and ReadTimeout bound reading a request's header
	// (and a TLS handshake) and whole request, so slow clients do not hold
	// a connection; WriteTimeout bounds writing an answer (followed logs
	// excepted); IdleTimeout closes idle keep-alive connections.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// MaxConns caps concurrent connections (further ones wait to be
	// accepted); Serve lowers it to keep a quarter of the file descriptor
	// limit, and at least 256 descriptors, for the rest of the node.
	// MaxLogFollowers caps concurrent `logs -f` streams (further ones get
	// 429); MaxEventFollowers the waiting polls of GET /v1/events (`events
	// -f`; default DefaultMaxEventFollowers).
	MaxConns, MaxLogFollowers, MaxEventFollowers int
	// MaxUIStreams caps concurrent GET /ui/events streams of the status
	// page (further ones get 429; default DefaultMaxUIStreams).
	MaxUIStreams int
	// Health tells /healthz and the stale answers' reasons about the
	// replica's leader and progress without waiting on Raft (the node
	// passes its *raftstore.Store). nil: they rely on Replica.Leader alone.
	Health ReplicaHealth
	// ReadWait is how long a read-only call waits for a linearizable read
	// before it answers from the local replica, marked stale (default
	// DefaultReadWait; the node passes raftstore.Config.ReadWait).
	ReadWait time.Duration
	// StalledAfter: /healthz answers 503 when the replica applied nothing
	// for this long although it knows a leader (default
	// DefaultStalledAfter; only with Health).
	StalledAfter time.Duration
	// AgentOnly serves an agent-only node (agent.go): /healthz, /metrics
	// and its VMs' logs, from Replica (the node's view, not a replica);
	// every other endpoint answers 404 naming the servers' job.
	AgentOnly bool
	// Now is the clock of proposals and of /healthz (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Server is one node's HTTP API. Construct with [NewServer]; it starts
// nothing until [Server.Serve].
type Server struct {
	o         Options
	log       *slog.Logger  // non-nil
	handler   http.Handler  // non-nil
	peers     *http.Client  // non-nil; reaches other nodes' APIs
	followers chan struct{} // one token per followed log stream
	// eventFollowers holds one token per waiting events poll; applied
	// wakes them (see events.go).
	eventFollowers chan struct{}
	// uiStreams holds one token per status page stream (ui.go).
	uiStreams chan struct{}
	applied   *broadcast    // non-nil
	refs      atomic.Uint64 // numbers the internal errors logged
	// unconfirmed is the last leader that did not confirm a read in time.
	unconfirmed unconfirmed
	// agents computes agent-only nodes' views (agent.go).
	agents *agentViews
}

// NewServer returns a server for o.
func NewServer(o Options) *Server {
	setDefault(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDefault(&o.ReadTimeout, DefaultReadTimeout)
	setDefault(&o.WriteTimeout, DefaultWriteTimeout)
	setDefault(&o.IdleTimeout, DefaultIdleTimeout)
	setDefault(&o.ReadWait, DefaultReadWait)
	setDefault(&o.StalledAfter, DefaultStalledAfter)
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxLogFollowers <= 0 {
		o.MaxLogFollowers = DefaultMaxLogFollowers
	}
	if o.MaxEventFollowers <= 0 {
		o.MaxEventFollowers = DefaultMaxEventFollowers
	}
	if o.MaxUIStreams <= 0 {
		o.MaxUIStreams = DefaultMaxUIStreams
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = o.PeerTLS
	s := &Server{o: o, log: o.Logger, followers: make(chan struct{}, o.MaxLogFollowers),
		eventFollowers: make(chan struct{}, o.MaxEventFollowers), uiStreams: make(chan struct{}, o.MaxUIStreams), applied: newBroadcast(),
		peers: &http.Client{Transport: tr}}
	s.agents = newAgentViews(s)
	s.handler = s.routes()
	if o.AgentOnly {
		s.handler = s.agentOnlyRoutes()
	}
	return s
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves the API on ln until ctx ends, then shuts it down: requests
// still running (followed logs) see their context end. It returns nil after
// ctx ended, or the error that stopped the server. ln is closed.
//
// It serves HTTPS with [Options.TLS], plain HTTP with [Options.Insecure],
// and refuses to serve with neither.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	switch {
	case s.o.TLS == nil && !s.o.Insecure:
		ln.Close()
		return errors.New("api: refusing to serve plain HTTP with authentication on: give a TLS configuration, or Insecure for an unauthenticated API on loopback")
	case s.o.TLS != nil && s.o.Insecure:
		ln.Close()
		return errors.New("api: TLS and Insecure exclude each other: an HTTPS API without authentication would look safe and not be")
	}
	conns := connLimit(s.o.MaxConns, fileLimit())
	if conns < s.o.MaxConns {
		s.log.Info("API connections capped below the file descriptor limit", "maxConns", conns)
	}
	served := limitListener(ln, conns)
	if s.o.TLS != nil {
		cfg := s.o.TLS.Clone()
		// HTTP/1.1 only: one request at a time per connection keeps the
		// connection cap a cap on concurrent requests.
		cfg.NextProtos = []string{"http/1.1"}
		served = tls.NewListener(served, cfg)
	}
	srv := &http.Server{
		Handler: s.handler,
		// The TLS handshake is bounded by the smallest of these too.
		ReadHeaderTimeout: s.o.ReadHeaderTimeout,
		ReadTimeout:       s.o.ReadTimeout,
		IdleTimeout:       s.o.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(served) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// connLimit is limit, lowered so that connections leave a quarter of the
// file descriptor limit files (0: unknown), and at least 256 descriptors,
// to the rest of the node: running out of descriptors in Raft, its log DB,
// nix or the agent can stop the node, while a client over the cap only
// waits to be accepted. (A node uses a few dozen descriptors besides its
// API's connections.)
func connLimit(limit int, files uint64) int {
	if files == 0 {
		return limit
	}
	files = min(files, 1<<20)
	reserve := max(files/4, 256)
	if files < reserve+16 {
		return min(limit, 16)
	}
	return min(limit, int(files-reserve))
}

// fileLimit is the process's soft limit on open files (0: unknown or
// unlimited). Go raises it to the hard limit when the program starts.
func fileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == math.MaxUint64 {
		return 0
	}
	return rl.Cur
}

// route is one endpoint and the role it needs ("": none, for /healthz and
// the webhook, which checks its own HMAC).
type route struct {
	method, path string
	need         pki.Role
	h            http.Handler
}

func (s *Server) routes() http.Handler {
	const (
		read    = pki.RoleRead
		operate = pki.RoleOperate
		admin   = pki.RoleAdmin
	)
	routes := []route{
		{"GET", "/healthz", "", http.HandlerFunc(s.handleHealth)},
		{"GET", "/v1/state", read, http.HandlerFunc(s.handleState)},
		{"GET", "/v1/status", read, http.HandlerFunc(s.handleStatus)},
		{"GET", "/v1/nodes", read, http.HandlerFunc(s.handleNodes)},
		{"GET", "/v1/history", read, http.HandlerFunc(s.handleHistory)},
		{"GET", "/v1/diff", read, http.HandlerFunc(s.handleDiff)},
		{"GET", "/v1/events", read, http.HandlerFunc(s.handleEventsPoll)},
		{"GET", "/v1/reconciler", read, http.HandlerFunc(s.handleReconciler)},
		{"POST", "/v1/nodes/{id}/state", operate, http.HandlerFunc(s.handleNodeState)},
		{"POST", "/v1/members", admin, http.HandlerFunc(s.handleAddMember)},
		{"GET", "/v1/members", admin, http.HandlerFunc(s.handleListMembers)},
		{"POST", "/v1/members/remove", admin, http.HandlerFunc(s.handleRemoveMember)},
		{"POST", "/v1/plan", operate, http.HandlerFunc(s.handlePlan)},
		{"POST", "/v1/sync", operate, http.HandlerFunc(s.handleSync)},
		{"GET", "/v1/functions", read, http.HandlerFunc(s.handleFunctions)},
		{"GET", "/v1/rollouts", read, http.HandlerFunc(s.handleRollouts)},
		{"GET", "/v1/rollouts/{name}", read, http.HandlerFunc(s.handleRollouts)},
		{"GET", "/v1/converge", read, http.HandlerFunc(s.handleConverge)},
		{"POST", "/v1/suspend", operate, http.HandlerFunc(s.handleSuspend)},
		{"POST", "/v1/resume", operate, http.HandlerFunc(s.handleResume)},
		{"POST", "/v1/rollback", operate, http.HandlerFunc(s.handleRollback)},
		{"GET", "/v1/vms/{name}", read, http.HandlerFunc(s.handleVM)},
		{"GET", "/v1/vms/{name}/logs", read, http.HandlerFunc(s.handleLogs)},
		{"POST", "/v1/vms/{name}/start", operate, s.handleVMRunState(VMStart)},
		{"POST", "/v1/vms/{name}/stop", operate, s.handleVMRunState(VMStop)},
		{"POST", "/v1/vms/{name}/restart", operate, s.handleVMRunState(VMRestart)},
		{"GET", "/v1/tokens", admin, http.HandlerFunc(s.handleListTokens)},
		{"POST", "/v1/tokens", admin, http.HandlerFunc(s.handleCreateToken)},
		{"DELETE", "/v1/tokens/{name}", admin, http.HandlerFunc(s.handleRevokeToken)},
		{"GET", "/metrics", read, s.metricsHandler()},
		{"GET", "/ui/{$}", read, http.HandlerFunc(s.handleUIPage)},
		{"GET", "/ui/events", read, http.HandlerFunc(s.handleUIEvents)},
		// Agent-only nodes: node certificates only, checked by the
		// handlers (agent.go), which know the node asked for.
		{"GET", "/v1/agent/view", "", http.HandlerFunc(s.handleAgentView)},
		{"POST", "/v1/agent/propose", "", http.HandlerFunc(s.handleAgentPropose)},
	}
	if s.o.Reconciler != nil {
		routes = append(routes, route{"POST", "/v1/webhook", "", gitsync.WebhookHandler(s.o.WebhookSecret, s.o.Reconciler.Triggers(), s.log)})
	}
	mux := http.NewServeMux()
	var paths []string
	allowed := map[string][]string{} // path pattern → methods
	for _, r := range routes {
		h := r.h
		if r.need != "" {
			h = s.guard(r.need, h)
		}
		mux.Handle(r.method+" "+r.path, h)
		if _, ok := allowed[r.path]; !ok {
			paths = append(paths, r.path)
		}
		allowed[r.path] = append(allowed[r.path], r.method)
	}
	// A known path with another method is 405 with Allow; anything else 404.
	for _, path := range paths {
		allow := strings.Join(allowed[path], ", ")
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: method not allowed (use %s)", r.Method, r.URL.Path, allow))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s (see `blixard --help`)", r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A client that does not read its answer holds no connection for
		// long; the log stream clears this while it follows.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
		mux.ServeHTTP(w, r)
	})
}

// ErrorBody is the JSON body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, ErrorBody{Error: err.Error()})
}

// decode reads exactly one JSON value of at most MaxRequestBody bytes with
// no unknown fields into v, and nothing after it but white space; on
// failure it answers (400 or 413) saying what the body should be, and
// returns false.
func decode(w http.ResponseWriter, r *http.Request, v any, want string) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = errors.New("more than one JSON value, or data after it")
			var tooBig *http.MaxBytesError
			if errors.As(terr, &tooBig) {
				err = terr
			}
		}
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("%s %s: request body larger than %d bytes; want %s", r.Method, r.URL.Path, MaxRequestBody, want))
		return false
	}
	writeError(w, http.StatusBadRequest, fmt.Errorf("%s %s: request body: want %s: %w", r.Method, r.URL.Path, want, err))
	return false
}

// decodeOptional is decode for a body that may also be empty.
func decodeOptional(w http.ResponseWriter, r *http.Request, v any, want string) bool {
	br := bufio.NewReader(http.MaxBytesReader(w, r.Body, MaxRequestBody))
	if _, err := br.Peek(1); errors.Is(err, io.EOF) {
		return true
	}
	r.Body = io.NopCloser(br)
	return decode(w, r, v, want)
}

// localRead answers 503 when the local replica cannot be read.
func (s *Server) localRead(w http.ResponseWriter, r *http.Request) (*replicated.State, bool) {
	st, err := s.o.Replica.LocalRead()
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, "reading the local replica failed (is the node starting or stopping?)", err)
		return nil, false
	}
	return st, true
}

// internalError answers code with public, which says what failed and what
// to check, and logs err under a reference the answer names. err itself
// stays in the node's log: errors from Raft, its log DB, the file system
// or other nodes can name files, addresses and internals that are no
// business of API clients.
func (s *Server) internalError(w http.ResponseWriter, r *http.Request, code int, public string, err error) {
	ref := s.refs.Add(1)
	node := s.o.Replica.NodeID()
	s.log.Warn(public, "err", err, "ref", ref, "method", r.Method, "path", r.URL.Path, "caller", callerOf(r.Context()).Name)
	if errors.Is(err, context.DeadlineExceeded) {
		public += "; it timed out"
	}
	writeError(w, code, fmt.Errorf("node %d: %s (details in the node's log, ref %d)", node, public, ref))
}

func (s *Server) leader() uint64 {
	id, _ := s.o.Replica.Leader()
	return id
}

// errNoRepository is the answer of the endpoints that need a source.
func (s *Server) errNoRepository() error {
	return fmt.Errorf("node %d follows no repository (started without --repo)", s.o.Replica.NodeID())
}
