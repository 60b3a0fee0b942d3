package gitsync

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// Bounds of [WebhookHandler]. They keep a flood of deliveries, signed or
// not, from costing more than a few hundred KiB of memory: a body is never
// buffered, only streamed through the HMAC.
const (
	// MaxWebhookBody is the largest body read for a signature check; a
	// larger one is refused with 413 (at once when its Content-Length says
	// so, else as soon as the limit is passed) and the push is picked up at
	// the next poll. Push payloads are far smaller: GitLab, Gitea and
	// Forgejo list at most 20 commits; GitHub's only exceed it for pushes of
	// hundreds of commits.
	MaxWebhookBody = 1 << 20
	// MaxWebhookDeliveries is how many deliveries are handled at once;
	// more get 503 with Retry-After. A delivery holds its slot only while
	// its body streams through the HMAC.
	MaxWebhookDeliveries = 8
)

// WebhookHandler returns an http.Handler for push webhooks. It accepts only
// POST (405 otherwise) and at most [MaxWebhookDeliveries] deliveries at once
// (503 with Retry-After beyond). When secret is non-empty a delivery must
// prove it knows the secret, in one of the ways forges do (401 otherwise):
//
//   - an HMAC-SHA256 of the body: GitHub's `X-Hub-Signature-256:
//     sha256=HEX`, or Gitea's `X-Gitea-Signature: HEX` (or Forgejo's
//     `X-Forgejo-Signature`); the body, at most [MaxWebhookBody] (413
//     beyond), streams through the HMAC and is never kept;
//   - GitLab's `X-Gitlab-Token: SECRET`, compared in constant time; the
//     body is not read.
//
// When secret is empty every POST is accepted and no body is read. An
// accepted request gets 202 and a non-blocking send on trigger (dropped when
// one is already pending). Answers are fixed texts: they never carry an
// error's text, a path or the secret.
//
// The payload is never trusted for content, nor parsed: it only triggers a
// re-fetch, and the commit comes from the remote when the owner of trigger
// calls [Mirror.Fetch]. Give trigger a buffer of 1 (Blixard passes the
// reconciler's Triggers channel, which on a node that does not lead asks
// the leader to fetch).
func WebhookHandler(secret string, trigger chan<- struct{}, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.Default()
	}
	h := &webhook{trigger: trigger, log: logger, slots: make(chan struct{}, MaxWebhookDeliveries)}
	if secret != "" {
		h.key = []byte(secret)
		sum := sha256.Sum256(h.key)
		h.keySum = sum[:]
	}
	return h
}

// webhook is the handler WebhookHandler returns.
type webhook struct {
	key     []byte // the secret; nil accepts every POST
	keySum  []byte // sha256 of key, for the constant-time token compare
	trigger chan<- struct{}
	log     *slog.Logger
	// slots holds one token per delivery being handled: a semaphore of
	// MaxWebhookDeliveries.
	slots chan struct{}
}

func (h *webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "webhook accepts POST only", http.StatusMethodNotAllowed)
		return
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		// Debug, not Warn: a flood must not become a flood of logs; the
		// sender's delivery log shows the 503.
		h.log.Debug("webhook refused: too many deliveries at once", "remote", r.RemoteAddr, "max", MaxWebhookDeliveries)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many webhook deliveries at once; retry later", http.StatusServiceUnavailable)
		return
	}
	if r.ContentLength > MaxWebhookBody {
		h.log.Warn("webhook refused: body too large", "remote", r.RemoteAddr, "bytes", r.ContentLength, "max", MaxWebhookBody)
		http.Error(w, "webhook body too large", http.StatusRequestEntityTooLarge)
		return
	}
	if code, answer := h.verify(w, r); code != 0 {
		http.Error(w, answer, code)
		return
	}
	select {
	case h.trigger <- struct{}{}:
		h.log.Info("webhook accepted; fetch requested", "remote", r.RemoteAddr, "event", eventName(r.Header))
	default:
		h.log.Debug("webhook accepted; a fetch is already pending", "remote", r.RemoteAddr)
	}
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, "accepted\n")
}

// verify checks that a delivery knows the secret. It returns 0, or the
// status to answer with and the answer's text.
func (h *webhook) verify(w http.ResponseWriter, r *http.Request) (int, string) {
	if h.key == nil {
		return 0, ""
	}
	if sig, ok := signature(r.Header); ok {
		// A malformed signature is refused before the body is read.
		want, err := hex.DecodeString(sig)
		if err != nil || len(want) != sha256.Size {
			return h.refuse(r, "the signature is not a hex SHA-256 HMAC")
		}
		mac := hmac.New(sha256.New, h.key)
		if _, err := io.Copy(mac, http.MaxBytesReader(w, r.Body, MaxWebhookBody)); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				h.log.Warn("webhook refused: body too large", "remote", r.RemoteAddr, "max", MaxWebhookBody)
				return http.StatusRequestEntityTooLarge, "webhook body too large"
			}
			h.log.Debug("webhook refused: reading the body failed", "remote", r.RemoteAddr, "err", err)
			return http.StatusBadRequest, "cannot read webhook body"
		}
		if !hmac.Equal(want, mac.Sum(nil)) {
			return h.refuse(r, "wrong signature")
		}
		return 0, ""
	}
	if token := r.Header.Get("X-Gitlab-Token"); token != "" {
		// Compared as hashes, so neither the time taken nor its length
		// says anything about the secret.
		sum := sha256.Sum256([]byte(token))
		if subtle.ConstantTimeCompare(sum[:], h.keySum) != 1 {
			return h.refuse(r, "wrong X-Gitlab-Token")
		}
		return 0, ""
	}
	return h.refuse(r, "no signature or token")
}

func (h *webhook) refuse(r *http.Request, why string) (int, string) {
	h.log.Warn("webhook rejected; check the webhook secret on both sides", "why", why, "remote", r.RemoteAddr)
	return http.StatusUnauthorized, "invalid or missing signature"
}

// signature returns the hex HMAC-SHA256 signature GitHub, Gitea or Forgejo
// sent, if any header carries one. A GitHub header without its sha256=
// prefix counts as a malformed signature.
func signature(h http.Header) (string, bool) {
	if v := h.Get("X-Hub-Signature-256"); v != "" {
		s, ok := strings.CutPrefix(v, "sha256=")
		if !ok {
			return "", true
		}
		return strings.TrimSpace(s), true
	}
	for _, k := range []string{"X-Gitea-Signature", "X-Forgejo-Signature"} {
		if v := h.Get(k); v != "" {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

func eventName(h http.Header) string {
	for _, k := range []string{"X-GitHub-Event", "X-Gitea-Event", "X-Forgejo-Event", "X-Gitlab-Event"} {
		if v := h.Get(k); v != "" {
			return v
		}
	}
	return ""
}
