package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHighRiskDestinationRefused: a number in a high-risk range is refused
// with 403 before it reaches the carrier, the trip is counted and the org's
// contacts are to be told; once the org allows high-risk destinations the
// same call goes through.
func TestHighRiskDestinationRefused(t *testing.T) {
	e := newEnvConfig(t, testDeck+"252,SO,Somalia,mobile,1.20,,60,60\n", func(c *Config) { c.HighRisk = []string{"53", "252"} })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")

	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+252612345678")
	if status != 403 || !strings.Contains(warning(res), "fraud guard") {
		t.Fatalf("high-risk call: %d %q, want 403 from the fraud guard", status, warning(res))
	}
	if strings.Contains(warning(res), "252") {
		t.Fatalf("the refusal tells the caller which range is blocked: %q", warning(res))
	}
	if n := e.carrier.invites.Load(); n != 0 {
		t.Fatalf("carrier got %d INVITEs", n)
	}
	if got := testutil.ToFloat64(e.gw.m.fraudTrips.WithLabelValues(ledger.GuardHighRisk)); got != 1 {
		t.Fatalf("fraud_guard_trips_total{high_risk_destination} = %v", got)
	}
	ns, err := e.ledger.Outbox()
	if err != nil || len(ns) != 1 || ns[0].Kind != ledger.NotifyFraudGuard || !strings.Contains(ns[0].Reason, "+252612345678") {
		t.Fatalf("outbox %+v, %v", ns, err)
	}

	_, err = e.ledger.SetFraudGuard("acme", ledger.FraudGuard{AllowHighRisk: true})
	must(t, err)
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+252612345678"); status != 200 {
		t.Fatalf("allowed high-risk call: %d", status)
	}
}

// TestSpendLimitEndsCallOnTime: a user's hourly spend limit stops a call
// up at the end of the last increment it allows — BYE to both legs, the
// CDR says fraud_guard — and refuses the next call outright.
func TestSpendLimitEndsCallOnTime(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	_, err := e.ledger.SetFraudGuard("acme", ledger.FraudGuard{MaxSpendPerHourPerUser: d("0.05")})
	must(t, err)

	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	for range 5 {
		e.clock.Advance(time.Second) // 0.01 a second: the 6th second would cross 0.05
	}
	eventually(t, "both legs get BYE", func() bool { return e.caller.byes.Load() == 1 && e.carrier.byes.Load() == 1 })
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if cdr.DisconnectReason != ledger.ReasonFraudGuard || !cdr.Charge.Equal(d("0.05")) || cdr.BilledS != 5 {
		t.Fatalf("CDR %+v: want fraud_guard after 5 paid seconds, 0.05", cdr)
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 403 {
		t.Fatalf("next call within the hour: %d, want 403", status)
	}
	if got := testutil.ToFloat64(e.gw.m.fraudTrips.WithLabelValues(ledger.GuardSpendPerHourPerUser)); got != 2 {
		t.Fatalf("trips = %v, want 2 (the call ended, the next refused)", got)
	}
	must(t, e.ledger.CheckInvariants())
}

// TestConcurrentCallCapPerUser: a user at its limit of calls up gets 403;
// another user of the org still gets through.
func TestConcurrentCallCapPerUser(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	must(t, e.ledger.PutUser(ledger.User{Org: "acme", ID: "bob", Numbers: []string{"12125550199"}, Licenses: []string{"communications_credits"}}))
	_, err := e.ledger.SetFraudGuard("acme", ledger.FraudGuard{MaxCallsPerUser: 1})
	must(t, err)
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("first call: %d", status)
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460019"); status != 403 {
		t.Fatalf("second call of the same user: %d, want 403", status)
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550199", "+442079460019"); status != 200 {
		t.Fatalf("another user's call: %d", status)
	}
}

// A max_charge_per_call below what the first increment costs refuses the
// call at authorization (403, counted as a fraud-guard trip) instead of
// charging the increment and ending the call over the cap at its first
// step. Nothing is held or charged, and nothing reaches the carrier.
func TestMaxChargeBelowFirstIncrementRefused(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, err := e.ledger.SetFraudGuard("acme", ledger.FraudGuard{MaxChargePerCall: d("0.001")}); err != nil {
		t.Fatal(err)
	}
	_, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 403 {
		t.Fatalf("status %d, want 403", status)
	}
	if n := e.carrier.invites.Load(); n != 0 {
		t.Fatalf("%d INVITEs reached the carrier", n)
	}
	o, err := e.ledger.Org("acme")
	must(t, err)
	if !o.Balance.Equal(d("50.00")) || !o.Held.IsZero() {
		t.Fatalf("balance %s held %s, want 50.00 and nothing held", o.Balance, o.Held)
	}
	must(t, e.ledger.CheckInvariants())
}
