package node

import (
	"context"
	"fmt"
	"sync"
)

// group runs the node's long-lived goroutines under one context: the first
// part that fails cancels it, and Wait returns that failure.
type group struct {
	ctx    context.Context // ends when the parent ends, a part fails or Wait is called
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu  sync.Mutex
	err error // guarded by mu; the first failure
}

func newGroup(parent context.Context) *group {
	ctx, cancel := context.WithCancel(parent)
	return &group{ctx: ctx, cancel: cancel}
}

// Go runs fn on its own goroutine with the group's context. An error it
// returns while the context is still alive is a failure of part what: it
// is recorded (the first one wins) and ends the context.
func (g *group) Go(what string, fn func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		err := fn(g.ctx)
		if err == nil || g.ctx.Err() != nil {
			return
		}
		g.mu.Lock()
		if g.err == nil {
			g.err = fmt.Errorf("%s stopped: %w", what, err)
		}
		g.mu.Unlock()
		g.cancel()
	}()
}

// Wait ends the context, waits for every goroutine and returns the first
// failure. It may be called more than once.
func (g *group) Wait() error {
	g.cancel()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}
