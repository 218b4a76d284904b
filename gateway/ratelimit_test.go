package gateway

import (
	"net/netip"
	"testing"
	"time"
)

func TestSourceLimiter(t *testing.T) {
	l := newSourceLimiter(10, 5)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	now := epoch
	for i := range 5 {
		if !l.allow(a, now) {
			t.Fatalf("burst call %d refused", i+1)
		}
	}
	if l.allow(a, now) {
		t.Fatal("6th call at once allowed with a burst of 5")
	}
	if !l.allow(b, now) {
		t.Fatal("another source paid for the first one's burst")
	}
	if !l.allow(a, now.Add(100*time.Millisecond)) || l.allow(a, now.Add(100*time.Millisecond)) {
		t.Fatal("10/s should give back exactly one call in 100 ms")
	}
	if newSourceLimiter(0, 0).allow(a, now) != true {
		t.Fatal("no limit configured, yet refused")
	}
	// Memory stays bounded however many sources there are.
	for i := range maxSources + 10 {
		l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now.Add(time.Hour))
	}
	if len(l.buckets) > maxSources {
		t.Fatalf("%d buckets", len(l.buckets))
	}
}

// TestRateLimitPerSourceOnTheWire: past its burst a source gets 503 with
// Retry-After, and an emergency call from it still connects.
func TestRateLimitPerSourceOnTheWire(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.RatePerSource, c.BurstPerSource = 1, 2 })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	for i := range 2 {
		if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
			t.Fatalf("call %d: %d", i+1, status)
		}
	}
	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("3rd call at once: %d, want 503 with Retry-After", status)
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "911"); status != 200 {
		t.Fatalf("emergency call from a limited source: %d", status)
	}
	e.clock.Advance(time.Second)
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("a second later: %d", status)
	}
}
