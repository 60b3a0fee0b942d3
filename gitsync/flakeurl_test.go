package gitsync

import (
	"strings"
	"testing"
)

func TestFlakeURLs(t *testing.T) {
	tests := []struct{ got, want string }{
		{GitFlakeURL("/srv/mirror.git", "refs/heads/main", "abc"), "git+file:///srv/mirror.git?ref=refs/heads/main&rev=abc"},
		{GitFlakeURL("/srv/mirror.git", "", "abc"), "git+file:///srv/mirror.git?ref=HEAD&rev=abc"},
		{GitFlakeURL("/srv/a b", "x&y", "abc"), "git+file:///srv/a%20b?ref=x%26y&rev=abc"},
		{PathFlakeURL("/srv/flake/"), "path:/srv/flake"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %s, want %s", tt.got, tt.want)
		}
	}
	if ref := PathFlakeURL("rel"); !strings.HasPrefix(ref, "path:/") {
		t.Errorf("PathFlakeURL(rel) = %s, want an absolute path", ref)
	}
}
