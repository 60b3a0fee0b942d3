package spec

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func validVM() VM {
	return VM{Runner: Runner{Drv: testDrv, Out: testOut}, VCPU: 1, MemMiB: 256, Replicas: 1, Autostart: true}
}

func validFunction() Function {
	return Function{Runner: Runner{Drv: testDrv, Out: testOut}, VCPU: 1, MemMiB: 64,
		HTTP: FunctionHTTP{Host: "fn.example.org", Path: "/f", Port: 8080}, MaxInstances: 1, Concurrency: 1, IdleTimeout: DefaultIdleTimeout}
}

// cluster builds a valid cluster with VMs "web" and "db" and function "fn",
// then applies edit.
func cluster(edit func(c *Cluster)) *Cluster {
	c := &Cluster{
		Name:      "prod",
		VMs:       map[string]VM{"web": validVM(), "db": validVM()},
		Functions: map[string]Function{"fn": validFunction()},
	}
	edit(c)
	return c
}

func editVM(c *Cluster, name string, edit func(vm *VM)) {
	vm := c.VMs[name]
	edit(&vm)
	c.VMs[name] = vm
}

func editFunction(c *Cluster, name string, edit func(f *Function)) {
	f := c.Functions[name]
	edit(&f)
	c.Functions[name] = f
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		name string
		edit func(c *Cluster)
		want []string // prefixes of the error's lines; nil means valid
	}{
		{"valid cluster passes", func(c *Cluster) {}, nil},
		{"empty cluster name passes", func(c *Cluster) { c.Name = "" }, nil},
		{"no VMs and no functions passes", func(c *Cluster) { c.VMs, c.Functions = nil, nil }, nil},
		{"63-character name passes", func(c *Cluster) { c.VMs[long] = validVM() }, nil},
		{"anti-affinity with itself passes", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Replicas = 3; vm.Placement.AntiAffinity = []string{"web", "db"} })
		}, nil},
		{"free-form label keys pass", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Placement.Labels = map[string]string{"Topology/Zone.x": "", "": "v"} })
		}, nil},
		{"bad cluster name is rejected", func(c *Cluster) { c.Name = "Prod" },
			[]string{`cluster: invalid name "Prod": names must match ^[a-z][a-z0-9-]{0,62}$`}},
		{"uppercase VM name is rejected", func(c *Cluster) { c.VMs["Web"] = validVM() },
			[]string{`vms.Web: invalid name "Web": names must match`}},
		{"VM name with a dot is rejected and quoted in the path", func(c *Cluster) { c.VMs["a.b"] = validVM() },
			[]string{`vms."a.b": invalid name "a.b"`}},
		{"VM name starting with a digit is rejected", func(c *Cluster) { c.VMs["1web"] = validVM() },
			[]string{`vms."1web": invalid name "1web"`}},
		{"64-character VM name is rejected", func(c *Cluster) { c.VMs[long+"a"] = validVM() },
			[]string{`vms.` + long + `a: invalid name "` + long + `a" (it has 64 characters, at most 63 are allowed)`}},
		{"empty VM name is rejected", func(c *Cluster) { c.VMs[""] = validVM() },
			[]string{`vms."": invalid name "" (it is empty)`}},
		{"zero vcpu is rejected", func(c *Cluster) { editVM(c, "web", func(vm *VM) { vm.VCPU = 0 }) },
			[]string{`vms.web.vcpu: must be > 0, got 0`}},
		{"zero memory is rejected", func(c *Cluster) { editVM(c, "web", func(vm *VM) { vm.MemMiB = 0 }) },
			[]string{`vms.web.memMiB: must be > 0, got 0`}},
		{"negative memory is rejected", func(c *Cluster) { editVM(c, "db", func(vm *VM) { vm.MemMiB = -5 }) },
			[]string{`vms.db.memMiB: must be > 0, got -5`}},
		{"zero replicas are rejected", func(c *Cluster) { editVM(c, "web", func(vm *VM) { vm.Replicas = 0 }) },
			[]string{`vms.web.replicas: must be between 1 and 1000, got 0`}},
		{"too many replicas are rejected", func(c *Cluster) { editVM(c, "web", func(vm *VM) { vm.Replicas = 1001 }) },
			[]string{`vms.web.replicas: must be between 1 and 1000, got 1001`}},
		{"runner drv without .drv is rejected", func(c *Cluster) { editVM(c, "web", func(vm *VM) { vm.Runner.Drv = testOut }) },
			[]string{`vms.web.runner.drv: must be a .drv store path under /nix/store/`}},
		{"runner outside the store is rejected", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Runner = Runner{Drv: "/tmp/x.drv", Out: "/tmp/x"} })
		}, []string{`vms.web.runner.drv: must be a .drv store path under /nix/store/, got "/tmp/x.drv"`, `vms.web.runner.out: must be a store path under /nix/store/, got "/tmp/x"`}},
		{"runner below a store path is rejected", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Runner.Out = testOut + "/bin/microvm-run" })
		}, []string{`vms.web.runner.out: must be a store path`}},
		{"empty runner is rejected", func(c *Cluster) { editVM(c, "web", func(vm *VM) { vm.Runner = Runner{} }) },
			[]string{`vms.web.runner.drv: must be`, `vms.web.runner.out: must be`}},
		{"replica expansion colliding with a declared VM is rejected", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Replicas = 2 })
			c.VMs["web-0"] = validVM()
		}, []string{`vms.web-0: instance name "web-0" collides with replica 0 of vms.web (replicas = 2); rename one of them`}},
		{"replica expansions of two VMs colliding are rejected", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Replicas = 12 }) // web-0 … web-11
			c.VMs["web-1"] = validVM()
			editVM(c, "web-1", func(vm *VM) { vm.Replicas = 2 }) // web-1-0, web-1-1: no clash with web-1
			c.VMs["web-1-1"] = validVM()
		}, []string{
			`vms.web-1-1: instance name "web-1-1" collides with replica 1 of vms.web-1 (replicas = 2)`,
		}},
		{"replica names longer than 63 characters are rejected", func(c *Cluster) {
			c.VMs[long[:61]] = validVM()
			editVM(c, long[:61], func(vm *VM) { vm.Replicas = 11 })
		}, []string{`vms.` + long[:61] + `.replicas: replica name "` + long[:61] + `-10" is not valid: invalid name`}},
		{"replica names of exactly 63 characters pass", func(c *Cluster) {
			c.VMs[long[:61]] = validVM()
			editVM(c, long[:61], func(vm *VM) { vm.Replicas = 10 })
		}, nil},
		{"node id 0 is rejected", func(c *Cluster) { editVM(c, "web", func(vm *VM) { vm.Placement.Nodes = []uint64{1, 0} }) },
			[]string{`vms.web.placement.nodes[1]: node ids are > 0, got 0`}},
		{"anti-affinity with an undeclared VM is rejected", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Placement.AntiAffinity = []string{"db", "cache"} })
		}, []string{`vms.web.placement.antiAffinity[1]: "cache" is not a VM declared in vms`}},
		{"anti-affinity with a replica name is rejected", func(c *Cluster) {
			editVM(c, "db", func(vm *VM) { vm.Replicas = 2 })
			editVM(c, "web", func(vm *VM) { vm.Placement.AntiAffinity = []string{"db-0"} })
		}, []string{`vms.web.placement.antiAffinity[0]: "db-0" is not a VM declared in vms`}},
		{"bad volume name is rejected", func(c *Cluster) {
			editVM(c, "db", func(vm *VM) { vm.Volumes = map[string]Volume{"Data": {SizeMiB: 1, Pool: "rbd"}} })
		}, []string{`vms.db.volumes.Data: invalid name "Data"`}},
		{"zero volume size is rejected", func(c *Cluster) {
			editVM(c, "db", func(vm *VM) { vm.Volumes = map[string]Volume{"data": {Pool: "rbd"}} })
		}, []string{`vms.db.volumes.data.sizeMiB: must be > 0, got 0`}},
		{"bad pool name is rejected", func(c *Cluster) {
			editVM(c, "db", func(vm *VM) { vm.Volumes = map[string]Volume{"data": {SizeMiB: 1, Pool: "a/b"}} })
		}, []string{`vms.db.volumes.data.pool: invalid Ceph pool name "a/b"`}},
		{"empty pool name is rejected", func(c *Cluster) {
			editVM(c, "db", func(vm *VM) { vm.Volumes = map[string]Volume{"data": {SizeMiB: 1}} })
		}, []string{`vms.db.volumes.data.pool: invalid Ceph pool name ""`}},
		{"bad function name is rejected", func(c *Cluster) { c.Functions["my_fn"] = validFunction() },
			[]string{`functions.my_fn: invalid name "my_fn"`, `functions.my_fn.http: host "fn.example.org" and path "/f" are also routed by functions.fn`}},
		{"zero function memory is rejected", func(c *Cluster) { editFunction(c, "fn", func(f *Function) { f.MemMiB = 0 }) },
			[]string{`functions.fn.memMiB: must be > 0, got 0`}},
		{"negative minInstances is rejected", func(c *Cluster) { editFunction(c, "fn", func(f *Function) { f.MinInstances = -1 }) },
			[]string{`functions.fn.minInstances: must be >= 0, got -1`}},
		{"maxInstances below minInstances is rejected", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.MinInstances, f.MaxInstances = 3, 2 })
		}, []string{`functions.fn.maxInstances: must be >= minInstances (3), got 2`}},
		{"http path without a leading slash is rejected", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.HTTP.Path = "hello" })
		}, []string{`functions.fn.http.path: must start with "/", got "hello"`}},
		{"function runner not in the store is rejected", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.Runner.Out = "" })
		}, []string{`functions.fn.runner.out: must be a store path`}},
		{"function named like a VM instance is rejected", func(c *Cluster) {
			c.Functions["web"] = validFunction()
			editFunction(c, "web", func(f *Function) { f.HTTP.Path = "/web" })
		}, []string{`functions.web: name "web" collides with VM instance vms.web`}},
		{"two functions on one http path are rejected", func(c *Cluster) { c.Functions["gn"] = validFunction() },
			[]string{`functions.gn.http: host "fn.example.org" and path "/f" are also routed by functions.fn; give each function and ingress entry its own host or path`}},
		{"several problems are all reported, sorted by path", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.VCPU, vm.MemMiB = 0, 0 })
			editVM(c, "db", func(vm *VM) { vm.Replicas = 0 })
			c.Name = "-"
		}, []string{`cluster: invalid name "-"`, `vms.db.replicas: must be`, `vms.web.memMiB: must be`, `vms.web.vcpu: must be`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(tt.edit)
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate passed, want %q", tt.want)
			}
			assertProblems(t, err, tt.want)
		})
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "web", "web-0", "a1", "a-", "a--b", strings.Repeat("x", 63)} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "0a", "A", "aB", "a_b", "a.b", "a b", "a/b", "é", strings.Repeat("x", 64)} {
		err := ValidName(bad)
		if err == nil {
			t.Errorf("ValidName(%q) = nil, want an error", bad)
			continue
		}
		if !strings.Contains(err.Error(), NameRule) {
			t.Errorf("ValidName(%q) = %v, want the rule %s in the message", bad, err, NameRule)
		}
	}
}

func TestInstances(t *testing.T) {
	web, db := validVM(), validVM()
	web.Replicas = 3
	db.Replicas = 1
	c := &Cluster{VMs: map[string]VM{"web": web, "db": db, "a": validVM()}}
	var got []string
	for _, in := range c.Instances() {
		got = append(got, in.Name+"<"+in.Declared)
		if want := c.VMs[in.Declared]; !reflect.DeepEqual(in.VM, want) {
			t.Errorf("instance %s carries %+v, want the declared VM %+v", in.Name, in.VM, want)
		}
	}
	want := []string{"a<a", "db<db", "web-0<web", "web-1<web", "web-2<web"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Instances = %v, want %v", got, want)
	}
	if n := len((&Cluster{}).Instances()); n != 0 {
		t.Fatalf("empty cluster has %d instances", n)
	}
}

func TestInstancesSortByName(t *testing.T) {
	vm := validVM()
	vm.Replicas = 11
	var names []string
	for _, in := range (&Cluster{VMs: map[string]VM{"w": vm}}).Instances() {
		names = append(names, in.Name)
	}
	want := []string{"w-0", "w-1", "w-10", "w-2", "w-3", "w-4", "w-5", "w-6", "w-7", "w-8", "w-9"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("Instances = %v, want %v (sorted by name, as strings)", names, want)
	}
}

// TestValidNameMatchesTheRule checks the hand-written matcher against the
// regular expression it implements.
func TestValidNameMatchesTheRule(t *testing.T) {
	re := regexp.MustCompile(NameRule)
	for _, s := range []string{"", "a", "z9", "a-", "-a", "A", "a_", "é", "aé", "0", "a.b", strings.Repeat("a", 63), strings.Repeat("a", 64), "web-0", "a\n"} {
		if got, want := ValidName(s) == nil, re.MatchString(s); got != want {
			t.Errorf("ValidName(%q) ok=%t, regexp %s says %t", s, got, NameRule, want)
		}
	}
}
