package ingress

import (
	"slices"
	"testing"
)

func TestOrder(t *testing.T) {
	const now = 1_000
	up := func(inflight int64) candidate { return candidate{inflight: inflight} }
	down := func(until int64) candidate { return candidate{downUntil: until} }
	for _, tc := range []struct {
		name  string
		cands []candidate
		start uint64
		want  []int
	}{
		{name: "no backends gives nothing", want: []int{}},
		{name: "idle backends take turns from the rotation", cands: []candidate{up(0), up(0), up(0)}, start: 4, want: []int{1, 2, 0}},
		{name: "fewest in flight goes first whatever the rotation", cands: []candidate{up(2), up(0), up(1)}, start: 1, want: []int{1, 2, 0}},
		{name: "down backend goes after every backend up, even a busy one", cands: []candidate{down(now + 5), up(7)}, want: []int{1, 0}},
		{name: "down backends go soonest back first", cands: []candidate{down(now + 9), down(now + 3), up(0)}, want: []int{2, 1, 0}},
		{name: "mark that expired counts as up", cands: []candidate{down(now), up(1)}, want: []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := order(tc.cands, tc.start, now); !slices.Equal(got, tc.want) {
				t.Fatalf("order = %v, want %v", got, tc.want)
			}
		})
	}
}
