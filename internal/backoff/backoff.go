// Package backoff is what the ledger's background workers (the payer, the
// notification sender) share: a per-item schedule of retries with capped
// exponential backoff, and the loop that runs a worker whenever work is due
// or the ledger signals new work.
package backoff

import (
	"context"
	"sync"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
)

// Schedule remembers, per item, how many attempts failed and when the next
// may start: First after the first failure, doubling up to Max.
type Schedule struct {
	clk        clock.Clock
	first, max time.Duration

	mu    sync.Mutex
	items map[string]*entry
}

type entry struct {
	failures int
	next     time.Time
}

// New returns an empty schedule.
func New(clk clock.Clock, first, max time.Duration) *Schedule {
	return &Schedule{clk: clk, first: first, max: max, items: map[string]*entry{}}
}

// Due reports whether id may be tried now; if not, when it may.
func (s *Schedule) Due(id string) (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.items[id]
	if e == nil || !s.clk.Now().Before(e.next) {
		return true, time.Time{}
	}
	return false, e.next
}

// Failed records a failed attempt at id and returns how many have failed
// and when the next may start.
func (s *Schedule) Failed(id string) (failures int, next time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.items[id]
	if e == nil {
		e = &entry{}
		s.items[id] = e
	}
	e.failures++
	d := s.first << min(e.failures-1, 30)
	if d <= 0 || d > s.max {
		d = s.max
	}
	e.next = s.clk.Now().Add(d)
	return e.failures, e.next
}

// Forget drops id: it succeeded or is given up.
func (s *Schedule) Forget(id string) {
	s.mu.Lock()
	delete(s.items, id)
	s.mu.Unlock()
}

// Run calls work until ctx ends: at once, then whenever wake is signalled
// or the time work last returned has come (a zero time: only on a wake).
func Run(ctx context.Context, clk clock.Clock, wake <-chan struct{}, work func(context.Context) time.Time) {
	due := make(chan struct{}, 1)
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		next := work(ctx)
		if timer != nil {
			timer.Stop()
			timer = nil
		}
		if !next.IsZero() {
			timer = clk.AfterFunc(next.Sub(clk.Now()), func() {
				select {
				case due <- struct{}{}:
				default:
				}
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-due:
		case <-wake:
		}
	}
}
