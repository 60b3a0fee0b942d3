package spec

import (
	"encoding/json"
	"fmt"
	"time"
)

// Update defaults: Decode fills them in for attributes an `update` block
// leaves out. Without an `update` block a VM has none of them: a new
// revision changes every instance at once.
const (
	DefaultMaxUnavailable    = 1
	DefaultCanary            = 0
	DefaultMinHealthySeconds = 10
	DefaultProgressDeadline  = 5 * time.Minute
	// DefaultAutoRevert is off, as Nomad's auto_revert: reverting is a
	// choice the flake makes, because the revision it goes back to may
	// itself be what the new one fixes.
	DefaultAutoRevert = false
)

// updateFields are the attributes of an `update` block.
var updateFields = []string{"maxUnavailable", "canary", "minHealthySeconds", "progressDeadline", "autoRevert"}

// Update is a VM's `update` attribute: how a revision that changes the
// VM's runner or resources reaches its instances (a rolling update). The
// leader moves the instances to the new version in waves: the first Canary
// instances alone when Canary > 0, then at most MaxUnavailable at a time;
// each wave must be healthy for MinHealthySeconds before the next starts,
// and healthy within ProgressDeadline, or the rollout fails (and with
// AutoRevert the VM goes back to the revision it was healthy on).
//
// The zero Update means the VM has no `update` block ([Update.Enabled]);
// Decode gives a block the defaults for what it leaves out, so a block
// always has MaxUnavailable >= 1 once valid.
//
// In the flake, progressDeadline is a string Go's time.ParseDuration
// reads ("5m", "90s"); here it is a time.Duration (in the replicated
// state's JSON: nanoseconds).
type Update struct {
	// MaxUnavailable is the most instances of the VM that may be
	// unavailable (not running healthy) at once because of the rollout;
	// it is also the size of a wave (default 1).
	MaxUnavailable int `json:"maxUnavailable"`
	// Canary is the size of the first wave, which moves alone (default 0:
	// the first wave is like the others).
	Canary int `json:"canary"`
	// MinHealthySeconds is how long every instance of a wave must stay
	// healthy before the next wave starts (default 10).
	MinHealthySeconds int `json:"minHealthySeconds"`
	// ProgressDeadline bounds the time from a wave's start until it is
	// healthy (default 5m).
	ProgressDeadline time.Duration `json:"progressDeadline"`
	// AutoRevert: a failed rollout puts the VM back on the revision it was
	// healthy on (default false: the rollout stops where it is).
	AutoRevert bool `json:"autoRevert"`
}

// updateJSON is Update without its methods, for MarshalJSON.
type updateJSON Update

// MarshalJSON writes ProgressDeadline as a duration string ("5m0s"), as
// the flake does (see HealthCheck.MarshalJSON).
func (u Update) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		updateJSON
		ProgressDeadline string `json:"progressDeadline"`
	}{updateJSON(u), u.ProgressDeadline.String()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (u *Update) UnmarshalJSON(data []byte) error {
	aux := struct {
		*updateJSON
		ProgressDeadline string `json:"progressDeadline"`
	}{updateJSON: (*updateJSON)(u)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	var err error
	u.ProgressDeadline, err = parseJSONDuration("update progressDeadline", aux.ProgressDeadline)
	return err
}

// Enabled reports whether the VM declares an `update` block.
func (u Update) Enabled() bool { return u != Update{} }

// MinHealthy is MinHealthySeconds as a duration.
func (u Update) MinHealthy() time.Duration { return time.Duration(u.MinHealthySeconds) * time.Second }

// String describes the policy as `blixard` shows it.
func (u Update) String() string {
	if !u.Enabled() {
		return "none (every instance at once)"
	}
	s := fmt.Sprintf("waves of %d", u.MaxUnavailable)
	if u.Canary > 0 {
		s += fmt.Sprintf(" after a canary of %d", u.Canary)
	}
	s += fmt.Sprintf(", healthy for %ds within %s", u.MinHealthySeconds, u.ProgressDeadline)
	if u.AutoRevert {
		s += ", auto-revert"
	}
	return s
}

// update decodes a VM's `update` attribute set, with the defaults for what
// it leaves out; Validate checks the values.
func (d *decoder) update(path string, v any) Update {
	u := Update{MaxUnavailable: DefaultMaxUnavailable, Canary: DefaultCanary, MinHealthySeconds: DefaultMinHealthySeconds,
		ProgressDeadline: DefaultProgressDeadline, AutoRevert: DefaultAutoRevert}
	m, ok := d.object(path, v, updateFields...)
	if !ok {
		return u
	}
	if x, ok := m["maxUnavailable"]; ok {
		u.MaxUnavailable = d.int(attrPath(path, "maxUnavailable"), x)
	}
	if x, ok := m["canary"]; ok {
		u.Canary = d.int(attrPath(path, "canary"), x)
	}
	if x, ok := m["minHealthySeconds"]; ok {
		u.MinHealthySeconds = d.int(attrPath(path, "minHealthySeconds"), x)
	}
	if x, ok := m["progressDeadline"]; ok {
		u.ProgressDeadline = d.updateDuration(attrPath(path, "progressDeadline"), x)
	}
	if x, ok := m["autoRevert"]; ok {
		u.AutoRevert = d.bool(attrPath(path, "autoRevert"), x)
	}
	return u
}

// updateDuration decodes a duration string such as "5m".
func (d *decoder) updateDuration(path string, v any) time.Duration {
	s, ok := v.(string)
	if !ok {
		d.ps.addf(path, `expected a duration string such as "5m" or "90s", got %s`, describe(v))
		return 0
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.ps.addf(path, `%q is not a duration: write it as "5m", "90s" or "1h30m"`, s)
		return 0
	}
	return dur
}

// maxMinHealthySeconds bounds minHealthySeconds: a wave waiting longer than
// a day is a typo, and the bound keeps the duration arithmetic far from
// overflowing.
const maxMinHealthySeconds = 86400

// validateUpdate checks a VM's update block (the zero Update: none, valid).
func validateUpdate(ps *problems, path string, vm VM) {
	u := vm.Update
	if !u.Enabled() {
		return
	}
	if u.MaxUnavailable < 1 {
		ps.addf(attrPath(path, "maxUnavailable"), "must be >= 1, got %d: a wave moves at least one instance", u.MaxUnavailable)
	}
	switch {
	case u.Canary < 0:
		ps.addf(attrPath(path, "canary"), "must be >= 0, got %d", u.Canary)
	case vm.Replicas >= 1 && u.Canary > vm.Replicas:
		ps.addf(attrPath(path, "canary"), "must be at most replicas (%d), got %d", vm.Replicas, u.Canary)
	}
	if u.MinHealthySeconds < 0 || u.MinHealthySeconds > maxMinHealthySeconds {
		ps.addf(attrPath(path, "minHealthySeconds"), "must be between 0 and %d, got %d", maxMinHealthySeconds, u.MinHealthySeconds)
	}
	switch {
	case u.ProgressDeadline <= 0:
		ps.addf(attrPath(path, "progressDeadline"), "must be > 0, got %s", u.ProgressDeadline)
	case u.MinHealthySeconds >= 0 && u.MinHealthySeconds <= maxMinHealthySeconds && u.ProgressDeadline <= u.MinHealthy():
		ps.addf(attrPath(path, "progressDeadline"), "must be longer than minHealthySeconds (%ds), got %s: a wave could never be healthy in time",
			u.MinHealthySeconds, u.ProgressDeadline)
	}
}
