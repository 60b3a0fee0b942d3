package spec

import (
	"fmt"
	"unicode"
)

// Preference is `placement.prefer`: wishes the planner honours when it can,
// unlike the hard constraints of Placement (nodes, labels, antiAffinity)
// that rule nodes out. The zero value prefers nothing.
type Preference struct {
	// Labels are node labels the VM would rather run on: among the nodes
	// that satisfy the hard constraints and spread the VM's replicas as
	// well as any other, the planner picks one carrying more of them.
	// Nil when the flake gives none (Decode never keeps an empty map, so
	// that a decoded value is its own canonical JSON).
	Labels map[string]string `json:"labels,omitempty"`
}

// MaxLabelKey bounds the length of a label key in Placement.SpreadBy.
const MaxLabelKey = 253

// ValidLabelKey reports whether k can be a node label key that
// placement.spreadBy names, with an error that states the rule. A node's
// labels come from `blixard serve --labels KEY=VALUE,…`, so a key that
// is empty or holds ',' or '=' cannot be carried by any node; whitespace
// and control characters are refused too, because they are invisible in
// `blixard plan` and status output and almost always a typo.
func ValidLabelKey(k string) error {
	why := ""
	switch {
	case k == "":
		why = "it is empty"
	case len(k) > MaxLabelKey:
		why = fmt.Sprintf("it has %d bytes, at most %d are allowed", len(k), MaxLabelKey)
	default:
		for _, r := range k {
			if r == ',' || r == '=' || unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar {
				why = fmt.Sprintf("it contains %q", r)
				break
			}
		}
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("invalid label key %q (%s): a label key is what a node sets with `blixard serve --labels KEY=VALUE`, "+
		"so it must be non-empty, at most %d bytes, without ',', '=', whitespace or control characters, e.g. \"zone\"", k, why, MaxLabelKey)
}

// placementFields are the attributes of a VM's `placement`.
var placementFields = []string{"nodes", "labels", "antiAffinity", "spreadBy", "prefer"}

// softPlacement decodes the attributes of placement m that only steer the
// choice among allowed nodes: spreadBy and prefer. Validate checks their
// values.
func (d *decoder) softPlacement(path string, m map[string]any, p *Placement) {
	if x, ok := m["spreadBy"]; ok {
		p.SpreadBy = d.str(attrPath(path, "spreadBy"), x)
	}
	x, ok := m["prefer"]
	if !ok {
		return
	}
	pp := attrPath(path, "prefer")
	pm, ok := d.object(pp, x, "labels")
	if !ok {
		return
	}
	if x, ok := pm["labels"]; ok {
		p.Prefer.Labels = d.labelMap(attrPath(pp, "labels"), x)
	}
}

// labelMap decodes an attribute set of strings; nil when it is empty.
func (d *decoder) labelMap(path string, v any) map[string]string {
	labels, ok := v.(map[string]any)
	if !ok {
		d.ps.addf(path, "expected an attribute set of strings (label key → value), got %s", describe(v))
		return nil
	}
	if len(labels) == 0 {
		return nil
	}
	out := make(map[string]string, len(labels))
	for _, k := range sortedKeys(labels) {
		out[k] = d.str(attrPath(path, k), labels[k])
	}
	return out
}

// validatePlacement checks what spreadBy and prefer hold: spreadBy is
// a label key or ""; prefer.labels keys are label keys (a preference no
// node can carry would be silently ignored otherwise).
func validatePlacement(ps *problems, path string, p Placement) {
	if p.SpreadBy != "" {
		if err := ValidLabelKey(p.SpreadBy); err != nil {
			ps.addf(attrPath(path, "spreadBy"), "%v", err)
		}
	}
	lp := attrPath(attrPath(path, "prefer"), "labels")
	for _, k := range sortedKeys(p.Prefer.Labels) {
		if err := ValidLabelKey(k); err != nil {
			ps.addf(attrPath(lp, k), "%v", err)
		}
	}
}
