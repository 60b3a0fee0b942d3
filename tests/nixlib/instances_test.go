package nixlib

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// TestNixInstanceIdentityMatchesGo checks that nix/lib.nix derives an
// instance's MAC, tap and hostname exactly as replicated.DeriveMAC,
// DeriveTap and DeriveHostname do at attempt 0: mkCluster bakes the Nix
// ones into each runner, the daemon commits the Go ones.
func TestNixInstanceIdentityMatchesGo(t *testing.T) {
	long := strings.Repeat("c", 63)
	pairs := [][2]string{
		{"prod", "web-0"}, {"prod", "web-999"}, {"", "a"}, {"", "web"}, {"demo", "api"},
		{"prod", "web-"}, {"prod", "a--"}, {long, strings.Repeat("x", 63)},
		{"prod", strings.Repeat("y", 62) + "-"},              // trailing '-': derived, cut to 56
		{"prod", strings.Repeat("a", 55) + "-bbbbb-"},        // the cut at 56 ends in '-', which goes too
		{"p", strings.Repeat("ab", 30) + "-"}, {"p", "x-0-"}, // not DNS labels
	}
	var b strings.Builder
	b.WriteString("[")
	for _, p := range pairs {
		fmt.Fprintf(&b, " (fx.blixardLib.instanceIdentity %s %s)", nixString(p[0]), nixString(p[1]))
	}
	b.WriteString(" ]")
	var got []struct{ MAC, Tap, Hostname string }
	if err := json.Unmarshal(evalJSON(t, b.String()), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(pairs) {
		t.Fatalf("%d identities for %d names", len(got), len(pairs))
	}
	for i, p := range pairs {
		cluster, inst := p[0], p[1]
		want := struct{ MAC, Tap, Hostname string }{replicated.DeriveMAC(cluster, inst, 0).String(),
			replicated.DeriveTap(cluster, inst, 0), replicated.DeriveHostname(cluster, inst, 0)}
		if got[i] != want {
			t.Errorf("instanceIdentity %q %q = %+v, the daemon derives %+v", cluster, inst, got[i], want)
		}
		if err := spec.ValidMAC(got[i].MAC); err != nil {
			t.Errorf("%s/%s: %v", cluster, inst, err)
		}
		if err := spec.ValidTap(got[i].Tap); err != nil {
			t.Errorf("%s/%s: %v", cluster, inst, err)
		}
	}

	var names [][]string
	if err := json.Unmarshal(evalJSON(t, `map (n: fx.blixardLib.instanceNames "web" n) [ 0 1 2 11 ]`), &names); err != nil {
		t.Fatal(err)
	}
	for i, n := range []int{0, 1, 2, 11} {
		if want := spec.InstanceNames("web", n); !slices.Equal(names[i], want) {
			t.Errorf("instanceNames web %d = %v, spec expands %v", n, names[i], want)
		}
	}
}

// TestNixMkClusterInstancesAreWhatTheClusterCommits evaluates a cluster of
// microvm.nix configurations (the stand-in guest module, whose runner
// follows the hostname and the interfaces) through mkCluster and nixeval's
// apply function, decodes and validates it with the daemon's spec, and
// allocates its network with the daemon's rule: every instance has a
// runner of its own, built with a tap NIC and hostname that are exactly
// the identity the cluster commits for it.
func TestNixMkClusterInstancesAreWhatTheClusterCommits(t *testing.T) {
	requireThirdParty(t)
	cluster := `fx.blixardLib.mkCluster {
		cluster = "prod";
		vms.web = { nixosConfiguration = fx.microvmConfig { hostName = "web"; modules = [ {
			microvm.interfaces = [ { type = "user"; id = "web"; mac = "02:00:00:00:01:01"; } ];
		} ]; }; replicas = 3; };
		vms.cache- = { nixosConfiguration = fx.microvmConfig { hostName = "cache"; }; };
	}`
	c := decodeStrict(t, evalJSON(t, "fx.toDaemon ("+cluster+")"))
	declared, err := replicated.DeclaredIdentities(&c)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	outs := map[string]string{}
	for _, in := range c.Instances() {
		names = append(names, in.Name)
		if !in.OwnRunner() {
			t.Fatalf("%s runs the VM's runner, want its own", in.Name)
		}
		if other, dup := outs[in.Runner.Out]; dup {
			t.Fatalf("%s and %s share runner %s", in.Name, other, in.Runner.Out)
		}
		outs[in.Runner.Out] = in.Name
	}
	network, refused := replicated.AllocateNetwork(nil, replicated.NetworkRequest{Cluster: c.Name, CIDR: c.NetworkCIDR(),
		Instances: names, Declared: declared, Nodes: []uint64{1, 2}})
	if len(refused) > 0 {
		t.Fatalf("instances without an identity: %+v", refused)
	}

	// What each runner was built with: the stand-in's runner is named after
	// the hostname and carries the interfaces in its settings.
	var built map[string]struct {
		Name     string `json:"name"`
		Settings string `json:"settings"`
	}
	expr := `let c = ` + cluster + `; in builtins.listToAttrs (builtins.concatMap (vm: map (i: {
		name = i; value = { inherit (c.vms.${vm}.instances.${i}.runner) name settings; };
	}) (builtins.attrNames c.vms.${vm}.instances)) (builtins.attrNames c.vms))`
	if err := json.Unmarshal(evalJSON(t, expr), &built); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		id := network.Identities[name]
		if want := "runner-" + id.Hostname; built[name].Name != want {
			t.Errorf("%s's runner is %q, want %q: built with another hostname than the committed %s", name, built[name].Name, want, id.Hostname)
		}
		var settings struct{ Interfaces []map[string]string }
		if err := json.Unmarshal([]byte(built[name].Settings), &settings); err != nil {
			t.Fatal(err)
		}
		tap := map[string]string{"type": "tap", "id": id.Tap, "mac": id.MAC.String()}
		if !slices.ContainsFunc(settings.Interfaces, func(i map[string]string) bool { return fmt.Sprint(i) == fmt.Sprint(tap) }) {
			t.Errorf("%s's runner has interfaces %v, want the committed tap %s with MAC %s", name, settings.Interfaces, id.Tap, id.MAC)
		}
		if name == "web-1" && !slices.ContainsFunc(settings.Interfaces, func(i map[string]string) bool { return i["id"] == "web" }) {
			t.Errorf("web-1 lost the configuration's own interface: %v", settings.Interfaces)
		}
	}
	if h := network.Identities["cache-"].Hostname; h != replicated.DeriveHostname("prod", "cache-", 0) || h == "cache-" {
		t.Errorf("cache- has hostname %q, want the derived %q (a name ending in '-' is no DNS label)", h, replicated.DeriveHostname("prod", "cache-", 0))
	}
}

// TestNixMicrovmQemuRunnerPerInstance checks, against microvm.nix's own
// code at the pinned commit, that each replica's runner starts qemu with
// the replica's tap interface and MAC and its own name: the guest is
// microvm.nix's real options and interfaces modules on the NixOS stand-in,
// and the command line is microvm.nix's lib/runners/qemu.nix, evaluated
// without building (testdata/microvm-qemu-guest.nix). It also checks the
// tap-up script microvm.nix's interfaces module writes for the instance.
func TestNixMicrovmQemuRunnerPerInstance(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	expr := fmt.Sprintf(`let
		lib = import (%[1]s + "/lib");
		stub = import %[2]s { inherit lib; };
		L = fx.blixardLib;
		guest = stub.nixosSystem { modules = [
			(import %[3]s { microvm = %[4]s; })
			{ networking.hostName = "web"; microvm.interfaces = [ { type = "user"; id = "web"; mac = "02:00:00:00:01:01"; } ]; }
		]; };
		c = L.mkCluster { cluster = "prod"; vms.web = { nixosConfiguration = guest; replicas = 2; }; };
	in {
		instances = builtins.mapAttrs (_: i: { inherit (i) mac tap hostname; inherit (i.runner) command drvPath; }) c.vms.web.instances;
		tapUp = (guest.extendModules { modules = [ (L.instanceModule "prod" "web-1") ]; }).config.microvm.binScripts.tap-up;
		hostName = (guest.extendModules { modules = [ (L.instanceModule "prod" "web-1") ]; }).config.networking.hostName;
	}`, nixString(nixpkgsLib), nixString(filepath.Join(testdata, "nixos-stub", "nixos.nix")),
		nixString(filepath.Join(testdata, "microvm-qemu-guest.nix")), nixString(microvmSrc))
	var got struct {
		Instances map[string]struct {
			MAC, Tap, Hostname string
			Command            string `json:"command"`
			DrvPath            string `json:"drvPath"`
		}
		TapUp    string `json:"tapUp"`
		HostName string `json:"hostName"`
	}
	if err := json.Unmarshal(evalJSON(t, expr), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Instances) != 2 || got.Instances["web-0"].DrvPath == got.Instances["web-1"].DrvPath {
		t.Fatalf("instances %+v: want web-0 and web-1 with runners of their own", got.Instances)
	}
	for _, name := range []string{"web-0", "web-1"} {
		in := got.Instances[name]
		mac, tap := replicated.DeriveMAC("prod", name, 0).String(), replicated.DeriveTap("prod", name, 0)
		if in.MAC != mac || in.Tap != tap || in.Hostname != name {
			t.Errorf("%s declares %s %s %s, want %s %s %s", name, in.MAC, in.Tap, in.Hostname, mac, tap, name)
		}
		for _, want := range []string{
			"-name " + name + " ",
			"-netdev 'tap,id=" + tap + ",ifname=" + tap + ",script=no,downscript=no'",
			"-device 'virtio-net-device,netdev=" + tap + ",mac=" + mac + "'",
			"-netdev 'user,id=web'", // the configuration's own interface stays
		} {
			if !strings.Contains(in.Command, want) {
				t.Errorf("%s's qemu command line lacks %q:\n%s", name, want, in.Command)
			}
		}
		for _, other := range []string{"web-0", "web-1"} {
			if other != name && strings.Contains(in.Command, replicated.DeriveTap("prod", other, 0)) {
				t.Errorf("%s's command line names %s's tap", name, other)
			}
		}
	}
	tap1 := replicated.DeriveTap("prod", "web-1", 0)
	if !strings.Contains(got.TapUp, "tuntap add name '"+tap1+"' mode tap user 'microvm'") || got.HostName != "web-1" {
		t.Errorf("web-1's configuration: hostName %q, tap-up script:\n%s\nwant hostName web-1 and `ip tuntap add name '%s' mode tap user 'microvm'`", got.HostName, got.TapUp, tap1)
	}
}
