package nixeval

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/blixard/blixard/gitsync"
)

// BenchmarkNixEval compares blixard's evaluation path (Evaluator.Eval
// without the cache: nix with the apply function, then decode, validate,
// canonical JSON and hash) with a raw `nix eval --json` of the same flake
// attribute, both through exec, on a flake of 20 VMs at a git commit.
//
//	go test ./nixeval -run '^$' -bench NixEval -benchtime 40x -count 5
func BenchmarkNixEval(b *testing.B) {
	realNix := requireNix(b)
	dir, commit := fixtureRepo(b, "bench")
	ref := gitsync.GitFlakeURL(dir, "", commit)
	cacheEnv := "XDG_CACHE_HOME=" + b.TempDir()
	ev := New(Options{Env: []string{cacheEnv}})
	ctx := context.Background()
	// Warm up: the first evaluation of a commit copies it into the store.
	if res, err := ev.Eval(ctx, ref, "blixard", ""); err != nil || len(res.Spec.VMs) != 20 {
		b.Fatalf("warm-up: %v", err)
	}

	raw := func(b *testing.B, args ...string) {
		env := append(os.Environ(), cacheEnv, "NIX_CONFIG="+os.Getenv("NIX_CONFIG")+"\n"+nixConfig)
		base := []string{"--extra-experimental-features", "nix-command flakes", "eval", "--json", "--no-write-lock-file"}
		for b.Loop() {
			cmd := exec.Command(realNix, append(append(base, args...), ref+"#blixard")...)
			cmd.Env = env
			if out, err := cmd.Output(); err != nil || len(out) == 0 {
				b.Fatalf("nix eval: %v", err)
			}
		}
	}
	b.Run("blixard", func(b *testing.B) {
		for b.Loop() {
			if _, err := ev.Eval(ctx, ref, "blixard", ""); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) { raw(b) })
	b.Run("raw-apply", func(b *testing.B) { raw(b, "--apply", applyFunction) })
}
