package nixlib

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// microvmHost is what testdata/microvm-host-units.nix returns.
type microvmHost struct {
	Services map[string]struct {
		Description   string         `json:"description"`
		Requires      []string       `json:"requires"`
		After         []string       `json:"after"`
		Before        []string       `json:"before"`
		PartOf        []string       `json:"partOf"`
		Script        string         `json:"script"`
		UnitConfig    map[string]any `json:"unitConfig"`
		ServiceConfig map[string]any `json:"serviceConfig"`
	} `json:"services"`
	Units map[string]struct {
		Service map[string]any `json:"Service"`
		Text    string         `json:"text"`
	} `json:"units"`
	Tmpfiles []string                  `json:"tmpfiles"`
	Users    map[string]map[string]any `json:"users"`
	StateDir string                    `json:"stateDir"`
	Build    string                    `json:"build"`
}

// microvmHostExpr is testdata/microvm-host-units.nix applied to the pinned
// nixpkgs lib and microvm.nix and the given list of host modules.
func microvmHostExpr(modules string) string {
	return fmt.Sprintf("import %s { nixpkgs = %s; microvm = %s; modules = %s; }",
		nixString(filepath.Join(testdata, "microvm-host-units.nix")), nixString(nixpkgsLib), nixString(microvmSrc), modules)
}

func evalMicrovmHost(t *testing.T, modules string) microvmHost {
	t.Helper()
	var h microvmHost
	if err := json.Unmarshal(evalJSON(t, microvmHostExpr(modules)), &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestNixMicrovmHostUnits evaluates microvm.nix's real host module (the
// pinned commit) with nixpkgs' lib.evalModules on the stub NixOS and checks
// the facts of its units that Blixard's systemd backend relies on, as
// ../shared/third-party/README.md lists them.
func TestNixMicrovmHostUnits(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	cases := []struct {
		name     string
		modules  string
		stateDir string
		typ      string // microvm@'s Type
	}{
		{"defaults run VMs from /var/lib/microvms as simple services", `[ ]`, "/var/lib/microvms", "simple"},
		{"stateDir and useNotifySockets move the paths and make microvm@ a notify service",
			`[ { microvm.stateDir = "/srv/vms"; microvm.host.useNotifySockets = true; } ]`, "/srv/vms", "notify"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := evalMicrovmHost(t, tc.modules)
			vm := tc.stateDir + "/%i"
			if h.StateDir != tc.stateDir {
				t.Errorf("stateDir = %q, want %q", h.StateDir, tc.stateDir)
			}
			for _, name := range []string{"microvm@", "microvm-set-booted@", "microvm-tap-interfaces@",
				"microvm-macvtap-interfaces@", "microvm-pci-devices@", "microvm-virtiofsd@"} {
				if _, ok := h.Services[name]; !ok {
					t.Errorf("no systemd.services.%q among %v", name, keys(h.Services))
				}
				if _, ok := h.Units[name+".service"]; !ok {
					t.Errorf("no unit %s.service rendered", name)
				}
			}

			run := h.Services["microvm@"]
			wantConfig(t, "microvm@", run.ServiceConfig, map[string]any{
				"User": "microvm", "Group": "kvm", "WorkingDirectory": vm, "Type": tc.typ,
				"ExecStart": vm + "/current/bin/microvm-run", "ExecStop": vm + "/booted/bin/microvm-shutdown",
				"Restart": "always", "RestartSec": "5s",
			})
			wantConfig(t, "microvm@ unitConfig", run.UnitConfig, map[string]any{"ConditionPathExists": vm + "/current/bin/microvm-run"})
			for _, dep := range []string{"microvm-tap-interfaces@%i.service", "microvm-macvtap-interfaces@%i.service",
				"microvm-pci-devices@%i.service", "microvm-virtiofsd@%i.service", "microvm-set-booted@%i.service"} {
				if !slices.Contains(run.Requires, dep) || !slices.Contains(run.After, dep) {
					t.Errorf("microvm@ does not require and start after %s: requires %v, after %v", dep, run.Requires, run.After)
				}
			}

			booted := h.Services["microvm-set-booted@"]
			wantConfig(t, "microvm-set-booted@", booted.ServiceConfig, map[string]any{
				"User": "microvm", "Group": "kvm", "WorkingDirectory": vm, "Type": "oneshot", "RemainAfterExit": true,
			})
			if !strings.Contains(booted.Script, "rm -f booted\n") || !strings.Contains(booted.Script, "ln -s $(readlink current) booted\n") {
				t.Errorf("microvm-set-booted@'s script = %q, want rm -f booted; ln -s $(readlink current) booted", booted.Script)
			}
			if exec, _ := booted.ServiceConfig["ExecStart"].(string); !strings.HasPrefix(exec, "/nix/store/") ||
				!strings.Contains(exec, "-unit-script-microvm-set-booted_-start/bin/microvm-set-booted_-start") {
				t.Errorf("microvm-set-booted@'s ExecStart = %q, want its script as a unit script, as NixOS makes it", exec)
			}
			if stop, _ := booted.ServiceConfig["ExecStop"].(string); !strings.HasSuffix(stop, "/bin/rm booted") {
				t.Errorf("microvm-set-booted@'s ExecStop = %q, want …/bin/rm booted", stop)
			}
			if !slices.Contains(booted.Before, "microvm@%i.service") || !slices.Contains(booted.PartOf, "microvm@%i.service") {
				t.Errorf("microvm-set-booted@: before %v, partOf %v; want microvm@%%i.service in both", booted.Before, booted.PartOf)
			}

			// The tap interfaces are made by root: no User.
			tap := h.Services["microvm-tap-interfaces@"]
			wantConfig(t, "microvm-tap-interfaces@", tap.ServiceConfig, map[string]any{
				"Type": "oneshot", "RemainAfterExit": true,
				"ExecStart": vm + "/current/bin/tap-up", "ExecStop": vm + "/booted/bin/tap-down",
			})
			if u, ok := tap.ServiceConfig["User"]; ok {
				t.Errorf("microvm-tap-interfaces@ runs as %v, want root", u)
			}
			wantConfig(t, "microvm-tap-interfaces@ unitConfig", tap.UnitConfig, map[string]any{"ConditionPathExists": vm + "/current/bin/tap-up"})
			if !slices.Contains(tap.After, "microvm-set-booted@%i.service") || !slices.Contains(tap.Before, "microvm@%i.service") {
				t.Errorf("microvm-tap-interfaces@: after %v, before %v; want after set-booted, before microvm@", tap.After, tap.Before)
			}

			// State directory and user, as microvm.nix creates them.
			if want := `d "` + tc.stateDir + `" 0775 microvm kvm - `; !slices.Contains(h.Tmpfiles, want) {
				t.Errorf("tmpfiles = %q, want %q", h.Tmpfiles, want)
			}
			if u := h.Users["microvm"]; u["group"] != "kvm" || u["isSystemUser"] != true {
				t.Errorf("users.microvm = %v, want a system user in group kvm", u)
			}

			// The rendered unit file says the same.
			text := h.Units["microvm@.service"].Text
			for _, line := range []string{"[Unit]\n", "[Service]\n", "User=microvm\n", "Group=kvm\n", "Type=" + tc.typ + "\n",
				"ExecStart=" + vm + "/current/bin/microvm-run\n", "ConditionPathExists=" + vm + "/current/bin/microvm-run\n",
				"Requires=microvm-tap-interfaces@%i.service microvm-macvtap-interfaces@%i.service microvm-pci-devices@%i.service microvm-virtiofsd@%i.service microvm-set-booted@%i.service\n",
				"X-RestartIfChanged=false\n"} {
				if !strings.Contains(text, line) {
					t.Errorf("microvm@.service does not have %q:\n%s", line, text)
				}
			}
		})
	}
}

// TestNixMicrovmHostSetBootedScriptRuns realises the units' programs and
// runs microvm-set-booted@'s script as systemd would (in the VM's state
// directory, with the unit's PATH): it points `booted` at what `current`
// points at.
func TestNixMicrovmHostSetBootedScriptRuns(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	h := evalMicrovmHost(t, `[ ]`)
	if _, stderr, err := runNix(t, "nix-build", "--no-out-link", "--expr", fixtures()+"in ("+microvmHostExpr("[ ]")+").build"); err != nil {
		t.Fatalf("realising the units' programs: %v\n%s", err, stderr)
	}
	unit := h.Units["microvm-set-booted@.service"].Service
	exec1, _ := unit["ExecStart"].(string)
	env, _ := unit["Environment"].([]any)
	if exec1 == "" || len(env) == 0 {
		t.Fatalf("microvm-set-booted@.service has ExecStart %q and Environment %v", exec1, env)
	}
	dir := t.TempDir()
	runner := filepath.Join(dir, "runner-1")
	if err := os.Symlink(runner, filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	// A link left by the previous boot is replaced.
	if err := os.Symlink("/nonexistent", filepath.Join(dir, "booted")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", exec1)
	cmd.Dir = dir
	for _, e := range env {
		cmd.Env = append(cmd.Env, e.(string))
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", exec1, err, out)
	}
	if got, err := os.Readlink(filepath.Join(dir, "booted")); err != nil || got != runner {
		t.Errorf("booted -> %q (%v), want %q", got, err, runner)
	}
}

// TestNixBlixardWithMicrovmHostUnits renders Blixard's unit next to
// microvm.nix's, as a host importing both has them.
func TestNixBlixardWithMicrovmHostUnits(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	h := evalMicrovmHost(t, `[ `+nixString(filepath.Join(repoRoot, "nixos-modules", "blixard.nix"))+` { services.blixard = {
		enable = true; package = fx.drv "blixard-test"; nodeId = 1; raftAddress = "127.0.0.1:7001";
		capacity = { vcpu = 1; memMiB = 512; }; }; } ]`)
	text := h.Units["blixard.service"].Text
	for _, line := range []string{"User=root\n", "Type=notify\n", "After=network-online.target\n", "WantedBy=multi-user.target\n"} {
		if !strings.Contains(text, line) {
			t.Errorf("blixard.service does not have %q:\n%s", line, text)
		}
	}
	if !strings.Contains(text, "-blixard-test/bin/blixard serve --config /nix/store/") {
		t.Errorf("blixard.service does not run blixard serve with its config:\n%s", text)
	}
	if _, ok := h.Units["microvm@.service"]; !ok {
		t.Errorf("no microvm@.service next to blixard.service: %v", keys(h.Units))
	}
}

// wantConfig reports the keys of got that differ from want.
func wantConfig(t *testing.T, what string, got, want map[string]any) {
	t.Helper()
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %s = %#v, want %#v", what, k, got[k], w)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
