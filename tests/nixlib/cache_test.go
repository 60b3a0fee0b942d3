package nixlib

import (
	"reflect"
	"strings"
	"testing"
)

// TestNixModuleCache: services.blixard.cache renders to the daemon's
// closure-sharing settings, openFirewall opens the cache port, and a key
// given as a Nix path fails evaluation naming the option.
func TestNixModuleCache(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard.openFirewall = true; services.blixard.cache = { address = "10.0.0.1:7080";
		url = "http://node-1.example.org:7080"; keyFile = "/run/secrets/cache-key"; builder = true;
		substituters = [ "https://cache.example.org" ]; trustedKeys = [ "cache.example.org-1:AAAA" ];
		pushTo = "file:///var/cache/nix"; }; }`)
	for key, want := range map[string]any{
		"cache-addr":     "10.0.0.1:7080",
		"cache-url":      "http://node-1.example.org:7080",
		"cache-key-file": "/run/secrets/cache-key",
		"builder":        true,
		"substituter":    []any{"https://cache.example.org"},
		"trusted-key":    []any{"cache.example.org-1:AAAA"},
		"push-to":        "file:///var/cache/nix",
	} {
		if got := v.ConfigFile[key]; !reflect.DeepEqual(got, want) {
			t.Errorf("config file %s = %v, want %v", key, got, want)
		}
	}
	if !reflect.DeepEqual(v.Firewall, []int{7001, 7070, 7080}) {
		t.Errorf("firewall = %v, want raft, API and the cache port", v.Firewall)
	}
	// Without cache options nothing of it is rendered.
	v = inspectHost(t, `{ }`)
	for _, key := range []string{"cache-addr", "cache-url", "cache-key-file", "builder", "substituter", "trusted-key", "push-to"} {
		if _, ok := v.ConfigFile[key]; ok {
			t.Errorf("config file has %s without cache options: %v", key, v.ConfigFile)
		}
	}
	stderr := evalError(t, "(fx.inspect ("+hostModules(`{ services.blixard.cache.keyFile = ./key; }`)+")).toplevel")
	if !strings.Contains(stderr, "services.blixard.cache.keyFile") {
		t.Errorf("error does not name the option:\n%s", stderr)
	}
}
