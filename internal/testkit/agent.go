package testkit

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Clock is a clock the test advances: Now stays put until Advance, and a
// timer fires when Advance reaches its deadline. It satisfies
// nodeagent.Clock. Safe for concurrent use.
//
// It does not model the system's timers beyond that: a timer fires during
// Advance, in deadline order, and its channel (buffered, as time.Timer's)
// receives the clock's new time, not the deadline.
type Clock struct {
	mu     sync.Mutex
	now    time.Time     // guarded by mu
	timers []*clockTimer // guarded by mu; pending timers
}

type clockTimer struct {
	at time.Time
	c  chan time.Time
}

// NewClock returns a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires once the clock has advanced by d,
// and its stop function.
func (c *Clock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &clockTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		t.c <- c.now
		return t.c, func() bool { return false }
	}
	c.timers = append(c.timers, t)
	return t.c, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, p := range c.timers {
			if p == t {
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				return true
			}
		}
		return false
	}
}

// Advance moves the clock forward by d and fires the timers it reaches.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.c <- c.now
	}
	c.timers = kept
}

// Deadlines returns the deadlines of the pending timers, earliest first, as
// offsets from the clock's time.
func (c *Clock) Deadlines() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]time.Duration, len(c.timers))
	for i, t := range c.timers {
		out[i] = t.at.Sub(c.now)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// TimerIn is a WaitFor condition: some pending timer fires d from now,
// that is, the code under test waits for it.
func (c *Clock) TimerIn(d time.Duration) func() error {
	return func() error {
		ds := c.Deadlines()
		for _, x := range ds {
			if x == d {
				return nil
			}
		}
		return fmt.Errorf("no timer due in %s; pending: %v", d, ds)
	}
}
