package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/node"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestServeFlagsMapToConfig(t *testing.T) {
	base := serveOptions{nodeID: 2, members: "1=h:1,2=h:2", apiAddr: "127.0.0.1:7070", dataDir: "/d", stateDir: "/s", agent: true,
		poll: time.Second, heartbeat: time.Second, ref: "main", insecure: true}
	tests := []struct {
		name         string
		change       func(o *serveOptions)
		underSystemd bool
		check        func(c node.Config) bool
	}{
		{"the Raft address comes from --members", func(*serveOptions) {}, false,
			func(c node.Config) bool { return c.Members[2] == "h:2" && c.Backend == node.BackendProcess }},
		{"under systemd the backend defaults to systemd", func(*serveOptions) {}, true,
			func(c node.Config) bool { return c.Backend == node.BackendSystemd }},
		{"--agent=false runs no VMs", func(o *serveOptions) { o.agent = false }, true,
			func(c node.Config) bool { return c.Backend == node.BackendNone }},
		{"--repo and --labels reach the config", func(o *serveOptions) { o.repo, o.labels = "file:///r", "zone=a" }, false,
			func(c node.Config) bool {
				return c.Source.Repo == "file:///r" && c.Source.Ref == "main" && c.Labels["zone"] == "a"
			}},
		{"no Ceph flag is no Ceph", func(*serveOptions) {}, false, func(c node.Config) bool { return c.Ceph == nil }},
		{"trust, git credentials and eval limits reach the config", func(o *serveOptions) {
			o.repo = "ssh://git@h/c.git"
			o.git = node.Source{Trust: []string{"a.asc", "allowed_signers"}, SSHKeyFile: "/k", SSHKnownHostsFile: "/kh"}
			o.eval = node.Eval{MaxMemory: 512, User: "blixard-eval"}
		}, false, func(c node.Config) bool {
			return len(c.Source.Trust) == 2 && c.Source.SSHKeyFile == "/k" && c.Source.SSHKnownHostsFile == "/kh" &&
				c.Eval.MaxMemory == 512<<20 && c.Eval.User == "blixard-eval"
		}},
		{"the TLS files reach the config", func(o *serveOptions) {
			o.insecure, o.tls = false, raftstore.TLSFiles{CAFile: "/ca.crt", CertFile: "/node-2.crt", KeyFile: "/node-2.key"}
		}, false, func(c node.Config) bool {
			return !c.Insecure && c.TLS.CertFile == "/node-2.crt" && c.TLS.KeyFile == "/node-2.key"
		}},
		{"--insecure-i-know allows a LAN address", func(o *serveOptions) { o.apiAddr, o.insecureIKnow = "10.0.0.2:7070", true }, false,
			func(c node.Config) bool { return c.Insecure && c.InsecureIKnow }},
		{"the notification flags reach the config", func(o *serveOptions) {
			o.notify = node.NotifyConfig{URLs: []string{"https://a.example.org/hook"}, URLFile: "/u", SecretFile: "/s", Kinds: []string{"NodeDown"}}
		}, false, func(c node.Config) bool {
			return slices.Equal(c.Notify.URLs, []string{"https://a.example.org/hook"}) && c.Notify.URLFile == "/u" &&
				c.Notify.SecretFile == "/s" && slices.Equal(c.Notify.Kinds, []string{"NodeDown"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.change(&o)
			c, err := o.config(tt.underSystemd)
			if err != nil || !tt.check(c) {
				t.Fatalf("config: %+v, %v", c, err)
			}
		})
	}
}

type evalFunc func(string) (reconciler.Evaluation, error)

func (f evalFunc) Evaluate(_ context.Context, c string) (reconciler.Evaluation, error) { return f(c) }

// TestCommandsFormatAndExit runs the CLI against a real API server on an
// in-memory state: two nodes, web on node 1 never observed, an EvalFailed
// condition.
func TestCommandsFormatAndExit(t *testing.T) {
	st := testkit.NewStore(nil)
	plan := testkit.Plan(0, "c1", testkit.Assign("web", 1, "v1"))
	plan.CommitPlan.Spec.VMs["web"] = func(vm spec.VM) spec.VM { vm.Autostart = true; return vm }(plan.CommitPlan.Spec.VMs["web"])
	for _, cmd := range []replicated.Command{testkit.Register(1), testkit.Register(2), plan,
		{V: 1, Type: replicated.CmdSetCondition, SetCondition: &replicated.SetCondition{Type: replicated.EvalFailed, Commit: "c2", Message: "flake.nix:3: boom"}}} {
		st.Propose(context.Background(), cmd)
	}
	v2 := testkit.Plan(0, "", testkit.Assign("web", 1, "v2")).CommitPlan.Spec
	ev := evalFunc(func(c string) (reconciler.Evaluation, error) {
		if c == strings.Repeat("b", 40) {
			return reconciler.Evaluation{Spec: v2}, nil
		}
		return reconciler.Evaluation{}, fmt.Errorf("cannot evaluate %s", c)
	})
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Evaluator: ev, Insecure: true}).Handler())
	defer srv.Close()
	for _, tt := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"status"}, 0, []string{"Last error (commit c2", "flake.nix:3: boom", "pending", "web-v1", "1*"}},
		{[]string{"nodes"}, 0, []string{"NODE", "0/8", "zone=a"}},
		{[]string{"history"}, 0, []string{"c1"}},
		{[]string{"diff"}, 2, []string{"web", "not yet reported"}},
		{[]string{"diff", "--json"}, 2, []string{`"vm": "web"`}},
		{[]string{"plan", "--commit", strings.Repeat("b", 40)}, 2, []string{"web"}},
		{[]string{"plan", "--commit", strings.Repeat("c", 40)}, 1, []string{"cannot evaluate"}},
		{[]string{"node", "drain", "9"}, 1, []string{"not registered"}},
		{[]string{"node", "cordon", "2"}, 0, []string{"node 2 is cordoned"}},
		{[]string{"node", "add", "x", "h:1"}, 1, []string{`node id "x"`}},
		{[]string{"status"}, 0, []string{"WANT", "running"}},
		{[]string{"vm", "stop", "web"}, 0, []string{"web: wanted stopped"}},
		{[]string{"status"}, 0, []string{"stopped (operator)"}},
		{[]string{"vm", "restart", "web"}, 1, []string{"blixard vm start web"}},
		{[]string{"vm", "start", "web", "--json"}, 0, []string{`"action": "start"`, "wanted running"}},
		{[]string{"vm", "restart", "ghost"}, 1, []string{`"ghost"`}},
		{[]string{"events"}, 0, []string{"NodeStateChanged", "(by anonymous)"}},
		{[]string{"token", "create", "--name", "ci", "--role", "operate"}, 0, []string{"shown only now", "blx_"}},
		{[]string{"token", "create", "--name", "ci", "--role", "read"}, 1, []string{"exists"}},
		{[]string{"token", "list"}, 0, []string{"ci", "operate", "anonymous"}},
		{[]string{"token", "revoke", "ci"}, 0, []string{"token ci revoked"}},
		{[]string{"token", "revoke", "ci"}, 1, []string{"no token is named"}},
		{[]string{"status", "--token-file", "/nonexistent"}, 1, []string{"--token-file"}},
		{[]string{"status", "--cert", "x.crt", "--key", "x.key"}, 1, []string{"need --ca"}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), append(tt.args, "--server", srv.URL), &out, &errb)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out.String(), errb.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String()+errb.String(), w) {
					t.Errorf("output lacks %q:\n%s%s", w, out.String(), errb.String())
				}
			}
		})
	}
}

func TestServeConfigFileTakesListsForRepeatableFlags(t *testing.T) {
	cmd := newServeCommand(&globals{})
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(`{"trust": ["a.asc", "allowed_signers"], "node-id": 3}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := loadConfigFile(cmd.Flags(), path); err != nil {
		t.Fatal(err)
	}
	got, _ := cmd.Flags().GetStringArray("trust")
	if strings.Join(got, ",") != "a.asc,allowed_signers" {
		t.Fatalf("trust = %v", got)
	}
	if err := os.WriteFile(path, []byte(`{"node-id": [3]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := loadConfigFile(newServeCommand(&globals{}).Flags(), path); err == nil {
		t.Fatal("a list for a single-valued flag was accepted")
	}
}

func TestServeRefusesTheRemovedCephPoolSaying(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "blixard.json")
	if err := os.WriteFile(cfg, []byte(`{"node-id": 1, "ceph-pool": "rbd"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"serve", "--config", cfg, "--check-config"}, {"serve", "--node-id", "1", "--ceph-pool", "rbd", "--check-config"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 1 ||
			!strings.Contains(errb.String(), "--ceph-pool is gone") || !strings.Contains(errb.String(), "volumes.<name>.pool") {
			t.Errorf("%v: exit %d, %s%s; want 1 and what replaces --ceph-pool", args, code, out.String(), errb.String())
		}
	}
}

func TestDevServesOnlyOnLoopback(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"dev", t.TempDir(), "--api-addr", "0.0.0.0:7070"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "only on loopback") {
		t.Fatalf("dev on a wildcard address: exit %d: %s%s", code, out.String(), errb.String())
	}
}

func TestLoggerTimesHaveMicrosecondsAtDebugOnly(t *testing.T) {
	for _, tt := range []struct {
		level  string
		digits int // fractional digits of the time
	}{{"debug", 6}, {"info", 3}, {"warn", 3}} {
		var out bytes.Buffer
		g := &globals{stderr: &out, logLevel: tt.level}
		log, err := g.logger()
		if err != nil {
			t.Fatal(err)
		}
		log.Error("x")
		line := out.String()
		ts, _, ok := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if !ok || !strings.HasPrefix(line, "time=") {
			t.Fatalf("%s: no time in %q", tt.level, line)
		}
		when, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || time.Since(when) > time.Minute || time.Since(when) < 0 {
			t.Errorf("%s: time %q: %v (want now)", tt.level, ts, err)
		}
		_, frac, _ := strings.Cut(ts, ".")
		if digits := len(frac) - len(strings.TrimLeft(frac, "0123456789")); digits != tt.digits {
			t.Errorf("%s: time %q has %d fractional digits, want %d", tt.level, ts, digits, tt.digits)
		}
	}
}
