// Package clock gives the gateway its time, so that metering can be driven
// by a fake clock in tests: a 60-minute call runs in a millisecond.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock is the time source of metering.
type Clock interface {
	Now() time.Time
	// Since is the time elapsed since t, a time this clock gave: on the
	// real clock it is measured on the monotonic clock, so a wall-clock
	// step (NTP, an operator's date) changes Now but not Since. Metering
	// measures with Since, never with differences of Now.
	Since(t time.Time) time.Duration
	// AfterFunc calls f in its own goroutine (Real) or in the goroutine that
	// advances time (Fake) once d has passed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer can be stopped before it fires.
type Timer interface {
	// Stop reports whether it stopped the timer before it fired.
	Stop() bool
}

// Real is the wall clock. time.Now carries a monotonic reading, so durations
// measured with it are immune to wall-clock jumps.
type Real struct{}

func (Real) Now() time.Time { return time.Now() }

func (Real) Since(t time.Time) time.Duration { return time.Since(t) }

func (Real) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Fake is a clock that moves only when told to.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	seq    int
}

// NewFake starts a fake clock at t.
func NewFake(t time.Time) *Fake { return &Fake{now: t} }

type fakeTimer struct {
	c       *Fake
	at      time.Time
	seq     int
	f       func()
	stopped bool
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.stopped {
		return false
	}
	t.stopped = true
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			break
		}
	}
	return true
}

func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Fake) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

func (c *Fake) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{c: c, at: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

// Pending is the number of timers not yet fired or stopped.
func (c *Fake) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves time forward by d, firing due timers in time order, each at
// its own instant and in the calling goroutine, so that when Advance returns
// everything due has run — including timers those callbacks set.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		sort.Slice(c.timers, func(i, j int) bool {
			if c.timers[i].at.Equal(c.timers[j].at) {
				return c.timers[i].seq < c.timers[j].seq
			}
			return c.timers[i].at.Before(c.timers[j].at)
		})
		if len(c.timers) == 0 || c.timers[0].at.After(end) {
			c.now = end
			c.mu.Unlock()
			return
		}
		t := c.timers[0]
		c.timers = c.timers[1:]
		t.stopped = true
		if t.at.After(c.now) {
			c.now = t.at
		}
		c.mu.Unlock()
		t.f()
	}
}
