package stats

import (
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100 … 1, unsorted on purpose
	}
	forty := make([]int, 40)
	for i := range forty {
		forty[i] = i + 1
	}
	tests := []struct {
		name string
		ds   []time.Duration
		q    float64
		want time.Duration
	}{
		{"none", nil, 0.5, 0},
		{"one", ms(7), 0.99, 7 * time.Millisecond},
		{"median of three", ms(9, 1, 5), 0.5, 5 * time.Millisecond},
		{"median of ten is the fifth", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 0.5, 5 * time.Millisecond},
		{"p99 of 1…100 is the 99th", ms(hundred...), 0.99, 99 * time.Millisecond},
		{"p50 of 1…100 is the 50th", ms(hundred...), 0.5, 50 * time.Millisecond},
		{"p100 is the largest", ms(hundred...), 1, 100 * time.Millisecond},
		{"p99 of 40 is the largest", ms(forty...), 0.99, 40 * time.Millisecond},
		{"p90 of 40 is the 36th", ms(forty...), 0.9, 36 * time.Millisecond},
		{"a tiny q is the smallest", ms(3, 2, 1), 0.0001, time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.ds...)
			if got := Quantile(tt.ds, tt.q); got != tt.want {
				t.Fatalf("Quantile(%v, %v) = %s, want %s", tt.ds, tt.q, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.ds[i] {
					t.Fatalf("Quantile changed its input: %v, was %v", tt.ds, in)
				}
			}
		})
	}
}
