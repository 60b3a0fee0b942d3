package nixcache

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkRunnerClosure compares getting a runner onto a node by building
// it with copying it from a peer's cache (nix-store --realise with the
// peer as substituter, into a fresh chroot store each time):
//
//	go test ./nixcache -run '^$' -bench RunnerClosure -benchtime 5x
//
// "demo" is examples/demo's real microVM runner (a Debian kernel and a
// busybox initramfs, built from host files: scripts/setup-microvm.sh),
// "64MiB" the test runner with 64 MiB of random data in its lib. A NixOS
// guest is a closure of hundreds of MiB whose build takes minutes: the
// substitute rows give the copy rate to scale it by.
func BenchmarkRunnerClosure(b *testing.B) {
	requireNix(b)
	demo, err := filepath.Abs(filepath.Join("..", "examples", "demo", "microvm.nix"))
	if err != nil {
		b.Fatal(err)
	}
	runners := map[string]func(tag string) string{
		"demo": func(tag string) string {
			return fmt.Sprintf(`(import %s).runner { name = "bench"; port = 18999; version = %q; }`, demo, tag)
		},
		"64MiB": func(tag string) string { return runnerExpr(tag, 64<<20) },
	}
	for _, name := range []string{"demo", "64MiB"} {
		expr := runners[name]
		b.Run("build/"+name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				drv := strings.TrimSpace(run(b, nil, "nix-instantiate", "--expr", expr(benchTag(b))))
				b.StartTimer()
				out := strings.TrimSpace(run(b, nil, "nix-store", "--realise", drv))
				b.StopTimer()
				b.SetBytes(closureSize(b, out))
				b.StartTimer()
			}
		})
		b.Run("substitute/"+name, func(b *testing.B) {
			drv := strings.TrimSpace(run(b, nil, "nix-instantiate", "--expr", expr(benchTag(b))))
			out := strings.TrimSpace(run(b, nil, "nix-store", "--realise", drv))
			key := newKey(b, "blixard-node-1")
			cache, err := NewCache(Options{Key: key})
			if err != nil {
				b.Fatal(err)
			}
			cache.SetRoots([]string{out})
			url := serveCache(b, cache)
			size := closureSize(b, out)
			b.SetBytes(size)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				peer := newPeerStore(b)
				b.StartTimer()
				if log, err := peer.substitute(url, []string{key.Public()}, out); err != nil || strings.Contains(log, "building '") {
					b.Fatalf("substitute: %v\n%s", err, log)
				}
				b.StopTimer()
				// The chroot store is big: free it now, not at the end.
				makeWritable(peer.root)
				if err := os.RemoveAll(peer.root); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(size)/(1<<20), "MiB/closure")
		})
	}
}

func benchTag(b *testing.B) string {
	return fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), nonce.Add(1))
}

// closureSize is the NAR size of out's closure.
func closureSize(b *testing.B, out string) int64 {
	b.Helper()
	infos, err := NixStore{}.Closure(b.Context(), []string{out})
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, i := range infos {
		n += int64(i.NarSize)
	}
	return n
}

// BenchmarkServeNAR measures the cache's side alone: a NAR of 64 MiB
// streamed over loopback HTTP to a client that discards it (the Go NAR
// serialisation, the file reads and the HTTP stack):
//
//	go test ./nixcache -run '^$' -bench ServeNAR -benchtime 20x
func BenchmarkServeNAR(b *testing.B) {
	requireNix(b)
	r := instantiate(b, 64<<20)
	r.build(b)
	cache, err := NewCache(Options{Key: newKey(b, "blixard-node-1")})
	if err != nil {
		b.Fatal(err)
	}
	cache.SetRoots([]string{r.out})
	base := serveCache(b, cache)
	// The root's narinfo first, as nix asks: it loads the closure.
	for _, p := range []string{r.out, r.lib} {
		resp, err := http.Get(base + "/" + HashPart(p) + ".narinfo")
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("narinfo of %s: %d", p, resp.StatusCode)
		}
	}
	b.SetBytes(closureSize(b, r.lib))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := http.Get(base + "/nar/" + HashPart(r.lib) + ".nar")
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("NAR: %d %v", resp.StatusCode, err)
		}
	}
}
