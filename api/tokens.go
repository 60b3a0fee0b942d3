package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
)

// handleCreateToken makes a bearer token: this node generates the secret,
// commits only its hash (CreateToken) and answers the secret, once. The
// secret is never stored, logged or replicated.
func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	if !decode(w, r, &req, `{"name": "NAME", "role": "read|operate|admin"}`) {
		return
	}
	if err := replicated.ValidTokenName(req.Name); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if _, err := pki.ParseRole(req.Role); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	secret := newTokenSecret()
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	res, err := s.o.Replica.Propose(ctx, replicated.Command{Type: replicated.CmdCreateToken, At: s.o.Now(),
		Actor:       callerOf(r.Context()).Name,
		CreateToken: &replicated.CreateToken{Name: req.Name, Role: req.Role, Hash: tokenHash(secret)}})
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, fmt.Sprintf("creating token %s failed; the outcome is unknown (is a quorum of nodes up? see `blixard token list`)", req.Name), err)
		return
	}
	if !res.OK() {
		writeError(w, http.StatusConflict, errors.New(res.Message))
		return
	}
	writeJSON(w, http.StatusCreated, TokenAnswer{Name: req.Name, Role: req.Role, Token: secret,
		Message: "shown only now: store it in a file only its user can read, and pass it with --token-file (or BLIXARD_TOKEN_FILE)"})
}

// handleListTokens answers the tokens, without their hashes.
func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) {
	st, _, ok := s.read(w, r)
	if !ok {
		return
	}
	out := make([]TokenView, 0, len(st.Tokens))
	for _, t := range st.Tokens {
		out = append(out, TokenView{Name: t.Name, Role: t.Role, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

// handleRevokeToken removes a token (RevokeToken); every node refuses it
// once it applied the command.
func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := replicated.ValidTokenName(name); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	res, err := s.o.Replica.Propose(ctx, replicated.Command{Type: replicated.CmdRevokeToken, At: s.o.Now(),
		Actor: callerOf(r.Context()).Name, RevokeToken: &replicated.RevokeToken{Name: name}})
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, fmt.Sprintf("revoking token %s failed; the outcome is unknown (is a quorum of nodes up? see `blixard token list`)", name), err)
		return
	}
	switch res.Code {
	case replicated.ResultOK:
		writeJSON(w, http.StatusOK, RevokeAnswer{Name: name, Message: res.Message})
	case replicated.ResultUnknownToken:
		writeError(w, http.StatusNotFound, errors.New(res.Message))
	default:
		writeError(w, http.StatusConflict, errors.New(res.Message))
	}
}

// handleEvents answers the replicated event log, oldest first: what
// changed, when, and who asked through the API.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	if st, _, ok := s.read(w, r); ok {
		ev := st.Events
		if ev == nil {
			ev = []replicated.Event{}
		}
		writeJSON(w, http.StatusOK, ev)
	}
}
