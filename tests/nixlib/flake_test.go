package nixlib

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
)

// flakeEval evaluates ATTR of the flake at dir (a path: flake) with its
// inputs replaced by the local stand-ins and returns the JSON of apply
// applied to it.
func flakeEval(t *testing.T, dir, blixardDir, attr, apply string) []byte {
	t.Helper()
	// --impure: the apply functions read the rendered config file by a path
	// taken out of ExecStart, which drops its store context.
	args := append([]string{"eval", "--json", "--impure", "path:" + dir + "#" + attr, "--apply", apply}, flakeOverrides(blixardDir)...)
	stdout, stderr, err := runNix(t, "nix", args...)
	if err != nil {
		t.Fatalf("nix eval %s#%s failed: %v\n%s", dir, attr, err, stderr)
	}
	return []byte(stdout)
}

// TestNixBlixardFlakeOutputs evaluates Blixard's own flake.nix with nixpkgs
// replaced by the stand-in (real nixpkgs lib, stub packages), through a
// wrapper flake that has both as inputs.
func TestNixBlixardFlakeOutputs(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	dir := blixardFlake(t)
	wrapper := t.TempDir()
	flake := `{
  inputs.nixpkgs.url = "path:` + nixpkgsStub + `";
  inputs.blixard.url = "path:` + dir + `";
  inputs.blixard.inputs.nixpkgs.follows = "nixpkgs";
  outputs = { self, nixpkgs, blixard }: let f = blixard; sys = "x86_64-linux"; in {
    result = {
      outputs = builtins.attrNames f;
      lib = builtins.attrNames f.lib;
      packages = builtins.mapAttrs (_: p: p.name) f.packages.${sys};
      # What the stand-in buildGoModule was given, per package.
      builds = builtins.mapAttrs (_: p: { inherit (p) tags env vendorHash; buildInputs = map (i: i.name) p.buildInputs; })
        f.packages.${sys};
      overlayCeph = (f.overlays.default nixpkgs.legacyPackages.${sys} nixpkgs.legacyPackages.${sys}).blixard-ceph.name;
      systems = builtins.attrNames f.packages;
      app = f.apps.${sys}.default;
      overlay = (f.overlays.default nixpkgs.legacyPackages.${sys} nixpkgs.legacyPackages.${sys}).blixard.name;
      modules = builtins.attrNames f.nixosModules;
      # The flake's module makes the package default to the flake's own.
      modulePackage = (nixpkgs.lib.nixosSystem {
        modules = [ f.nixosModules.default { services.blixard = {
          enable = true; nodeId = 1; raftAddress = "127.0.0.1:7001"; backend = "process";
          capacity = { vcpu = 1; memMiB = 1; }; }; } ];
      }).config.services.blixard.package.name;
      # … and the Ceph build when ceph.enable is set.
      modulePackageCeph = (nixpkgs.lib.nixosSystem {
        modules = [ f.nixosModules.default { services.blixard = {
          enable = true; nodeId = 1; raftAddress = "127.0.0.1:7001"; backend = "process"; ceph.enable = true;
          capacity = { vcpu = 1; memMiB = 1; }; }; } ];
      }).config.services.blixard.package.name;
    };
  };
}
`
	if err := os.WriteFile(filepath.Join(wrapper, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := runNix(t, "nix", "eval", "--json", "path:"+wrapper+"#result", "--no-write-lock-file")
	if err != nil {
		t.Fatalf("evaluating Blixard's flake: %v\n%s", err, stderr)
	}
	got := []byte(stdout)
	var v struct {
		Outputs, Lib, Systems, Modules []string
		Packages                       map[string]string
		Builds                         map[string]struct {
			Tags        []string          `json:"tags"`
			Env         map[string]string `json:"env"`
			VendorHash  string            `json:"vendorHash"`
			BuildInputs []string          `json:"buildInputs"`
		}
		App                                                    map[string]string
		Overlay, OverlayCeph, ModulePackage, ModulePackageCeph string
	}
	if err := json.Unmarshal(got, &v); err != nil {
		t.Fatal(err)
	}
	// The flake's `inputs` and `outPath` attributes come with every flake.
	for _, want := range []string{"apps", "lib", "nixosModules", "overlays", "packages"} {
		if !slices.Contains(v.Outputs, want) {
			t.Errorf("outputs %v lack %s", v.Outputs, want)
		}
	}
	if !reflect.DeepEqual(v.Lib, []string{"instanceIdentity", "instanceModule", "instanceNames", "isValidName", "mkCluster", "schemaVersion", "volumeModule", "volumePath"}) {
		t.Errorf("lib = %v", v.Lib)
	}
	if !reflect.DeepEqual(v.Systems, []string{"aarch64-linux", "x86_64-linux"}) {
		t.Errorf("package systems = %v", v.Systems)
	}
	if len(v.Packages) != 3 || !strings.HasPrefix(v.Packages["blixard"], "blixard-0.1.0-") || v.Packages["default"] != v.Packages["blixard"] ||
		!strings.HasPrefix(v.Packages["blixard-ceph"], "blixard-ceph-0.1.0-") {
		t.Errorf("packages = %v, want blixard, blixard-ceph and default", v.Packages)
	}
	plain, ceph := v.Builds["blixard"], v.Builds["blixard-ceph"]
	if len(plain.Tags) != 0 || plain.Env["CGO_ENABLED"] != "0" || len(plain.BuildInputs) != 0 {
		t.Errorf("blixard builds with %+v, want pure Go (CGO_ENABLED=0, no tags, no libraries)", plain)
	}
	if !reflect.DeepEqual(ceph.Tags, []string{"ceph", "pacific"}) || ceph.Env["CGO_ENABLED"] != "1" ||
		!reflect.DeepEqual(ceph.BuildInputs, []string{"ceph", "ceph"}) {
		t.Errorf("blixard-ceph builds with %+v, want cgo, tags ceph and pacific, and nixpkgs' ceph (dev and lib outputs)", ceph)
	}
	if !strings.HasPrefix(plain.VendorHash, "sha256-") || plain.VendorHash != ceph.VendorHash {
		t.Errorf("vendorHash: blixard %q, blixard-ceph %q; want the same real hash", plain.VendorHash, ceph.VendorHash)
	}
	if v.App["type"] != "app" || !strings.HasSuffix(v.App["program"], "/bin/blixard") {
		t.Errorf("apps.default = %v", v.App)
	}
	if v.Overlay != v.Packages["blixard"] {
		t.Errorf("overlay's blixard = %q, want %q", v.Overlay, v.Packages["blixard"])
	}
	if !reflect.DeepEqual(v.Modules, []string{"blixard", "default"}) {
		t.Errorf("nixosModules = %v", v.Modules)
	}
	if v.OverlayCeph != v.Packages["blixard-ceph"] {
		t.Errorf("overlay's blixard-ceph = %q, want %q", v.OverlayCeph, v.Packages["blixard-ceph"])
	}
	if v.ModulePackage != v.Packages["blixard"] {
		t.Errorf("nixosModules.default's package = %q, want the flake's %q", v.ModulePackage, v.Packages["blixard"])
	}
	if v.ModulePackageCeph != v.Packages["blixard-ceph"] {
		t.Errorf("nixosModules.default's package with ceph.enable = %q, want the flake's %q", v.ModulePackageCeph, v.Packages["blixard-ceph"])
	}
}

// TestNixBlixardFlakeLibNeedsNoInputs checks that the flake's lib touches no
// input: a wrapper flake uses blixard.lib with Blixard's nixpkgs replaced by
// a flake that has nothing at all.
func TestNixBlixardFlakeLibNeedsNoInputs(t *testing.T) {
	t.Parallel()
	dir := blixardFlake(t)
	empty, wrapper := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "flake.nix"), []byte("{ outputs = { self }: { }; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	flake := `{
  inputs.nothing.url = "path:` + empty + `";
  inputs.blixard.url = "path:` + dir + `";
  inputs.blixard.inputs.nixpkgs.follows = "nothing";
  outputs = { self, nothing, blixard }: {
    result = blixard.lib.mkCluster { cluster = "c"; vms.a = { runner = derivation { name = "r"; system = "x86_64-linux"; builder = "/bin/sh"; }; vcpu = 1; memMiB = 1; }; };
  };
}
`
	if err := os.WriteFile(filepath.Join(wrapper, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := runNix(t, "nix", "eval", "--json", "path:"+wrapper+"#result", "--no-write-lock-file",
		"--apply", `c: c.vms.a.replicas`)
	if err != nil {
		t.Fatalf("lib needs an input: %v\n%s", err, stderr)
	}
	if strings.TrimSpace(stdout) != "1" {
		t.Errorf("lib.mkCluster's replicas = %s, want 1", stdout)
	}
}

// TestNixExampleFlake evaluates examples/flake with nixpkgs, microvm.nix and
// Blixard replaced by the stand-ins: its `blixard` output is schema v1 with
// the VMs the README describes, its three hosts evaluate (assertions
// included), and the daemon accepts each host's rendered config.
func TestNixExampleFlake(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	blixardDir := blixardFlake(t)
	example := t.TempDir()
	copyTree(t, filepath.Join(repoRoot, "examples", "flake"), example, ".")

	// Evaluated as the daemon does: through nixeval's own apply function.
	apply, err := os.ReadFile(filepath.Join(repoRoot, "nixeval", "apply.nix"))
	if err != nil {
		t.Fatal(err)
	}
	got := flakeEval(t, example, blixardDir, "blixard", string(apply))
	cluster := decodeStrict(t, got)
	if cluster.Name != "prod" || len(cluster.VMs) != 3 {
		t.Fatalf("cluster %q with %d VMs, want prod with web, db and cache:\n%s", cluster.Name, len(cluster.VMs), indent(got))
	}
	web, db := cluster.VMs["web"], cluster.VMs["db"]
	if web.Replicas != 2 || web.VCPU != 1 || web.MemMiB != 512 || !reflect.DeepEqual(web.Placement.AntiAffinity, []string{"web"}) {
		t.Errorf("web = %+v, want 2 replicas of 1 vCPU / 512 MiB spread over hosts", web)
	}
	if v, ok := db.Volumes["data"]; !ok || v.SizeMiB != 10240 || v.Pool != "rbd" || db.Placement.Labels["disk"] != "ssd" {
		t.Errorf("db = %+v, want an RBD volume data of 10240 MiB on a disk=ssd host", db)
	}
	// Every instance runs a runner of its own, built with the identity the
	// daemon derives for it (mkCluster's instances).
	outs := map[string]string{}
	for _, in := range cluster.Instances() {
		if !in.OwnRunner() || !strings.HasSuffix(in.Runner.Drv, ".drv") || !strings.HasPrefix(in.Runner.Out, "/nix/store/") || !in.Autostart {
			t.Errorf("%s: runner %+v (its own: %t) autostart %v", in.Name, in.Runner, in.OwnRunner(), in.Autostart)
		}
		if other, dup := outs[in.Runner.Out]; dup {
			t.Errorf("%s and %s share the runner %s", in.Name, other, in.Runner.Out)
		}
		outs[in.Runner.Out] = in.Name
		if in.Own == nil || in.Own.MAC != replicated.DeriveMAC("prod", in.Name, 0).String() || in.Own.Tap != replicated.DeriveTap("prod", in.Name, 0) ||
			in.Own.Hostname != replicated.DeriveHostname("prod", in.Name, 0) {
			t.Errorf("%s declares %+v, not the daemon's derivation", in.Name, in.Own)
		}
	}
	if len(outs) != 4 {
		t.Errorf("runners %v, want one for each of web-0, web-1, db and cache", outs)
	}

	for _, node := range []string{"node1", "node2", "node3"} {
		t.Run(node, func(t *testing.T) {
			t.Parallel()
			var v struct {
				Toplevel string         `json:"toplevel"`
				Config   map[string]any `json:"config"`
				Package  string         `json:"package"`
				Units    []string       `json:"units"`
			}
			out := flakeEval(t, example, blixardDir, "nixosConfigurations."+node, `sys: {
				toplevel = sys.config.system.build.toplevel.drvPath;
				package = sys.config.services.blixard.package.pname;
				units = builtins.attrNames sys.config.system.build.units;
				config = builtins.fromJSON (builtins.readFile (builtins.head (builtins.match ".* --config ([^ ]+)"
					sys.config.systemd.services.blixard.serviceConfig.ExecStart)));
			}`)
			if err := json.Unmarshal(out, &v); err != nil {
				t.Fatal(err)
			}
			if v.Toplevel == "" {
				t.Fatalf("%s does not evaluate", node)
			}
			// The hosts enable Ceph: the flake's module picks the Ceph build.
			if v.Package != "blixard-ceph" {
				t.Errorf("%s runs package %q, want blixard-ceph (ceph.enable is set)", node, v.Package)
			}
			// microvm.nix's real host module is part of every host.
			for _, unit := range []string{"blixard.service", "microvm@.service", "microvm-set-booted@.service"} {
				if !slices.Contains(v.Units, unit) {
					t.Errorf("%s has no unit %s: %v", node, unit, v.Units)
				}
			}
			// The daemon reads the webhook secret while checking; point it at
			// a file that exists here.
			dir := t.TempDir()
			secret := filepath.Join(dir, "secret")
			if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if v.Config["webhook-secret-file"] != "/run/secrets/blixard-webhook" {
				t.Errorf("webhook-secret-file = %v", v.Config["webhook-secret-file"])
			}
			v.Config["webhook-secret-file"] = secret
			data, err := json.Marshal(v.Config)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, "blixard.json")
			if err := os.WriteFile(file, data, 0o600); err != nil {
				t.Fatal(err)
			}
			// The daemon the host runs: built with Ceph support.
			if out, err := checkConfigWith(t, blixardCeph(t), file); err != nil {
				t.Errorf("blixard (-tags ceph,pacific) serve --check-config rejected %s's config: %v\n%s\nconfig: %s", node, err, out, indent(data))
			}
		})
	}
}
