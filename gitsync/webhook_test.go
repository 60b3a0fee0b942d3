package gitsync

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
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
		{"GitLab token is accepted and triggers", secret, http.MethodPost,
			map[string]string{"X-Gitlab-Token": secret, "X-Gitlab-Event": "Push Hook"}, http.StatusAccepted, true},
		{"wrong GitLab token is 401", secret, http.MethodPost,
			map[string]string{"X-Gitlab-Token": "other"}, http.StatusUnauthorized, false},
		{"GitLab token that is a prefix of the secret is 401", secret, http.MethodPost,
			map[string]string{"X-Gitlab-Token": secret[:3]}, http.StatusUnauthorized, false},
		{"a wrong HMAC is 401 even with the right GitLab token", secret, http.MethodPost,
			map[string]string{"X-Hub-Signature-256": "sha256=" + sign("other", body), "X-Gitlab-Token": secret}, http.StatusUnauthorized, false},
		{"signature of the wrong length is 401", secret, http.MethodPost,
			map[string]string{"X-Gitea-Signature": sign(secret, body)[:32]}, http.StatusUnauthorized, false},
		{"no-secret mode accepts any GitLab token", "", http.MethodPost,
			map[string]string{"X-Gitlab-Token": "anything"}, http.StatusAccepted, true},
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

// endlessBody is a request body without end that counts what the handler
// read of it.
type endlessBody struct{ read atomic.Int64 }

func (b *endlessBody) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	b.read.Add(int64(len(p)))
	return len(p), nil
}

func TestWebhookHandlerRefusesLargeBodiesWithoutReadingThem(t *testing.T) {
	const secret = "s3cret"
	for _, tc := range []struct {
		name          string
		secret        string
		header        map[string]string
		contentLength int64 // -1: unknown (chunked)
		wantStatus    int
		maxRead       int64
	}{
		{"a declared length over the cap is 413 before any byte is read", secret,
			map[string]string{"X-Hub-Signature-256": "sha256=" + sign(secret, "")}, MaxWebhookBody + 1, http.StatusRequestEntityTooLarge, 0},
		{"a chunked body over the cap is 413 once the cap is passed", secret,
			map[string]string{"X-Hub-Signature-256": "sha256=" + sign(secret, "")}, -1, http.StatusRequestEntityTooLarge, MaxWebhookBody + 64<<10},
		{"an unsigned body is 401 before any byte is read", secret, nil, -1, http.StatusUnauthorized, 0},
		{"a GitLab token needs no body", secret, map[string]string{"X-Gitlab-Token": secret}, -1, http.StatusAccepted, 0},
		{"no-secret mode reads no body", "", nil, -1, http.StatusAccepted, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := WebhookHandler(tc.secret, make(chan struct{}, 1), slog.New(slog.DiscardHandler))
			body := &endlessBody{}
			req := httptest.NewRequest(http.MethodPost, "/webhook", body)
			req.ContentLength = tc.contentLength
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", rec.Code, tc.wantStatus, rec.Body.String())
			}
			if n := body.read.Load(); n > tc.maxRead {
				t.Fatalf("the handler read %d bytes of the body, want at most %d", n, tc.maxRead)
			}
		})
	}
}

func TestWebhookHandlerAcceptsABodyOfExactlyTheCap(t *testing.T) {
	const secret = "s3cret"
	payload := strings.Repeat("x", MaxWebhookBody)
	trigger := make(chan struct{}, 1)
	h := WebhookHandler(secret, trigger, slog.New(slog.DiscardHandler))
	req := httptest.NewRequest(http.MethodPost, "/webhook", strings.NewReader(payload))
	req.Header.Set("X-Hub-Signature-256", "sha256="+sign(secret, payload))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusAccepted || len(trigger) != 1 {
		t.Fatalf("status = %d, trigger fired %v; want 202 and a trigger", rec.Code, len(trigger) == 1)
	}
}

// failingBody fails like a broken connection, with an error whose text
// must not reach the answer.
type failingBody struct{}

func (failingBody) Read([]byte) (int, error) {
	return 0, errors.New("read /var/lib/blixard/secret-path: connection reset")
}

func TestWebhookHandlerAnswersLeakNothing(t *testing.T) {
	const secret = "s3cret"
	h := WebhookHandler(secret, make(chan struct{}, 1), slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		body   io.Reader
		header string
		value  string
	}{
		{failingBody{}, "X-Hub-Signature-256", "sha256=" + sign(secret, "")},
		{strings.NewReader("{}"), "X-Hub-Signature-256", "sha256=" + sign(secret, "other")},
		{strings.NewReader("{}"), "X-Gitlab-Token", secret + "x"},
	} {
		req := httptest.NewRequest(http.MethodPost, "/webhook", tc.body)
		req.Header.Set(tc.header, tc.value)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 400 {
			t.Fatalf("%s: status = %d, want an error", tc.header, rec.Code)
		}
		if b := rec.Body.String(); strings.Contains(b, "/var/lib") || strings.Contains(b, secret) || strings.Contains(b, "reset") {
			t.Fatalf("%s: answer %q leaks an internal error or the secret", tc.header, b)
		}
	}
}

// blockingBody is a signed body whose first read waits for release: a slow
// sender holding its delivery slot.
type blockingBody struct {
	started chan<- struct{}
	release <-chan struct{}
	once    sync.Once
	r       io.Reader
}

func (b *blockingBody) Read(p []byte) (int, error) {
	b.once.Do(func() {
		b.started <- struct{}{}
		<-b.release
	})
	return b.r.Read(p)
}

func TestWebhookHandlerCapsConcurrentDeliveries(t *testing.T) {
	const secret = "s3cret"
	const body = `{"ref":"refs/heads/main"}`
	trigger := make(chan struct{}, 1)
	h := WebhookHandler(secret, trigger, slog.New(slog.DiscardHandler))
	signed := func(r io.Reader) *http.Request {
		req := httptest.NewRequest(http.MethodPost, "/webhook", r)
		req.Header.Set("X-Hub-Signature-256", "sha256="+sign(secret, body))
		return req
	}

	started, release := make(chan struct{}, MaxWebhookDeliveries), make(chan struct{})
	codes := make(chan int, MaxWebhookDeliveries)
	var wg sync.WaitGroup
	for range MaxWebhookDeliveries {
		wg.Go(func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, signed(&blockingBody{started: started, release: release, r: strings.NewReader(body)}))
			codes <- rec.Code
		})
	}
	for range MaxWebhookDeliveries {
		<-started
	}
	// Every slot is held by a delivery reading its body: one more is 503.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, signed(strings.NewReader(body)))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("delivery over the cap: status %d, Retry-After %q; want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
	if len(trigger) != 0 {
		t.Fatal("a refused delivery triggered a fetch")
	}
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusAccepted {
			t.Errorf("a delivery within the cap got %d, want 202", code)
		}
	}
	// The slots are free again.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, signed(strings.NewReader(body)))
	if rec.Code != http.StatusAccepted {
		t.Fatalf("delivery after the others finished: status %d, want 202", rec.Code)
	}
}
