package nixlib

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// hostView is what fx.inspect reports about a host built with the module.
type hostView struct {
	Service struct {
		Description   string            `json:"description"`
		WantedBy      []string          `json:"wantedBy"`
		Wants         []string          `json:"wants"`
		After         []string          `json:"after"`
		Environment   map[string]string `json:"environment"`
		ServiceConfig map[string]any    `json:"serviceConfig"`
	} `json:"service"`
	Toplevel    string         `json:"toplevel"`
	ConfigFile  map[string]any `json:"configFile"`
	Rendered    map[string]any `json:"rendered"`
	Firewall    []int          `json:"firewall"`
	FirewallUDP []int          `json:"firewallUDP"`
	// FirewallInterfaces are networking.firewall.interfaces.
	FirewallInterfaces map[string]struct {
		TCP []int `json:"allowedTCPPorts"`
		UDP []int `json:"allowedUDPPorts"`
	} `json:"firewallInterfaces"`
	Sysctl         map[string]any `json:"sysctl"`
	Users          []string       `json:"users"`
	KernelModules  []string       `json:"kernelModules"`
	Tmpfiles       []string       `json:"tmpfiles"`
	Path           []string       `json:"path"`
	SystemPackages []string       `json:"systemPackages"`
}

// nixosDefaultPath is the path NixOS appends to every service's (the stub
// NixOS models it).
var nixosDefaultPath = []string{"coreutils", "findutils", "gnugrep", "gnused", "systemd"}

// hostModules is a services.blixard host with microvm.nix's real host
// module; extra is a Nix module merged after it.
func hostModules(extra string) string {
	return `fx.host [
		fx.microvm.nixosModules.host
		{ services.blixard = {
			enable = true;
			package = fx.drv "blixard-test";
			nodeId = 1;
			members = { "1" = "10.0.0.1:7001"; "2" = "10.0.0.2:7001"; "3" = "10.0.0.3:7001"; };
			apiAddress = "10.0.0.1:7070";
			capacity = { vcpu = 8; memMiB = 16384; };
		}; }
		(` + extra + `)
	]`
}

func inspectHost(t *testing.T, extra string) hostView {
	t.Helper()
	var v hostView
	if err := json.Unmarshal(evalJSON(t, "fx.inspect ("+hostModules(extra)+")"), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestNixModuleSystemdBackend(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard.extraArgs = [ "--log-level" "debug info" ]; }`)
	if v.Toplevel == "" {
		t.Error("the host does not evaluate")
	}
	if !reflect.DeepEqual(v.ConfigFile, v.Rendered) {
		t.Errorf("config file %v is not render.nix's output %v", v.ConfigFile, v.Rendered)
	}
	if v.ConfigFile["node-id"] != float64(1) || v.ConfigFile["members"] != "1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001" {
		t.Errorf("config file does not carry the options: %v", v.ConfigFile)
	}
	// TLS is on by default, with the files where `blixard cert issue` names
	// them, under the data directory.
	if v.ConfigFile["tls-cert"] != "/var/lib/blixard/tls/node-1.crt" || v.ConfigFile["tls-key"] != "/var/lib/blixard/tls/node-1.key" ||
		v.ConfigFile["tls-ca"] != "/var/lib/blixard/tls/ca.crt" || v.ConfigFile["insecure"] != nil {
		t.Errorf("config file TLS settings: %v", v.ConfigFile)
	}
	sc := v.Service.ServiceConfig
	exec, _ := sc["ExecStart"].(string)
	if !strings.HasPrefix(exec, "/nix/store/") || !strings.Contains(exec, "-blixard-test/bin/blixard serve --config /nix/store/") ||
		!strings.HasSuffix(exec, "-blixard.json --log-level 'debug info'") {
		t.Errorf("ExecStart = %q, want …/bin/blixard serve --config …-blixard.json followed by the escaped extraArgs", exec)
	}
	want := map[string]any{
		"Type": "notify", "User": "root", "StateDirectory": "blixard", "KillMode": "process",
		"ProtectHome": true, "PrivateTmp": true, "NoNewPrivileges": true, "ProtectSystem": "full",
		"ProtectKernelModules": true,
	}
	for k, w := range want {
		if sc[k] != w {
			t.Errorf("serviceConfig.%s = %v, want %v", k, sc[k], w)
		}
	}
	if !reflect.DeepEqual(v.Service.After, []string{"network-online.target"}) ||
		!reflect.DeepEqual(v.Service.Wants, []string{"network-online.target"}) ||
		!reflect.DeepEqual(v.Service.WantedBy, []string{"multi-user.target"}) {
		t.Errorf("unit ordering: after %v wants %v wantedBy %v", v.Service.After, v.Service.Wants, v.Service.WantedBy)
	}
	if !strings.Contains(v.Service.Environment["NIX_CONFIG"], "flakes") {
		t.Errorf("the daemon's nix has no flakes: environment %v", v.Service.Environment)
	}
	if want := append([]string{"nix", "git"}, nixosDefaultPath...); !reflect.DeepEqual(v.Path, want) {
		t.Errorf("service path = %v, want nix and git (then NixOS's defaults): %v", v.Path, want)
	}
	if slices.Sort(v.SystemPackages); !reflect.DeepEqual(v.SystemPackages, []string{"blixard-test", "microvm"}) {
		t.Errorf("systemPackages = %v, want the CLI next to microvm.nix's microvm command", v.SystemPackages)
	}
	if len(v.Tmpfiles) != 0 {
		t.Errorf("tmpfiles = %v, but the default dataDir is a StateDirectory", v.Tmpfiles)
	}
	if len(v.Firewall) != 0 {
		t.Errorf("firewall opened %v without openFirewall", v.Firewall)
	}
	for _, u := range v.Users {
		if u == "blixard" {
			t.Error("the systemd backend runs as root but a blixard user was created")
		}
	}
}

func TestNixModuleProcessBackendRunsUnprivileged(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	// No microvm.nix host module: the process backend does not need it.
	var v hostView
	err := json.Unmarshal(evalJSON(t, `fx.inspect (fx.host [ { services.blixard = {
		enable = true; package = fx.drv "blixard-test"; nodeId = 1; raftAddress = "127.0.0.1:7001";
		backend = "process"; capacity = { vcpu = 1; memMiB = 512; }; dataDir = "/srv/blixard";
	}; } ])`), &v)
	if err != nil {
		t.Fatal(err)
	}
	sc := v.Service.ServiceConfig
	if sc["User"] != "blixard" || sc["Group"] != "blixard" || sc["KillMode"] != "process" {
		t.Errorf("process backend: User %v Group %v KillMode %v, want blixard, blixard, process", sc["User"], sc["Group"], sc["KillMode"])
	}
	if _, ok := sc["StateDirectory"]; ok || !reflect.DeepEqual(sc["ReadWritePaths"], []any{"/srv/blixard"}) {
		t.Errorf("a dataDir outside /var/lib needs ReadWritePaths, not StateDirectory: %v", sc)
	}
	if !reflect.DeepEqual(v.Tmpfiles, []string{"d /srv/blixard 0750 blixard blixard -", "d /var/lib/microvms 0750 blixard kvm -"}) {
		t.Errorf("tmpfiles = %v, want /srv/blixard and the VM state directory created for the blixard user", v.Tmpfiles)
	}
	if !reflect.DeepEqual(v.Users, []string{"blixard"}) {
		t.Errorf("users = %v, want the blixard system user", v.Users)
	}
	if v.ConfigFile["backend"] != "process" {
		t.Errorf("config file backend = %v", v.ConfigFile["backend"])
	}
}

func TestNixModuleProcessBackendWithMicrovmHostRunsAsRoot(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	// microvm.nix's host module owns /var/lib/microvms (as the microvm user).
	v := inspectHost(t, `{ services.blixard.backend = fx.nixpkgsLib.mkForce "process"; }`)
	if v.Service.ServiceConfig["User"] != "root" || len(v.Tmpfiles) != 0 || !reflect.DeepEqual(v.Users, []string{"microvm"}) {
		t.Errorf("User %v, tmpfiles %v, users %v; want root, and only microvm.nix's microvm user", v.Service.ServiceConfig["User"], v.Tmpfiles, v.Users)
	}
}

func TestNixModuleOpenFirewall(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard.openFirewall = true; }`)
	if !reflect.DeepEqual(v.Firewall, []int{7001, 7070}) {
		t.Errorf("firewall = %v, want the raft port from members and the API port", v.Firewall)
	}
}

func TestNixModuleCeph(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard.ceph = { enable = true; keyringFile = "/etc/ceph/k"; }; }`)
	if !slices.Contains(v.KernelModules, "rbd") {
		t.Errorf("kernelModules = %v, want rbd (ProtectKernelModules stops rbd from loading it)", v.KernelModules)
	}
	if want := append([]string{"nix", "git", "ceph-client"}, nixosDefaultPath...); !reflect.DeepEqual(v.Path, want) {
		t.Errorf("service path = %v, want ceph-client for rbd: %v", v.Path, want)
	}
	if v.ConfigFile["ceph-keyring-file"] != "/etc/ceph/k" {
		t.Errorf("config file = %v", v.ConfigFile)
	}
}

func TestNixModulePackageFollowsCeph(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	// pkgs as blixard.overlays.default makes it: both builds.
	got := evalJSON(t, `let
		pkgs = fx.nixosStub.pkgs // { blixard = fx.drv "blixard-plain"; blixard-ceph = fx.drv "blixard-ceph"; };
		package = extra: (fx.host [ fx.microvm.nixosModules.host {
			_module.args.pkgs = fx.nixpkgsLib.mkForce pkgs;
			services.blixard = { enable = true; nodeId = 1; raftAddress = "127.0.0.1:7001"; capacity = { vcpu = 1; memMiB = 1; }; };
		} extra ]).config.services.blixard.package.name;
	in [
		(package { })
		(package { services.blixard.ceph.enable = true; })
		(package { services.blixard.ceph.enable = true; services.blixard.package = fx.drv "mine"; })
	]`)
	if !jsonEqual(t, got, []byte(`["blixard-plain", "blixard-ceph", "mine"]`)) {
		t.Errorf("packages = %s, want pkgs.blixard, pkgs.blixard-ceph with ceph.enable, and the package set by the user", got)
	}
}

func TestNixModuleDisabledDefinesNothing(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	got := evalJSON(t, `let sys = fx.host [ { services.blixard.nodeId = 1; } ]; in
		[ (builtins.attrNames sys.config.systemd.services) sys.config.assertions sys.config.environment.systemPackages ]`)
	if !jsonEqual(t, got, []byte(`[[], [], []]`)) {
		t.Errorf("a disabled module defined %s", got)
	}
}

func TestNixModuleErrors(t *testing.T) {
	requireThirdParty(t)
	cases := []struct {
		name    string
		modules string
		want    string
	}{
		{
			name:    "systemd backend without microvm.nix's host module says what to import",
			modules: `fx.host [ { services.blixard = { enable = true; package = fx.drv "b"; nodeId = 1; raftAddress = "127.0.0.1:7001"; capacity = { vcpu = 1; memMiB = 1; }; }; } ]`,
			want:    `microvm.nix's host module is not enabled on this host: add microvm.nixosModules.host to this host's modules`,
		},
		{
			name: "microvm.nix's host module disabled fails the same way",
			modules: `fx.host [ fx.microvm.nixosModules.host { microvm.host.enable = false; services.blixard = {
				enable = true; package = fx.drv "b"; nodeId = 1; raftAddress = "127.0.0.1:7001"; capacity = { vcpu = 1; memMiB = 1; }; }; } ]`,
			want: `or set services.blixard.backend = "process"`,
		},
		{
			name:    "node without a raft address fails an assertion",
			modules: hostModules(`{ services.blixard.nodeId = fx.nixpkgsLib.mkForce 4; }`),
			want:    `node 4 has no Raft address: set services.blixard.raftAddress, or list this node in services.blixard.members`,
		},
		{
			name:    "node id 0 is a type error naming the option",
			modules: hostModules(`{ services.blixard.nodeId = fx.nixpkgsLib.mkForce 0; }`),
			want:    `services.blixard.nodeId`,
		},
		{
			name:    "malformed member address is a type error",
			modules: hostModules(`{ services.blixard.members = fx.nixpkgsLib.mkForce { "1" = "10.0.0.1"; }; }`),
			want:    `services.blixard.members`,
		},
		{
			name:    "label value with a comma is a type error",
			modules: hostModules(`{ services.blixard.labels.zone = "a,b"; }`),
			want:    `services.blixard.labels.zone`,
		},
		{
			name:    "backend outside the enum is a type error",
			modules: hostModules(`{ services.blixard.backend = "docker"; }`),
			want:    `services.blixard.backend`,
		},
		{
			name:    "missing capacity is reported by NixOS",
			modules: `fx.host [ fx.microvm.nixosModules.host { services.blixard = { enable = true; package = fx.drv "b"; nodeId = 1; raftAddress = "127.0.0.1:7001"; }; } ]`,
			want:    `services.blixard.capacity.`,
		},
		{
			name: "with ceph.enable and without the flake's module or overlay the package names the Ceph build",
			modules: `fx.host [ fx.microvm.nixosModules.host { services.blixard = { enable = true; nodeId = 1; raftAddress = "127.0.0.1:7001";
				capacity = { vcpu = 1; memMiB = 1; }; ceph.enable = true; }; } ]`,
			want: "pkgs has no `blixard-ceph` (Blixard built with Ceph support, for ceph.enable); import blixard.nixosModules.default",
		},
		{
			name:    "insecure on a LAN API address fails an assertion saying what to set",
			modules: hostModules(`{ services.blixard.insecure = true; }`),
			want:    `apiAddress 10.0.0.1:7070 is not loopback`,
		},
		{
			name:    "a TLS key given as a Nix path is a type error: it would land in the store",
			modules: hostModules(`{ services.blixard.tls.keyFile = ./node-1.key; }`),
			want:    `services.blixard.tls.keyFile`,
		},
		{
			name:    "the removed ceph.pool says where pools come from now",
			modules: hostModules(`{ services.blixard.ceph.pool = "rbd"; }`),
			want:    `vms.<vm>.volumes.<name>.pool`,
		},
		{
			name:    "without the flake's module or overlay the package says where to get it",
			modules: `fx.host [ fx.microvm.nixosModules.host { services.blixard = { enable = true; nodeId = 1; raftAddress = "127.0.0.1:7001"; capacity = { vcpu = 1; memMiB = 1; }; }; } ]`,
			want:    "import blixard.nixosModules.default (it sets the package) or add blixard.overlays.default",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stderr := evalError(t, "(fx.inspect ("+tc.modules+")).toplevel")
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("error does not say %q:\n%s", tc.want, stderr)
			}
		})
	}
}

func TestNixModuleTLSFilesAndInsecure(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard.tls = { caFile = "/etc/blixard/ca.crt"; certFile = "/etc/blixard/node-1.crt";
		keyFile = "/run/secrets/node-1.key"; }; }`)
	if v.ConfigFile["tls-ca"] != "/etc/blixard/ca.crt" || v.ConfigFile["tls-cert"] != "/etc/blixard/node-1.crt" ||
		v.ConfigFile["tls-key"] != "/run/secrets/node-1.key" {
		t.Errorf("config file TLS settings: %v", v.ConfigFile)
	}
	v = inspectHost(t, `{ services.blixard = { insecure = true; apiAddress = fx.nixpkgsLib.mkForce "127.0.0.1:7070"; }; }`)
	if v.ConfigFile["insecure"] != true || v.ConfigFile["tls-key"] != nil {
		t.Errorf("insecure config file: %v, want insecure and no TLS files", v.ConfigFile)
	}
}

func TestNixModuleNetwork(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard = { openFirewall = true; network = { enable = true; ingressAddress = ":80"; vxlanId = 77; }; }; }`)
	want := map[string]any{"network": true, "bridge": "blixard0", "vxlan-id": float64(77), "vxlan-port": float64(4789),
		"dns-dir": "/run/blixard-netdns", "masquerade": true, "ingress-addr": ":80", "restore-pool": float64(4)}
	for k, w := range want {
		if v.ConfigFile[k] != w {
			t.Errorf("config file %q = %v, want %v", k, v.ConfigFile[k], w)
		}
	}
	if _, ok := v.ConfigFile["underlay-addr"]; ok {
		t.Errorf("underlay-addr rendered without underlayAddress: %v", v.ConfigFile)
	}
	if !reflect.DeepEqual(v.Firewall, []int{7001, 7070, 80}) || !reflect.DeepEqual(v.FirewallUDP, []int{4789}) {
		t.Errorf("firewall TCP %v UDP %v, want the Raft, API and ingress ports and the VXLAN port", v.Firewall, v.FirewallUDP)
	}
	br := v.FirewallInterfaces["blixard0"]
	if !reflect.DeepEqual(br.UDP, []int{53, 67}) || !reflect.DeepEqual(br.TCP, []int{53}) {
		t.Errorf("firewall on the bridge: %+v, want DHCP and DNS for the instances", v.FirewallInterfaces)
	}
	if v.Sysctl["net.ipv4.ip_forward"] != float64(1) {
		t.Errorf("sysctl = %v, want IPv4 forwarding for the instances' outbound traffic", v.Sysctl)
	}
	if !slices.Contains(v.Path, "dnsmasq") {
		t.Errorf("service path %v lacks dnsmasq", v.Path)
	}
	sc := v.Service.ServiceConfig
	if sc["RuntimeDirectory"] != "blixard-netdns" || sc["RuntimeDirectoryMode"] != "0755" || sc["User"] != "root" {
		t.Errorf("serviceConfig: RuntimeDirectory %v mode %v User %v, want dnsmasq's directory searchable by nobody, as root",
			sc["RuntimeDirectory"], sc["RuntimeDirectoryMode"], sc["User"])
	}
	// The real daemon accepts what the module renders.
	file := filepath.Join(t.TempDir(), "blixard.json")
	data, err := json.Marshal(v.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := checkConfig(t, file); err != nil {
		t.Errorf("blixard serve --check-config rejected the rendered network settings: %v\n%s", err, out)
	}

	// Without network.enable nothing of it is rendered or opened.
	off := inspectHost(t, `{ services.blixard.openFirewall = true; }`)
	if off.ConfigFile["network"] != nil || len(off.FirewallUDP) != 0 || len(off.FirewallInterfaces) != 0 || len(off.Sysctl) != 0 {
		t.Errorf("network off: config %v, UDP %v, interfaces %v, sysctl %v", off.ConfigFile, off.FirewallUDP, off.FirewallInterfaces, off.Sysctl)
	}
}

func TestNixModuleNetworkUnderlayAndMasquerade(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard = {
		members = fx.nixpkgsLib.mkForce { "1" = "node1.example.org:7001"; };
		network = { enable = true; underlayAddress = "100.64.0.1"; masquerade = false; bridge = "br-cluster"; restorePool = 0; };
	}; }`)
	if v.ConfigFile["underlay-addr"] != "100.64.0.1" || v.ConfigFile["masquerade"] != false || v.ConfigFile["bridge"] != "br-cluster" ||
		v.ConfigFile["restore-pool"] != float64(0) {
		t.Errorf("config file: %v", v.ConfigFile)
	}
	if _, ok := v.FirewallInterfaces["br-cluster"]; !ok {
		t.Errorf("firewall interfaces %v: want DHCP and DNS open on br-cluster", v.FirewallInterfaces)
	}
}

func TestNixModuleNetworkErrors(t *testing.T) {
	requireThirdParty(t)
	for _, tc := range []struct{ name, extra, want string }{
		{"a Raft host name without underlayAddress says what to set",
			`{ services.blixard = { members = fx.nixpkgsLib.mkForce { "1" = "node1.example.org:7001"; }; network.enable = true; }; }`,
			"set services.blixard.network.underlayAddress"},
		{"an ingress address without the network says to enable it",
			`{ services.blixard.network.ingressAddress = ":80"; }`, "needs services.blixard.network.enable = true"},
		{"a VXLAN id of 0 is a type error", `{ services.blixard.network = { enable = true; vxlanId = 0; }; }`, "services.blixard.network.vxlanId"},
		{"a bridge name longer than Linux allows is a type error", `{ services.blixard.network = { enable = true; bridge = "a-very-long-bridge"; }; }`,
			"services.blixard.network.bridge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stderr := evalError(t, "(fx.inspect ("+hostModules(tc.extra)+")).toplevel")
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("error does not say %q:\n%s", tc.want, stderr)
			}
		})
	}
}
