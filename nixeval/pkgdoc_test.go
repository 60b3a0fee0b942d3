package nixeval

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageKnowsNoRaft enforces the package doc: nixeval runs nix and
// validates; it must not know about Raft, plans, nodes or git history.
func TestPackageKnowsNoRaft(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := []string{"github.com/lni/", "github.com/go-git/", "/replicated", "/reconciler", "/gitsync", "/nodeagent", "/cmd/"}
	docs := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil {
			docs++
			if name != "doc.go" {
				t.Errorf("%s has a package doc comment; it belongs in doc.go only", name)
			}
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if strings.Contains(path, bad) {
					t.Errorf("%s imports %s; package nixeval must not know about Raft, plans or git (see doc.go)", name, path)
				}
			}
		}
	}
	if docs != 1 {
		t.Errorf("package nixeval has %d package doc comments, want exactly 1 (doc.go)", docs)
	}
}
