package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// MaxRequestBody bounds the JSON body of a request (the webhook has its
// own, larger bound).
const MaxRequestBody = 1 << 20

// Defaults of [Options].
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultMaxConns          = 256
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
	// WebhookSecret is the HMAC secret of POST /v1/webhook ("" accepts any
	// POST).
	WebhookSecret string
	// HTTPClient reaches other nodes' APIs (logs of VMs elsewhere);
	// default http.DefaultClient.
	HTTPClient *http.Client
	// ReadHeaderTimeout and ReadTimeout bound reading a request's header
	// and whole request (slow bodies do not hold a connection); MaxConns
	// caps concurrent connections (further ones wait to be accepted).
	ReadHeaderTimeout, ReadTimeout time.Duration
	MaxConns                       int
	// Now is the clock of proposals (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Server is one node's HTTP API. Construct with [NewServer]; it starts
// nothing until [Server.Serve].
type Server struct {
	o       Options
	log     *slog.Logger // non-nil
	handler http.Handler // non-nil
}

// NewServer returns a server for o.
func NewServer(o Options) *Server {
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, log: o.Logger}
	s.handler = s.routes()
	return s
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves the API on ln until ctx ends, then shuts it down: requests
// still running (followed logs) see their context end. It returns nil after
// ctx ended, or the error that stopped the server. ln is closed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.o.ReadHeaderTimeout,
		ReadTimeout:       s.o.ReadTimeout,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(limitListener(ln, s.o.MaxConns)) }()
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

// route is one endpoint.
type route struct {
	method, path string
	h            http.Handler
}

func (s *Server) routes() http.Handler {
	routes := []route{
		{"GET", "/healthz", http.HandlerFunc(s.handleHealth)},
		{"GET", "/v1/state", http.HandlerFunc(s.handleState)},
		{"GET", "/v1/status", http.HandlerFunc(s.handleStatus)},
		{"GET", "/v1/nodes", http.HandlerFunc(s.handleNodes)},
		{"GET", "/v1/history", http.HandlerFunc(s.handleHistory)},
		{"GET", "/v1/diff", http.HandlerFunc(s.handleDiff)},
		{"GET", "/v1/reconciler", http.HandlerFunc(s.handleReconciler)},
		{"POST", "/v1/nodes/{id}/state", http.HandlerFunc(s.handleNodeState)},
		{"POST", "/v1/members", http.HandlerFunc(s.handleAddMember)},
		{"POST", "/v1/plan", http.HandlerFunc(s.handlePlan)},
		{"POST", "/v1/sync", http.HandlerFunc(s.handleSync)},
		{"GET", "/v1/vms/{name}/logs", http.HandlerFunc(s.handleLogs)},
		{"POST", "/v1/vms/{name}/start", s.handleVMRunState(VMStart)},
		{"POST", "/v1/vms/{name}/stop", s.handleVMRunState(VMStop)},
		{"POST", "/v1/vms/{name}/restart", s.handleVMRunState(VMRestart)},
		{"GET", "/metrics", http.HandlerFunc(s.handleMetrics)},
	}
	if s.o.Reconciler != nil {
		routes = append(routes, route{"POST", "/v1/webhook", gitsync.WebhookHandler(s.o.WebhookSecret, s.o.Reconciler.Triggers(), s.log)})
	}
	mux := http.NewServeMux()
	var paths []string
	allowed := map[string][]string{} // path pattern → methods
	for _, r := range routes {
		mux.Handle(r.method+" "+r.path, r.h)
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
	return mux
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

// decode reads exactly one JSON object of at most MaxRequestBody bytes with
// no unknown fields into v; on failure it answers (400 or 413) saying what
// the body should be, and returns false.
func decode(w http.ResponseWriter, r *http.Request, v any, want string) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
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

// read answers 503 when the state cannot be read linearizably.
func (s *Server) read(w http.ResponseWriter, r *http.Request) (*replicated.State, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	st, err := s.o.Replica.Read(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("node %d: reading the replicated state (is a quorum of nodes up? see `blixard nodes` on another node): %w", s.o.Replica.NodeID(), err))
		return nil, false
	}
	return st, true
}

func (s *Server) leader() uint64 {
	id, _ := s.o.Replica.Leader()
	return id
}

// errNoRepository is the answer of the endpoints that need a source.
func (s *Server) errNoRepository() error {
	return fmt.Errorf("node %d follows no repository (started without --repo)", s.o.Replica.NodeID())
}
