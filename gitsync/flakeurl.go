package gitsync

import (
	"net/url"
	"path/filepath"
	"strings"
)

// GitFlakeURL returns the flake reference of commit in the git repository
// at repoDir, bare or not: `git+file:///ABS?ref=REF&rev=SHA`.
//
// ref names a branch or tag that contains commit ("refs/heads/main",
// "main", "refs/tags/v1"); "" means HEAD. It is needed because nix (2.8)
// fetches one ref from a bare repository before looking for the commit,
// and without a ref fetches "master" even when the repository has none; a
// commit on another branch is only found through its own ref. A non-bare
// repository's commits are read directly, ref or not.
func GitFlakeURL(repoDir, ref, commit string) string {
	if ref == "" {
		ref = "HEAD"
	}
	u := url.URL{Scheme: "git+file", Path: absPath(repoDir)}
	return u.String() + "?ref=" + queryEscape(ref) + "&rev=" + queryEscape(commit)
}

// PathFlakeURL returns the flake reference of the directory dir as it is
// on disk, uncommitted and untracked files included: `path:/ABS`. Nix (2.8)
// does not decode escapes in path: references, so a directory whose path
// contains spaces, '?' or '#' cannot be referenced this way.
func PathFlakeURL(dir string) string {
	return "path:" + absPath(dir)
}

// absPath is filepath.Abs, falling back to the cleaned path (Abs fails only
// when the working directory is gone).
func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return filepath.Clean(p)
}

// queryEscape escapes a query value, leaving '/' readable.
func queryEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "%2F", "/")
}
