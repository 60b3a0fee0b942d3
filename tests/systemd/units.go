package systemd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"github.com/blixard/blixard/tests/microvm"
)

// SetupNixlibHint is the command that unpacks the pinned nixpkgs lib and
// microvm.nix the container's units are rendered from.
const SetupNixlibHint = "run scripts/setup-nixlib.sh (it unpacks the pinned nixpkgs lib and microvm.nix into /var/cache/blixard/third-party)"

// ContainerStateDir is STATE inside the container: microvm.nix's default
// microvm.stateDir, where nspawn.sh binds the host's Container.StateDir.
const ContainerStateDir = "/var/lib/microvms"

// HostUnits is what microvm.nix's host module (the pinned commit) yields
// for the container, evaluated by tests/nixlib/testdata/microvm-host-units.nix
// with the real nix, nixpkgs' real lib and the stub NixOS next to it.
type HostUnits struct {
	// Files maps the unit files the harness installs (microvm@.service and
	// every unit it requires, all templates) to their text, as the module
	// renders them.
	Files map[string]string
	// Tmpfiles are the module's tmpfiles.d lines (STATE as microvm:kvm 0775).
	Tmpfiles []string
	// Users are the module's users.users: name → primary group.
	Users map[string]string
	// StateDir is the module's microvm.stateDir.
	StateDir string
	// Build is the realised derivation that depends on everything the units
	// run (unit scripts, PATH entries); the container sees it through its
	// bind of /nix/store.
	Build string
}

// The attributes of microvm-host-units.nix the harness reads: the unit
// files' text and [Unit] Requires, and nothing of the services'
// definitions (they hold derivations JSON cannot always print).
const hostUnitsApply = `h: {
  units = builtins.mapAttrs (_: u: { inherit (u) text; requires = u.Unit.Requires or ""; }) h.units;
  inherit (h) tmpfiles stateDir;
  users = builtins.mapAttrs (_: u: { group = u.group or ""; isSystemUser = u.isSystemUser or false; }) h.users;
  build = h.build.drvPath;
}`

// EvalHostUnits evaluates microvm.nix's host module at the commit pinned in
// scripts/setup-nixlib.sh with `nix eval` and realises what its units run
// (`nix-store --realise` of its build derivation). The sources are the ones
// tests/nixlib uses: the cache that script fills, checked by NAR hash.
func EvalHostUnits(ctx context.Context) (*HostUnits, error) {
	src, err := thirdPartySources(ctx)
	if err != nil {
		return nil, err
	}
	expr := fmt.Sprintf("import %s { nixpkgs = %s; microvm = %s; }",
		nixString(filepath.Join(repoRoot(), "tests", "nixlib", "testdata", "microvm-host-units.nix")),
		nixString(src.nixpkgsLib), nixString(src.microvm))
	out, err := runNix(ctx, "nix", "eval", "--json", "--impure", "--expr", expr, "--apply", hostUnitsApply)
	if err != nil {
		return nil, fmt.Errorf("evaluating microvm.nix's host module: %w", err)
	}
	var raw struct {
		Units map[string]struct {
			Text     string `json:"text"`
			Requires string `json:"requires"`
		} `json:"units"`
		Tmpfiles []string `json:"tmpfiles"`
		StateDir string   `json:"stateDir"`
		Users    map[string]struct {
			Group        string `json:"group"`
			IsSystemUser bool   `json:"isSystemUser"`
		} `json:"users"`
		Build string `json:"build"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("decoding microvm-host-units.nix's result: %w", err)
	}
	h := &HostUnits{Files: map[string]string{}, Tmpfiles: raw.Tmpfiles, Users: map[string]string{}, StateDir: raw.StateDir}
	// microvm@.service and the units it requires, named as templates
	// (microvm-set-booted@%i.service → microvm-set-booted@.service).
	main, ok := raw.Units["microvm@.service"]
	if !ok {
		return nil, errors.New("microvm.nix's host module rendered no microvm@.service")
	}
	h.Files["microvm@.service"] = main.Text
	for _, dep := range strings.Fields(main.Requires) {
		name := strings.Replace(dep, "@%i.", "@.", 1)
		u, ok := raw.Units[name]
		if !ok {
			return nil, fmt.Errorf("microvm@.service requires %s, which the host module did not render", dep)
		}
		h.Files[name] = u.Text
	}
	for name, u := range raw.Users {
		if u.Group == "" || !u.IsSystemUser {
			return nil, fmt.Errorf("users.users.%s = %+v: want a system user with a primary group, as microvm.nix declares microvm", name, u)
		}
		h.Users[name] = u.Group
	}
	if h.StateDir != ContainerStateDir {
		return nil, fmt.Errorf("microvm.stateDir is %s, want %s (where nspawn.sh binds the state directory)", h.StateDir, ContainerStateDir)
	}
	built, err := runNix(ctx, "nix-store", "--realise", raw.Build)
	if err != nil {
		return nil, fmt.Errorf("realising what microvm.nix's units run (%s): %w", raw.Build, err)
	}
	h.Build = strings.TrimSpace(string(built))
	return h, nil
}

// Write installs h in a container's run directory as nspawn.sh binds it:
// the unit files in units/ (/usr/local/lib/systemd/system), the users in
// sysusers.d/ (/usr/local/lib/sysusers.d, made at boot by
// systemd-sysusers) and the tmpfiles lines in tmpfiles.d/
// (/usr/local/lib/tmpfiles.d, applied at boot by systemd-tmpfiles).
func (h *HostUnits) Write(run string) error {
	for _, d := range []string{"units", "sysusers.d", "tmpfiles.d"} {
		if err := os.MkdirAll(filepath.Join(run, d), 0o755); err != nil {
			return err
		}
	}
	for name, text := range h.Files {
		if err := os.WriteFile(filepath.Join(run, "units", name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(run, "sysusers.d", "microvm-host.conf"), []byte(h.sysusers()), 0o644); err != nil {
		return err
	}
	tmpfiles := strings.Join(h.Tmpfiles, "\n") + "\n"
	return os.WriteFile(filepath.Join(run, "tmpfiles.d", "microvm-host.conf"), []byte(tmpfiles), 0o644)
}

// sysusers renders the module's users as sysusers.d lines. The groups are
// NixOS's own (kvm is one of its static groups; microvm.nix declares none):
// here each primary group is created with an id sysusers picks.
func (h *HostUnits) sysusers() string {
	var groups, users []string
	for name, group := range h.Users {
		if !slices.Contains(groups, group) {
			groups = append(groups, group)
		}
		users = append(users, name)
	}
	slices.Sort(groups)
	slices.Sort(users)
	var b strings.Builder
	b.WriteString("# Rendered by tests/systemd from microvm.nix's users.users (the groups stand in for NixOS's).\n")
	for _, g := range groups {
		fmt.Fprintf(&b, "g %s -\n", g)
	}
	for _, u := range users {
		fmt.Fprintf(&b, "u %s -:%s \"%s (microvm.nix)\"\n", u, h.Users[u], u)
	}
	return b.String()
}

// repoRoot is the repository's top directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// thirdParty are the pinned sources' directories.
type thirdParty struct{ nixpkgsLib, microvm string }

// pinLine matches an entry of scripts/setup-nixlib.sh's pins array:
// "NAME|OWNER/REPO|COMMIT|ARCHIVE|ARCHIVE-SHA256|NAR-HASH" (tests/nixlib
// reads them the same way).
var pinLine = regexp.MustCompile(`"([^"|]+)\|[^"|]+\|([0-9a-f]{40})\|[^"|]+\|[0-9a-f]{64}\|(sha256-[A-Za-z0-9+/]+=*)"`)

// thirdPartySources finds the pinned nixpkgs lib and microvm.nix in the
// cache scripts/setup-nixlib.sh fills ($BLIXARD_THIRD_PARTY_CACHE, default
// /var/cache/blixard/third-party) and checks their NAR hashes;
// $BLIXARD_NIXPKGS replaces the nixpkgs lib, as in tests/nixlib.
func thirdPartySources(ctx context.Context) (thirdParty, error) {
	script := filepath.Join(repoRoot(), "scripts", "setup-nixlib.sh")
	data, err := os.ReadFile(script)
	if err != nil {
		return thirdParty{}, fmt.Errorf("reading the pins: %w", err)
	}
	cache := os.Getenv("BLIXARD_THIRD_PARTY_CACHE")
	if cache == "" {
		cache = "/var/cache/blixard/third-party"
	}
	dirs := map[string]string{}
	for _, m := range pinLine.FindAllStringSubmatch(string(data), -1) {
		name, commit, nar := m[1], m[2], m[3]
		dir := filepath.Join(cache, name+"-"+commit)
		if name == "nixpkgs-lib" && os.Getenv("BLIXARD_NIXPKGS") != "" {
			continue
		}
		if _, err := os.Stat(dir); err != nil {
			return thirdParty{}, fmt.Errorf("%s %s is not unpacked in %s: %s", name, commit, dir, SetupNixlibHint)
		}
		got, err := runNix(ctx, "nix", "hash", "path", dir)
		if err != nil {
			return thirdParty{}, fmt.Errorf("nix hash path %s: %w", dir, err)
		}
		if h := strings.TrimSpace(string(got)); h != nar {
			return thirdParty{}, fmt.Errorf("%s has NAR hash %s, want %s (commit %s): remove it and %s", dir, h, nar, commit, SetupNixlibHint)
		}
		dirs[name] = dir
	}
	if p := os.Getenv("BLIXARD_NIXPKGS"); p != "" {
		dirs["nixpkgs-lib"] = p
	}
	src := thirdParty{nixpkgsLib: dirs["nixpkgs-lib"], microvm: dirs["microvm.nix"]}
	if src.nixpkgsLib == "" || src.microvm == "" {
		return thirdParty{}, fmt.Errorf("%s pins no nixpkgs-lib or microvm.nix (want lines \"NAME|OWNER/REPO|COMMIT|ARCHIVE|SHA256|NAR-HASH\")", script)
	}
	return src, nil
}

// runNix runs a nix program with the project's nix settings and returns
// its stdout; the error carries nix's stderr.
func runNix(ctx context.Context, program string, args ...string) ([]byte, error) {
	if _, err := exec.LookPath(program); err != nil {
		return nil, fmt.Errorf("%s not found on PATH: %s", program, microvm.SetupNix)
	}
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.Env = microvm.NixEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", program, strings.Join(args[:min(len(args), 2)], " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// nixString quotes s as a Nix string literal.
func nixString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`).Replace(s) + `"`
}
