package reconciler

import (
	"fmt"
	"testing"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// BenchmarkScaleOutPlan measures what a carried plan costs a proposer
// (ScaleOutPlan: a Compute and a HoldBack) and how big it makes the
// scale-out's Raft entry (entry-bytes: the encoded command), for clusters
// of 10 nodes and vms VMs below MaxCarriedPlan.
func BenchmarkScaleOutPlan(b *testing.B) {
	for _, vms := range []int{10, 100, MaxCarriedPlan - 1} {
		b.Run(fmt.Sprintf("vms=%d", vms), func(b *testing.B) {
			st := replicated.NewState()
			index := uint64(0)
			apply := func(cmd replicated.Command) {
				index++
				if res := st.Apply(index, cmd); !res.OK() {
					b.Fatalf("%s: %v", cmd.Type, res.Err())
				}
			}
			for id := uint64(1); id <= 10; id++ {
				apply(testkit.Register(id))
			}
			var as []replicated.Assignment
			for i := range vms {
				as = append(as, testkit.Assign(fmt.Sprintf("vm-%03d", i), uint64(1+i%10), "v1"))
			}
			plan := testkit.Plan(0, "c1", as...)
			plan.CommitPlan.Spec.Functions = map[string]spec.Function{"hello": testFunction(0, 3)}
			apply(plan)
			c := scaleOut("hello", 1, 2)
			out := ScaleOutPlan(st, c)
			if out.Plan == nil {
				b.Fatal("no plan attached")
			}
			enc, err := replicated.EncodeCommand(replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdScaleFunction,
				At: testkit.T0, ScaleFunction: &out})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				ScaleOutPlan(st, c)
			}
			b.ReportMetric(float64(len(enc)), "entry-bytes")
		})
	}
}
