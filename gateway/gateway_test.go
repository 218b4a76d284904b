package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/emiago/sipgo/sip"
	"github.com/shopspring/decimal"
)

const deckHeader = "prefix,country,destination,type,rate_per_minute,connection_fee,first_increment,next_increment\n"

// perSecond: 0.60/min in 1 s increments = 0.01 a second.
// expensive: 600.00/min in 1 s increments = 10.00 a second, so 50.00 lasts 5 s.
// perMinute: 10.00/min in 60 s increments, so 50.00 lasts 5 minutes.
const testDeck = deckHeader +
	"44,GB,United Kingdom,geographic,0.60,,1,1\n" +
	"33,FR,France,geographic,600.00,,1,1\n" +
	"49,DE,Germany,geographic,10.00,,60,60\n" +
	"1,US,United States,geographic,0.01,,60,60\n"

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

func TestCallBilledExactly(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")

	sess, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	if string(res.Body()) != testSDP {
		t.Fatalf("answer SDP changed on its way through: %q", res.Body())
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	for i := 0; i < 10; i++ {
		e.clock.Advance(time.Second)
	}
	e.clock.Advance(500 * time.Millisecond) // hang up in the middle of the 11th second
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sess.Bye(ctx))
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })

	cdr := e.cdrs("acme")[0]
	// 10.5 s billed per second: 11 started increments × 0.01.
	if !cdr.Charge.Equal(d("0.11")) || cdr.BilledS != 11 || cdr.DurationS != 11 {
		t.Fatalf("CDR %+v: want 11 increments, charge 0.11", cdr)
	}
	if cdr.DisconnectReason != ledger.ReasonCallerHangup || cdr.To != "442079460018" || cdr.From != "12125550100" || cdr.User != "alice" {
		t.Fatalf("CDR %+v", cdr)
	}
	if b := e.balance("acme"); !b.Equal(d("49.89")) {
		t.Fatalf("balance %s, want 50.00 − 0.11 = 49.89", b)
	}
	must(t, e.ledger.CheckInvariants())
	if len(e.gw.Calls()) != 0 {
		t.Fatalf("call still listed: %+v", e.gw.Calls())
	}
}

func TestCalleeHangupBilled(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+49301234567"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	e.clock.Advance(61 * time.Second)
	must(t, e.carrier.hangup())
	eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if !cdr.Charge.Equal(d("20")) || cdr.BilledS != 120 || cdr.DisconnectReason != ledger.ReasonCalleeHangup {
		t.Fatalf("61 s per minute at 10.00: CDR %+v, want 2 minutes, 20.00", cdr)
	}
}

// TestCreditRunsOut: credit for exactly N increments; the gateway ends the
// call after exactly N, BYE to both legs, balance exactly zero.
func TestCreditRunsOut(t *testing.T) {
	cases := []struct {
		name string
		to   string
		inc  time.Duration
	}{
		{"per second", "+33142278186", time.Second},
		{"per minute", "+49301234567", time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, testDeck)
			e.org("acme", "US", "50.00", "12125550100", "communications_credits")
			if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", tc.to); status != 200 {
				t.Fatalf("call refused with %d", status)
			}
			eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
			answered := e.gw.Calls()[0].Answer
			for i := 1; i <= 4; i++ {
				e.clock.Advance(tc.inc)
				if n := len(e.gw.Calls()); n != 1 {
					t.Fatalf("call ended after %d increments, want 5", i)
				}
			}
			e.clock.Advance(tc.inc)
			eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
			eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
			cdrs := e.cdrs("acme")
			if len(cdrs) != 1 {
				t.Fatalf("%d CDRs, want 1", len(cdrs))
			}
			cdr := cdrs[0]
			if cdr.DisconnectReason != ledger.ReasonCreditExhausted || !cdr.Charge.Equal(d("50")) ||
				cdr.BilledS != int(5*tc.inc/time.Second) || !cdr.End.Equal(answered.Add(5*tc.inc)) {
				t.Fatalf("CDR %+v: want credit_exhausted, 50.00, ended at answer + 5 increments", cdr)
			}
			if b := e.balance("acme"); !b.IsZero() {
				t.Fatalf("balance %s, want exactly 0", b)
			}
			must(t, e.ledger.CheckInvariants())

			// (c) at zero balance the next dial-out gets 402 and never reaches the carrier.
			before := e.carrier.invites.Load()
			_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", tc.to)
			if status != 402 || !strings.Contains(res.GetHeader("Warning").Value(), "creditgate") {
				t.Fatalf("dial-out at zero: %d %v, want 402 with a Warning", status, res.GetHeader("Warning"))
			}
			if e.carrier.invites.Load() != before {
				t.Fatal("a refused call reached the carrier")
			}
		})
	}
}

func TestEmergencyAtZeroBalance(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "", "12125550100") // no credit, no license
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "911")
	if status != 200 {
		t.Fatalf("911 got %d, want it connected", status)
	}
	if u, _ := e.carrier.lastURI.Load().(string); u != "911" {
		t.Fatalf("carrier was asked for %q, want 911", u)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	e.clock.Advance(10 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sess.Bye(ctx))
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if !cdr.Charge.IsZero() || !e.balance("acme").IsZero() || cdr.DurationS != 600 {
		t.Fatalf("emergency call charged: %+v", cdr)
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	must(t, e.ledger.PutUser(ledger.User{Org: "acme", ID: "bob", Numbers: []string{"12125550199"}}))
	stranger := newPhone(t)
	defer stranger.close()

	cases := []struct {
		name   string
		from   *phone
		caller string
		to     string
		status int
		hdrs   []sip.Header
	}{
		{"no license", e.caller, "+12125550199", "+442079460018", 403, nil},
		{"unknown trunk", stranger, "+12125550100", "+442079460018", 403, nil},
		{"unknown caller", e.caller, "+12125550111", "+442079460018", 403, nil},
		{"no rate", e.caller, "+12125550100", "+81312345678", 404, nil},
		{"garbage number", e.caller, "+12125550100", "call-me-maybe", 484, nil},
		{"too short", e.caller, "+12125550100", "12", 484, nil},
		{"PAI wins over From", e.caller, "+12125550100", "+442079460018", 403,
			[]sip.Header{sip.NewHeader("P-Asserted-Identity", "<sip:+12125550199@pbx.example>")}},
		{"max forwards exhausted", e.caller, "+12125550100", "+442079460018", 483,
			[]sip.Header{sip.NewHeader("Max-Forwards", "0")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.carrier.invites.Load()
			_, status, res := tc.from.dial(e.gw.Addr(), tc.caller, tc.to, tc.hdrs...)
			if status != tc.status {
				t.Fatalf("got %d, want %d", status, tc.status)
			}
			if w := res.GetHeader("Warning"); w == nil || !strings.HasPrefix(w.Value(), `399 creditgate "`) {
				t.Fatalf("refusal without a Warning: %v", res)
			}
			if e.carrier.invites.Load() != before {
				t.Fatal("a refused call reached the carrier")
			}
		})
	}
	if b := e.balance("acme"); !b.Equal(d("50")) {
		t.Fatalf("refusals changed the balance to %s", b)
	}
	if n := len(e.cdrs("acme")); n != 0 {
		t.Fatalf("refused calls wrote %d CDRs", n)
	}
	must(t, e.ledger.CheckInvariants())
}

func TestCarrierFailureRelayedAndFree(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	e.carrier.reject.Store(486)
	_, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 486 {
		t.Fatalf("caller got %d, want the carrier's 486", status)
	}
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if !cdr.Charge.IsZero() || cdr.SIPStatus != 486 || !e.balance("acme").Equal(d("50")) {
		t.Fatalf("unanswered call: CDR %+v balance %s", cdr, e.balance("acme"))
	}
	o, _ := e.ledger.Org("acme")
	if !o.Held.IsZero() {
		t.Fatalf("hold left behind: %s", o.Held)
	}
}

// TestCancelBeforeAnswerCostsNothing: the caller CANCELs while the carrier
// rings; the carrier gets CANCEL, the hold is released, the CDR says so.
func TestCancelBeforeAnswerCostsNothing(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	e.carrier.ringOnly.Store(true)

	req := newInvite(e.gw.Addr(), "+12125550100", "+442079460018")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := e.caller.dialogs.WriteInvite(ctx, req)
	must(t, err)
	ringing := make(chan struct{})
	ringCtx, hangUp := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- sess.WaitAnswer(ringCtx, sipgoAnswer(func(code int) {
			if code == 180 {
				close(ringing)
			}
		}))
	}()
	select {
	case <-ringing:
	case <-ctx.Done():
		t.Fatal("no 180 relayed to the caller")
	}
	if o, _ := e.ledger.Org("acme"); !o.Held.Equal(d("0.01")) {
		t.Fatalf("while ringing held %s, want the first increment 0.01", o.Held)
	}
	hangUp() // WaitAnswer sends CANCEL
	<-done
	eventually(t, "carrier gets CANCEL", func() bool { return e.carrier.cancels.Load() == 1 })
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	o, _ := e.ledger.Org("acme")
	if cdr.DisconnectReason != ledger.ReasonCanceled || cdr.SIPStatus != 487 || !cdr.Charge.IsZero() || !o.Held.IsZero() || !o.Balance.Equal(d("50")) {
		t.Fatalf("cancelled call: CDR %+v org %+v", cdr, o)
	}
}

// TestEmergencyThroughOverload: at the call cap, ordinary calls get 503 with
// Retry-After, emergency calls still connect.
func TestEmergencyThroughOverload(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.MaxCalls = 1 })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("first call: %d", status)
	}
	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("over the cap: %d, want 503 with Retry-After", status)
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "911"); status != 200 {
		t.Fatalf("911 over the cap: %d, want connected", status)
	}
}

// TestMidCallRequestsRelayedAndBillingUntouched: a re-INVITE from the caller
// (hold, session timer) and an UPDATE from the carrier cross the gateway to
// the other leg, and the call is billed as if neither had happened.
func TestMidCallRequestsRelayedAndBillingUntouched(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	e.clock.Advance(3 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reinvite := sip.NewRequest(sip.INVITE, sess.InviteResponse.Contact().Address)
	reinvite.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	reinvite.SetBody([]byte(strings.Replace(testSDP, "m=audio 40000", "m=audio 40002", 1)))
	res, err := sess.Do(ctx, reinvite)
	must(t, err)
	if res.StatusCode != 200 || string(res.Body()) != testSDP {
		t.Fatalf("re-INVITE answered %d %q, want the carrier's 200 with its SDP", res.StatusCode, res.Body())
	}
	must(t, sess.WriteRequest(sip.NewRequest(sip.ACK, sess.InviteResponse.Contact().Address)))
	if e.carrier.reinvites.Load() != 1 {
		t.Fatalf("carrier saw %d re-INVITEs, want 1", e.carrier.reinvites.Load())
	}

	e.carrier.mu.Lock()
	dlg := e.carrier.open[0]
	e.carrier.mu.Unlock()
	upd := sip.NewRequest(sip.UPDATE, dlg.InviteRequest.Contact().Address)
	res, err = dlg.Do(ctx, upd)
	must(t, err)
	if res.StatusCode != 200 || e.caller.updates.Load() != 1 {
		t.Fatalf("UPDATE from the carrier: %d, caller saw %d", res.StatusCode, e.caller.updates.Load())
	}

	e.clock.Advance(6500 * time.Millisecond)
	must(t, sess.Bye(ctx))
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	cdr := e.cdrs("acme")[0]
	if !cdr.Charge.Equal(d("0.10")) || cdr.BilledS != 10 {
		t.Fatalf("9.5 s with mid-call requests: CDR %+v, want 10 increments, 0.10", cdr)
	}
	must(t, e.ledger.CheckInvariants())
}

// TestPoolThenCreditsMidCall: a domestic call draws the org's minute pool
// first; where the pool runs out, in the middle of the call, it goes on on
// credits at the rate's next increment, and ends when those run out — both
// legs get BYE at exactly the end of what was paid for.
func TestPoolThenCreditsMidCall(t *testing.T) {
	plans := ledger.DefaultPlans()
	plans[0].Minutes = 2 // the domestic pool: 2 minutes a license
	// US: 0.60/min in 6 s increments after a 60 s first one = 0.06 each.
	e := newEnvPlans(t, deckHeader+"1,US,United States,geographic,0.60,,60,6\n", plans)
	e.org("acme", "US", "", "12125550100", "domestic_calling_plan", "communications_credits")
	_, err := e.ledger.Fund("acme", d("50"), "fund")
	must(t, err)
	// Leave 0.30 of credit: 5 increments of 0.06 after the pool.
	must(t, e.ledger.PutUser(ledger.User{Org: "acme", ID: "bob", Numbers: []string{"12125550111"}, Licenses: []string{"communications_credits"}}))
	spend(t, e, "acme", d("49.70"))

	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+13125550100"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	if c := e.gw.Calls()[0]; c.PaidFrom != ledger.SourcePool {
		t.Fatalf("first minute paid from %q, want the pool", c.PaidFrom)
	}
	answered := e.gw.Calls()[0].Answer
	e.clock.Advance(2 * time.Minute)
	eventually(t, "third increment on credits", func() bool {
		cs := e.gw.Calls()
		return len(cs) == 1 && cs[0].PaidFrom == ledger.SourceCredits
	})
	for i := 1; i <= 4; i++ {
		e.clock.Advance(6 * time.Second)
		if n := len(e.gw.Calls()); n != 1 {
			t.Fatalf("call ended after %d credit increments, want 5", i)
		}
	}
	e.clock.Advance(6 * time.Second)
	eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 2 })
	var cdr ledger.CDR
	for _, c := range e.cdrs("acme") {
		if c.To == "13125550100" {
			cdr = c
		}
	}
	if cdr.Pool != ledger.PlanDomestic || cdr.PoolMinutes != 2 || !cdr.Charge.Equal(d("0.30")) || cdr.BilledS != 150 ||
		cdr.DisconnectReason != ledger.ReasonCreditExhausted || !cdr.End.Equal(answered.Add(150*time.Second)) {
		t.Fatalf("CDR %+v: want 2 pool minutes + 0.30 on credits, 150 s billed, ended at answer + 150 s", cdr)
	}
	if b := e.balance("acme"); !b.IsZero() {
		t.Fatalf("balance %s, want exactly 0", b)
	}
	pools, err := e.ledger.Pools("acme", e.clock.Now())
	must(t, err)
	if p := pools[0]; p.Used != 2 || p.Total != 2 || p.Held != 0 {
		t.Fatalf("domestic pool %+v, want 2 of 2 used", p)
	}
	must(t, e.ledger.CheckInvariants())
}

// spend debits amount from an org through a call of its own in the ledger,
// so a test can start from an exact balance.
func spend(t *testing.T, e *env, org string, amount decimal.Decimal) {
	t.Helper()
	c := ledger.Call{ID: "spend-" + org, Details: ledger.Details{Org: org, User: "bob", To: "442079460018",
		RatePerMinute: amount.Mul(decimal.NewFromInt(60)), Currency: "USD"}, FirstIncrement: 1, NextIncrement: 1, Spill: true}
	_, err := e.ledger.OpenCall(c, e.clock.Now())
	must(t, err)
	must(t, e.ledger.Answer(c.ID, e.clock.Now()))
	_, err = e.ledger.CloseCall(c.ID, ledger.CallEnd{At: e.clock.Now(), Reason: ledger.ReasonCallerHangup})
	must(t, err)
}
