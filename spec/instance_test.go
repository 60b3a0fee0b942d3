package spec

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

const (
	ownDrv = "/nix/store/abcdefghijklmnpqrsvwxyz012345678-web-0-runner.drv"
	ownOut = "/nix/store/abcdefghijklmnpqrsvwxyz012345678-web-0-runner"
)

const ownRunnerJSON = `{"drv": "` + ownDrv + `", "out": "` + ownOut + `"}`

func TestDecodeInstances(t *testing.T) {
	in := `{"cluster": "prod", "vms": {"web": {"vcpu": 1, "memMiB": 64, "replicas": 2, "instances": {
		"web-0": {"runner": ` + ownRunnerJSON + `, "mac": "02:04:91:75:c6:b0", "tap": "bx93a75970af78f", "hostname": "web-0"},
		"web-1": {"runner": ` + testRunnerJSON + `}}}}}`
	got, err := Decode([]byte(in))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	want := VM{VCPU: 1, MemMiB: 64, Replicas: 2, Autostart: true, Instances: map[string]InstanceEntry{
		"web-0": {Runner: Runner{ownDrv, ownOut}, MAC: "02:04:91:75:c6:b0", Tap: "bx93a75970af78f", Hostname: "web-0"},
		"web-1": {Runner: Runner{testDrv, testOut}},
	}}
	if !reflect.DeepEqual(got.VMs["web"], want) {
		t.Fatalf("Decode =\n%#v\nwant\n%#v", got.VMs["web"], want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}

	// Canonical JSON leaves the VM's zero runner out and decodes back.
	data, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), `"runner":{"drv":""`) {
		t.Fatalf("canonical JSON writes the zero runner: %s", data)
	}
	again, err := Decode(data)
	if err != nil || !reflect.DeepEqual(again, got) {
		t.Fatalf("round trip: %v\n%#v\n%#v", err, again, got)
	}
}

func TestDecodeInstancesProblems(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"without instances the runner is still required", `{"vms": {"web": {"vcpu": 1, "memMiB": 1}}}`,
			[]string{`vms.web.runner: missing required field (a derivation)`}},
		{"instances must be an attribute set", vmJSON(`, "instances": []`),
			[]string{`vms.web.instances: expected an attribute set of instances (instance name → { runner; mac; tap; hostname; }), got list of 0 elements`}},
		{"an unknown instance attribute is reported with its path", vmJSON(`, "instances": {"web": {"ip": "10.0.0.2"}}`),
			[]string{`vms.web.instances.web.ip: unknown field "ip"`}},
		{"a MAC must be a string", vmJSON(`, "instances": {"web": {"mac": 2}}`),
			[]string{`vms.web.instances.web.mac: expected a string, got integer 2`}},
		{"an instance's runner must be a derivation", vmJSON(`, "instances": {"web": {"runner": "/nix/store/x"}}`),
			[]string{`vms.web.instances.web.runner: must be a derivation, got string "/nix/store/x"; pass the derivation itself`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			assertProblems(t, err, tt.want)
		})
	}
}

func TestValidateInstances(t *testing.T) {
	entry := func(mac, tap, host string) InstanceEntry {
		return InstanceEntry{Runner: Runner{ownDrv, ownOut}, MAC: mac, Tap: tap, Hostname: host}
	}
	// web gets replicas = 2 and an entry per instance; edit changes them.
	withInstances := func(edit func(vm *VM)) func(c *Cluster) {
		return func(c *Cluster) {
			editVM(c, "web", func(vm *VM) {
				vm.Replicas = 2
				vm.Instances = map[string]InstanceEntry{
					"web-0": entry("02:00:00:00:00:01", "bxweb0", "web-0"),
					"web-1": entry("02:00:00:00:00:02", "bxweb1", "web-1"),
				}
				if edit != nil {
					edit(vm)
				}
			})
		}
	}
	set := func(inst string, e InstanceEntry) func(vm *VM) {
		return func(vm *VM) { vm.Instances[inst] = e }
	}
	tests := []struct {
		name string
		edit func(c *Cluster)
		want []string // prefixes of the error's lines; nil means valid
	}{
		{"an entry per replica with runners and identities passes", withInstances(nil), nil},
		{"without a runner of the VM's, every instance naming one passes", withInstances(func(vm *VM) { vm.Runner = Runner{} }), nil},
		{"entries that declare nothing but a runner pass", withInstances(func(vm *VM) {
			vm.Instances = map[string]InstanceEntry{"web-0": {}, "web-1": {Runner: Runner{ownDrv, ownOut}}}
		}), nil},
		{"a VM of one replica has one entry, named after it", func(c *Cluster) {
			editVM(c, "db", func(vm *VM) { vm.Instances = map[string]InstanceEntry{"db": entry("", "", "")} })
		}, nil},
		{"a missing entry is rejected", withInstances(func(vm *VM) { delete(vm.Instances, "web-1") }),
			[]string{`vms.web.instances: has no entry for "web-1": declare every instance of the VM (web-0 and web-1) or none`}},
		{"an entry that is no instance is rejected", withInstances(set("web-2", InstanceEntry{})),
			[]string{`vms.web.instances.web-2: is not an instance of vms.web: with replicas = 2 its instances are web-0 and web-1`}},
		{"a replicas = 1 VM's entry is its own name, not NAME-0", func(c *Cluster) {
			editVM(c, "db", func(vm *VM) { vm.Instances = map[string]InstanceEntry{"db-0": {}} })
		}, []string{`vms.db.instances: has no entry for "db"`, `vms.db.instances.db-0: is not an instance of vms.db: with replicas = 1 its instances are db`}},
		{"without a runner of the VM's, an instance without one is rejected", withInstances(func(vm *VM) {
			vm.Runner = Runner{}
			vm.Instances["web-1"] = InstanceEntry{}
		}), []string{`vms.web.instances.web-1.runner: missing: vms.web has no runner of its own, so every instance needs one`}},
		{"an instance's runner outside the store is rejected", withInstances(set("web-0", InstanceEntry{Runner: Runner{"/tmp/r.drv", "/tmp/r"}})),
			[]string{`vms.web.instances.web-0.runner.drv: must be a .drv store path`, `vms.web.instances.web-0.runner.out: must be a store path`}},
		{"an upper-case MAC is rejected with its canonical form", withInstances(set("web-0", entry("02:AB:00:00:00:01", "", ""))),
			[]string{`vms.web.instances.web-0.mac: "02:AB:00:00:00:01": write MAC addresses in lower-case colon form, "02:ab:00:00:00:01"`}},
		{"a dash-separated MAC is rejected with its canonical form", withInstances(set("web-0", entry("02-ab-00-00-00-01", "", ""))),
			[]string{`vms.web.instances.web-0.mac: "02-ab-00-00-00-01": write MAC addresses in lower-case colon form, "02:ab:00:00:00:01"`}},
		{"a vendor MAC is rejected", withInstances(set("web-0", entry("00:16:3e:00:00:01", "", ""))),
			[]string{`vms.web.instances.web-0.mac: 00:16:3e:00:00:01 is not a locally administered unicast address`}},
		{"a multicast MAC is rejected", withInstances(set("web-0", entry("03:00:00:00:00:01", "", ""))),
			[]string{`vms.web.instances.web-0.mac: 03:00:00:00:00:01 is not a locally administered unicast address`}},
		{"a MAC of the nodes' bridges is rejected", withInstances(set("web-0", entry("0a:b1:0a:64:ff:fe", "", ""))),
			[]string{`vms.web.instances.web-0.mac: 0a:b1:0a:64:ff:fe starts with 0a:b1, which the nodes' bridges use: start instance MACs with 02`}},
		{"an EUI-64 is rejected", withInstances(set("web-0", entry("02:00:00:00:00:00:00:01", "", ""))),
			[]string{`vms.web.instances.web-0.mac: "02:00:00:00:00:00:00:01" is not a MAC address`}},
		{"a 16-character tap is rejected", withInstances(set("web-0", entry("", "bx0123456789abcd", ""))),
			[]string{`vms.web.instances.web-0.tap: tap interface name "bx0123456789abcd" has 16 characters: Linux allows 1 to 15`}},
		{"a tap with a slash is rejected", withInstances(set("web-0", entry("", "bx/0", ""))),
			[]string{`vms.web.instances.web-0.tap: "bx/0" is not a valid interface name`}},
		{"a tap starting with '-' is rejected", withInstances(set("web-0", entry("", "-bx0", ""))),
			[]string{`vms.web.instances.web-0.tap: "-bx0" is not a valid interface name`}},
		{"a hostname that is no DNS label is rejected", withInstances(set("web-0", entry("", "", "web_0"))),
			[]string{`vms.web.instances.web-0.hostname: "web_0" is not a host name label`}},
		{"the same MAC on two instances is rejected", withInstances(set("web-1", entry("02:00:00:00:00:01", "bxweb1", "web-1"))),
			[]string{`vms.web.instances.web-1.mac: "02:00:00:00:00:01" is also the mac of vms.web.instances.web-0; every instance needs its own`}},
		{"the same tap in two VMs is rejected", func(c *Cluster) {
			withInstances(nil)(c)
			editVM(c, "db", func(vm *VM) { vm.Instances = map[string]InstanceEntry{"db": entry("", "bxweb0", "")} })
		}, []string{`vms.web.instances.web-0.tap: "bxweb0" is also the tap of vms.db.instances.db; every instance needs its own`}},
		{"a hostname that is another instance's name is rejected", withInstances(set("web-1", entry("", "", "db"))),
			[]string{`vms.web.instances.web-1.hostname: "db" is the name of another instance, which DNS resolves to that instance; pick another hostname`}},
		{"a hostname that is a replica's name is rejected", func(c *Cluster) {
			withInstances(nil)(c)
			editVM(c, "db", func(vm *VM) { vm.Instances = map[string]InstanceEntry{"db": entry("", "", "web-1")} })
		}, []string{`vms.db.instances.db.hostname: "web-1" is the name of another instance`, `vms.web.instances.web-1.hostname: "web-1" is also the hostname of vms.db.instances.db`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := cluster(tt.edit).Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			assertProblems(t, err, tt.want)
		})
	}
}

func TestInstancesRunTheirOwnRunner(t *testing.T) {
	c := cluster(func(c *Cluster) {
		editVM(c, "web", func(vm *VM) {
			vm.Replicas = 2
			vm.Instances = map[string]InstanceEntry{
				"web-0": {Runner: Runner{ownDrv, ownOut}, MAC: "02:00:00:00:00:01"},
				"web-1": {Tap: "bxweb1"},
			}
		})
	})
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	byName := map[string]Instance{}
	for _, in := range c.Instances() {
		byName[in.Name] = in
	}
	w0, w1, db := byName["web-0"], byName["web-1"], byName["db"]
	if !w0.OwnRunner() || w0.Runner != (Runner{ownDrv, ownOut}) || w0.Own.MAC != "02:00:00:00:00:01" {
		t.Errorf("web-0 = %+v, want its own runner and entry", w0)
	}
	if w1.OwnRunner() || w1.Runner != (Runner{testDrv, testOut}) || w1.Own.Tap != "bxweb1" {
		t.Errorf("web-1 = %+v, want the VM's runner and its entry", w1)
	}
	if db.OwnRunner() || db.Own != nil {
		t.Errorf("db = %+v, want no entry", db)
	}
	if c.VMs["web"].Runner != (Runner{testDrv, testOut}) {
		t.Error("Instances changed the VM's runner")
	}
}

func TestValidMACAndTap(t *testing.T) {
	for _, ok := range []string{"02:00:00:00:00:01", "06:ff:ff:ff:ff:ff", "fe:00:00:00:00:00", "0a:b2:00:00:00:00"} {
		if err := ValidMAC(ok); err != nil {
			t.Errorf("ValidMAC(%q) = %v", ok, err)
		}
	}
	for _, ok := range []string{"bx93a75970af78f", "eth0", "vm-web.1", "a_b", "0"} {
		if err := ValidTap(ok); err != nil {
			t.Errorf("ValidTap(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a b", "a:b", "tap@1", strings.Repeat("t", 16)} {
		if ValidTap(bad) == nil {
			t.Errorf("ValidTap(%q) accepted", bad)
		}
	}
}
