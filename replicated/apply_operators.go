package replicated

// Apply of the operators' commands: conditions of the source, VM run state, sync requests, tokens and members.

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/blixard/blixard/spec"
)

// Condition returns the condition of type t when it is true.
func (s *State) Condition(t ConditionType) (Condition, bool) {
	for _, c := range s.Conditions {
		if c.Type == t {
			return c, true
		}
	}
	return Condition{}, false
}

func (s *State) removeCondition(t ConditionType) {
	s.Conditions = nilIfEmpty(slices.DeleteFunc(s.Conditions, func(c Condition) bool { return c.Type == t }))
}

func validConditionType(t ConditionType) bool {
	return t == FetchFailed || t == EvalFailed || t == SignatureRefused
}

// applySetCondition makes a condition true. Since is kept while the
// condition stays true for the same commit, so "failing since" means what
// it says across repeated records.
func (s *State) applySetCondition(index uint64, at time.Time, c *SetCondition) Result {
	if !validConditionType(c.Type) {
		return s.reject(ResultInvalid, fmt.Sprintf("SetCondition: type %q is not one of FetchFailed, EvalFailed, SignatureRefused", c.Type))
	}
	if c.Message == "" {
		return s.reject(ResultInvalid, fmt.Sprintf("SetCondition: %s of commit %s: the message is empty", c.Type, c.Commit))
	}
	since := at
	if old, ok := s.Condition(c.Type); ok && old.Commit == c.Commit {
		since = old.Since
	}
	s.removeCondition(c.Type)
	s.Conditions = append(s.Conditions, Condition{Type: c.Type, Commit: c.Commit, Message: c.Message,
		Retryable: c.Retryable, Since: since, At: at})
	slices.SortFunc(s.Conditions, func(x, y Condition) int { return strings.Compare(string(x.Type), string(y.Type)) })
	first, _, more := strings.Cut(c.Message, "\n")
	if more {
		first += " …"
	}
	kind := EventEvalFailed
	switch c.Type {
	case FetchFailed:
		kind = EventFetchFailed
	case SignatureRefused:
		kind = EventSignatureRefused
	}
	s.event(index, at, kind, fmt.Sprintf("commit %s: %s", orNone(c.Commit), first), About{Commit: c.Commit})
	return s.ok("%s of commit %s recorded; revision %d stays", c.Type, orNone(c.Commit), s.revisionID())
}

func (s *State) applyClearCondition(index uint64, at time.Time, c *ClearCondition) Result {
	if !validConditionType(c.Type) {
		return s.reject(ResultInvalid, fmt.Sprintf("ClearCondition: type %q is not one of FetchFailed, EvalFailed, SignatureRefused", c.Type))
	}
	if _, ok := s.Condition(c.Type); !ok {
		return s.ok("%s is not set", c.Type)
	}
	s.removeCondition(c.Type)
	s.event(index, at, EventConditionCleared, string(c.Type)+" cleared")
	return s.ok("%s cleared", c.Type)
}

func orNone(commit string) string {
	if commit == "" {
		return "(none)"
	}
	return commit
}

// autostart is the flake's autostart of a's declared VM; true when the
// spec does not declare it (a plan made without one).
func autostart(desired *spec.Cluster, a Assignment) bool {
	if a.Function != "" {
		return true // a function's instances exist only to run
	}
	declared := a.Declared
	if declared == "" {
		declared = a.VM
	}
	if desired == nil {
		return true
	}
	vm, ok := desired.VMs[declared]
	return !ok || vm.Autostart
}

func putControl(m map[string]RunControl, vm string, rc RunControl) map[string]RunControl {
	if m == nil {
		m = map[string]RunControl{}
	}
	m[vm] = rc
	return m
}

// instancesNamed resolves name to the instances of the current revision:
// the instance of that name, else every instance of the declared VM of that
// name (its replicas). The revision's instances are its assignments and its
// unschedulable instances. The result is sorted; nil when name is unknown.
func (s *State) instancesNamed(name string) []string {
	if _, ok := s.Assignments[name]; ok {
		return []string{name}
	}
	for _, u := range s.Unschedulable {
		if u.VM == name {
			return []string{name}
		}
	}
	var out []string
	for vm, a := range s.Assignments {
		if a.Declared == name {
			out = append(out, vm)
		}
	}
	for _, u := range s.Unschedulable {
		if u.Declared == name {
			out = append(out, u.VM)
		}
	}
	slices.Sort(out)
	return out
}

// instance is the assignment of instance vm, or for an unschedulable
// instance its name and declared name.
func (s *State) instance(vm string) Assignment {
	if a, ok := s.Assignments[vm]; ok {
		return a
	}
	for _, u := range s.Unschedulable {
		if u.VM == vm {
			return Assignment{VM: vm, Declared: u.Declared}
		}
	}
	return Assignment{VM: vm}
}

// applySetVMRunState records an operator's run-state choice for the
// instances name resolves to and derives their assignments' Stopped and
// Restart from it. A restart is refused unless every instance is then
// wanted running: restarting a VM kept stopped would start it behind the
// operator's back.
func (s *State) applySetVMRunState(index uint64, at time.Time, c *SetVMRunState) Result {
	switch {
	case c.VM == "":
		return s.reject(ResultInvalid, "SetVMRunState: no VM named; name an instance (web-1) or a declared VM (web)")
	case c.Want != "" && c.Want != RunStateRunning && c.Want != RunStateStopped:
		return s.reject(ResultInvalid, fmt.Sprintf("SetVMRunState: VM %q: want %q is not one of running, stopped", c.VM, c.Want))
	case c.Want == "" && !c.Restart:
		return s.reject(ResultInvalid, fmt.Sprintf("SetVMRunState: VM %q: nothing to do (set want or restart)", c.VM))
	}
	names := s.instancesNamed(c.VM)
	if len(names) == 0 {
		return s.reject(ResultUnknownVM, fmt.Sprintf(
			"SetVMRunState: VM %q is neither an instance nor a declared VM of revision %d; see `blixard status` for the VMs",
			c.VM, s.revisionID()))
	}
	want := func(vm string) RunState {
		if c.Want != "" {
			return c.Want
		}
		return s.RunControls[vm].Want
	}
	if c.Restart {
		var stopped []string
		for _, vm := range names {
			if KeptStopped(autostart(s.Desired, s.instance(vm)), want(vm)) != "" {
				stopped = append(stopped, vm)
			}
		}
		if len(stopped) > 0 {
			return s.reject(ResultInvalid, fmt.Sprintf(
				"SetVMRunState: cannot restart %s: kept stopped (autostart = false or `blixard vm stop`); start it with `blixard vm start %s`",
				strings.Join(stopped, ", "), stopped[0]))
		}
	}
	changed := false
	for _, vm := range names {
		rc := s.RunControls[vm]
		old := rc
		rc.Want = want(vm)
		if c.Restart {
			rc.Restart = index
		}
		if rc.Want == old.Want && rc.Restart == old.Restart {
			continue
		}
		changed = true
		rc.At = at
		s.RunControls = putControl(s.RunControls, vm, rc)
		if a, ok := s.Assignments[vm]; ok {
			a.Stopped = KeptStopped(autostart(s.Desired, a), rc.Want)
			a.Restart = rc.Restart
			s.Assignments[vm] = a
		}
	}
	what := "wanted " + string(c.Want)
	switch {
	case c.Want != "" && c.Restart:
		what += ", restarted"
	case c.Restart:
		what = "restarted"
	}
	if !changed {
		return s.ok("%s: already %s", strings.Join(names, ", "), what)
	}
	msg := fmt.Sprintf("%s: %s", strings.Join(names, ", "), what)
	if c.Restart {
		msg += fmt.Sprintf(" (restart %d)", index)
	}
	s.event(index, at, EventVMRunState, msg, About{VM: c.VM})
	return s.ok("%s", msg)
}

// applyRequestSync counts a request for a fetch. A run of requests with
// nothing else in between keeps one event, the last: webhooks for a busy
// repository (one per push to any branch) must not push plans, failures and
// node changes out of the bounded event log.
func (s *State) applyRequestSync(index uint64, at time.Time) Result {
	s.SyncRequests++
	ev := Event{Index: index, At: at, Kind: EventSyncRequested,
		Message: fmt.Sprintf("fetch of the tracked ref requested (request %d)", s.SyncRequests)}
	if n := len(s.Events); n > 0 && s.Events[n-1].Kind == EventSyncRequested {
		s.Events[n-1] = ev
	} else {
		s.Events = appendBounded(s.Events, ev, MaxEvents)
	}
	return s.ok("sync request %d recorded", s.SyncRequests)
}

// ValidTokenName reports whether name can name an API token, and why not.
func ValidTokenName(name string) error {
	if !tokenNameRE.MatchString(name) {
		return fmt.Errorf("token name %q must be 1–64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", name)
	}
	return nil
}

// validTokenRole is the roles of user certificates (package pki).
func validTokenRole(role string) bool {
	return role == "read" || role == "operate" || role == "admin"
}

func (s *State) applyCreateToken(index uint64, at time.Time, actor string, c *CreateToken) Result {
	if err := ValidTokenName(c.Name); err != nil {
		return s.reject(ResultInvalid, "CreateToken: "+err.Error())
	}
	if !validTokenRole(c.Role) {
		return s.reject(ResultInvalid, fmt.Sprintf("CreateToken: token %s: role %q is not one of read, operate, admin", c.Name, c.Role))
	}
	if !tokenHashRE.MatchString(c.Hash) {
		return s.reject(ResultInvalid, fmt.Sprintf("CreateToken: token %s: the hash is not a hex SHA-256", c.Name))
	}
	if _, ok := s.Tokens[c.Name]; ok {
		return s.reject(ResultInvalid, fmt.Sprintf("CreateToken: a token named %s exists; revoke it first (`blixard token revoke %s`) or choose another name", c.Name, c.Name))
	}
	if s.Tokens == nil {
		s.Tokens = map[string]Token{}
	}
	s.Tokens[c.Name] = Token{Name: c.Name, Role: c.Role, Hash: c.Hash, CreatedAt: at, CreatedBy: actor}
	s.event(index, at, EventTokenCreated, fmt.Sprintf("token %s created with role %s", c.Name, c.Role))
	return s.ok("token %s created with role %s", c.Name, c.Role)
}

func (s *State) applyRevokeToken(index uint64, at time.Time, c *RevokeToken) Result {
	t, ok := s.Tokens[c.Name]
	if !ok {
		return s.reject(ResultUnknownToken, fmt.Sprintf("RevokeToken: no token is named %q; see `blixard token list`", c.Name))
	}
	delete(s.Tokens, c.Name)
	if len(s.Tokens) == 0 {
		s.Tokens = nil
	}
	s.event(index, at, EventTokenRevoked, fmt.Sprintf("token %s (role %s) revoked", c.Name, t.Role))
	return s.ok("token %s revoked", c.Name)
}

func (s *State) applyRecordMember(index uint64, at time.Time, c *RecordMember) Result {
	if c.ID == 0 {
		return s.reject(ResultInvalid, "RecordMember: node id must be > 0")
	}
	kind := "voting"
	if c.NonVoting {
		kind = "non-voting"
	}
	msg := fmt.Sprintf("node %d added to the Raft shard as a %s member at %s", c.ID, kind, c.RaftAddr)
	s.event(index, at, EventMemberAdded, msg, About{Node: c.ID})
	return s.ok("%s", msg)
}
