//go:build scale

package scale

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestScaleLarge measures N = 300 and 1,000 simulated nodes (10 × N VMs),
// or the sizes in BLIXARD_SCALE_NODES (comma-separated), one after the
// other: minutes each, and the whole machine.
func TestScaleLarge(t *testing.T) {
	requireScale(t)
	for _, n := range envInts(t, "BLIXARD_SCALE_NODES", []int{300, 1000}) {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) { measure(t, n) })
	}
}

func envInts(t testing.TB, name string, def []int) []int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: %q is not a positive number", name, v, f)
		}
		out = append(out, n)
	}
	return out
}

func scaleEnabled() bool { return os.Getenv("BLIXARD_SCALE") == "1" }

// requireScale fails, saying how to run it, unless BLIXARD_SCALE=1: the
// `scale` build tag already keeps these measurements out of the suite, so
// building them without asking to load the machine is a mistake, not a skip.
func requireScale(t *testing.T) {
	t.Helper()
	if !scaleEnabled() {
		t.Fatal("a scale measurement that loads the whole machine: run it with BLIXARD_SCALE=1 (see tests/scale/doc.go)")
	}
}
