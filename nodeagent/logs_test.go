package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/blixard/blixard/internal/testkit"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestTailLogFollowsAppendsAndTruncation(t *testing.T) {
	path := LogPath(t.TempDir(), "vm")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var plain bytes.Buffer
	if err := TailLog(t.Context(), path, false, &plain); err != nil || plain.String() != "one\n" {
		t.Fatalf("TailLog = %q, %v; want %q", plain.String(), err, "one\n")
	}

	ctx, cancel := context.WithCancel(t.Context())
	var w syncBuffer
	done := make(chan error, 1)
	go func() { done <- TailLog(ctx, path, true, &w) }()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("two\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	testkit.WaitFor(t, waitTimeout, "appended line", testkit.Until(func() bool { return w.String() == "one\ntwo\n" }))
	if err := os.WriteFile(path, []byte("three\n"), 0o644); err != nil { // truncate and rewrite
		t.Fatal(err)
	}
	testkit.WaitFor(t, waitTimeout, "line after truncation", testkit.Until(func() bool { return strings.HasSuffix(w.String(), "three\n") }))
	cancel()
	if err := <-done; err != nil {
		t.Errorf("TailLog after cancel: %v", err)
	}
}

func TestTailLogMissingFileSaysWhy(t *testing.T) {
	err := TailLog(t.Context(), LogPath(t.TempDir(), "nope"), false, &bytes.Buffer{})
	// fs.ErrNotExist: the API answers 404.
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "has not started on this node") {
		t.Errorf("err = %v", err)
	}
}

// TailConsole reads where the backend keeps the console: the process
// backend's STATE/NAME/console.log (the systemd backend's journal is
// TestSystemdConsoleIsTheUnitsJournal).
func TestTailConsoleOfTheProcessBackendIsConsoleLog(t *testing.T) {
	dir := t.TempDir()
	b := NewProcessBackend(ProcessOptions{StateDir: dir})
	if err := TailConsole(t.Context(), b, dir, "vm", false, &bytes.Buffer{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("TailConsole without a console.log: %v, want fs.ErrNotExist", err)
	}
	path := LogPath(dir, "vm")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("booting\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := TailConsole(t.Context(), b, dir, "vm", false, &out); err != nil || out.String() != "booting\n" {
		t.Errorf("TailConsole = %q, %v; want %q", out.String(), err, "booting\n")
	}
}
