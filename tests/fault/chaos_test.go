//go:build chaos

package fault

import (
	"flag"
	"math/rand/v2"
	"testing"
)

var (
	flagSeed     = flag.Uint64("seed", 0, "TestFault: the schedule's seed (0: a random one, printed)")
	flagDuration = flag.Duration("duration", 0, "TestFault: how long to inject faults (required)")
)

// TestFault is one long run: -duration (required) and -seed (default
// random). scripts/chaos.sh runs it; it builds only with -tags chaos, so
// that the suite's own run (TestFaultShortFixedSeeds) reports no skipped
// test.
func TestFault(t *testing.T) {
	if *flagDuration == 0 {
		t.Fatal("TestFault needs -duration (scripts/chaos.sh --duration D)")
	}
	requireTools(t)
	seed := *flagSeed
	if seed == 0 {
		seed = rand.Uint64()%1_000_000 + 1
	}
	runFaults(t, config(seed, *flagDuration))
}
