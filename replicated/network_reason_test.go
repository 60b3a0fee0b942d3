package replicated

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

// TestTooSmallNetworkReasonIsExact pins the whole text a user reads in
// `blixard status` for instances a too small network.cidr has no address
// for, from AllocateNetwork through an applied CommitPlan: the instances
// beyond the network (by name) are unschedulable with exactly it, and the
// others are placed.
func TestTooSmallNetworkReasonIsExact(t *testing.T) {
	const reason = "network 10.0.0.0/28 has no free address: its 13 instance addresses are taken " +
		"(a removed instance's address is free once the plan that removes it is committed); " +
		"widen network.cidr in the flake or declare fewer instances"
	cidr := netip.MustParsePrefix("10.0.0.0/28")
	if got := NoAddressReason(cidr); got != reason {
		t.Fatalf("NoAddressReason(%s) =\n  %s\nwant\n  %s", cidr, got, reason)
	}

	s := NewState()
	applyAll(t, s, reg(1), reg(2), reg(3))
	// 13 addresses: 3 go to the nodes, 10 to instances i00–i09.
	var names []string
	for i := range 12 {
		names = append(names, fmt.Sprintf("i%02d", i))
	}
	applyAll(t, s, netPlan(s, "c1", cidr, 0, names...))
	want := []Unschedulable{{VM: "i10", Reason: reason}, {VM: "i11", Reason: reason}}
	if !slices.Equal(s.Unschedulable, want) {
		t.Fatalf("unschedulable = %+v\nwant %+v", s.Unschedulable, want)
	}
	for _, vm := range names[:10] {
		if _, ok := s.Identity(vm); !ok {
			t.Errorf("%s has no address; the network has one for it", vm)
		}
	}
}
