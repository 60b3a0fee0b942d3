package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/tests/microvm"
)

// BenchmarkQemuBoot measures boot to the first HTTP answer of the demo's
// microVM (runner already built), started by the node agent after an
// assignment appears versus microvm-run executed by hand. Each iteration
// stops the VM through microvm-shutdown, outside the timed part.
//
//	go test -run '^$' -bench BenchmarkQemuBoot -benchtime 3x ./tests/qemu
func BenchmarkQemuBoot(b *testing.B) {
	microvm.Require(b)
	r := buildRunner(b, "web", "bench")

	b.Run("agent", func(b *testing.B) {
		e := startAgent(b)
		console := nodeagent.LogPath(e.dir, "web")
		var total time.Duration
		b.ResetTimer()
		for range b.N {
			start := time.Now()
			e.state.assign("web", testNode, r)
			e.agent.Notify()
			waitBoot(b, r.port, console)
			total += time.Since(start)
			b.StopTimer()
			e.state.unassign("web")
			e.agent.Notify()
			testkit.WaitFor(b, 40*time.Second, "web to stop", func() error {
				us, err := e.backend.Status("web")
				if err != nil {
					return err
				}
				if us.Active || us.Restarting {
					return fmt.Errorf("unit %+v", us)
				}
				return nil
			})
			b.StartTimer()
		}
		b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-http")
	})

	b.Run("by-hand", func(b *testing.B) {
		var total time.Duration
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			dir := b.TempDir()
			console := filepath.Join(dir, "console.log")
			logf, err := os.Create(console)
			if err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command(filepath.Join(r.out, "bin", "microvm-run"))
			cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
			b.StartTimer()
			start := time.Now()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			waitBoot(b, r.port, console)
			total += time.Since(start)
			b.StopTimer()
			shutdown := exec.Command(filepath.Join(r.out, "bin", "microvm-shutdown"))
			shutdown.Dir, shutdown.Stdout, shutdown.Stderr = dir, logf, logf
			if err := shutdown.Run(); err != nil {
				_ = cmd.Process.Kill()
				b.Errorf("microvm-shutdown: %v", err)
			}
			if err := cmd.Wait(); err != nil {
				b.Errorf("qemu: %v", err)
			}
			logf.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-http")
	})
}

// waitBoot polls the guest's forwarded port until it answers (10ms steps).
func waitBoot(b *testing.B, port int, console string) {
	b.Helper()
	deadline := time.Now().Add(bootTimeout)
	for {
		if _, err := microvm.Get(context.Background(), port, "/", time.Second); err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(console)
			b.Fatalf("no HTTP answer on 127.0.0.1:%d within %s; console:\n%s", port, bootTimeout, log)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}
