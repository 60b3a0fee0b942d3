package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// maxAnswer bounds an answer the client reads into memory.
const maxAnswer = 256 << 20

// DefaultClientTimeout bounds a request and its answer when
// ClientOptions.Timeout is not set. Reads answer at once, from the local
// replica when there is no quorum, and a change that is not committed in
// seconds waits for a quorum that the caller should hear about.
const DefaultClientTimeout = 10 * time.Second

// Client talks to one node's API. Its methods return the server's error
// message as an [*Error].
type Client struct {
	base  string
	token string // "" : none
	// http has a timeout for the request-answer calls; stream has none
	// (followed logs run until the caller's ctx ends).
	http, stream *http.Client
	timeout      time.Duration // http's
}

// ClientOptions say how a [Client] authenticates.
type ClientOptions struct {
	// TLS makes the client speak HTTPS with this configuration
	// (pki.ClientTLS: the cluster CA, and the caller's certificate when it
	// has one). Without it a server without a scheme is plain HTTP.
	TLS *tls.Config
	// Token is a bearer token (`blixard token create`) sent with every
	// request; only over HTTPS.
	Token string
	// Timeout bounds each request and its answer, followed logs excepted
	// (default DefaultClientTimeout).
	Timeout time.Duration
}

// NewClient returns a client of the node at server: HOST:PORT (HTTPS with
// o.TLS, plain HTTP without) or an http:// or https:// URL. It refuses
// combinations that would send credentials in clear text.
func NewClient(server string, o ClientOptions) (*Client, error) {
	base := strings.TrimRight(server, "/")
	if !strings.Contains(base, "://") {
		scheme := "http://"
		if o.TLS != nil {
			scheme = "https://"
		}
		base = scheme + base
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("--server %q: want HOST:PORT or https://HOST:PORT", server)
	}
	switch {
	case u.Scheme == "http" && o.TLS != nil:
		return nil, fmt.Errorf("--server %s is plain http:// but a CA, certificate or key is given: use https://%s", base, u.Host)
	case u.Scheme == "http" && o.Token != "":
		return nil, fmt.Errorf("--server %s is plain http://: a token is sent only over HTTPS; give the cluster CA (--ca or BLIXARD_CA) and https://%s", base, u.Host)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("--server %q: want http:// or https://", server)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultClientTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = o.TLS
	return &Client{base: base, token: o.Token, timeout: o.Timeout, http: &http.Client{Transport: tr, Timeout: o.Timeout},
		stream: &http.Client{Transport: tr}}, nil
}

// Credentials name the files a client authenticates with: the CLI's --ca,
// --cert, --key and --token-file.
type Credentials struct {
	CAFile, CertFile, KeyFile, TokenFile string
}

// Options loads the files: a TLS configuration trusting CAFile (and
// presenting CertFile with KeyFile, when given) and the token in TokenFile
// (its first line; refused when every user can read the file).
func (c Credentials) Options() (ClientOptions, error) {
	var o ClientOptions
	if c.CAFile == "" && (c.CertFile != "" || c.KeyFile != "") {
		return o, errors.New("--cert and --key need --ca (BLIXARD_CA): the cluster's ca.crt, to check the server")
	}
	if c.CAFile != "" {
		cfg, err := pki.ClientTLS(c.CAFile, c.CertFile, c.KeyFile)
		if err != nil {
			return o, err
		}
		o.TLS = cfg
	}
	if c.TokenFile != "" {
		tok, err := readTokenFile(c.TokenFile)
		if err != nil {
			return o, err
		}
		o.Token = tok
	}
	return o, nil
}

// readTokenFile reads a token file's first line; like a key, the file must
// not be open to every user.
func readTokenFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("--token-file %s is open to every user (mode %v): run `chmod 600 %s`", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok, _, _ := strings.Cut(string(b), "\n")
	tok = strings.TrimSpace(tok)
	if !strings.HasPrefix(tok, TokenPrefix) {
		return "", fmt.Errorf("--token-file %s does not start with a token (%s…, from `blixard token create`)", path, TokenPrefix)
	}
	return tok, nil
}

// Base is the URL the client talks to.
func (c *Client) Base() string { return c.base }

// Error is an error answer of the API.
type Error struct {
	Code    int    // the HTTP status
	Message string // the server's message, or the body when it sent no JSON error
}

func (e *Error) Error() string { return e.Message }

// Status returns GET /v1/status.
func (c *Client) Status(ctx context.Context) (StatusView, error) {
	var v StatusView
	return v, c.do(ctx, "GET", "/v1/status", nil, &v)
}

// State returns the whole replicated state (GET /v1/state).
func (c *Client) State(ctx context.Context) (*replicated.State, error) {
	var s replicated.State
	if err := c.do(ctx, "GET", "/v1/state", nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Nodes returns GET /v1/nodes.
func (c *Client) Nodes(ctx context.Context) ([]NodeView, error) {
	var v []NodeView
	return v, c.do(ctx, "GET", "/v1/nodes", nil, &v)
}

// History returns the committed revisions, oldest first (GET /v1/history).
func (c *Client) History(ctx context.Context) ([]replicated.Revision, error) {
	var v []replicated.Revision
	return v, c.do(ctx, "GET", "/v1/history", nil, &v)
}

// Diff returns the drift between plan and observation (GET /v1/diff).
func (c *Client) Diff(ctx context.Context) ([]reconciler.Drift, error) {
	var v []reconciler.Drift
	return v, c.do(ctx, "GET", "/v1/diff", nil, &v)
}

// Reconciler returns the node's own reconciler status (GET /v1/reconciler).
func (c *Client) Reconciler(ctx context.Context) (reconciler.Status, error) {
	var v reconciler.Status
	return v, c.do(ctx, "GET", "/v1/reconciler", nil, &v)
}

// Plan asks the node to evaluate and plan a commit (POST /v1/plan).
func (c *Client) Plan(ctx context.Context, commit string) (PlanView, error) {
	var v PlanView
	return v, c.do(ctx, "POST", "/v1/plan", PlanRequest{Commit: commit}, &v)
}

// SetNodeState cordons, drains or readies node id.
func (c *Client) SetNodeState(ctx context.Context, id uint64, state replicated.NodeState) (NodeStateAnswer, error) {
	var v NodeStateAnswer
	return v, c.do(ctx, "POST", "/v1/nodes/"+strconv.FormatUint(id, 10)+"/state", NodeStateRequest{State: state}, &v)
}

// AddMember adds a replica to the shard (POST /v1/members).
func (c *Client) AddMember(ctx context.Context, m MemberRequest) (MemberAnswer, error) {
	var v MemberAnswer
	return v, c.do(ctx, "POST", "/v1/members", m, &v)
}

// SetVMRunState starts, stops or restarts VM vm (an instance, or a declared
// VM: every replica) through POST /v1/vms/VM/ACTION.
func (c *Client) SetVMRunState(ctx context.Context, vm string, action VMAction) (VMRunStateAnswer, error) {
	var v VMRunStateAnswer
	return v, c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/"+string(action), nil, &v)
}

// Events returns the replicated event log, oldest first (GET /v1/events).
func (c *Client) Events(ctx context.Context) ([]replicated.Event, error) {
	var v []replicated.Event
	return v, c.do(ctx, "GET", "/v1/events", nil, &v)
}

// CreateToken creates a bearer token with role (POST /v1/tokens); the
// answer holds its secret, which nothing shows again.
func (c *Client) CreateToken(ctx context.Context, name, role string) (TokenAnswer, error) {
	var v TokenAnswer
	return v, c.do(ctx, "POST", "/v1/tokens", TokenRequest{Name: name, Role: role}, &v)
}

// Tokens lists the bearer tokens (GET /v1/tokens).
func (c *Client) Tokens(ctx context.Context) ([]TokenView, error) {
	var v []TokenView
	return v, c.do(ctx, "GET", "/v1/tokens", nil, &v)
}

// RevokeToken revokes the token name (DELETE /v1/tokens/NAME).
func (c *Client) RevokeToken(ctx context.Context, name string) (RevokeAnswer, error) {
	var v RevokeAnswer
	return v, c.do(ctx, "DELETE", "/v1/tokens/"+url.PathEscape(name), nil, &v)
}

// Sync asks the node's reconciler to fetch now (POST /v1/sync).
func (c *Client) Sync(ctx context.Context) (SyncAnswer, error) {
	var v SyncAnswer
	return v, c.do(ctx, "POST", "/v1/sync", nil, &v)
}

// Rollouts returns the rollouts (GET /v1/rollouts), or declared VM vm's
// when vm is not "".
func (c *Client) Rollouts(ctx context.Context, vm string) (RolloutsView, error) {
	path := "/v1/rollouts"
	if vm != "" {
		path += "/" + url.PathEscape(vm)
	}
	var v RolloutsView
	return v, c.do(ctx, "GET", path, nil, &v)
}

// Functions returns every function with its scale and instances, and the
// answering node's gateway counts (GET /v1/functions).
func (c *Client) Functions(ctx context.Context) (FunctionsView, error) {
	var v FunctionsView
	return v, c.do(ctx, "GET", "/v1/functions", nil, &v)
}

// Converge returns how far commit (a SHA or a prefix; "" for the running
// revision's) is rolled out (GET /v1/converge).
func (c *Client) Converge(ctx context.Context, commit string) (ConvergeView, error) {
	path := "/v1/converge"
	if commit != "" {
		path += "?" + url.Values{"commit": {commit}}.Encode()
	}
	var v ConvergeView
	return v, c.do(ctx, "GET", path, nil, &v)
}

// Suspend stops the cluster following its tracked ref (POST /v1/suspend).
func (c *Client) Suspend(ctx context.Context) (FollowingAnswer, error) {
	var v FollowingAnswer
	return v, c.do(ctx, "POST", "/v1/suspend", nil, &v)
}

// Resume makes the cluster follow its tracked ref again (POST /v1/resume).
func (c *Client) Resume(ctx context.Context) (FollowingAnswer, error) {
	var v FollowingAnswer
	return v, c.do(ctx, "POST", "/v1/resume", nil, &v)
}

// Rollback applies an earlier revision (a revision number or a commit; ""
// for the previous one) and suspends following (POST /v1/rollback).
func (c *Client) Rollback(ctx context.Context, revision string) (FollowingAnswer, error) {
	var v FollowingAnswer
	var body any
	if revision != "" {
		body = RollbackRequest{Revision: revision}
	}
	return v, c.do(ctx, "POST", "/v1/rollback", body, &v)
}

// Logs copies VM vm's console log to w; with follow it keeps copying until
// ctx ends, and then returns nil.
func (c *Client) Logs(ctx context.Context, vm string, follow bool, w io.Writer) error {
	u := c.base + "/v1/vms/" + url.PathEscape(vm) + "/logs"
	if follow {
		u += "?follow=1"
	}
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return fmt.Errorf("--server %q: %w", c.base, err)
	}
	c.authorize(req)
	resp, err := c.stream.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, MaxRequestBody))
		return errorOf(resp.StatusCode, data)
	}
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil // the caller stopped following
	}
	return err
}

// authorize adds the bearer token, if any.
func (c *Client) authorize(req *http.Request) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
}

func (c *Client) unreachable(err error) error {
	return fmt.Errorf("cannot reach a Blixard node at %s (set --server or BLIXARD_SERVER): %w", c.base, err)
}

// Get GETs a read-only endpoint (such as "/v1/nodes"), decodes its JSON
// answer into out and returns the answer's freshness: stale when the node
// answered from its own replica for lack of a quorum.
func (c *Client) Get(ctx context.Context, path string, out any) (Freshness, error) {
	h, err := c.send(ctx, "GET", path, nil, out)
	if err != nil {
		return Freshness{}, err
	}
	return FreshnessOf(h), nil
}

// do sends body as JSON (none when nil) and decodes a JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	_, err := c.send(ctx, method, path, body, out)
	return err
}

// send is do, returning the answer's headers.
func (c *Client) send(ctx context.Context, method, path string, body, out any) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("--server %q: %w", c.base, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.authorize(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.failed(method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, c.failed(method, path, fmt.Errorf("reading the answer: %w", err))
	}
	if resp.StatusCode >= 300 {
		return nil, errorOf(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return nil, fmt.Errorf("decoding the answer of %s %s from %s: %w", method, path, c.base, err)
	}
	return resp.Header, nil
}

// failed explains a request that got no (whole) answer: a timeout says
// which, and that a change may have been made all the same; anything else
// is an unreachable node.
func (c *Client) failed(method, path string, err error) error {
	var ne interface{ Timeout() bool }
	if !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
		return c.unreachable(err)
	}
	if method == "GET" {
		return fmt.Errorf("no answer from %s to %s %s in time (timeout %v: raise --timeout; is the node overloaded?): %w", c.base, method, path, c.timeout, err)
	}
	return fmt.Errorf("no answer from %s to %s %s in time (timeout %v); the change may still be committed: check with `blixard events` "+
		"(raise --timeout; is a quorum of nodes up?): %w", c.base, method, path, c.timeout, err)
}

func errorOf(code int, data []byte) error {
	var e ErrorBody
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return &Error{Code: code, Message: e.Error}
	}
	return &Error{Code: code, Message: fmt.Sprintf("HTTP %d: %s", code, bytes.TrimSpace(data))}
}
