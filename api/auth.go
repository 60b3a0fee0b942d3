package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/blixard/blixard/pki"
)

// Who may call what. A caller authenticates with a client certificate the
// cluster CA signed (its role is in the certificate; a node's certificate
// is admin) or with a bearer token (`blixard token create`; its role is
// replicated with its hash). Each endpoint needs one role, and a role
// allows everything the roles below it allow:
//
//	read     status, state, nodes, history, diff, reconciler, events, logs, metrics, rollout status, wait
//	operate  sync, plan --commit, node cordon|drain|ready, vm start|stop|restart, suspend, resume, rollback
//	admin    members, tokens
//
// /healthz and the push webhook (HMAC) need no credentials.

// Anonymous is the caller of an API without authentication
// ([Options.Insecure]), as the event log names it.
const Anonymous = "anonymous"

// TokenPrefix starts every token secret, so secret scanners and people
// recognise one.
const TokenPrefix = "blx_"

// maxTokenSecret bounds the Authorization header's token: a secret is
// TokenPrefix and 43 base64 characters.
const maxTokenSecret = 128

// Caller is who sent a request, as the API authenticated it.
type Caller struct {
	// Name is who the event log names: a certificate's user ("alice") or
	// node ("node-2"), "token NAME", or [Anonymous].
	Name string
	Role pki.Role
}

type callerKey struct{}

// callerOf is the caller the route's guard authenticated (the zero Caller
// on public routes).
func callerOf(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

// roleRank orders the roles; 0 is no role.
func roleRank(r pki.Role) int {
	switch r {
	case pki.RoleRead:
		return 1
	case pki.RoleOperate:
		return 2
	case pki.RoleAdmin:
		return 3
	}
	return 0
}

// allows reports whether a caller with role have may call an endpoint that
// needs role need.
func allows(have, need pki.Role) bool {
	return roleRank(need) > 0 && roleRank(have) >= roleRank(need)
}

// guard authenticates the request, refuses a caller whose role is below
// need, and hands the caller to h through the request's context.
func (s *Server) guard(need pki.Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.authenticate(w, r)
		if !ok {
			return
		}
		if !allows(c.Role, need) {
			hangUp(w)
			writeError(w, http.StatusForbidden, fmt.Errorf("%s (role %s) may not %s %s: it needs role %s (a certificate from `blixard cert issue --user NAME --role %s`, or a token from `blixard token create --role %s`)",
				c.Name, c.Role, r.Method, r.URL.Path, need, need, need))
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

// authenticate returns the request's caller: everyone is an admin named
// Anonymous without authentication; otherwise the verified client
// certificate decides, and without one the bearer token. It answers 401
// (or 503 when the tokens cannot be read) and returns false when neither
// says who the caller is.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (Caller, bool) {
	if s.o.Insecure {
		return Caller{Name: Anonymous, Role: pki.RoleAdmin}, true
	}
	// VerifiedChains is set only for a certificate the TLS stack verified
	// against the cluster CA; a merely presented one never counts.
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		id, err := pki.IdentityOf(r.TLS.VerifiedChains[0][0])
		if err != nil {
			s.unauthorized(w, fmt.Errorf("client certificate: %w", err))
			return Caller{}, false
		}
		return Caller{Name: id.Name, Role: id.Role}, true
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		s.unauthorized(w, errors.New("no credentials: present a client certificate from the cluster CA (--cert and --key) or a bearer token (--token-file)"))
		return Caller{}, false
	}
	scheme, secret, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") || !strings.HasPrefix(secret, TokenPrefix) || len(secret) > maxTokenSecret {
		s.unauthorized(w, fmt.Errorf("the Authorization header is not `Bearer %s…`: give a token from `blixard token create`", TokenPrefix))
		return Caller{}, false
	}
	st, err := s.o.Replica.LocalRead()
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, "checking the token: reading the local replica failed", err)
		return Caller{}, false
	}
	want := sha256.Sum256([]byte(secret))
	var (
		match Caller
		found int
	)
	// Every token is compared, in constant time, so the answer's timing
	// says nothing about which stored hash came close.
	for _, t := range st.Tokens {
		have, err := hex.DecodeString(t.Hash)
		if err != nil {
			continue
		}
		if subtle.ConstantTimeCompare(have, want[:]) == 1 {
			match, found = Caller{Name: "token " + t.Name, Role: pki.Role(t.Role)}, 1
		}
	}
	if found == 0 {
		s.unauthorized(w, errors.New("unknown or revoked token: see `blixard token list` (admin), or create one with `blixard token create`"))
		return Caller{}, false
	}
	return match, true
}

// unauthorized answers 401 and hangs up.
func (s *Server) unauthorized(w http.ResponseWriter, err error) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="blixard"`)
	hangUp(w)
	writeError(w, http.StatusUnauthorized, fmt.Errorf("node %d: %w", s.o.Replica.NodeID(), err))
}

// hangUp ends the connection after the answer without reading the rest
// of the request's body (net/http would otherwise read up to 256 KiB of
// it, for as long as ReadTimeout allows): a refused client gets nothing
// more from the node, and a slow body it promised holds no connection.
func hangUp(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

// newTokenSecret returns a new token secret: TokenPrefix and 256 random
// bits. Only its [tokenHash] is stored.
func newTokenSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it crashes the program instead)
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// tokenHash is the hex SHA-256 of a token secret, as the replicated state
// keeps it. A plain hash suffices: the secret is 256 random bits, so the
// hash cannot be reversed by guessing.
func tokenHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}
