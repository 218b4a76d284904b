package ledger

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func userCall(id, user, perSecond string) Call {
	c := creditCall(id, "acme", perSecond)
	c.User = user
	return c
}

func tripGuard(err error) string {
	var tr *Trip
	if errors.As(err, &tr) {
		return tr.Guard
	}
	return ""
}

func TestFraudGuardConcurrentCalls(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "500.00")
	if _, err := l.SetFraudGuard("acme", FraudGuard{MaxCalls: 3, MaxCallsPerUser: 2}); err != nil {
		t.Fatal(err)
	}
	for i, user := range []string{"u1", "u1", "u2"} {
		if _, err := l.OpenCall(userCall(fmt.Sprint("c", i), user, "0.01"), t0); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if _, err := l.OpenCall(userCall("c3", "u1", "0.01"), t0); tripGuard(err) != GuardMaxCalls || !errors.Is(err, ErrFraudGuard) {
		t.Fatalf("4th call: %v", err)
	}
	if _, err := l.CloseCall("c2", CallEnd{At: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.OpenCall(userCall("c3", "u1", "0.01"), t0); tripGuard(err) != GuardMaxCallsPerUser {
		t.Fatalf("3rd call of u1: %v", err)
	}
	if _, err := l.OpenCall(userCall("c4", "u3", "0.01"), t0); err != nil {
		t.Fatalf("a call of another user once one ended: %v", err)
	}
	// Emergency calls are never limited.
	sos := userCall("sos", "u1", "0")
	sos.Free = true
	if _, err := l.OpenCall(sos, t0); err != nil {
		t.Fatalf("emergency call: %v", err)
	}
	check(t, l)
}

func TestFraudGuardSpendPerHour(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "500.00")
	if _, err := l.SetFraudGuard("acme", FraudGuard{MaxSpendPerHour: d("10"), MaxSpendPerHourPerUser: d("6")}); err != nil {
		t.Fatal(err)
	}
	// u1 at 1.00 a second: 6 increments fit its 6.00, the 7th is refused
	// mid-call and the call ends having paid 6.
	if _, err := l.OpenCall(userCall("a", "u1", "1"), t0); err != nil {
		t.Fatal(err)
	}
	if err := l.Answer("a", t0); err != nil {
		t.Fatal(err)
	}
	var err error
	n := 1
	for ; n < 10; n++ {
		if _, err = l.Step("a", n, at(n)); err != nil {
			break
		}
	}
	if n != 6 || tripGuard(err) != GuardSpendPerHourPerUser {
		t.Fatalf("step %d: %v; want the 7th increment refused by the per-user limit", n+1, err)
	}
	cdr, err := l.CloseCall("a", CallEnd{At: at(6), Reason: ReasonFraudGuard})
	if err != nil || !cdr.Charge.Equal(d("6")) {
		t.Fatalf("CDR %+v, %v", cdr, err)
	}
	// u2 may spend 4 more before the org's 10.00; the 5th is refused at
	// authorization.
	for i := range 4 {
		if _, err := l.OpenCall(userCall(fmt.Sprint("b", i), "u2", "1"), at(7)); err != nil {
			t.Fatalf("u2 call %d: %v", i, err)
		}
	}
	if _, err := l.OpenCall(userCall("b4", "u2", "1"), at(7)); tripGuard(err) != GuardSpendPerHour {
		t.Fatalf("over the org's hour: %v", err)
	}
	// An hour later the window has moved on.
	if _, err := l.OpenCall(userCall("late", "u1", "1"), at(3700)); err != nil {
		t.Fatalf("an hour later: %v", err)
	}
	check(t, l)
}

func TestFraudGuardRefusalsAndRestart(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "500.00")
	for _, fg := range []FraudGuard{{MaxCalls: -1}, {MaxCallsPerUser: MaxGuardCalls + 1}, {MaxSpendPerHour: d("-1")}} {
		if _, err := l.SetFraudGuard("acme", fg); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetFraudGuard(%+v) = %v", fg, err)
		}
	}
	if _, err := l.SetFraudGuard("nope", FraudGuard{}); !errors.Is(err, ErrUnknownOrg) {
		t.Fatal(err)
	}
	if _, err := l.SetFraudGuard("acme", FraudGuard{MaxCalls: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.OpenCall(userCall("up", "u1", "0.01"), t0); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The call left up is settled on start, and no longer counts.
	l = open(t, dir)
	defer l.Close()
	if o := balance(t, l, "acme"); o.FraudGuard.MaxCalls != 1 {
		t.Fatalf("guard lost: %+v", o.FraudGuard)
	}
	if _, err := l.OpenCall(userCall("next", "u1", "0.01"), t0); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestFraudTrippedNotifiesOncePerHour(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "500.00")
	tr := &Trip{Guard: GuardMaxCalls, Org: "acme", User: "u1", Detail: "3 calls up, the limit is 3"}
	for i := range 50 {
		if err := l.FraudTripped(tr, t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	other := &Trip{Guard: GuardHighRisk, Org: "acme", Detail: "+252 is high-risk"}
	if err := l.FraudTripped(other, t0); err != nil {
		t.Fatal(err)
	}
	if err := l.FraudTripped(tr, t0.Add(61*time.Minute)); err != nil {
		t.Fatal(err)
	}
	ns, err := l.Outbox()
	if err != nil || len(ns) != 3 || ns[0].Kind != NotifyFraudGuard || ns[0].Reason != "max_calls: 3 calls up, the limit is 3" {
		t.Fatalf("outbox %+v, %v; want 3 (two of max_calls an hour apart, one high-risk)", ns, err)
	}
}
