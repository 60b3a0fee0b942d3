package api

// GitOps controls: rollouts, following the tracked ref, rollbacks and the
// convergence of a commit.
//
//	GET  /v1/rollouts            every rollout, the revision and whether the cluster follows its ref (read)
//	GET  /v1/rollouts/{name}     one declared VM's (read)
//	GET  /v1/converge?commit=SHA how far a commit is rolled out; `blixard wait` polls it (read)
//	POST /v1/suspend             stop following the tracked ref (operate)
//	POST /v1/resume              follow it again (operate)
//	POST /v1/rollback            {"revision": "N or SHA"}, or no body: the previous revision (operate)

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// RolloutsView is the answer of GET /v1/rollouts and `blixard rollout
// status --json`: every rolling update (the running one, or the last one
// of each VM with an update block) and whether the cluster follows its
// tracked ref.
type RolloutsView struct {
	Freshness
	// Revision is the running revision (nil before the first plan).
	Revision *replicated.Revision `json:"revision"`
	// Following is false while following the tracked ref is suspended.
	Following bool `json:"following"`
	// Suspended says since when and by whom, the rollback target and the
	// fetched commit that waits (pending); nil while following.
	Suspended *replicated.Suspension `json:"suspended,omitempty"`
	// Rollouts are sorted by VM.
	Rollouts []reconciler.RolloutView `json:"rollouts"`
}

// ConvergeView is the answer of GET /v1/converge: how far a commit is
// rolled out (see reconciler.Converge).
type ConvergeView struct {
	Freshness
	reconciler.Convergence
}

// RollbackRequest is the body of POST /v1/rollback: a revision number
// (`blixard history`) or a commit (at least 7 hex digits); empty for the
// previous revision.
type RollbackRequest struct {
	Revision string `json:"revision,omitempty"`
}

// FollowingAnswer is the answer of POST /v1/suspend, /v1/resume and
// /v1/rollback.
type FollowingAnswer struct {
	Following bool `json:"following"`
	// Rollback is the revision a rollback applies (rollback only).
	Rollback *replicated.RollbackTarget `json:"rollback,omitempty"`
	Message  string                     `json:"message"`
}

// rolloutsView builds the answer of GET /v1/rollouts from st at now; vm,
// when not "", keeps only that declared VM's rollout.
func rolloutsView(st *replicated.State, vm string, now time.Time) RolloutsView {
	v := RolloutsView{Revision: st.Revision, Following: st.Suspended == nil, Suspended: st.Suspended, Rollouts: []reconciler.RolloutView{}}
	names := make([]string, 0, len(st.Rollouts))
	for name := range st.Rollouts {
		if vm == "" || name == vm {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		if rv, ok := reconciler.ViewRollout(st, name, now); ok {
			v.Rollouts = append(v.Rollouts, rv)
		}
	}
	return v
}

func (s *Server) handleRollouts(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name != "" {
		if err := spec.ValidName(name); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("VM name %q: %w", name, err))
			return
		}
	}
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	v := rolloutsView(st, name, s.o.Now())
	v.Freshness = fresh
	if name != "" && len(v.Rollouts) == 0 {
		why := "it has no update block, or no revision changed it since it got one"
		if _, declared := desiredVM(st, name); !declared {
			why = "it is not a declared VM of the committed revision"
		}
		writeError(w, http.StatusNotFound, fmt.Errorf("VM %s has no rollout: %s (see `blixard rollout status`)", name, why))
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// desiredVM is the declared VM name of the committed revision.
func desiredVM(st *replicated.State, name string) (spec.VM, bool) {
	if st.Desired == nil {
		return spec.VM{}, false
	}
	vm, ok := st.Desired.VMs[name]
	return vm, ok
}

// commitArg is a commit or a prefix of one: 4 to 40 hex digits.
func commitArg(s string) bool {
	if len(s) < 4 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func (s *Server) handleConverge(w http.ResponseWriter, r *http.Request) {
	commit := ""
	for key, vals := range r.URL.Query() {
		switch key {
		case "commit":
			if len(vals) != 1 || !commitArg(vals[0]) {
				writeError(w, http.StatusBadRequest, fmt.Errorf("GET %s: commit=%q: want one commit, 4 to 64 lower-case hex digits", r.URL.Path, strings.Join(vals, ",")))
				return
			}
			commit = vals[0]
		case "consistent":
		default:
			writeError(w, http.StatusBadRequest, fmt.Errorf("GET %s: unknown query parameter %q (known: commit=SHA)", r.URL.Path, key))
			return
		}
	}
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, ConvergeView{Freshness: fresh, Convergence: reconciler.Converge(st, commit)})
}

// ResolveRollback finds the revision `blixard rollback ARG` applies in
// st's history: ARG a revision number, or a commit (or a prefix of at
// least 7 hex digits: its newest revision); "" the previous revision: the
// newest one before the running revision (before the rollback's, while
// rolled back, so that rolling back again goes further back) whose commit
// differs from it.
func ResolveRollback(st *replicated.State, arg string) (replicated.Revision, error) {
	hist := st.History
	if len(hist) == 0 {
		return replicated.Revision{}, errors.New("no revision is committed yet: there is nothing to roll back to")
	}
	if arg == "" {
		base := hist[len(hist)-1]
		if sus := st.Suspended; sus != nil && sus.Rollback != nil {
			if i := slices.IndexFunc(hist, func(h replicated.Revision) bool { return h.ID == sus.Rollback.Revision }); i >= 0 {
				base = hist[i]
			}
		}
		for i := len(hist) - 1; i >= 0; i-- {
			if h := hist[i]; h.ID < base.ID && h.Commit != base.Commit {
				return h, nil
			}
		}
		return replicated.Revision{}, fmt.Errorf("no revision before revision %d (commit %s) runs another commit in the history (the last %d revisions); see `blixard history`",
			base.ID, base.Commit, replicated.MaxRevisionHistory)
	}
	if id, err := strconv.ParseUint(arg, 10, 64); err == nil {
		if i := slices.IndexFunc(hist, func(h replicated.Revision) bool { return h.ID == id }); i >= 0 {
			return hist[i], nil
		}
		if len(arg) < 7 {
			return replicated.Revision{}, fmt.Errorf("revision %d is not in the history (the last %d revisions); see `blixard history`", id, replicated.MaxRevisionHistory)
		}
	}
	if len(arg) < 7 || !commitArg(arg) {
		return replicated.Revision{}, fmt.Errorf("%q is neither a revision number nor a commit (at least 7 hex digits); see `blixard history`", arg)
	}
	var found *replicated.Revision
	for i := len(hist) - 1; i >= 0; i-- {
		h := hist[i]
		if !strings.HasPrefix(h.Commit, arg) {
			continue
		}
		if found != nil && found.Commit != h.Commit {
			return replicated.Revision{}, fmt.Errorf("commit %s is ambiguous: it starts both %s and %s; give more digits", arg, found.Commit, h.Commit)
		}
		if found == nil {
			found = &h
		}
	}
	if found == nil {
		return replicated.Revision{}, fmt.Errorf("no revision of the history (the last %d revisions) runs commit %s; see `blixard history`",
			replicated.MaxRevisionHistory, arg)
	}
	return *found, nil
}

// setFollowing commits SetFollowing for the caller and answers.
func (s *Server) setFollowing(w http.ResponseWriter, r *http.Request, what string, c replicated.SetFollowing) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	res, err := s.o.Replica.Propose(ctx, replicated.Command{Type: replicated.CmdSetFollowing, At: s.o.Now(),
		Actor: callerOf(r.Context()).Name, SetFollowing: &c})
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, what+" failed; the outcome is unknown (is a quorum of nodes up? see `blixard events`)", err)
		return
	}
	if !res.OK() {
		writeError(w, http.StatusConflict, errors.New(res.Message))
		return
	}
	if s.o.Reconciler != nil {
		// A pass applies it at once (resume: the pending commit; rollback:
		// its commit) instead of at the next resync.
		s.o.Reconciler.Trigger()
	}
	ans := FollowingAnswer{Following: !c.Suspended, Message: res.Message}
	if st, err := s.o.Replica.LocalRead(); err == nil && st.Suspended != nil {
		ans.Rollback = st.Suspended.Rollback
	}
	writeJSON(w, http.StatusOK, ans)
}

func (s *Server) handleSuspend(w http.ResponseWriter, r *http.Request) {
	if !decodeOptional(w, r, &struct{}{}, "no body, or {}") {
		return
	}
	s.setFollowing(w, r, "suspending following", replicated.SetFollowing{Suspended: true})
}

func (s *Server) handleResume(w http.ResponseWriter, r *http.Request) {
	if !decodeOptional(w, r, &struct{}{}, "no body, or {}") {
		return
	}
	s.setFollowing(w, r, "resuming following", replicated.SetFollowing{})
}

func (s *Server) handleRollback(w http.ResponseWriter, r *http.Request) {
	var req RollbackRequest
	if !decodeOptional(w, r, &req, `no body (the previous revision), or {"revision": "N or a commit"}`) {
		return
	}
	// The revision is resolved against a linearizable read: the history
	// the rollback names must be the cluster's, not a stale replica's.
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	st, err := s.o.Replica.Read(ctx)
	cancel()
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, "reading the history for the rollback failed (is a quorum of nodes up?)", err)
		return
	}
	rev, err := ResolveRollback(st, req.Revision)
	if err != nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("rollback: %w", err))
		return
	}
	s.setFollowing(w, r, fmt.Sprintf("rolling back to revision %d", rev.ID), replicated.SetFollowing{Suspended: true, Rollback: rev.ID})
}

// WriteRollouts writes the rollouts as `blixard rollout status` prints
// them at now: a warning when stale, the revision and whether the cluster
// follows its ref (with the pending commit), then each VM's rollout: its
// phase, commits, progress, current wave with each instance's health,
// deadline, what comes next, its policy, its error and reverted commits.
func WriteRollouts(w io.Writer, v RolloutsView, now time.Time) error {
	WriteStale(w, v.Freshness)
	if v.Revision == nil {
		fmt.Fprintln(w, "Revision: none committed yet")
	} else {
		fmt.Fprintf(w, "Revision: %d  commit %s\n", v.Revision.ID, short(v.Revision.Commit, 12))
	}
	if sus := v.Suspended; sus != nil {
		fmt.Fprintf(w, "Following: SUSPENDED since %s", sus.Since.Local().Format(time.RFC3339))
		if sus.By != "" {
			fmt.Fprintf(w, " by %s", sus.By)
		}
		fmt.Fprintln(w, " (`blixard resume` follows the tracked ref again)")
		if rb := sus.Rollback; rb != nil {
			fmt.Fprintf(w, "  rolled back to revision %d (commit %s)\n", rb.Revision, short(rb.Commit, 12))
		}
		if sus.Pending != "" {
			fmt.Fprintf(w, "  pending: commit %s, fetched %s, not applied\n", short(sus.Pending, 12), sus.PendingAt.Local().Format(time.RFC3339))
		}
	} else {
		fmt.Fprintln(w, "Following: the tracked ref")
	}
	if len(v.Rollouts) == 0 {
		fmt.Fprintln(w, "\nNo rollouts: no VM with an update block was changed by a revision.")
		return nil
	}
	for _, r := range v.Rollouts {
		fmt.Fprintf(w, "\n%s: %s, commit %s → %s, %d of %d instances updated", r.VM, strings.ToUpper(string(r.Phase)),
			short(orDash(r.From), 12), short(r.To, 12), r.Updated, r.Total)
		if r.Waves > 0 {
			fmt.Fprintf(w, ", wave %d", r.Waves)
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "  policy: %s\n", r.Update)
		if len(r.WaveHealth) > 0 && !r.Done() {
			fmt.Fprintf(w, "  wave %d started %s", r.Waves, r.WaveStarted.Local().Format(time.RFC3339))
			switch {
			case !r.HealthySince.IsZero():
				fmt.Fprintf(w, ", healthy since %s", r.HealthySince.Local().Format(time.RFC3339))
			case now.Before(r.Deadline):
				fmt.Fprintf(w, ", deadline in %s", r.Deadline.Sub(now).Round(time.Second))
			default:
				fmt.Fprintf(w, ", deadline passed %s ago", now.Sub(r.Deadline).Round(time.Second))
			}
			fmt.Fprintln(w, ":")
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			for _, h := range r.WaveHealth {
				fmt.Fprintf(tw, "    %s\tnode %d\t%s\n", h.VM, h.Node, h.Status)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		if r.Next != "" {
			fmt.Fprintf(w, "  next: %s\n", r.Next)
		}
		if r.Done() && !r.Finished.IsZero() {
			fmt.Fprintf(w, "  finished %s\n", r.Finished.Local().Format(time.RFC3339))
		}
		if r.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", r.Error)
		}
		for _, rc := range r.Reverted {
			fmt.Fprintf(w, "  reverted: commit %s at %s\n", short(rc.Commit, 12), rc.At.Local().Format(time.RFC3339))
		}
	}
	return nil
}

// WriteConvergence writes one line of a commit's rollout: its state and
// why, then the instances not ready yet.
func WriteConvergence(w io.Writer, c reconciler.Convergence) error {
	what := "commit " + short(c.Commit, 12)
	if c.Commit == "" {
		what = "the running revision"
	}
	if _, err := fmt.Fprintf(w, "%s: %s: %s\n", what, c.State, c.Message); err != nil {
		return err
	}
	for _, h := range c.Waiting {
		if _, err := fmt.Fprintf(w, "  %s: %s\n", h.VM, h.Status); err != nil {
			return err
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
