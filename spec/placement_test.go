package spec

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeSoftPlacement(t *testing.T) {
	c, err := Decode([]byte(vmJSON(`, "replicas": 3, "placement": {"spreadBy": "zone", "prefer": {"labels": {"disk": "ssd", "Rack.Row/x": "7"}}}`)))
	if err != nil {
		t.Fatal(err)
	}
	want := Placement{SpreadBy: "zone", Prefer: Preference{Labels: map[string]string{"disk": "ssd", "Rack.Row/x": "7"}}}
	if got := c.VMs["web"].Placement; !reflect.DeepEqual(got, want) {
		t.Fatalf("placement = %#v, want %#v", got, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

// TestDecodeEmptyPreferenceIsCanonical: an empty prefer (or prefer.labels)
// decodes to the zero Preference, so the value's JSON is a fixed point.
func TestDecodeEmptyPreferenceIsCanonical(t *testing.T) {
	for _, extra := range []string{`, "placement": {"prefer": {}}`, `, "placement": {"prefer": {"labels": {}}}`} {
		c, err := Decode([]byte(vmJSON(extra)))
		if err != nil {
			t.Fatalf("%s: %v", extra, err)
		}
		if p := c.VMs["web"].Placement.Prefer; p.Labels != nil {
			t.Fatalf("%s: prefer = %#v, want the zero Preference", extra, p)
		}
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte("prefer")) {
			t.Fatalf("%s: marshalled %s, want no prefer", extra, data)
		}
	}
}

func TestDecodeSoftPlacementProblems(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"spreadBy not a string", vmJSON(`, "placement": {"spreadBy": ["zone"]}`),
			[]string{`vms.web.placement.spreadBy: expected a string, got list of 1 elements`}},
		{"prefer not an attribute set", vmJSON(`, "placement": {"prefer": "ssd"}`),
			[]string{`vms.web.placement.prefer: expected an attribute set, got string "ssd"`}},
		{"unknown field in prefer", vmJSON(`, "placement": {"prefer": {"label": {"disk": "ssd"}}}`),
			[]string{`vms.web.placement.prefer.label: unknown field "label"; did you mean "labels"?`}},
		{"prefer.labels not an attribute set", vmJSON(`, "placement": {"prefer": {"labels": ["disk=ssd"]}}`),
			[]string{`vms.web.placement.prefer.labels: expected an attribute set of strings (label key → value), got list of 1 elements`}},
		{"prefer.labels value not a string", vmJSON(`, "placement": {"prefer": {"labels": {"disk": true}}}`),
			[]string{`vms.web.placement.prefer.labels.disk: expected a string, got boolean true`}},
		{"misspelt spreadBy suggests the field", vmJSON(`, "placement": {"spreadby": "zone"}`),
			[]string{`vms.web.placement.spreadby: unknown field "spreadby"; did you mean "spreadBy"?`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(tt.in))
			if c != nil {
				t.Fatalf("Decode returned a cluster with an error")
			}
			assertProblems(t, err, tt.want)
		})
	}
}

func TestValidateSoftPlacement(t *testing.T) {
	tests := []struct {
		name string
		p    Placement
		want []string // prefixes of the error's lines; nil means valid
	}{
		{"no soft rules", Placement{}, nil},
		{"spreadBy a plain key", Placement{SpreadBy: "zone"}, nil},
		{"spreadBy a prefixed key", Placement{SpreadBy: "topology.example.org/zone"}, nil},
		{"prefer labels with valid keys", Placement{Prefer: Preference{Labels: map[string]string{"disk": "ssd", "gpu": ""}}}, nil},
		{"spreadBy with '='", Placement{SpreadBy: "zone=a"},
			[]string{`vms.web.placement.spreadBy: invalid label key "zone=a" (it contains '='): a label key is what a node sets with ` +
				"`blixard serve --labels KEY=VALUE`"}},
		{"spreadBy with ','", Placement{SpreadBy: "zone,rack"},
			[]string{`vms.web.placement.spreadBy: invalid label key "zone,rack" (it contains ',')`}},
		{"spreadBy with a space", Placement{SpreadBy: "zone "},
			[]string{`vms.web.placement.spreadBy: invalid label key "zone " (it contains ' ')`}},
		{"spreadBy too long", Placement{SpreadBy: strings.Repeat("z", MaxLabelKey+1)},
			[]string{`vms.web.placement.spreadBy: invalid label key "` + strings.Repeat("z", MaxLabelKey+1) + `" (it has 254 bytes, at most 253 are allowed)`}},
		{"prefer label key empty and with '='", Placement{Prefer: Preference{Labels: map[string]string{"": "x", "a=b": "c"}}},
			[]string{`vms.web.placement.prefer.labels."": invalid label key "" (it is empty)`,
				`vms.web.placement.prefer.labels."a=b": invalid label key "a=b" (it contains '=')`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(func(c *Cluster) {
				editVM(c, "web", func(vm *VM) { vm.Replicas = 2; vm.Placement = tt.p })
			})
			err := c.Validate()
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

func TestValidLabelKey(t *testing.T) {
	for _, k := range []string{"zone", "Disk.Type", "topology.kubernetes.io/zone", "a_b-c", "zöne", strings.Repeat("k", MaxLabelKey)} {
		if err := ValidLabelKey(k); err != nil {
			t.Errorf("ValidLabelKey(%q) = %v, want nil", k, err)
		}
	}
	for _, k := range []string{"", "a=b", "a,b", " zone", "zo\tne", "zone\n", "\x00", "\xff", strings.Repeat("k", MaxLabelKey+1)} {
		if err := ValidLabelKey(k); err == nil {
			t.Errorf("ValidLabelKey(%q) = nil, want an error", k)
		}
	}
}
