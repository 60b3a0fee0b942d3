package reconciler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Verifier says whether a fetched commit may be evaluated: whether it is
// signed by a key the operator trusts (`serve --trust`). In Blixard it is
// gitsync.Verifier, which reads the commit from the leader's mirror.
//
// The reconciler asks before it starts an evaluation, so nix never runs on
// a commit that is refused. Without a Verifier (Options.Verifier nil, no
// trust files) every fetched commit is evaluated and revisions record no
// signer.
type Verifier interface {
	// Verify returns who signed commit, in words a person recognises
	// ("alice@example.org (SSH key SHA256:…)"); it is recorded on the
	// revision.
	//
	// An error means commit must not be evaluated now. An error that
	// implements Temporary() bool and returns true (the commit could not
	// be read) is retried like any transient error. Any other error is a
	// refusal, final for that commit: it is recorded as the
	// SignatureRefused condition and the commit is never evaluated. A
	// refusal's message names the commit, the signer and why, and says what
	// to do; signer is then who signed, as far as the signature says
	// ("unsigned" when it is not signed).
	Verify(ctx context.Context, commit string) (signer string, err error)
}

// VerifyFirst returns an Evaluator that evaluates a commit only after v
// verified it, for previews (POST /v1/plan, `blixard plan --commit`) on a
// node with trust files: a preview must not make the leader run nix on a
// commit the loop would refuse. A refusal or a failed check is returned as
// the evaluation's error and recorded nowhere. With a nil v it returns ev.
func VerifyFirst(v Verifier, ev Evaluator) Evaluator {
	if v == nil {
		return ev
	}
	return verifyFirst{v: v, ev: ev}
}

type verifyFirst struct {
	v  Verifier
	ev Evaluator
}

func (f verifyFirst) Evaluate(ctx context.Context, commit string) (Evaluation, error) {
	if _, err := f.v.Verify(ctx, commit); err != nil {
		return Evaluation{}, fmt.Errorf("not evaluated: %w", err)
	}
	return f.ev.Evaluate(ctx, commit)
}

// evalRequest is an evaluation a pass asks the loop to start: the commit
// and who signed it ("" without a Verifier).
type evalRequest struct {
	commit, signer string
}

// reconcileTrust verifies commit, the one the pass would evaluate ("" for
// none), when a Verifier is configured, and returns the evaluation to start.
// A refusal is proposed as SignatureRefused and nothing is evaluated; a
// failed check is a transient error. It also clears a SignatureRefused that
// no longer holds: this term's last good fetch found another commit.
//
// Sets SignatureRefused (the refused commit); clears SignatureRefused.
func (r *Reconciler) reconcileTrust(ctx context.Context, state *replicated.State, commit string, now time.Time) (evalRequest, error) {
	l := &r.loop
	var req evalRequest
	refused := false
	switch {
	case commit == "":
	case r.opts.Verifier == nil:
		req = evalRequest{commit: commit}
	default:
		signer, err := r.opts.Verifier.Verify(ctx, commit)
		var tmp temporary
		switch {
		case err == nil:
			r.opts.Logger.Info("signature verified", "commit", commit, "signer", signer)
			req = evalRequest{commit: commit, signer: signer}
		case ctx.Err() != nil:
			return evalRequest{}, nil // shutting down: no verdict
		case errors.As(err, &tmp) && tmp.Temporary():
			return evalRequest{}, fmt.Errorf("checking the signature of commit %s (it is not evaluated until that works): %w", commit, err)
		default:
			refused = true
			if err := r.recordSignatureRefused(ctx, state, commit, signer, err, now); err != nil {
				return evalRequest{}, err
			}
		}
	}
	cond, set := state.Condition(replicated.SignatureRefused)
	if !set || refused || !l.fetched || l.fetchErr != nil || l.commit == "" || cond.Commit == l.commit {
		return req, nil
	}
	return req, r.propose(ctx, "clearing SignatureRefused", replicated.Command{Type: replicated.CmdClearCondition, At: now,
		ClearCondition: &replicated.ClearCondition{Type: replicated.SignatureRefused}})
}

// recordSignatureRefused records this leader's refusal of commit as the
// SignatureRefused condition (never retryable), unless exactly that is
// already recorded. The message is the Verifier's, with the signer added
// when the message does not name it.
func (r *Reconciler) recordSignatureRefused(ctx context.Context, state *replicated.State, commit, signer string, err error, now time.Time) error {
	msg := err.Error()
	if msg == "" {
		msg = fmt.Sprintf("commit %s is not trusted", commit)
	}
	if signer != "" && !strings.Contains(msg, signer) {
		msg += " (signer " + signer + ")"
	}
	r.opts.Logger.Error("commit refused before evaluation: its signature is not trusted; keeping the current revision",
		"commit", commit, "signer", signer, "err", err)
	if c, ok := state.Condition(replicated.SignatureRefused); ok && c.Commit == commit && c.Message == msg {
		return nil
	}
	return r.propose(ctx, "recording the refused signature of "+commit, replicated.Command{Type: replicated.CmdSetCondition, At: now,
		SetCondition: &replicated.SetCondition{Type: replicated.SignatureRefused, Commit: commit, Message: msg}})
}
