package nixlib

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// decodeStrict decodes and validates a cluster with the daemon's own code
// (spec.Decode rejects unknown attributes), so mkCluster's output has to be
// exactly valid schema v1.
func decodeStrict(t *testing.T, data []byte) spec.Cluster {
	t.Helper()
	c, err := spec.Decode(data)
	if err != nil {
		t.Fatalf("output is not schema v1: %v\n%s", err, indent(data))
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("output is not a valid cluster: %v\n%s", err, indent(data))
	}
	return *c
}

// expand replaces @NAME.drv@ and @NAME.out@ in want with the store paths of
// fx.runners.NAME.
func expand(t *testing.T, want string) []byte {
	t.Helper()
	var runners map[string]spec.Runner
	if err := json.Unmarshal(evalJSON(t, "builtins.mapAttrs (_: fx.toRunner) fx.runners"), &runners); err != nil {
		t.Fatal(err)
	}
	for name, r := range runners {
		want = strings.ReplaceAll(want, "@"+name+".drv@", r.Drv)
		want = strings.ReplaceAll(want, "@"+name+".out@", r.Out)
	}
	return []byte(want)
}

// ident is the JSON of the identity attributes mkCluster writes for
// instance in cluster: the daemon's own derivation at attempt 0.
func ident(cluster, instance string) string {
	return fmt.Sprintf(`"mac": %q, "tap": %q, "hostname": %q`, replicated.DeriveMAC(cluster, instance, 0).String(),
		replicated.DeriveTap(cluster, instance, 0), replicated.DeriveHostname(cluster, instance, 0))
}

func TestNixMkClusterOutput(t *testing.T) {
	requireThirdParty(t) // fx.microvmConfig is a NixOS evaluation
	cases := []struct {
		name  string
		input string // argument of mkCluster; fx and L (the library) are in scope
		want  string // JSON after nixeval's runner conversion
	}{
		{
			name:  "empty cluster has cluster and vms only",
			input: `{ cluster = "prod"; vms = { }; }`,
			want:  `{"cluster": "prod", "vms": {}}`,
		},
		{
			name: "plain entries pass through with replicas and autostart written out",
			input: `{
				cluster = "prod";
				vms.web = { runner = fx.runners.web; vcpu = 1; memMiB = 256; };
				vms.db = {
					runner = fx.runners.db; vcpu = 2; memMiB = 1024; replicas = 3; autostart = false;
					placement = { nodes = [ 1 2 ]; labels.disk = "ssd"; antiAffinity = [ "web" ]; };
					volumes.data = { sizeMiB = 100; };
					volumes.logs = { sizeMiB = 10; pool = "fast"; };
				};
			}`,
			want: `{"cluster": "prod", "vms": {
				"web": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, "vcpu": 1, "memMiB": 256,
					"replicas": 1, "autostart": true},
				"db": {"runner": {"drv": "@db.drv@", "out": "@db.out@"}, "vcpu": 2, "memMiB": 1024,
					"replicas": 3, "autostart": false,
					"placement": {"nodes": [1, 2], "labels": {"disk": "ssd"}, "antiAffinity": ["web"]},
					"volumes": {"data": {"sizeMiB": 100, "pool": "rbd"}, "logs": {"sizeMiB": 10, "pool": "fast"}}}
			}}`,
		},
		{
			name: "spreadBy and prefer pass through",
			input: `{
				vms.web = {
					runner = fx.runners.web; vcpu = 1; memMiB = 256; replicas = 3;
					placement = { spreadBy = "zone"; prefer.labels = { disk = "ssd"; }; };
				};
			}`,
			want: `{"cluster": "", "vms": {
				"web": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, "vcpu": 1, "memMiB": 256,
					"replicas": 3, "autostart": true,
					"placement": {"spreadBy": "zone", "prefer": {"labels": {"disk": "ssd"}}}}
			}}`,
		},
		{
			name: "health and update pass through",
			input: `{
				vms.web = {
					runner = fx.runners.web; vcpu = 1; memMiB = 256; replicas = 4;
					health = { http = { port = 8080; path = "/healthz"; }; };
					update = { maxUnavailable = 2; autoRevert = true; };
				};
			}`,
			want: `{"cluster": "", "vms": {
				"web": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, "vcpu": 1, "memMiB": 256,
					"replicas": 4, "autostart": true,
					"health": {"http": {"port": 8080, "path": "/healthz"}},
					"update": {"maxUnavailable": 2, "autoRevert": true}}
			}}`,
		},
		{
			name: "nixosConfiguration entry gives each replica its own runner and identity, and reads vcpu and mem",
			input: `{
				cluster = "prod";
				vms.web = {
					nixosConfiguration = fx.microvmConfig { runner = fx.runners.web; vcpu = 3; mem = 768; };
					replicas = 2;
					placement.antiAffinity = [ "web" ];
				};
			}`,
			want: `{"cluster": "prod", "vms": {
				"web": {"vcpu": 3, "memMiB": 768, "replicas": 2, "autostart": true, "placement": {"antiAffinity": ["web"]},
					"instances": {
						"web-0": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, ` + ident("prod", "web-0") + `},
						"web-1": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, ` + ident("prod", "web-1") + `}}}
			}}`,
		},
		{
			name: "a single instance is named after its VM, and a name ending in '-' gets a derived hostname",
			input: `{
				vms.cache- = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.web; }; };
			}`,
			want: `{"cluster": "", "vms": {
				"cache-": {"vcpu": 2, "memMiB": 512, "replicas": 1, "autostart": true,
					"instances": {"cache-": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, ` + ident("", "cache-") + `}}}
			}}`,
		},
		{
			name: "instanceRunners = false keeps the configuration's one runner",
			input: `{
				cluster = "prod";
				vms.web = {
					nixosConfiguration = fx.microvmConfig { runner = fx.runners.web; vcpu = 3; mem = 768; };
					replicas = 2;
					instanceRunners = false;
				};
			}`,
			want: `{"cluster": "prod", "vms": {
				"web": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, "vcpu": 3, "memMiB": 768,
					"replicas": 2, "autostart": true}
			}}`,
		},
		{
			name: "a schema-v1 entry's instances pass through, and its runner may be left out",
			input: `{
				vms.web = {
					vcpu = 1; memMiB = 64; replicas = 2;
					instances."web-0" = { runner = fx.runners.web; mac = "02:00:00:00:00:01"; };
					instances."web-1" = { runner = fx.runners.db; tap = "vm-web1"; hostname = "www"; };
				};
			}`,
			want: `{"cluster": "", "vms": {
				"web": {"vcpu": 1, "memMiB": 64, "replicas": 2, "autostart": true, "instances": {
					"web-0": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, "mac": "02:00:00:00:00:01"},
					"web-1": {"runner": {"drv": "@db.drv@", "out": "@db.out@"}, "tap": "vm-web1", "hostname": "www"}}}
			}}`,
		},
		{
			name: "volume wired by volumeModule is accepted and guest-only attributes are dropped",
			input: `let
				vols = { data = { sizeMiB = 1024; pool = "ssd"; mountPoint = "/var/lib/db"; fsType = "xfs"; }; };
			in {
				cluster = "prod";
				vms.db = {
					nixosConfiguration = fx.microvmConfig {
						runner = fx.runners.db;
						volumes = (L.volumeModule { name = "db"; volumes = vols; }).microvm.volumes;
					};
					volumes = vols;
				};
			}`,
			want: `{"cluster": "prod", "vms": {
				"db": {"vcpu": 2, "memMiB": 512, "replicas": 1, "autostart": true,
					"instances": {"db": {"runner": {"drv": "@db.drv@", "out": "@db.out@"}, ` + ident("prod", "db") + `}},
					"volumes": {"data": {"sizeMiB": 1024, "pool": "ssd"}}}
			}}`,
		},
		{
			name: "volume wired by hand at the stable path with autoCreate false is accepted",
			input: `{
				vms.db = {
					nixosConfiguration = fx.microvmConfig {
						runner = fx.runners.db;
						volumes = [
							{ image = "/var/lib/microvms/db/volumes/data"; autoCreate = false; size = 10; mountPoint = null; }
							{ image = "scratch.img"; size = 10; mountPoint = "/scratch"; }
						];
					};
					volumes.data.sizeMiB = 10;
				};
			}`,
			want: `{"cluster": "", "vms": {
				"db": {"vcpu": 2, "memMiB": 512, "replicas": 1, "autostart": true,
					"instances": {"db": {"runner": {"drv": "@db.drv@", "out": "@db.out@"}, ` + ident("", "db") + `}},
					"volumes": {"data": {"sizeMiB": 10, "pool": "rbd"}}}
			}}`,
		},
		{
			name: "functions pass through, from a runner or a nixosConfiguration",
			input: `{
				cluster = "prod";
				vms = { };
				functions.hello = {
					runner = fx.runners.hello; vcpu = 1; memMiB = 128;
					http = { host = "fn.example.org"; path = "/hello"; port = 8080; };
					minInstances = 0; maxInstances = 10; concurrency = 4; idleTimeout = "60s"; snapshot = true; restoreAhead = 2; prefetch = false;
					placement = { labels.zone = "a"; spreadBy = "zone"; };
				};
				functions.web = {
					nixosConfiguration = fx.microvmConfig { runner = fx.runners.web; vcpu = 3; mem = 64; };
					http = { host = "fn.example.org"; path = "/web"; port = 80; }; minInstances = 0;
				};
			}`,
			want: `{"cluster": "prod", "vms": {}, "functions": {
				"hello": {"runner": {"drv": "@hello.drv@", "out": "@hello.out@"}, "vcpu": 1, "memMiB": 128,
					"http": {"host": "fn.example.org", "path": "/hello", "port": 8080},
					"minInstances": 0, "maxInstances": 10, "concurrency": 4, "idleTimeout": "60s", "snapshot": true, "restoreAhead": 2, "prefetch": false,
					"placement": {"labels": {"zone": "a"}, "spreadBy": "zone"}},
				"web": {"runner": {"drv": "@web.drv@", "out": "@web.out@"}, "vcpu": 3, "memMiB": 64,
					"http": {"host": "fn.example.org", "path": "/web", "port": 80}, "minInstances": 0}
			}}`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := evalJSON(t, "let L = fx.blixardLib; in fx.toDaemon (L.mkCluster ("+tc.input+"))")
			decodeStrict(t, got)
			want := expand(t, tc.want)
			if !jsonEqual(t, got, want) {
				t.Errorf("mkCluster output differs\ngot:  %s\nwant: %s", indent(got), indent(want))
			}
		})
	}
}

// TestNixMkClusterRunnerIsDerivation checks that the runner mkCluster outputs
// is the derivation itself (what the daemon realises), not a copy of its paths.
func TestNixMkClusterRunnerIsDerivation(t *testing.T) {
	requireThirdParty(t)
	got := evalJSON(t, `let
		c = fx.blixardLib.mkCluster {
			vms.a = { runner = fx.runners.web; vcpu = 1; memMiB = 1; };
			vms.b = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.db; }; };
		};
	in [ c.vms.a.runner.type (c.vms.a.runner == fx.runners.web) c.vms.b.instances.b.runner.type (c.vms.b.instances.b.runner == fx.runners.db) ]`)
	if !jsonEqual(t, got, []byte(`["derivation", true, "derivation", true]`)) {
		t.Errorf("runners are not the given derivations: %s", got)
	}
}

func TestNixMkClusterThrows(t *testing.T) {
	requireThirdParty(t)
	web := `runner = fx.runners.web; vcpu = 1; memMiB = 256;`
	wired := `(L.volumeModule { name = "db"; volumes.data.sizeMiB = 10; }).microvm.volumes`
	fnHTTP := `http = { host = "fn.example.org"; path = "/"; port = 8080; };`
	fn := `runner = fx.runners.hello; vcpu = 1; memMiB = 1; ` + fnHTTP
	cases := []struct {
		name  string
		input string // argument of mkCluster; fx and L (the library) are in scope
		want  string // part of the error message
	}{
		{"upper-case VM name is rejected", `{ vms.Web = { ` + web + ` }; }`,
			`blixard.lib.mkCluster: VM name "Web" is invalid: names must match ^[a-z][a-z0-9-]{0,62}$`},
		{"64-character VM name is rejected", `{ vms.a` + strings.Repeat("b", 63) + ` = { ` + web + ` }; }`,
			`VM name "a` + strings.Repeat("b", 63) + `" is invalid`},
		{"VM name starting with a digit is rejected", `{ vms."1web" = { ` + web + ` }; }`, `VM name "1web" is invalid`},
		{"missing runner names the VM", `{ vms.web = { vcpu = 1; memMiB = 256; }; }`,
			`vms.web: runner is missing: set runner to a derivation`},
		{"store path string as runner is rejected", `{ vms.web = { runner = "/nix/store/x-run"; vcpu = 1; memMiB = 1; }; }`,
			`vms.web.runner: want a derivation (microvm.nix: config.microvm.declaredRunner, or any derivation with bin/microvm-run), got the string "/nix/store/x-run"`},
		{"attrset with outPath as runner is rejected", `{ vms.web = { runner = { outPath = "/nix/store/x"; drvPath = "/nix/store/x.drv"; }; vcpu = 1; memMiB = 1; }; }`,
			`vms.web.runner: want a derivation`},
		{"zero vcpu is rejected", `{ vms.web = { runner = fx.runners.web; vcpu = 0; memMiB = 256; }; }`,
			`vms.web.vcpu: want a positive integer, got the number 0`},
		{"negative memMiB is rejected", `{ vms.web = { runner = fx.runners.web; vcpu = 1; memMiB = -5; }; }`,
			`vms.web.memMiB: want a positive integer, got the number -5`},
		{"string vcpu is rejected", `{ vms.web = { runner = fx.runners.web; vcpu = "2"; memMiB = 1; }; }`,
			`vms.web.vcpu: want a positive integer, got the string "2"`},
		{"missing memMiB is rejected", `{ vms.web = { runner = fx.runners.web; vcpu = 1; }; }`, `vms.web: memMiB is missing`},
		{"zero replicas is rejected", `{ vms.web = { ` + web + ` replicas = 0; }; }`, `vms.web.replicas: want a positive integer`},
		{"unknown VM attribute is rejected", `{ vms.web = { ` + web + ` cpus = 2; }; }`,
			`vms.web: unknown attribute cpus; allowed: runner, vcpu, memMiB, replicas, placement, volumes, autostart, instances`},
		{"unknown instances attribute is rejected", `{ vms.web = { ` + web + ` instances.web.ip = "10.0.0.1"; }; }`,
			`vms.web.instances.web: unknown attribute ip; allowed: runner, mac, tap, hostname`},
		{"an instance's runner must be a derivation", `{ vms.web = { vcpu = 1; memMiB = 1; instances.web.runner = "/nix/store/x"; }; }`,
			`vms.web.instances.web.runner: want a derivation`},
		{"unknown placement attribute is rejected", `{ vms.web = { ` + web + ` placement.label.zone = "a"; }; }`,
			`vms.web.placement: unknown attribute label; allowed: nodes, labels, antiAffinity, spreadBy, prefer`},
		{"non-string spreadBy is rejected", `{ vms.web = { ` + web + ` placement.spreadBy = [ "zone" ]; }; }`,
			`vms.web.placement.spreadBy: want a string, got list`},
		{"unknown prefer attribute is rejected", `{ vms.web = { ` + web + ` placement.prefer.label.disk = "ssd"; }; }`,
			`vms.web.placement.prefer: unknown attribute label; allowed: labels`},
		{"non-string preferred label is rejected", `{ vms.web = { ` + web + ` placement.prefer.labels.disk = true; }; }`,
			`vms.web.placement.prefer.labels.disk: want a string, got true`},
		{"non-integer placement node is rejected", `{ vms.web = { ` + web + ` placement.nodes = [ 1 "2" ]; }; }`,
			`vms.web.placement.nodes[1]: want a positive integer, got the string "2"`},
		{"non-string label value is rejected", `{ vms.web = { ` + web + ` placement.labels.zone = 1; }; }`,
			`vms.web.placement.labels.zone: want a string, got the number 1`},
		{"autostart must be a boolean", `{ vms.web = { ` + web + ` autostart = "yes"; }; }`,
			`vms.web.autostart: want true or false`},
		{"volume without size is rejected", `{ vms.web = { ` + web + ` volumes.data.pool = "rbd"; }; }`,
			`vms.web.volumes.data: sizeMiB is missing`},
		{"guest volume attributes are rejected in a plain entry", `{ vms.web = { ` + web + ` volumes.data = { sizeMiB = 1; mountPoint = "/d"; }; }; }`,
			`vms.web.volumes.data: unknown attribute mountPoint; allowed: sizeMiB, pool`},
		{"invalid volume name is rejected", `{ vms.web = { ` + web + ` volumes.Data.sizeMiB = 1; }; }`,
			`volume name "Data" is invalid`},
		{"vcpu next to nixosConfiguration points at microvm.vcpu",
			`{ vms.web = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.web; }; vcpu = 4; }; }`,
			`vms.web: unknown attribute vcpu; allowed: nixosConfiguration, replicas, placement, volumes, autostart, instanceRunners, health, update (runner, vcpu and memMiB come from the nixosConfiguration: set microvm.vcpu and microvm.mem there)`},
		{"a configuration mkCluster cannot extend names nixosSystem and instanceRunners",
			`{ vms.web = { nixosConfiguration = { config.microvm = { declaredRunner = fx.runners.web; vcpu = 1; mem = 1; }; }; }; }`,
			"vms.web.nixosConfiguration: has no extendModules, which mkCluster needs to build each instance a runner with its own tap, MAC and hostname: pass the result of nixpkgs.lib.nixosSystem, or set instanceRunners = false"},
		{"instanceRunners must be a boolean",
			`{ vms.web = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.web; }; instanceRunners = "no"; }; }`,
			`vms.web.instanceRunners: want true or false, got the string "no"`},
		{"configuration without microvm.nix is rejected", `{ vms.web = { nixosConfiguration = { config = { }; }; }; }`,
			`vms.web.nixosConfiguration: config.microvm is missing: add microvm.nixosModules.microvm to its modules`},
		{"non-configuration is rejected", `{ vms.web = { nixosConfiguration = { }; }; }`,
			`vms.web.nixosConfiguration: has no ` + "`config`"},
		{"configuration with zero memory is rejected",
			`{ vms.web = { nixosConfiguration = fx.rawConfig { declaredRunner = fx.runners.web; vcpu = 1; mem = 0; }; }; }`,
			`vms.web.nixosConfiguration: config.microvm.mem: want a positive integer, got the number 0`},
		{"configuration whose declaredRunner is not a derivation is rejected",
			`{ vms.web = { nixosConfiguration = fx.rawConfig { declaredRunner = "x"; vcpu = 1; mem = 1; }; }; }`,
			`vms.web.instances.web: the nixosConfiguration with the instance's identity: config.microvm.declaredRunner: want a derivation`},
		{"with instanceRunners = false, a declaredRunner that is not a derivation is rejected too",
			`{ vms.web = { nixosConfiguration = fx.rawConfig { declaredRunner = "x"; vcpu = 1; mem = 1; }; instanceRunners = false; }; }`,
			`vms.web.nixosConfiguration: config.microvm.declaredRunner: want a derivation`},
		{"volume missing from the configuration names volumeModule",
			`{ vms.db = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.db; }; volumes.data.sizeMiB = 10; }; }`,
			`vms.db.volumes: the nixosConfiguration does not attach data: config.microvm.volumes has no entry with image = "/var/lib/microvms/db/volumes/data"; add (blixard.lib.volumeModule { name = "db"; volumes = …; }) to the VM's modules`},
		{"volume wired under another VM's name is rejected",
			`{ vms.db = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.db; volumes = (L.volumeModule { name = "other"; volumes.data.sizeMiB = 10; }).microvm.volumes; }; volumes.data.sizeMiB = 10; }; }`,
			`does not attach data`},
		{"volume microvm.nix would create is rejected",
			`{ vms.db = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.db; volumes = [ { image = "/var/lib/microvms/db/volumes/data"; size = 10; } ]; }; volumes.data.sizeMiB = 10; }; }`,
			`vms.db.volumes: config.microvm.volumes entry "/var/lib/microvms/db/volumes/data" has autoCreate = true`},
		{"volumes with replicas on a configuration are rejected",
			`{ vms.db = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.db; volumes = ` + wired + `; }; volumes.data.sizeMiB = 10; replicas = 2; }; }`,
			`vms.db: volumes with replicas = 2 are not supported for a nixosConfiguration`},
		{"unknown mkCluster argument is rejected", `{ vm = { }; }`,
			`blixard.lib.mkCluster: arguments: unknown attribute vm; allowed: cluster, vms, functions`},
		{"invalid cluster name is rejected", `{ cluster = "Prod"; vms = { }; }`,
			`blixard.lib.mkCluster: cluster: "Prod" is invalid`},
		{"vms must be an attribute set", `{ vms = [ ]; }`, `vms: want an attribute set, got list`},
		{"VM entry must be an attribute set", `{ vms.web = fx.runners.web; }`, `vms.web: want an attribute set, got a derivation`},
		{"unknown function attribute is rejected",
			`{ functions.hello = { ` + fn + ` scale = 3; }; }`,
			`functions.hello: unknown attribute scale`},
		{"function without vcpu is rejected", `{ functions.hello = { runner = fx.runners.hello; memMiB = 1; ` + fnHTTP + ` }; }`,
			`functions.hello: vcpu is missing`},
		{"function without memMiB is rejected", `{ functions.hello = { runner = fx.runners.hello; vcpu = 1; ` + fnHTTP + ` }; }`,
			`functions.hello: memMiB is missing`},
		{"function without http is rejected", `{ functions.hello = { runner = fx.runners.hello; vcpu = 1; memMiB = 1; }; }`,
			`functions.hello: http is missing: set http = { host = "fn.example.org"; path = "/…"; port = 8080; }`},
		{"function http path must be absolute",
			`{ functions.hello = { runner = fx.runners.hello; vcpu = 1; memMiB = 1; http = { host = "h"; path = "hello"; port = 80; }; }; }`,
			`functions.hello.http.path: want a path starting with "/", got "hello"`},
		{"function http without path is rejected",
			`{ functions.hello = { runner = fx.runners.hello; vcpu = 1; memMiB = 1; http = { host = "h"; port = 80; }; }; }`,
			`functions.hello.http: path is missing`},
		{"function http without host is rejected",
			`{ functions.hello = { runner = fx.runners.hello; vcpu = 1; memMiB = 1; http = { path = "/"; port = 80; }; }; }`,
			`functions.hello.http: host is missing`},
		{"function http without port is rejected",
			`{ functions.hello = { runner = fx.runners.hello; vcpu = 1; memMiB = 1; http = { host = "h"; path = "/"; }; }; }`,
			`functions.hello.http: port is missing`},
		{"unknown function http attribute is rejected",
			`{ functions.hello = { runner = fx.runners.hello; vcpu = 1; memMiB = 1; http = { host = "h"; path = "/"; port = 80; url = "/"; }; }; }`,
			`functions.hello.http: unknown attribute url; allowed: host, path, port`},
		{"maxInstances = 0 is rejected, naming the function", `{ functions.hello = { ` + fn + ` maxInstances = 0; }; }`,
			`functions.hello.maxInstances: want a positive integer, got the number 0`},
		{"concurrency = 0 is rejected", `{ functions.hello = { ` + fn + ` concurrency = 0; }; }`,
			`functions.hello.concurrency: want a positive integer, got the number 0`},
		{"idleTimeout as a number is rejected", `{ functions.hello = { ` + fn + ` idleTimeout = 60; }; }`,
			`functions.hello.idleTimeout: want a string, got the number 60`},
		{"snapshot as a string is rejected", `{ functions.hello = { ` + fn + ` snapshot = "yes"; }; }`,
			`functions.hello.snapshot: want true or false, got the string "yes"`},
		{"a negative restoreAhead is rejected", `{ functions.hello = { ` + fn + ` snapshot = true; restoreAhead = -1; }; }`,
			`functions.hello.restoreAhead: want an integer >= 0, got`},
		{"prefetch as a string is rejected", `{ functions.hello = { ` + fn + ` prefetch = "no"; }; }`,
			`functions.hello.prefetch: want true or false, got the string "no"`},
		{"unknown function placement attribute is rejected", `{ functions.hello = { ` + fn + ` placement.node = [ 1 ]; }; }`,
			`functions.hello.placement: unknown attribute node`},
		{"vcpu next to a function's nixosConfiguration points at microvm.vcpu",
			`{ functions.hello = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.hello; }; vcpu = 2; ` + fnHTTP + ` }; }`,
			`functions.hello: unknown attribute vcpu; allowed: nixosConfiguration, http, minInstances, maxInstances, concurrency, idleTimeout, snapshot, restoreAhead, prefetch, placement (runner, vcpu and memMiB come from the nixosConfiguration`},
		{"invalid function name is rejected", `{ functions.Hello = { ` + fn + ` }; }`,
			`function name "Hello" is invalid`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stderr := evalError(t, "let L = fx.blixardLib; in fx.toDaemon (L.mkCluster ("+tc.input+"))")
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("error does not say %q:\n%s", tc.want, stderr)
			}
		})
	}
}

func TestNixVolumeModule(t *testing.T) {
	got := evalJSON(t, `fx.blixardLib.volumeModule {
		name = "db";
		volumes.data = { sizeMiB = 1024; pool = "ssd"; mountPoint = "/var/lib/db"; fsType = "xfs"; };
		volumes.raw = { sizeMiB = 10; };
		volumes.noformat = { sizeMiB = 10; mountPoint = "/mnt/keep"; autoFormat = false; label = "keep"; };
	}`)
	want := `{
		"microvm": {"volumes": [
			{"image": "/var/lib/microvms/db/volumes/data", "size": 1024, "autoCreate": false, "mountPoint": "/var/lib/db", "fsType": "xfs"},
			{"image": "/var/lib/microvms/db/volumes/noformat", "size": 10, "autoCreate": false, "mountPoint": "/mnt/keep", "label": "keep"},
			{"image": "/var/lib/microvms/db/volumes/raw", "size": 10, "autoCreate": false, "mountPoint": null}
		]},
		"fileSystems": {"/var/lib/db": {"autoFormat": true}}
	}`
	if !jsonEqual(t, got, []byte(want)) {
		t.Errorf("volumeModule output differs\ngot:  %s\nwant: %s", indent(got), indent([]byte(want)))
	}
	stderr := evalError(t, `fx.blixardLib.volumeModule { name = "DB"; volumes.data.sizeMiB = 1; }`)
	if want := `blixard.lib.volumeModule { name = "DB"; }: name must match`; !strings.Contains(stderr, want) {
		t.Errorf("error does not say %q:\n%s", want, stderr)
	}
}
