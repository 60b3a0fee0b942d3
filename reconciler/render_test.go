package reconciler

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// renderInput produces a plan with every kind of line.
func renderInput() Input {
	return Input{
		Desired: mkCluster(map[string]spec.VM{
			"web":    withReplicas(withVolume(mkVM("web", 1, 1024), "data", 10240), 2),
			"db":     withVolume(mkVM("db-new", 2, 2048), "data", 1024),
			"cache":  mkVM("cache", 1, 1024),
			"big":    mkVM("big", 2, 4096),
			"api":    mkVM("api-2", 1, 512),
			"pinned": withPlacement(mkVM("pinned", 1, 512), spec.Placement{Nodes: []uint64{2}}),
		}),
		Nodes: mkNodes(
			withCeph(mkNode(1, replicated.NodeReady, 4, 4096)),
			withCeph(mkNode(2, replicated.NodeDraining, 8, 8192)),
			withCeph(mkNode(3, replicated.NodeReady, 4, 3072)),
		),
		Current: mkCurrent(
			mkAssign("db", 1, "db-old", 2, 2048, 4),
			mkAssign("cache", 2, "cache", 1, 1024, 4),
			mkAssign("api", 2, "api-1", 1, 512, 4),
			mkAssign("old-vm", 2, "old-vm", 1, 512, 2),
			mkAssign("pinned", 2, "pinned", 1, 512, 3),
		),
		Previous: mkCluster(map[string]spec.VM{"db": withVolume(mkVM("db-old", 2, 2048), "data", 512)}),
	}
}

func TestRenderGolden(t *testing.T) {
	var b strings.Builder
	if err := Compute(renderInput()).Render(&b, false); err != nil {
		t.Fatal(err)
	}
	golden(t, "render.golden", b.String())
}

func TestRenderNoChanges(t *testing.T) {
	var b strings.Builder
	if err := (Plan{}).Render(&b, false); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != "No changes.\n" {
		t.Fatalf("Render of an empty plan = %q, want %q", got, "No changes.\n")
	}
}

func TestRenderColourOnlyWhenAsked(t *testing.T) {
	p := Compute(renderInput())
	var plain, colour strings.Builder
	if err := p.Render(&plain, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Render(&colour, true); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plain.String(), "\x1b[") {
		t.Errorf("Render(color=false) wrote ANSI escapes:\n%q", plain.String())
	}
	if !strings.Contains(colour.String(), ansiGreen+"+ ") || !strings.Contains(colour.String(), ansiReset) {
		t.Errorf("Render(color=true) wrote no colour:\n%q", colour.String())
	}
	stripped := colour.String()
	for _, esc := range []string{ansiReset, ansiGreen, ansiYellow, ansiCyan, ansiRed, ansiBold} {
		stripped = strings.ReplaceAll(stripped, esc, "")
	}
	if stripped != plain.String() {
		t.Errorf("coloured render differs from the plain one beyond escapes:\n%s\n---\n%s", stripped, plain.String())
	}
}

// golden compares got with testdata/name; -update rewrites the file.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./reconciler -run %s -update` to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Fatalf("output differs from %s (review, then rewrite with -update):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}
