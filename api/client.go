package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// maxAnswer bounds an answer the client reads into memory.
const maxAnswer = 256 << 20

// Client talks to one node's API. Its methods return the server's error
// message as an [*Error].
type Client struct {
	base string
	// http has a timeout for the request-answer calls; stream has none
	// (followed logs run until the caller's ctx ends).
	http, stream *http.Client
}

// NewClient returns a client of the node at server: HOST:PORT or a URL.
func NewClient(server string) *Client {
	base := strings.TrimRight(server, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{base: base, http: &http.Client{Timeout: 5 * time.Minute}, stream: &http.Client{}}
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

// Sync asks the node's reconciler to fetch now (POST /v1/sync).
func (c *Client) Sync(ctx context.Context) (SyncAnswer, error) {
	var v SyncAnswer
	return v, c.do(ctx, "POST", "/v1/sync", nil, &v)
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

func (c *Client) unreachable(err error) error {
	return fmt.Errorf("cannot reach a Blixard node at %s (set --server or BLIXARD_SERVER): %w", c.base, err)
}

// do sends body as JSON (none when nil) and decodes a JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("--server %q: %w", c.base, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("reading the answer of %s %s from %s: %w", method, path, c.base, err)
	}
	if resp.StatusCode >= 300 {
		return errorOf(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the answer of %s %s from %s: %w", method, path, c.base, err)
	}
	return nil
}

func errorOf(code int, data []byte) error {
	var e ErrorBody
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return &Error{Code: code, Message: e.Error}
	}
	return &Error{Code: code, Message: fmt.Sprintf("HTTP %d: %s", code, bytes.TrimSpace(data))}
}
