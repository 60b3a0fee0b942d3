package nixlib

import (
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/spec"
)

// TestNixMkClusterPassesHealthThrough: a VM's health block reaches the
// daemon as written, from a schema-v1 entry and from a nixosConfiguration
// entry, and the daemon's strict decoding reads it (defaults included).
func TestNixMkClusterPassesHealthThrough(t *testing.T) {
	requireThirdParty(t) // fx.microvmConfig is a NixOS evaluation
	got := evalJSON(t, `let L = fx.blixardLib; in fx.toDaemon (L.mkCluster {
		cluster = "prod";
		vms.web = { runner = fx.runners.web; vcpu = 1; memMiB = 64;
			health = { http = { port = 8080; path = "/healthz"; }; interval = "10s"; unhealthyAfter = 5; }; };
		vms.db = { nixosConfiguration = fx.microvmConfig { runner = fx.runners.db; }; health.tcp.port = 5432; };
	})`)
	c := decodeStrict(t, got)
	web, db := c.VMs["web"].Health, c.VMs["db"].Health
	if web == nil || web.HTTP == nil || *web.HTTP != (spec.HTTPHealthCheck{Port: 8080, Path: "/healthz"}) ||
		web.Interval != 10*time.Second || web.Timeout != spec.DefaultHealthTimeout || web.UnhealthyAfter != 5 ||
		web.HealthyAfter != spec.DefaultHealthyAfter {
		t.Errorf("web's health = %+v (http %+v)", web, web.HTTP)
	}
	if db == nil || db.TCP == nil || db.TCP.Port != 5432 || db.Interval != spec.DefaultHealthInterval {
		t.Errorf("db's health = %+v", db)
	}

	// What is not an attribute set is refused by mkCluster, naming the VM;
	// what the daemon refuses is refused with the attribute's path.
	stderr := evalError(t, `fx.toDaemon (fx.blixardLib.mkCluster { vms.web = { runner = fx.runners.web; vcpu = 1; memMiB = 1; health = 8080; }; })`)
	if want := "vms.web.health: want an attribute set, got"; !strings.Contains(stderr, want) {
		t.Errorf("error does not say %q:\n%s", want, stderr)
	}
	bad := evalJSON(t, `fx.toDaemon (fx.blixardLib.mkCluster { vms.web = { runner = fx.runners.web; vcpu = 1; memMiB = 1; health.http.port = 80; health.interval = 5; }; })`)
	if _, err := spec.Decode(bad); err == nil || !strings.Contains(err.Error(), `vms.web.health.interval: expected a duration string such as "500ms", "5s" or "1m30s", got integer 5`) {
		t.Errorf("Decode of an integer interval: %v", err)
	}
}
