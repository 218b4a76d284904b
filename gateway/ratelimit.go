package gateway

import (
	"net/netip"
	"sync"
	"time"
)

// sourceLimiter is a token bucket per source IP address for new calls: a
// PBX that floods, or a scanner on a trunk's address, is answered 503 with
// Retry-After past its rate instead of taking the gateway's capacity from
// every other trunk. Its memory is bounded: past maxSources addresses, the
// buckets that have refilled (sources that went quiet) are dropped, and if
// that is not enough, all are.
type sourceLimiter struct {
	rate  float64 // tokens a second
	burst float64

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

const maxSources = 100_000

func newSourceLimiter(rate float64, burst int) *sourceLimiter {
	if rate <= 0 {
		return nil
	}
	if burst < 1 {
		burst = max(1, int(rate))
	}
	return &sourceLimiter{rate: rate, burst: float64(burst), buckets: map[netip.Addr]*bucket{}}
}

// allow takes a token for src at now; a nil limiter allows everything.
func (l *sourceLimiter) allow(src netip.Addr, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= maxSources {
			l.prune(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[src] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *sourceLimiter) prune(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
	if len(l.buckets) >= maxSources {
		clear(l.buckets)
	}
}
