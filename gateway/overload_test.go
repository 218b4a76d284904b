package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// TestShedOverPendingBound: with the bound of INVITEs in authorization
// reached, a new INVITE is answered 503 + Retry-After at once and costs
// nothing; an emergency call still connects, and a call already up goes on
// being metered.
func TestShedOverPendingBound(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.MaxPending = 2 })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	up, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("call before the overload: %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	e.gw.pending.Add(2) // two INVITEs waiting on the ledger
	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 503 || res.GetHeader("Retry-After") == nil || !strings.Contains(warning(res), "overloaded") {
		t.Fatalf("over the pending bound: %d %q, want 503 overloaded with Retry-After", status, warning(res))
	}
	if e.carrier.invites.Load() != 1 {
		t.Fatal("a shed INVITE reached the carrier")
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "911"); status != 200 {
		t.Fatalf("911 over the pending bound: %d, want connected", status)
	}
	// Still overloaded: the call up is metered second by second.
	for range 3 {
		e.clock.Advance(time.Second)
	}
	e.clock.Advance(500 * time.Millisecond)
	bye(t, up)
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) >= 1 })
	for _, cdr := range e.cdrs("acme") {
		if cdr.To == "442079460018" && (!cdr.Charge.Equal(d("0.04")) || cdr.BilledS != 4) {
			t.Fatalf("call up during the overload: %+v, want 4 increments for 3.5 s, 0.04", cdr)
		}
	}
	e.gw.pending.Add(-2)
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("after the load passed: %d", status)
	}
	if o, _ := e.ledger.Org("acme"); !o.Available().LessThan(d("50")) {
		t.Fatalf("available %s: the last call should hold its first increment", o.Available())
	}
}

// TestTrunkMaxCalls: a trunk's max_calls caps its calls up at once (503
// trunk_full); a place frees when a call ends.
func TestTrunkMaxCalls(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "pbx-acme", Kind: rating.TrunkCustomer, Org: "acme", Addresses: []string{e.caller.addr}, MaxCalls: 1}))
	e.gw.ReloadTrunks()

	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("first call: %d", status)
	}
	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 503 || !strings.Contains(warning(res), "concurrent-call limit") {
		t.Fatalf("second call on a 1-call trunk: %d %q", status, warning(res))
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "911"); status != 200 {
		t.Fatalf("911 on a full trunk: %d, want connected", status)
	}
	bye(t, sess)
	eventually(t, "first call ended", func() bool { return len(e.gw.Calls()) == 1 })
	// The emergency call is still up; it does not count against the trunk.
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("after the first call ended: %d", status)
	}
}

// TestDrain: Drain refuses new calls with 503 shutting_down, lets emergency
// calls through, and returns once the calls up have ended on their own.
func TestDrain(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("call: %d", status)
	}
	eventually(t, "answered", func() bool { return e.answeredCalls() == 1 })
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { done <- e.gw.Drain(ctx) }()
	eventually(t, "draining", e.gw.Draining)
	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 503 || res.GetHeader("Retry-After") == nil || !strings.Contains(warning(res), "shutting down") {
		t.Fatalf("new call while draining: %d %q", status, warning(res))
	}
	e.clock.Advance(time.Second)
	e.clock.Advance(1500 * time.Millisecond)
	select {
	case n := <-done:
		t.Fatalf("drain returned with %d calls up before they ended", n)
	default:
	}
	bye(t, sess)
	select {
	case n := <-done:
		if n != 0 {
			t.Fatalf("drain left %d calls", n)
		}
	case <-ctx.Done():
		t.Fatal("drain did not return once the last call ended")
	}
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonCallerHangup || cdr.BilledS != 3 {
		t.Fatalf("drained call's CDR %+v: want it billed as it ran", cdr)
	}
}
