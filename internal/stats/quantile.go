// Package stats holds the one definition of a latency quantile that
// Blixard reports (`blixard functions`, metrics) and its measurements log,
// so that a p99 in docs/benchmarks.md means what the CLI's p99 means.
package stats

import (
	"math"
	"slices"
	"time"
)

// Quantile returns the q-quantile (0 < q ≤ 1) of ds by nearest rank: the
// ⌈q·n⌉-th smallest (the median of 10 is the 5th, the p99 of 100 the
// 99th, the p99 of fewer than 100 their largest); 0 for none. ds is not
// changed.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(max(int(math.Ceil(q*float64(len(s))))-1, 0), len(s)-1)]
}
