package api_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/replicated"
)

func TestClientDecodesEveryAnswer(t *testing.T) {
	f := newFixture(t)
	c := newClient(t, strings.TrimPrefix(f.srv.URL, "http://")) // HOST:PORT, as --server takes it
	ctx := context.Background()

	if st, err := c.Status(ctx); err != nil || st.LastError == nil || st.Reconciler.FetchError == "" {
		t.Errorf("Status: %+v, %v", st, err)
	}
	if s, err := c.State(ctx); err != nil || len(s.Nodes) != 2 {
		t.Errorf("State: %v", err)
	}
	if ns, err := c.Nodes(ctx); err != nil || len(ns) != 2 {
		t.Errorf("Nodes: %+v, %v", ns, err)
	}
	if h, err := c.History(ctx); err != nil || len(h) != 1 {
		t.Errorf("History: %+v, %v", h, err)
	}
	if d, err := c.Diff(ctx); err != nil || len(d) != 1 {
		t.Errorf("Diff: %+v, %v", d, err)
	}
	if rs, err := c.Reconciler(ctx); err != nil || !rs.Leader {
		t.Errorf("Reconciler: %+v, %v", rs, err)
	}
	if p, err := c.Plan(ctx, commitB); err != nil || !p.HasChanges {
		t.Errorf("Plan: %+v, %v", p, err)
	}
	if a, err := c.SetNodeState(ctx, 2, replicated.NodeDraining); err != nil || a.State != replicated.NodeDraining {
		t.Errorf("SetNodeState: %+v, %v", a, err)
	}
	if a, err := c.AddMember(ctx, api.MemberRequest{ID: 5, RaftAddr: "h:5"}); err != nil || !strings.Contains(a.Next, "--join") {
		t.Errorf("AddMember: %+v, %v", a, err)
	}
	if a, err := c.SetVMRunState(ctx, "web", api.VMStop); err != nil || a.VM != "web" || a.Action != api.VMStop {
		t.Errorf("SetVMRunState: %+v, %v", a, err)
	}
	if a, err := c.Sync(ctx); err != nil || !a.Triggered {
		t.Errorf("Sync: %+v, %v", a, err)
	}
	var logs bytes.Buffer
	if err := c.Logs(ctx, "web", false, &logs); err != nil || logs.String() != "booted web v1\n" {
		t.Errorf("Logs: %q, %v", logs.String(), err)
	}
	if ev, err := c.Events(ctx); err != nil || len(ev) == 0 || !strings.Contains(ev[len(ev)-1].Message, "(by anonymous)") {
		t.Errorf("Events: %+v, %v; want the last change made by anonymous", ev, err)
	}
	tok, err := c.CreateToken(ctx, "ci", "operate")
	if err != nil || !strings.HasPrefix(tok.Token, api.TokenPrefix) || tok.Role != "operate" {
		t.Errorf("CreateToken: %+v, %v", tok, err)
	}
	if ts, err := c.Tokens(ctx); err != nil || len(ts) != 1 || ts[0].Name != "ci" || ts[0].CreatedBy != "anonymous" {
		t.Errorf("Tokens: %+v, %v", ts, err)
	}
	if a, err := c.RevokeToken(ctx, "ci"); err != nil || a.Name != "ci" {
		t.Errorf("RevokeToken: %+v, %v", a, err)
	}
}

// newClient is a plain client of url.
func newClient(t *testing.T, url string) *api.Client {
	t.Helper()
	c, err := api.NewClient(url, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientRefusesToSendCredentialsInClearText(t *testing.T) {
	for _, tt := range []struct {
		name, server string
		o            api.ClientOptions
		want         string
	}{
		{"a token over http:// is refused", "http://h:7070", api.ClientOptions{Token: "blx_x"}, "only over HTTPS"},
		{"a token without TLS is refused", "h:7070", api.ClientOptions{Token: "blx_x"}, "only over HTTPS"},
		{"TLS with an http:// server is refused", "http://h:7070", api.ClientOptions{TLS: &tls.Config{}}, "use https://h:7070"},
		{"a path is no server", "h:7070/v1", api.ClientOptions{}, "HOST:PORT"},
		{"another scheme is refused", "ftp://h:7070", api.ClientOptions{}, "want http:// or https://"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := api.NewClient(tt.server, tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewClient(%q): %v, want an error with %q", tt.server, err, tt.want)
			}
		})
	}
	c, err := api.NewClient("h:7070", api.ClientOptions{TLS: &tls.Config{}, Token: "blx_x"})
	if err != nil || c.Base() != "https://h:7070" {
		t.Fatalf("NewClient with TLS: %v, base %q; want https://h:7070", err, c.Base())
	}
}

func TestClientErrorsCarryTheServersMessage(t *testing.T) {
	f := newFixture(t)
	c := newClient(t, f.srv.URL)
	ctx := context.Background()
	_, err := c.SetNodeState(ctx, 9, replicated.NodeDraining)
	var e *api.Error
	if !errors.As(err, &e) || e.Code != http.StatusNotFound || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("SetNodeState of an unknown node: %v", err)
	}
	if _, err := c.SetVMRunState(ctx, "ghost", api.VMStart); !errors.As(err, &e) || e.Code != http.StatusNotFound || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("SetVMRunState of an unknown VM: %v", err)
	}
	if err := c.Logs(ctx, "ghost", false, &bytes.Buffer{}); !errors.As(err, &e) || e.Code != http.StatusNotFound {
		t.Errorf("Logs of an unknown VM: %v", err)
	}
	f.srv.Close()
	if _, err := c.Status(ctx); err == nil || !strings.Contains(err.Error(), "cannot reach a Blixard node") || !strings.Contains(err.Error(), "BLIXARD_SERVER") {
		t.Errorf("Status of a stopped node: %v", err)
	}
}
