package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// A carrier that drops the call without a BYE: its keepalive at 30 s is
// answered, the one at 60 s gets 481. The call ends leg_lost, both legs get
// BYE, and it is billed to the last good keepalive (30 s, which falls in
// the 31st one-second increment), not to 60 s.
func TestKeepaliveLostLegBilledToLastGoodKeepalive(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	for range 30 {
		e.clock.Advance(time.Second)
	}
	if n := e.carrier.options.Load(); n != 1 {
		t.Fatalf("carrier got %d keepalives by 30 s, want 1", n)
	}
	e.carrier.dead.Store(true)
	for range 30 {
		e.clock.Advance(time.Second)
	}
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonLegLost || !cdr.Charge.Equal(d("0.31")) || cdr.BilledS != 31 {
		t.Fatalf("CDR %s charge %s billed %d s, want leg_lost, 0.31, 31 s", cdr.DisconnectReason, cdr.Charge, cdr.BilledS)
	}
	if b := e.balance("acme"); !b.Equal(d("49.69")) {
		t.Fatalf("balance %s, want 49.69", b)
	}
	must(t, e.ledger.CheckInvariants())
	must(t, e.ledger.CheckHistory())
}

// Max duration: a call ends exactly at the limit, whatever its increments.
func TestMaxDurationEndsAtTheLimit(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.MaxCallDuration = 90 * time.Second })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	for range 120 {
		e.clock.Advance(time.Second)
	}
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonMaxDuration || cdr.End.Sub(cdr.Answer) != 90*time.Second || cdr.BilledS != 90 || !cdr.Charge.Equal(d("0.90")) {
		t.Fatalf("CDR %s %s–%s billed %d charge %s, want max_duration after exactly 90 s, 0.90", cdr.DisconnectReason, cdr.Answer, cdr.End, cdr.BilledS, cdr.Charge)
	}
	_ = decimal.Zero
}

// A carrier that answers the gateway's UPDATE refresh with 405 (it does
// not support UPDATE) is alive, not refreshed: its leg leaves the session
// timer, its keepalives watch it, and the call runs on for many session
// intervals, billed like any call.
func TestRefreshAnswered405KeepsCallUp(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.SessionExpires, c.MinSE = 120*time.Second, 90*time.Second })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	e.carrier.updateStatus.Store(405)
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	for range 600 {
		e.clock.Advance(time.Second)
	}
	if n := e.answeredCalls(); n != 1 {
		t.Fatalf("after 600 s (5 session intervals) %d calls up, want 1", n)
	}
	if n := e.carrier.updates.Load(); n != 1 {
		t.Fatalf("carrier got %d UPDATEs, want 1 (then out of the session timer)", n)
	}
	if n := e.carrier.options.Load(); n != 20 {
		t.Fatalf("carrier answered %d keepalives in 600 s, want 20", n)
	}
	e.clock.Advance(500 * time.Millisecond) // hang up inside the 601st increment
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sess.Bye(ctx))
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonCallerHangup || cdr.BilledS != 601 || !cdr.Charge.Equal(d("6.01")) {
		t.Fatalf("CDR %s billed %d s charge %s, want caller_hangup, 601 s, 6.01", cdr.DisconnectReason, cdr.BilledS, cdr.Charge)
	}
}
