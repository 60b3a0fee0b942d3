package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/nodeagent"
	// Aliased: dev.go's progress type shows revisions.
	nixprogress "github.com/blixard/blixard/progress"
)

// Progress printing: how long work (a build, an evaluation) shows on
// stderr instead of going silent for minutes. One line per event, never
// rewritten in place (stderr may be a log file, and several builds may
// run at once), and kept few:
//
//   - a new piece of work is shown when it starts;
//   - nix's first line at once, then its new lines at most one per
//     progressGapCLI per piece of work (nix prints thousands while it
//     fetches or compiles);
//   - a piece of work that printed nothing for progressQuiet shows how long
//     it has run and its last line again;
//   - its end is shown with how long it took.
const (
	progressGapCLI = time.Second
	progressQuiet  = 10 * time.Second
	// progressLineMax bounds a shown line of nix's (runes).
	progressLineMax = 160
)

// progressPrinter prints the progress of several pieces of work, each
// named by a key (the VM being built, the commit being evaluated). It is
// safe for concurrent use: builds report from their own goroutines. Every
// method takes the time, so tests drive it with their own clock.
type progressPrinter struct {
	out io.Writer

	mu   sync.Mutex
	work map[string]*progressWork // guarded by mu
}

type progressWork struct {
	what    string    // "building web (from …)", "evaluating 3f2c…"
	started time.Time // when the work started
	printed time.Time // when a line about it was last printed
	line    string    // nix's latest line
	shown   string    // the line last printed ("" none)
	// anyLine: a line of nix's was printed; the first is printed at once.
	anyLine bool
}

func newProgressPrinter(out io.Writer) *progressPrinter {
	return &progressPrinter{out: out, work: map[string]*progressWork{}}
}

// start shows that work key (described by what) started at started.
func (p *progressPrinter) start(key, what string, started, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.work[key] = &progressWork{what: what, started: started, printed: now}
	fmt.Fprintf(p.out, "%s …\n", what)
}

// line records nix's latest line of work key and shows it if it is the
// first, or no line about the work was shown for progressGapCLI (else tick
// shows it later). Work not started yet starts now.
func (p *progressPrinter) line(key, what string, started time.Time, line string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.work[key]
	if w == nil {
		w = &progressWork{what: what, started: started, printed: now}
		p.work[key] = w
		fmt.Fprintf(p.out, "%s …\n", what)
	}
	w.line = line
	if !w.anyLine || now.Sub(w.printed) >= progressGapCLI {
		p.printLocked(w, now)
	}
}

// tick shows, for every piece of work, the line that came since the last
// shown one once progressGapCLI passed, or how long it has run after
// progressQuiet of silence. The caller calls it about every second.
func (p *progressPrinter) tick(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, key := range sortedKeys(p.work) {
		w := p.work[key]
		since := now.Sub(w.printed)
		if (w.line != w.shown && since >= progressGapCLI) || since >= progressQuiet {
			p.printLocked(w, now)
		}
	}
}

// done shows that work key ended (failed with err when not nil) and
// forgets it; work never started is not shown.
func (p *progressPrinter) done(key string, err error, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.work[key]
	if w == nil {
		return
	}
	delete(p.work, key)
	if err != nil {
		fmt.Fprintf(p.out, "%s: failed after %s\n", w.what, roundElapsed(now.Sub(w.started)))
		return
	}
	fmt.Fprintf(p.out, "%s: done in %s\n", w.what, roundElapsed(now.Sub(w.started)))
}

func (p *progressPrinter) printLocked(w *progressWork, now time.Time) {
	w.printed, w.shown = now, w.line
	w.anyLine = w.anyLine || w.line != ""
	if w.line == "" {
		fmt.Fprintf(p.out, "%s: %s\n", w.what, roundElapsed(now.Sub(w.started)))
		return
	}
	fmt.Fprintf(p.out, "%s: %s  %s\n", w.what, roundElapsed(now.Sub(w.started)), clip(w.line, progressLineMax))
}

// tickEvery calls p.tick every second until ctx ends.
func (p *progressPrinter) tickEvery(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.tick(now)
		}
	}
}

// build shows one of the dev node's build reports.
func (p *progressPrinter) build(b nodeagent.BuildProgress, now time.Time) {
	what := fmt.Sprintf("building %s (%s)", b.VM, shortenStorePath(b.How))
	switch {
	case b.Done:
		p.done("build "+b.VM, b.Err, now)
	case b.Line == "":
		p.start("build "+b.VM, what, b.Started, now)
	default:
		p.line("build "+b.VM, what, b.Started, b.Line, now)
	}
}

// roundElapsed rounds d for people: tenths below 10 s, seconds above.
func roundElapsed(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// clip shortens s to max runes, marking the cut.
func clip(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max-1]) + "…"
}

// shortenStorePath turns "from /nix/store/HASH-name.drv" into "from
// name.drv": the hash says nothing to a person watching a build.
func shortenStorePath(how string) string {
	const store = "/nix/store/"
	i := strings.Index(how, store)
	if i < 0 {
		return how
	}
	rest := how[i+len(store):]
	if j := strings.IndexByte(rest, '-'); j == 32 {
		rest = rest[j+1:]
	}
	return how[:i] + rest
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// forget drops work key without showing anything (a plan's stage that the
// next one replaces).
func (p *progressPrinter) forget(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.work, key)
}

// evalProgress shows a local evaluation's progress (`plan --flake`): it
// returns ctx carrying a sink for nix's lines (see package progress) and
// finish, to call with the evaluation's error once it returned.
func (p *progressPrinter) evalProgress(ctx context.Context, what string) (context.Context, func(error)) {
	start := time.Now()
	p.start("eval", what, start, start)
	tctx, stop := context.WithCancel(ctx)
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		p.tickEvery(tctx)
	}()
	ectx := nixprogress.With(ctx, func(l string) { p.line("eval", what, start, l, time.Now()) })
	return ectx, func(err error) {
		stop()
		<-ticked
		p.done("eval", err, time.Now())
	}
}

// planProgress shows the progress lines of `plan --commit` (POST
// /v1/plan?progress=1): each stage as it starts, then nix's lines.
type planProgress struct {
	p      *progressPrinter
	commit string
	stage  string
}

func (pp *planProgress) report(r api.PlanProgress, now time.Time) {
	started := now.Add(-time.Duration(r.Elapsed * float64(time.Second)))
	what := fmt.Sprintf("%s commit %s", r.Stage, shortSHA(pp.commit))
	if r.Stage != pp.stage {
		pp.p.forget("plan")
		pp.p.start("plan", what, started, now)
		pp.stage = r.Stage
	}
	if r.Line != "" {
		pp.p.line("plan", what, started, r.Line, now)
		return
	}
	pp.p.tick(now) // the node's periodic report: show the time so far
}
