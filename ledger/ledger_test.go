package ledger

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

var t0 = time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

func open(t *testing.T, dir string) *Ledger {
	t.Helper()
	l, err := Open(dir, Options{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

func check(t *testing.T, l *Ledger) {
	t.Helper()
	if err := l.CheckInvariants(); err != nil {
		t.Fatalf("invariant broken: %v", err)
	}
}

func newOrg(t *testing.T, l *Ledger, id, fund string) {
	t.Helper()
	if _, err := l.CreateOrg(Org{ID: id, Name: id, Country: "US", Region: "us", BillingRegion: "us"}); err != nil {
		t.Fatalf("CreateOrg: %v", err)
	}
	if fund != "" {
		if _, err := l.Fund(id, d(fund), "initial-"+id); err != nil {
			t.Fatalf("Fund: %v", err)
		}
	}
	check(t, l)
}

func call(id, org string, hold string) Call {
	return Call{ID: id, Details: Details{Org: org, User: "u1", To: "442079460018", RatePerMinute: d("0.60"), Currency: "USD"},
		FirstIncrement: 1, NextIncrement: 1, Hold: d(hold)}
}

func TestCallLifecycle(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")

	if err := l.OpenCall(call("c1", "acme", "0.01"), t0); err != nil {
		t.Fatal(err)
	}
	check(t, l)
	o, _ := l.Org("acme")
	if !o.Held.Equal(d("0.01")) || !o.Available().Equal(d("49.99")) || !o.Balance.Equal(d("50")) {
		t.Fatalf("after open: %+v", o)
	}
	if err := l.Answer("c1", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 9; i++ {
		if err := l.Renew("c1", t0.Add(time.Duration(i+2)*time.Second), d("0.01")); err != nil {
			t.Fatal(err)
		}
		check(t, l)
	}
	cdr, err := l.CloseCall("c1", CallEnd{At: t0.Add(10500 * time.Millisecond), Reason: ReasonCallerHangup, SIPStatus: 200})
	if err != nil {
		t.Fatal(err)
	}
	check(t, l)
	if !cdr.Charge.Equal(d("0.10")) || cdr.BilledS != 10 || cdr.DurationS != 10 {
		t.Fatalf("cdr %+v: want 10 increments, 0.10", cdr)
	}
	o, _ = l.Org("acme")
	if !o.Balance.Equal(d("49.90")) || !o.Held.IsZero() {
		t.Fatalf("after close: %+v", o)
	}
	if n := len(l.Transactions("acme")); n != 11 {
		t.Fatalf("%d transactions, want 1 funding + 10 debits", n)
	}
}

func TestUnansweredCallCostsNothing(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if err := l.OpenCall(call("c1", "acme", "1.00"), t0); err != nil {
		t.Fatal(err)
	}
	cdr, err := l.CloseCall("c1", CallEnd{At: t0.Add(3 * time.Second), Reason: ReasonCanceled, SIPStatus: 487})
	if err != nil {
		t.Fatal(err)
	}
	o, _ := l.Org("acme")
	if !cdr.Charge.IsZero() || !o.Balance.Equal(d("50")) || !o.Held.IsZero() || cdr.BilledS != 0 {
		t.Fatalf("unanswered call charged: cdr %+v org %+v", cdr, o)
	}
	check(t, l)
}

func TestCreditRunsOutExactly(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	// 50.00 at 10.00 per increment: exactly 5 increments.
	if err := l.OpenCall(call("c1", "acme", "10.00"), t0); err != nil {
		t.Fatal(err)
	}
	_ = l.Answer("c1", t0)
	n := 1
	for {
		err := l.Renew("c1", t0.Add(time.Duration(n)*time.Second), d("10.00"))
		check(t, l)
		if errors.Is(err, ErrInsufficientCredit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 5 {
		t.Fatalf("call ran %d increments, want 5", n)
	}
	cdr, _ := l.CloseCall("c1", CallEnd{At: t0.Add(5 * time.Second), Reason: ReasonCreditExhausted})
	o, _ := l.Org("acme")
	if !o.Balance.IsZero() || !cdr.Charge.Equal(d("50")) {
		t.Fatalf("balance %s charge %s; want 0 and 50", o.Balance, cdr.Charge)
	}
	if err := l.OpenCall(call("c2", "acme", "0.000001"), t0); !errors.Is(err, ErrInsufficientCredit) {
		t.Fatalf("call at zero balance: %v, want ErrInsufficientCredit", err)
	}
	if err := l.OpenCall(Call{ID: "sos", Details: Details{Org: "acme"}}, t0); err != nil {
		t.Fatalf("free call at zero balance refused: %v", err)
	}
	check(t, l)
}

func TestRefusalsChangeNothing(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.CreateOrg(Org{ID: "split", Region: "eu", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	before := l.Transactions("acme")
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"duplicate org", func() error { _, err := l.CreateOrg(Org{ID: "acme"}); return err }, ErrOrgExists},
		{"bad org id", func() error { _, err := l.CreateOrg(Org{ID: "a/b"}); return err }, ErrInvalid},
		{"bad currency", func() error { _, err := l.CreateOrg(Org{ID: "x", Currency: "usd"}); return err }, ErrInvalid},
		{"below minimum", func() error { _, err := l.Fund("acme", d("49.99"), "k1"); return err }, ErrBelowMinimum},
		{"negative", func() error { _, err := l.Fund("acme", d("-50"), "k2"); return err }, ErrBelowMinimum},
		{"repeated key", func() error { _, err := l.Fund("acme", d("60"), "initial-acme"); return err }, ErrDuplicateFunding},
		{"missing key", func() error { _, err := l.Fund("acme", d("60"), ""); return err }, ErrInvalid},
		{"unknown org", func() error { _, err := l.Fund("nope", d("60"), "k3"); return err }, ErrUnknownOrg},
		{"region mismatch", func() error { _, err := l.Fund("split", d("60"), "k4"); return err }, ErrRegionMismatch},
		{"hold beyond balance", func() error { return l.OpenCall(call("big", "acme", "50.01"), t0) }, ErrInsufficientCredit},
		{"renew unknown call", func() error { return l.Renew("ghost", t0, d("1")) }, ErrUnknownCall},
		{"user of unknown org", func() error { return l.PutUser(User{Org: "nope", ID: "u"}) }, ErrUnknownOrg},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			check(t, l)
			o, _ := l.Org("acme")
			if !o.Balance.Equal(d("50")) || !o.Held.IsZero() || len(l.Transactions("acme")) != len(before) {
				t.Fatalf("refusal changed the org: %+v", o)
			}
		})
	}
	if err := l.PutUser(User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}}); err != nil {
		t.Fatal(err)
	}
	if err := l.PutUser(User{Org: "acme", ID: "bob", Numbers: []string{"12125550100"}}); !errors.Is(err, ErrNumberTaken) {
		t.Fatalf("second owner of a number: %v", err)
	}
	if u, ok := l.UserByNumber("12125550100"); !ok || u.ID != "alice" {
		t.Fatalf("number owner changed to %+v", u)
	}
}

func TestSurvivesRestartAndSettlesOpenCalls(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	_ = l.PutUser(User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}, Licenses: []string{"communications_credits"}})
	_ = l.PutTrunk(Trunk{ID: "pbx", Kind: "customer", Org: "acme", Addresses: []string{"127.0.0.1/32"}})
	_ = l.PutDeck([]byte("prefix,country,destination,type,rate_per_minute\n1,US,US,geographic,0.01\n"))
	// A finished call, an answered call left up, and one still ringing.
	_ = l.OpenCall(call("done", "acme", "1.00"), t0)
	_ = l.Answer("done", t0)
	_ = l.Renew("done", t0.Add(time.Second), d("1.00"))
	_, _ = l.CloseCall("done", CallEnd{At: t0.Add(1500 * time.Millisecond), Reason: ReasonCallerHangup, SIPStatus: 200})
	_ = l.OpenCall(call("up", "acme", "1.00"), t0)
	_ = l.Answer("up", t0)
	_ = l.Renew("up", t0.Add(time.Second), d("1.00"))
	_ = l.OpenCall(call("ringing", "acme", "1.00"), t0)
	check(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir)
	defer l.Close()
	check(t, l)
	o, _ := l.Org("acme")
	// done: 2.00; up: one committed + the started one = 2.00; ringing: 0.
	if !o.Balance.Equal(d("46")) || !o.Held.IsZero() {
		t.Fatalf("after restart org %+v, want balance 46 and nothing held", o)
	}
	if len(l.OpenCalls()) != 0 {
		t.Fatalf("calls still open after restart: %+v", l.OpenCalls())
	}
	cdrs := l.CDRs("acme", time.Time{}, time.Time{})
	if len(cdrs) != 3 {
		t.Fatalf("%d CDRs, want 3", len(cdrs))
	}
	byID := map[string]CDR{}
	for _, c := range cdrs {
		byID[c.CallID] = c
	}
	if c := byID["up"]; c.DisconnectReason != ReasonRestart || !c.Charge.Equal(d("2")) || c.BilledS != 2 {
		t.Fatalf("settled call CDR %+v", c)
	}
	if c := byID["ringing"]; c.DisconnectReason != ReasonRestart || !c.Charge.IsZero() {
		t.Fatalf("ringing call CDR %+v", c)
	}
	if u, ok := l.UserByNumber("12125550100"); !ok || u.ID != "alice" {
		t.Fatalf("user lost: %+v", u)
	}
	if len(l.Trunks()) != 1 || len(l.Deck()) == 0 {
		t.Fatalf("trunk or deck lost")
	}
	if _, err := l.Fund("acme", d("50"), "initial-acme"); !errors.Is(err, ErrDuplicateFunding) {
		t.Fatalf("idempotency key forgotten across restart: %v", err)
	}
}

// TestConcurrentCallsNeverOverspend runs many calls of one org at once, each
// renewing until the money is gone: the balance must end at exactly zero and
// the CDRs must add up to the funding.
func TestConcurrentCallsNeverOverspend(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("c%d", i)
			if err := l.OpenCall(call(id, "acme", "0.25"), t0); err != nil {
				t.Errorf("open %s: %v", id, err)
				return
			}
			_ = l.Answer(id, t0)
			for n := 1; ; n++ {
				err := l.Renew(id, t0.Add(time.Duration(n)*time.Second), d("0.25"))
				if errors.Is(err, ErrInsufficientCredit) {
					break
				}
				if err != nil {
					t.Errorf("renew: %v", err)
					return
				}
				if err := l.CheckInvariants(); err != nil {
					t.Errorf("invariant: %v", err)
					return
				}
			}
			if _, err := l.CloseCall(id, CallEnd{At: t0.Add(time.Minute), Reason: ReasonCreditExhausted}); err != nil {
				t.Errorf("close: %v", err)
			}
		}(i)
	}
	wg.Wait()
	check(t, l)
	o, _ := l.Org("acme")
	var sum decimal.Decimal
	for _, c := range l.CDRs("acme", time.Time{}, time.Time{}) {
		sum = sum.Add(c.Charge)
	}
	if !o.Balance.IsZero() || !sum.Equal(d("50")) {
		t.Fatalf("balance %s, CDRs sum %s; want 0 and 50", o.Balance, sum)
	}
}
