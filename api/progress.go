package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/blixard/blixard/progress"
	"github.com/blixard/blixard/reconciler"
)

// NDJSONType is the media type of POST /v1/plan's progress stream.
const NDJSONType = "application/x-ndjson"

// Plan progress timing: a new nix line is sent at once unless one was sent
// less than progressGap ago (then when that has passed: nix can print
// thousands of lines a second while it fetches); without new lines, the
// elapsed time is sent every progressEvery, which also keeps proxies from
// closing a quiet connection.
const (
	progressGap   = 200 * time.Millisecond
	progressEvery = 2 * time.Second
)

// PlanProgress is one report of POST /v1/plan?progress=1 while the node
// works on the plan.
type PlanProgress struct {
	// Stage is "fetching" (the node brings its mirror up to date) or
	// "evaluating" (nix evaluates the commit).
	Stage  string `json:"stage"`
	Commit string `json:"commit"`
	// Elapsed is the time since the node took the request, in seconds.
	Elapsed float64 `json:"elapsedSeconds"`
	// Line is nix's latest log line ("" before it printed any).
	Line string `json:"line,omitempty"`
}

// PlanStreamLine is one line of the progress stream: a progress report, or
// last the plan or the error (with the HTTP status it would have had).
type PlanStreamLine struct {
	Progress *PlanProgress `json:"progress,omitempty"`
	Plan     *PlanView     `json:"plan,omitempty"`
	Error    string        `json:"error,omitempty"`
	Status   int           `json:"status,omitempty"`
}

// wantsProgress: the client asked POST /v1/plan for a progress stream
// (?progress=1, or Accept: application/x-ndjson). Older clients ask for
// neither and get the one JSON answer, as before.
func wantsProgress(r *http.Request) bool {
	if v := r.URL.Query().Get("progress"); v == "1" || v == "true" {
		return true
	}
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == NDJSONType {
			return true
		}
	}
	return false
}

// planStream answers a POST /v1/plan that asked for progress: the state
// read first (its failure is an ordinary error answer), then 200 with
// NDJSON lines — progress while the node fetches and nix evaluates (nix's
// lines reach it through the context, see package progress), and last the
// plan or the error.
func (s *Server) planStream(w http.ResponseWriter, r *http.Request, commit string) {
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	start := time.Now()
	var stage, line atomic.Pointer[string]
	fetching, evaluating := "fetching", "evaluating"
	stage.Store(&evaluating)
	if s.o.Source != nil {
		stage.Store(&fetching)
	}
	changed := make(chan struct{}, 1)
	signal := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	w.Header().Set("Content-Type", NDJSONType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(l PlanStreamLine) bool {
		// The write deadline is per line: the whole stream may take as
		// long as the evaluation's own timeout.
		_ = rc.SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
		b, err := json.Marshal(l)
		if err != nil {
			return false
		}
		if _, err := w.Write(append(b, '\n')); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	var reported *string // the line last sent
	report := func() bool {
		p := &PlanProgress{Stage: *stage.Load(), Commit: commit, Elapsed: time.Since(start).Seconds()}
		if reported = line.Load(); reported != nil {
			p.Line = *reported
		}
		return send(PlanStreamLine{Progress: p})
	}
	// The first line, before the work starts: it always shows the first
	// stage, however quickly the fetch then goes.
	if !report() {
		return
	}
	type answer struct {
		v   PlanView
		err error
	}
	done := make(chan answer, 1)
	go func() {
		wctx := progress.With(ctx, func(l string) {
			line.Store(&l)
			signal()
		})
		if s.o.Source != nil {
			if _, err := s.o.Source.Fetch(wctx); err != nil {
				s.log.Warn("fetch before plan failed; planning from the mirror as it is", "err", err)
			}
			stage.Store(&evaluating)
			signal()
		}
		p, err := reconciler.PlanCommit(wctx, s.o.Evaluator, commit, st)
		v := NewPlanView(p, "")
		v.Freshness = fresh
		done <- answer{v, err}
	}()

	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	var gap <-chan time.Time // armed while a change waits for progressGap
	last := time.Now()
	for {
		select {
		case a := <-done:
			// nix's last line, if not sent yet: for a failure it is
			// often the reason.
			if line.Load() != reported && !report() {
				return
			}
			if a.err != nil {
				send(PlanStreamLine{Error: fmt.Errorf("planning commit %s: %w", commit, a.err).Error(), Status: http.StatusUnprocessableEntity})
				return
			}
			send(PlanStreamLine{Plan: &a.v})
			return
		case <-ctx.Done():
			<-done // the work ends with the request
			return
		case <-changed:
			if wait := progressGap - time.Since(last); wait > 0 {
				if gap == nil {
					gap = time.After(wait)
				}
				continue
			}
		case <-gap:
		case <-tick.C:
		}
		gap, last = nil, time.Now()
		if !report() {
			<-done
			return
		}
	}
}

// PlanWithProgress is [Client.Plan] with progress: while the node fetches
// and evaluates, report is called with each progress line it sends (the
// stage, the time so far and nix's latest log line). A node too old to
// stream answers with the plan alone, and report is not called.
func (c *Client) PlanWithProgress(ctx context.Context, commit string, report func(PlanProgress)) (PlanView, error) {
	body, err := json.Marshal(PlanRequest{Commit: commit})
	if err != nil {
		return PlanView{}, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", c.base+"/v1/plan?progress=1", strings.NewReader(string(body)))
	if err != nil {
		return PlanView{}, fmt.Errorf("--server %q: %w", c.base, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", NDJSONType+", application/json")
	c.authorize(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return PlanView{}, c.failed("POST", "/v1/plan", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 || !strings.HasPrefix(resp.Header.Get("Content-Type"), NDJSONType) {
		var v PlanView
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		if err != nil {
			return v, c.failed("POST", "/v1/plan", fmt.Errorf("reading the answer: %w", err))
		}
		if resp.StatusCode >= 300 {
			return v, errorOf(resp.StatusCode, data)
		}
		if err := json.Unmarshal(data, &v); err != nil {
			return v, fmt.Errorf("decoding the answer of POST /v1/plan from %s: %w", c.base, err)
		}
		return v, nil
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, maxAnswer))
	sc.Buffer(make([]byte, 0, 64<<10), maxAnswer)
	for sc.Scan() {
		var l PlanStreamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return PlanView{}, fmt.Errorf("decoding a progress line of POST /v1/plan from %s: %w", c.base, err)
		}
		switch {
		case l.Plan != nil:
			return *l.Plan, nil
		case l.Error != "" || l.Status != 0:
			return PlanView{}, &Error{Code: l.Status, Message: l.Error}
		case l.Progress != nil && report != nil:
			report(*l.Progress)
		}
	}
	err = sc.Err()
	if err == nil {
		err = errors.New("the stream ended without a plan or an error (did the node stop?)")
	}
	return PlanView{}, c.failed("POST", "/v1/plan", fmt.Errorf("reading the progress stream: %w", err))
}
