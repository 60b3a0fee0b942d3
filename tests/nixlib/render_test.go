package nixlib

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// renderCases are values of config.services.blixard (fx.service fills the
// module's defaults) and the daemon config nixos-modules/render.nix makes
// of them.
var renderCases = []struct {
	name    string
	options string // argument of fx.service
	want    string
}{
	{
		name:    "defaults render the daemon's own defaults explicitly",
		options: `{ nodeId = 1; raftAddress = "127.0.0.1:7001"; }`,
		want: `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "127.0.0.1:7001", "api-addr": "127.0.0.1:7070",
			"ref": "main", "attr": "blixard", "poll": "5s", "backend": "systemd",
			"tls-ca": "/var/lib/blixard/tls/ca.crt", "tls-cert": "/var/lib/blixard/tls/node-1.crt", "tls-key": "/var/lib/blixard/tls/node-1.key",
			"capacity-vcpu": 0, "capacity-mem-mib": 0}`,
	},
	{
		name: "every option renders to its flag",
		options: `{
			nodeId = 2;
			apiAddress = "127.0.0.1:7072";
			members = { "1" = "127.0.0.1:7001"; "2" = "127.0.0.1:7002"; "10" = "127.0.0.1:7010"; };
			repository = { url = "file:///srv/cluster.git"; ref = "prod"; attr = "cluster"; pollInterval = "30s";
				webhookSecretFile = "@SECRET@"; };
			dataDir = "/srv/blixard";
			backend = "process";
			capacity = { vcpu = 16; memMiB = 65536; };
			labels = { zone = "a"; disk = "ssd"; };
		}`,
		want: `{"node-id": 2, "data-dir": "/srv/blixard", "api-addr": "127.0.0.1:7072",
			"tls-ca": "/srv/blixard/tls/ca.crt", "tls-cert": "/srv/blixard/tls/node-2.crt", "tls-key": "/srv/blixard/tls/node-2.key",
			"members": "1=127.0.0.1:7001,2=127.0.0.1:7002,10=127.0.0.1:7010",
			"repo": "file:///srv/cluster.git", "ref": "prod", "attr": "cluster", "poll": "30s",
			"webhook-secret-file": "@SECRET@", "backend": "process",
			"capacity-vcpu": 16, "capacity-mem-mib": 65536, "labels": "disk=ssd,zone=a"}`,
	},
	{
		name: "trust, git credentials and evaluation limits render to their flags",
		options: `{ nodeId = 1; raftAddress = "127.0.0.1:7001";
			repository = { url = "ssh://git@git.example.org/cluster.git";
				trust = [ "/etc/blixard/allowed_signers" "/etc/blixard/keys.asc" ];
				sshKeyFile = "/run/secrets/git-key"; knownHostsFile = "/etc/blixard/known_hosts"; };
			evaluation = { maxMemoryMiB = 8192; user = "blixard-eval"; };
		}`,
		want: `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "127.0.0.1:7001", "api-addr": "127.0.0.1:7070",
			"repo": "ssh://git@git.example.org/cluster.git", "ref": "main", "attr": "blixard", "poll": "5s",
			"backend": "systemd", "capacity-vcpu": 0, "capacity-mem-mib": 0,
			"tls-ca": "/var/lib/blixard/tls/ca.crt", "tls-cert": "/var/lib/blixard/tls/node-1.crt", "tls-key": "/var/lib/blixard/tls/node-1.key",
			"trust": ["/etc/blixard/allowed_signers", "/etc/blixard/keys.asc"],
			"git-ssh-key": "/run/secrets/git-key", "git-known-hosts": "/etc/blixard/known_hosts",
			"eval-max-memory-mib": 8192, "eval-user": "blixard-eval"}`,
	},
	{
		name: "members as a list keep their order",
		options: `{ nodeId = 3; members = [ "3=127.0.0.1:7003" "1=127.0.0.1:7001" "2=127.0.0.1:7002" ];
			capacity = { vcpu = 1; memMiB = 512; }; }`,
		want: `{"node-id": 3, "data-dir": "/var/lib/blixard", "api-addr": "127.0.0.1:7070",
			"members": "3=127.0.0.1:7003,1=127.0.0.1:7001,2=127.0.0.1:7002",
			"tls-ca": "/var/lib/blixard/tls/ca.crt", "tls-cert": "/var/lib/blixard/tls/node-3.crt", "tls-key": "/var/lib/blixard/tls/node-3.key",
			"ref": "main", "attr": "blixard", "poll": "5s", "backend": "systemd",
			"capacity-vcpu": 1, "capacity-mem-mib": 512}`,
	},
	{
		name: "settings add flags, override rendered ones and null removes one",
		options: `{ nodeId = 1; raftAddress = "127.0.0.1:7001";
			settings = { "raft-logdb" = "small"; heartbeat = "1s"; join = true; poll = "1m"; "api-addr" = null; }; }`,
		want: `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "127.0.0.1:7001",
			"ref": "main", "attr": "blixard", "poll": "1m", "backend": "systemd",
			"tls-ca": "/var/lib/blixard/tls/ca.crt", "tls-cert": "/var/lib/blixard/tls/node-1.crt", "tls-key": "/var/lib/blixard/tls/node-1.key",
			"capacity-vcpu": 0, "capacity-mem-mib": 0, "raft-logdb": "small", "heartbeat": "1s", "join": true}`,
	},
	{
		name: "tls files render to their flags",
		options: `{ nodeId = 1; raftAddress = "127.0.0.1:7001";
			tls = { certFile = "/etc/blixard/node-1.crt"; keyFile = "/run/secrets/node-1.key"; }; }`,
		want: `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "127.0.0.1:7001", "api-addr": "127.0.0.1:7070",
			"ref": "main", "attr": "blixard", "poll": "5s", "backend": "systemd", "capacity-vcpu": 0, "capacity-mem-mib": 0,
			"tls-ca": "/var/lib/blixard/tls/ca.crt", "tls-cert": "/etc/blixard/node-1.crt", "tls-key": "/run/secrets/node-1.key"}`,
	},
	{
		name: "notification receivers, their secret and kinds render to their flags",
		options: `{ nodeId = 1; raftAddress = "127.0.0.1:7001";
			notify = { urls = [ "https://alerts.example.org/blixard" "http://127.0.0.1:9000/hook" ];
				urlFile = "/run/secrets/notify-urls"; secretFile = "@SECRET@"; kinds = [ "PlanCommitted" "NodeDown" ]; };
		}`,
		want: `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "127.0.0.1:7001", "api-addr": "127.0.0.1:7070",
			"ref": "main", "attr": "blixard", "poll": "5s", "backend": "systemd", "capacity-vcpu": 0, "capacity-mem-mib": 0,
			"tls-ca": "/var/lib/blixard/tls/ca.crt", "tls-cert": "/var/lib/blixard/tls/node-1.crt", "tls-key": "/var/lib/blixard/tls/node-1.key",
			"notify-url": ["https://alerts.example.org/blixard", "http://127.0.0.1:9000/hook"],
			"notify-url-file": "/run/secrets/notify-urls", "notify-secret-file": "@SECRET@", "notify-kind": ["PlanCommitted", "NodeDown"]}`,
	},
	{
		name:    "insecure renders --insecure and no TLS files",
		options: `{ nodeId = 1; raftAddress = "127.0.0.1:7001"; insecure = true; }`,
		want: `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "127.0.0.1:7001", "api-addr": "127.0.0.1:7070",
			"ref": "main", "attr": "blixard", "poll": "5s", "backend": "systemd", "capacity-vcpu": 0, "capacity-mem-mib": 0,
			"insecure": true}`,
	},
	{
		name: "insecure on a LAN address needs insecure-i-know in settings",
		options: `{ nodeId = 1; raftAddress = "10.0.0.1:7001"; apiAddress = "10.0.0.1:7070"; insecure = true;
			settings."insecure-i-know" = true; }`,
		want: `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "10.0.0.1:7001", "api-addr": "10.0.0.1:7070",
			"ref": "main", "attr": "blixard", "poll": "5s", "backend": "systemd", "capacity-vcpu": 0, "capacity-mem-mib": 0,
			"insecure": true, "insecure-i-know": true}`,
	},
}

// renderExpr is the Nix expression rendering options; @SECRET@ is replaced
// by secret.
func renderExpr(options, secret string) string {
	return "fx.render (fx.service " + strings.ReplaceAll(options, "@SECRET@", secret) + ")"
}

func TestNixRender(t *testing.T) {
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := evalJSON(t, renderExpr(tc.options, "/run/secrets/hook"))
			want := strings.ReplaceAll(tc.want, "@SECRET@", "/run/secrets/hook")
			if !jsonEqual(t, got, []byte(want)) {
				t.Errorf("render differs\ngot:  %s\nwant: %s", indent(got), indent([]byte(want)))
			}
		})
	}
}

func TestNixRenderCeph(t *testing.T) {
	got := evalJSON(t, `fx.render (fx.service { nodeId = 1; raftAddress = "127.0.0.1:7001";
		ceph = { enable = true; user = "blixard"; keyringFile = "/etc/ceph/k"; }; })`)
	want := `{"node-id": 1, "data-dir": "/var/lib/blixard", "raft-addr": "127.0.0.1:7001", "api-addr": "127.0.0.1:7070",
		"ref": "main", "attr": "blixard", "poll": "5s", "backend": "systemd",
		"capacity-vcpu": 0, "capacity-mem-mib": 0,
		"tls-ca": "/var/lib/blixard/tls/ca.crt", "tls-cert": "/var/lib/blixard/tls/node-1.crt", "tls-key": "/var/lib/blixard/tls/node-1.key",
		"ceph-user": "blixard", "ceph-keyring-file": "/etc/ceph/k", "ceph-config-file": "/etc/ceph/ceph.conf",
		"volume-attach": "auto"}`
	if !jsonEqual(t, got, []byte(want)) {
		t.Errorf("render differs\ngot:  %s\nwant: %s", indent(got), indent([]byte(want)))
	}
}

func TestNixPorts(t *testing.T) {
	cases := []struct{ options, want string }{
		{`{ nodeId = 1; raftAddress = "10.0.0.1:7001"; apiAddress = "10.0.0.1:7070"; }`, `{"raft": 7001, "api": 7070}`},
		{`{ nodeId = 2; members = { "1" = "10.0.0.1:7001"; "2" = "10.0.0.2:7002"; }; }`, `{"raft": 7002, "api": 7070}`},
		{`{ nodeId = 2; members = [ "1=10.0.0.1:7001" "2=[fd00::2]:7012" ]; apiAddress = "[::]:8080"; }`, `{"raft": 7012, "api": 8080}`},
		{`{ nodeId = 3; members = { "1" = "10.0.0.1:7001"; }; }`, `{"raft": null, "api": 7070}`},
	}
	for _, tc := range cases {
		got := evalJSON(t, "fx.ports (fx.service "+tc.options+")")
		if !jsonEqual(t, got, []byte(tc.want)) {
			t.Errorf("ports of %s = %s, want %s", tc.options, got, tc.want)
		}
	}
}

// checkConfig runs the real daemon's config validation on a rendered config
// file and returns its combined output.
func checkConfig(t *testing.T, configFile string) (string, error) {
	t.Helper()
	return checkConfigWith(t, blixardBin, configFile)
}

// checkConfigWith is checkConfig with the given daemon binary.
func checkConfigWith(t *testing.T, bin, configFile string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--config", configFile, "--check-config")
	cmd.Env = append(os.Environ(), "BLIXARD_WEBHOOK_SECRET=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestNixRenderedConfigAcceptedByDaemon writes what render.nix makes of
// each sample to a file and has the real `blixard serve --check-config`
// validate it.
func TestNixRenderedConfigAcceptedByDaemon(t *testing.T) {
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			secret := filepath.Join(dir, "webhook-secret")
			if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, "blixard.json")
			if err := os.WriteFile(file, evalJSON(t, renderExpr(tc.options, secret)), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := checkConfig(t, file); err != nil {
				data, _ := os.ReadFile(file)
				t.Errorf("blixard serve --check-config rejected the rendered config: %v\n%s\nconfig: %s", err, out, indent(data))
			}
		})
	}
}

// TestNixDaemonRejectsUnknownSetting shows the other side of the contract: a
// typo in services.blixard.settings fails the daemon, naming the key.
func TestNixDaemonRejectsUnknownSetting(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "blixard.json")
	rendered := evalJSON(t, `fx.render (fx.service { nodeId = 1; raftAddress = "127.0.0.1:7001"; settings.heartbaet = "1s"; })`)
	if err := os.WriteFile(file, rendered, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := checkConfig(t, file)
	if err == nil {
		t.Fatalf("blixard serve --check-config accepted an unknown setting:\n%s", out)
	}
	if !strings.Contains(out, `"heartbaet"`) {
		t.Errorf("the daemon's error does not name the unknown setting:\n%s", out)
	}
}

// TestNixDaemonRefusesAnUnprotectedAPI: a rendered config that neither
// names TLS files nor asks for --insecure, or asks for --insecure on a LAN
// address alone, fails the daemon's check, saying what to set.
func TestNixDaemonRefusesAnUnprotectedAPI(t *testing.T) {
	for _, tc := range []struct{ name, options, want string }{
		{"no TLS files", `{ nodeId = 1; raftAddress = "127.0.0.1:7001"; settings = { "tls-ca" = null; "tls-cert" = null; "tls-key" = null; }; }`,
			"the API needs TLS"},
		{"insecure on a LAN address", `{ nodeId = 1; raftAddress = "10.0.0.1:7001"; apiAddress = "10.0.0.1:7070"; insecure = true; }`,
			"--insecure-i-know"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "blixard.json")
			if err := os.WriteFile(file, evalJSON(t, renderExpr(tc.options, "")), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := checkConfig(t, file)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("--check-config: %v, want a refusal with %q:\n%s", err, tc.want, out)
			}
		})
	}
}
