package gitsync

import (
	"context"
	"sync"
	"time"
)

// Run follows the remote until ctx ends, then returns nil. It fetches once at
// start, on every interval tick (interval <= 0 disables polling) and
// whenever trigger fires. trigger may be nil (poll only); a closed trigger
// is ignored from then on.
//
// onUpdate (may be nil) is called after every successful fetch, whether or
// not the commit changed: callers are level-triggered and can skip when
// !u.Changed. It runs on Run's goroutine, so a slow onUpdate delays the next
// fetch; triggers that arrive meanwhile coalesce into a single fetch.
//
// A failed fetch is logged, passed to Options.OnError, and retried on the
// next tick or trigger; it never stops Run.
func (m *Mirror) Run(ctx context.Context, interval time.Duration, trigger <-chan struct{}, onUpdate func(context.Context, Update)) error {
	// pending holds at most one outstanding trigger: any number of triggers
	// received while a fetch runs become one more fetch, never a queue.
	pending := make(chan struct{}, 1)

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	wg.Add(1)
	go func() {
		defer wg.Done()
		forwardTriggers(ctx, trigger, pending)
	}()

	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}

	m.runOnce(ctx, onUpdate)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
		case <-pending:
		}
		if ctx.Err() != nil {
			return nil
		}
		m.runOnce(ctx, onUpdate)
	}
}

// forwardTriggers moves triggers from the caller's channel into pending
// without ever blocking the sender for long, collapsing bursts into one.
func forwardTriggers(ctx context.Context, trigger <-chan struct{}, pending chan<- struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-trigger:
			if !ok {
				trigger = nil // closed: stop listening, keep polling
				continue
			}
			select {
			case pending <- struct{}{}:
			default: // a fetch is already pending
			}
		}
	}
}

func (m *Mirror) runOnce(ctx context.Context, onUpdate func(context.Context, Update)) {
	u, err := m.Fetch(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return // shutting down; not a fetch failure worth reporting
		}
		m.logger.Error("fetch failed; keeping the last known commit", "last", orNone(m.Last()), "err", err)
		if m.onError != nil {
			m.onError(err)
		}
		return
	}
	if onUpdate != nil {
		onUpdate(ctx, u)
	}
}
