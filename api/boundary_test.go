package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestAPIPlansOnlyThroughPlanCommit keeps placement out of the API: it may
// preview a commit with reconciler.PlanCommit, the one evaluation path, but
// never calls the planner's Compute (or CheckVolumes) itself.
func TestAPIPlansOnlyThroughPlanCommit(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == "reconciler" {
				switch sel.Sel.Name {
				case "Compute", "PlanSpec", "CheckVolumes", "Input":
					t.Errorf("%s uses reconciler.%s: the API plans only through reconciler.PlanCommit", name, sel.Sel.Name)
				}
			}
			return true
		})
	}
}
