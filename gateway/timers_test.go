package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The carrier stops answering refreshes (silent) after the one at 60 s of a
// 120 s session the caller negotiated: the session expires at 180 s (the
// carrier's last refresh plus the interval), both legs get BYE, and the
// CDR is session_expired, billed to the last refresh (60 s: the 61st
// one-second increment), ended at the expiry.
func TestSessionExpiryEndsCallBilledToLastRefresh(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) {
		c.KeepaliveInterval = time.Hour // the session timer alone
		c.KeepaliveTimeout = 300 * time.Millisecond
	})
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018",
		sip.NewHeader("Session-Expires", "120"), sip.NewHeader("Supported", "timer")); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	for range 90 {
		e.clock.Advance(time.Second)
	}
	if n := e.carrier.updates.Load(); n != 1 {
		t.Fatalf("carrier got %d refreshes by 90 s, want 1 (at 60 s)", n)
	}
	e.carrier.silent.Store(true)
	for range 89 {
		e.clock.Advance(time.Second)
	}
	if n := e.answeredCalls(); n != 1 {
		t.Fatalf("call ended before its session expired (179 s)")
	}
	for range 11 {
		e.clock.Advance(time.Second)
	}
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonSessionExpired || cdr.BilledS != 61 || !cdr.Charge.Equal(d("0.61")) ||
		cdr.End.Sub(cdr.Answer) != 180*time.Second {
		t.Fatalf("CDR %s billed %d s charge %s ended after %s, want session_expired, 61 s, 0.61, 180 s",
			cdr.DisconnectReason, cdr.BilledS, cdr.Charge, cdr.End.Sub(cdr.Answer))
	}
	if b := e.balance("acme"); !b.Equal(d("49.39")) {
		t.Fatalf("balance %s, want 49.39", b)
	}
	if got := testutil.ToFloat64(e.gw.m.ended.WithLabelValues(string(ledger.ReasonSessionExpired))); got != 1 {
		t.Fatalf("calls_ended_total{session_expired} %v, want 1", got)
	}
	must(t, e.ledger.CheckInvariants())
	must(t, e.ledger.CheckHistory())
}

// A caller that refreshes properly (an UPDATE every half interval, relayed
// to the carrier), with the gateway's own refreshes and keepalives going
// on, keeps its call up for 10 session intervals: no refresh dropped, and
// the charge is the plain per-increment charge for the duration.
func TestRefreshedCallStaysUpAtThePlainCharge(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018",
		sip.NewHeader("Session-Expires", "120"), sip.NewHeader("Supported", "timer"))
	if status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var refreshes int
	for s := 1; s <= 1200; s++ {
		e.clock.Advance(time.Second)
		if s%60 == 30 {
			req := sip.NewRequest(sip.UPDATE, sess.InviteResponse.Contact().Address)
			req.AppendHeader(sip.NewHeader("Session-Expires", "120;refresher=uac"))
			res, err := sess.Do(ctx, req)
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("caller's refresh at %d s: %v %v", s, res, err)
			}
			refreshes++
		}
	}
	if n := e.answeredCalls(); n != 1 {
		t.Fatal("call ended while refreshed")
	}
	// 20 gateway refreshes (every 60 s) and 20 relayed ones reach the
	// carrier; every gateway refresh answered on both legs.
	if n := e.carrier.updates.Load(); n != 40 || refreshes != 20 {
		t.Fatalf("carrier got %d UPDATEs, caller sent %d; want 40 and 20", n, refreshes)
	}
	for _, r := range []string{"gone", "no_answer"} {
		if got := testutil.ToFloat64(e.gw.m.probes.WithLabelValues("UPDATE", r)); got != 0 {
			t.Fatalf("%v gateway refreshes %s", got, r)
		}
	}
	if got := testutil.ToFloat64(e.gw.m.probes.WithLabelValues("UPDATE", "ok")); got != 40 {
		t.Fatalf("%v gateway refreshes ok, want 40 (20 per leg)", got)
	}
	e.clock.Advance(500 * time.Millisecond)
	must(t, sess.Bye(ctx))
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonCallerHangup || cdr.BilledS != 1201 || !cdr.Charge.Equal(d("12.01")) {
		t.Fatalf("CDR %s billed %d s charge %s, want caller_hangup, 1201 s, 12.01 (1201 × 0.01)", cdr.DisconnectReason, cdr.BilledS, cdr.Charge)
	}
	if b := e.balance("acme"); !b.Equal(d("37.99")) {
		t.Fatalf("balance %s, want 37.99", b)
	}
	must(t, e.ledger.CheckInvariants())
}

// A refresh in flight across a billing boundary (the caller's UPDATE sent
// at 59.5 s, the carrier's 200 held until after the 60 s boundary of a
// per-minute rate) changes nothing in the money: a call hung up at 90.5 s
// pays two minutes at 10.00, like one never refreshed.
func TestRefreshAcrossBoundaryChangesNoMoney(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.KeepaliveInterval = time.Hour })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+493012345678")
	if status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	e.clock.Advance(59500 * time.Millisecond)
	gate := make(chan struct{})
	e.carrier.updateGate.Store(&gate)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req := sip.NewRequest(sip.UPDATE, sess.InviteResponse.Contact().Address)
		res, err := sess.Do(ctx, req)
		if err == nil && res.StatusCode != 200 {
			err = errStatus(res.StatusCode)
		}
		done <- err
	}()
	eventually(t, "refresh at the carrier", func() bool { return e.carrier.updates.Load() == 1 })
	e.clock.Advance(time.Second) // the 60 s boundary, the refresh in flight
	close(gate)
	must(t, <-done)
	e.carrier.updateGate.Store(nil)
	e.clock.Advance(30 * time.Second)
	must(t, sess.Bye(ctx))
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonCallerHangup || cdr.BilledS != 120 || !cdr.Charge.Equal(d("20.00")) {
		t.Fatalf("CDR %s billed %d s charge %s, want caller_hangup, 120 s, 20.00", cdr.DisconnectReason, cdr.BilledS, cdr.Charge)
	}
	if b := e.balance("acme"); !b.Equal(d("30.00")) {
		t.Fatalf("balance %s, want 30.00", b)
	}
	must(t, e.ledger.CheckInvariants())
	must(t, e.ledger.CheckHistory())
}

type errStatus int

func (s errStatus) Error() string { return fmt.Sprintf("status %d", int(s)) }

// Max charge: an org capped at 0.50 per call at 0.01 a second is cut at
// exactly 50 s, charged exactly 0.50, with BYE to both legs.
func TestMaxChargeEndsExactlyAtTheCap(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, err := e.ledger.SetFraudGuard("acme", ledger.FraudGuard{MaxChargePerCall: d("0.50")}); err != nil {
		t.Fatal(err)
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	for range 80 {
		e.clock.Advance(time.Second)
	}
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonMaxCharge || cdr.BilledS != 50 || !cdr.Charge.Equal(d("0.50")) || cdr.End.Sub(cdr.Answer) != 50*time.Second {
		t.Fatalf("CDR %s billed %d s charge %s after %s, want max_charge, 50 s, 0.50, 50 s", cdr.DisconnectReason, cdr.BilledS, cdr.Charge, cdr.End.Sub(cdr.Answer))
	}
	if b := e.balance("acme"); !b.Equal(d("49.50")) {
		t.Fatalf("balance %s, want 49.50", b)
	}
	must(t, e.ledger.CheckInvariants())
	must(t, e.ledger.CheckHistory())
}

// An emergency call is exempt: it runs on past the maximum duration, with
// a carrier that answers every in-dialog request 481, and is never charged.
func TestEmergencyCallIgnoresLimitsAndKeepalive(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.MaxCallDuration = 90 * time.Second })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "911")
	if status != 200 {
		t.Fatalf("911 got %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	e.carrier.dead.Store(true)
	for range 2 * 1800 {
		e.clock.Advance(time.Second)
	}
	if n := e.answeredCalls(); n != 1 {
		t.Fatal("emergency call ended by a limit or a lost keepalive")
	}
	if n := e.carrier.byes.Load(); n != 0 {
		t.Fatalf("carrier got %d BYEs", n)
	}
	if n := e.carrier.updates.Load(); n != 0 {
		t.Fatalf("emergency call refreshed %d times: never probed", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sess.Bye(ctx))
	eventually(t, "call settled", func() bool { return e.carrier.byes.Load() == 1 })
	if b := e.balance("acme"); !b.Equal(d("50.00")) {
		t.Fatalf("balance %s, want 50.00", b)
	}
}
