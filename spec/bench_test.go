package spec

import (
	"encoding/json"
	"fmt"
	"testing"
)

// BenchmarkDecodeValidate measures Decode + Validate of a cluster of n VMs
// (what nixeval adds to every nix run).
//
//	go test ./spec -run '^$' -bench DecodeValidate
func BenchmarkDecodeValidate(b *testing.B) {
	for _, n := range []int{20, 1000} {
		c := &Cluster{Name: "bench", VMs: map[string]VM{}}
		for i := range n {
			vm := VM{Runner: Runner{Drv: testDrv, Out: testOut}, VCPU: 1, MemMiB: 256, Replicas: 1 + i%3, Autostart: true,
				Placement: Placement{Labels: map[string]string{"zone": "a"}},
				Volumes:   map[string]Volume{"data": {SizeMiB: 1024, Pool: "rbd"}}}
			c.VMs[fmt.Sprintf("vm-%d", i)] = vm
		}
		data, err := json.Marshal(c)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				c, err := Decode(data)
				if err != nil {
					b.Fatal(err)
				}
				if err := c.Validate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
