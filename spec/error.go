package spec

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a cluster value, at an attribute path of
// the flake's `blixard` output, e.g. Path "vms.web.vcpu".
type Problem struct {
	Path    string `json:"path"` // "" for the value as a whole
	Message string `json:"message"`
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// Error is what Decode and Validate return: every problem found, not just
// the first, so a user fixes a flake in one round.
type Error struct {
	Problems []Problem `json:"problems"` // sorted by Path, then Message
}

// Error lists the problems one per line, sorted by path.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// problems collects Problems while walking a value.
type problems []Problem

func (ps *problems) addf(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// err returns nil when nothing was reported, else a sorted *Error.
func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	out := append([]Problem(nil), ps...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Message < out[j].Message
	})
	return &Error{Problems: out}
}

// isNixIdent reports whether name is an attribute name Nix accepts without
// quotes: [A-Za-z_][A-Za-z0-9_'-]*.
func isNixIdent(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '_':
		case i > 0 && ('0' <= c && c <= '9' || c == '\'' || c == '-'):
		default:
			return false
		}
	}
	return name != ""
}

// attrPath appends attribute name to path the way Nix writes it: `a.b`, or
// `a."b.c"` for names that need quoting.
func attrPath(path, name string) string {
	if !isNixIdent(name) {
		name = strconv.Quote(name)
	}
	if path == "" {
		return name
	}
	return path + "." + name
}

// indexPath appends a list index: `a.b[3]`.
func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}
