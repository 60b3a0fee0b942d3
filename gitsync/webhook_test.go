package gitsync

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func sign(secret, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return hex.EncodeToString(mac.Sum(nil))
}

func TestWebhookHandler(t *testing.T) {
	const secret = "s3cret"
	const body = `{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}`
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	for _, tc := range []struct {
		name        string
		secret      string
		method      string
		header      map[string]string
		wantStatus  int
		wantTrigger bool
	}{
		{"GitHub signature is accepted and triggers", secret, http.MethodPost,
			map[string]string{"X-Hub-Signature-256": "sha256=" + sign(secret, body), "X-GitHub-Event": "push"}, http.StatusAccepted, true},
		{"Gitea signature is accepted and triggers", secret, http.MethodPost,
			map[string]string{"X-Gitea-Signature": sign(secret, body)}, http.StatusAccepted, true},
		{"Forgejo signature is accepted and triggers", secret, http.MethodPost,
			map[string]string{"X-Forgejo-Signature": sign(secret, body)}, http.StatusAccepted, true},
		{"wrong GitHub signature is 401", secret, http.MethodPost,
			map[string]string{"X-Hub-Signature-256": "sha256=" + sign("other", body)}, http.StatusUnauthorized, false},
		{"GitHub signature without sha256= prefix is 401", secret, http.MethodPost,
			map[string]string{"X-Hub-Signature-256": sign(secret, body)}, http.StatusUnauthorized, false},
		{"wrong Gitea signature is 401", secret, http.MethodPost,
			map[string]string{"X-Gitea-Signature": sign("other", body)}, http.StatusUnauthorized, false},
		{"non-hex signature is 401", secret, http.MethodPost,
			map[string]string{"X-Hub-Signature-256": "sha256=zz"}, http.StatusUnauthorized, false},
		{"missing signature is 401", secret, http.MethodPost, nil, http.StatusUnauthorized, false},
		{"GET is 405", secret, http.MethodGet, nil, http.StatusMethodNotAllowed, false},
		{"no-secret mode accepts unsigned POST", "", http.MethodPost, nil, http.StatusAccepted, true},
		{"no-secret mode still rejects GET", "", http.MethodGet, nil, http.StatusMethodNotAllowed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trigger := make(chan struct{}, 1)
			h := WebhookHandler(tc.secret, trigger, logger)
			req := httptest.NewRequest(tc.method, "/webhook", strings.NewReader(body))
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", rec.Code, tc.wantStatus, rec.Body.String())
			}
			if tc.wantStatus == http.StatusMethodNotAllowed && rec.Header().Get("Allow") != http.MethodPost {
				t.Errorf("Allow = %q, want POST", rec.Header().Get("Allow"))
			}
			fired := len(trigger) == 1
			if fired != tc.wantTrigger {
				t.Fatalf("trigger fired = %v, want %v", fired, tc.wantTrigger)
			}
		})
	}
}

func TestWebhookHandlerNeverBlocks(t *testing.T) {
	trigger := make(chan struct{}, 1)
	h := WebhookHandler("", trigger, nil)
	for range 5 { // the buffer fills after the first; later ones are dropped
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/webhook", strings.NewReader("{}")))
		if rec.Code != http.StatusAccepted {
			t.Fatalf("status = %d, want 202", rec.Code)
		}
	}
	if len(trigger) != 1 {
		t.Fatalf("%d pending triggers, want 1", len(trigger))
	}
}
