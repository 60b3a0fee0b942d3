package spec

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageStaysPure enforces the package doc: spec is plain data and pure
// helpers. It must not run programs, touch git or know about Raft.
func TestPackageStaysPure(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := []string{"os/exec", "github.com/go-git/", "github.com/lni/dragonboat", "/replicated", "/nixeval", "/gitsync", "/reconciler", "/nodeagent"}
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
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if strings.Contains(path, bad) {
					t.Errorf("%s imports %s; package spec must stay pure (see its package doc)", name, path)
				}
			}
		}
	}
	if docs != 1 {
		t.Errorf("package spec has %d package doc comments, want exactly 1", docs)
	}
}
