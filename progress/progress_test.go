package progress

import (
	"context"
	"testing"
)

func TestSinkRidesTheContext(t *testing.T) {
	var got []string
	ctx := With(context.Background(), func(line string) { got = append(got, "outer:"+line) })
	Report(ctx, "a")
	inner := With(ctx, func(line string) { got = append(got, "inner:"+line) })
	Report(inner, "b")
	// A derived context (a timeout on the way down) keeps the sink.
	derived, cancel := context.WithCancel(inner)
	defer cancel()
	Report(derived, "c")
	Report(With(ctx, nil), "dropped")
	Report(context.Background(), "dropped too")
	want := []string{"outer:a", "inner:b", "inner:c"}
	if len(got) != len(want) {
		t.Fatalf("reports = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("report %d = %q, want %q", i, got[i], want[i])
		}
	}
	if From(context.Background()) != nil {
		t.Errorf("a context without a sink has one")
	}
}
