package gitsync

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// maxWebhookBody bounds the body read for signature checks (GitHub caps
// payloads at 25 MB).
const maxWebhookBody = 25 << 20

// WebhookHandler returns an http.Handler for push webhooks. It accepts only
// POST (405 otherwise). When secret is non-empty the body must carry a valid
// HMAC-SHA256 signature, either GitHub-style `X-Hub-Signature-256:
// sha256=HEX` or Gitea/Forgejo-style `X-Gitea-Signature: HEX` (or
// `X-Forgejo-Signature`); a missing or wrong signature gets 401. When secret
// is empty every POST is accepted. An accepted request gets 202 and a
// non-blocking send on trigger (dropped when one is already pending).
//
// The payload is never trusted for content: it only triggers a re-fetch, and
// the commit comes from the remote when the owner of trigger calls
// [Mirror.Fetch]. Give trigger a buffer of 1 (Blixard passes the leader
// reconciler's Triggers channel).
func WebhookHandler(secret string, trigger chan<- struct{}, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.Default()
	}
	key := []byte(secret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "webhook accepts POST only", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				http.Error(w, "webhook body too large", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "cannot read webhook body", http.StatusBadRequest)
			return
		}
		if len(key) > 0 && !validSignature(key, body, r.Header) {
			logger.Warn("webhook rejected: missing or wrong signature; check the webhook secret on both sides",
				"remote", r.RemoteAddr)
			http.Error(w, "invalid or missing signature", http.StatusUnauthorized)
			return
		}
		select {
		case trigger <- struct{}{}:
			logger.Info("webhook accepted; fetching", "remote", r.RemoteAddr, "event", eventName(r.Header))
		default:
			logger.Debug("webhook accepted; a fetch is already pending", "remote", r.RemoteAddr)
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "accepted\n")
	})
}

// validSignature checks the HMAC-SHA256 of body against the signature
// headers GitHub and Gitea/Forgejo send, in constant time.
func validSignature(key, body []byte, h http.Header) bool {
	var sig string
	if v := h.Get("X-Hub-Signature-256"); v != "" {
		s, ok := strings.CutPrefix(v, "sha256=")
		if !ok {
			return false
		}
		sig = s
	} else if v := h.Get("X-Gitea-Signature"); v != "" {
		sig = v
	} else if v := h.Get("X-Forgejo-Signature"); v != "" {
		sig = v
	} else {
		return false
	}
	got, err := hex.DecodeString(strings.TrimSpace(sig))
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

func eventName(h http.Header) string {
	for _, k := range []string{"X-GitHub-Event", "X-Gitea-Event", "X-Forgejo-Event"} {
		if v := h.Get(k); v != "" {
			return v
		}
	}
	return ""
}
