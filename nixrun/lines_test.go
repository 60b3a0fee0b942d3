package nixrun

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestLineWriterSplitsCleansAndPassesOn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   []string
	}{
		{"whole lines", []string{"a\nb\n"}, []string{"a", "b"}},
		{"a line across writes", []string{"buil", "ding 'x'\n", "r> step"}, []string{"building 'x'"}},
		{"carriage returns end lines", []string{"one\r\ntwo\rthree\n"}, []string{"one", "two", "three"}},
		{"colours and blank lines go", []string{"\x1b[35;1mwarning:\x1b[0m x\n\n   \n"}, []string{"warning: x"}},
		{"a line without end is cut at maxLine", []string{strings.Repeat("x", maxLine+10)}, []string{strings.Repeat("x", maxLine)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var next bytes.Buffer
			var got []string
			w := &lineWriter{next: &next, line: func(l string) { got = append(got, l) }}
			for _, s := range tc.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("lines = %q, want %q", got, tc.want)
			}
			if next.String() != strings.Join(tc.writes, "") {
				t.Errorf("passed on %q, want everything written", next.String())
			}
		})
	}
}

// A real nix run reports what nix prints on stderr as it prints it, and
// the error message still carries nix's stderr.
func TestNixRunReportsStderrLines(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	r, cl := testRunner(t, nix, cgroupAny)
	var mu sync.Mutex
	var lines []string
	_, err := r.Run(context.Background(), Command{
		Args:        []string{"eval", "--expr", `builtins.trace "progress-one" (builtins.trace "progress-two" (throw "boom"))`},
		ExtraConfig: testConfig,
		Lines: func(l string) {
			mu.Lock()
			defer mu.Unlock()
			lines = append(lines, l)
		},
	})
	re := runErr(t, err, Failed)
	if !strings.Contains(re.Message, "error: boom") {
		t.Errorf("message lost nix's error:\n%s", re.Message)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"trace: progress-one", "trace: progress-two"}
	if len(lines) < 3 || !slices.Equal(lines[:2], want) || !strings.Contains(strings.Join(lines[2:], "\n"), "error: boom") {
		t.Errorf("lines = %q, want %q then the error", lines, want)
	}
	cl.requireGone(t, 0)
}
