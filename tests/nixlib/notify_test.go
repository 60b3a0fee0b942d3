package nixlib

import (
	"reflect"
	"strings"
	"testing"
)

// TestNixModuleNotify: services.blixard.notify renders to the daemon's
// --notify-* settings, and mistakes fail evaluation naming the option.
func TestNixModuleNotify(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	v := inspectHost(t, `{ services.blixard.notify = { urls = [ "https://alerts.example.org/blixard" ];
		urlFile = "/run/secrets/notify-urls"; secretFile = "/run/secrets/notify-hmac"; kinds = [ "PlanCommitted" "NodeDown" ]; }; }`)
	for key, want := range map[string]any{
		"notify-url":         []any{"https://alerts.example.org/blixard"},
		"notify-url-file":    "/run/secrets/notify-urls",
		"notify-secret-file": "/run/secrets/notify-hmac",
		"notify-kind":        []any{"PlanCommitted", "NodeDown"},
	} {
		if got := v.ConfigFile[key]; !reflect.DeepEqual(got, want) {
			t.Errorf("config file %s = %v, want %v", key, got, want)
		}
	}
	// Without receivers nothing of it is rendered.
	v = inspectHost(t, `{ }`)
	for key := range v.ConfigFile {
		if strings.HasPrefix(key, "notify-") {
			t.Errorf("config file has %s without notify options: %v", key, v.ConfigFile)
		}
	}
	for _, tc := range []struct{ name, module, want string }{
		{"a secret without a receiver fails an assertion", `{ services.blixard.notify.secretFile = "/run/secrets/h"; }`,
			"notify.secretFile and notify.kinds need a receiver"},
		{"a receiver that is not http(s) is a type error", `{ services.blixard.notify.urls = [ "ftp://example.org" ]; }`,
			"services.blixard.notify.urls"},
		{"a secret given as a Nix path is a type error: it would land in the store", `{ services.blixard.notify.secretFile = ./hmac; }`,
			"services.blixard.notify.secretFile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stderr := evalError(t, "(fx.inspect ("+hostModules(tc.module)+")).toplevel")
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("error does not say %q:\n%s", tc.want, stderr)
			}
		})
	}
}
