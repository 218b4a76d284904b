package ledger

import (
	"errors"
	"testing"
)

// TestPoolAllowance: with LimitPools a pool holds only what its allowance
// lets it (0 until set), then spills to credits or ends as a used-up pool
// does; the allowance never goes below used + held, survives a restart,
// and a ledger without LimitPools ignores it.
func TestPoolAllowance(t *testing.T) {
	dir := t.TempDir()
	l := openWith(t, dir, Options{Plans: smallPlans()})
	newOrg(t, l, "acme", "50.00")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.PutUser(User{Org: "acme", ID: "a", Licenses: []string{"domestic_calling_plan"}}))
	must(l.PutUser(User{Org: "acme", ID: "b", Licenses: []string{"domestic_calling_plan"}}))
	month := t0.Format("2006-01")
	l.LimitPools()

	// No allowance yet: a call that may spill goes on credits, one that
	// may not is refused, although the licensed pool has 6 minutes.
	inc, err := l.OpenCall(poolCall("c0", "acme", "0.60", true), t0)
	if err != nil || inc.Source != SourceCredits {
		t.Fatalf("open with no allowance: %+v, %v; want credits", inc, err)
	}
	if _, err := l.OpenCall(poolCall("c1", "acme", "0.60", false), t0); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("open with no allowance, no spill: %v; want ErrPoolExhausted", err)
	}
	if _, err := l.CloseCall("c0", CallEnd{At: t0, Reason: ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}

	// Refused, nothing changed.
	for _, tc := range []struct {
		name, org, plan, month string
		allowance              int
	}{
		{"negative", "acme", PlanDomestic, month, -1},
		{"bad month", "acme", PlanDomestic, "2026-13", 1},
		{"unknown plan", "acme", "gold", month, 1},
		{"unknown org", "nobody", PlanDomestic, month, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := l.SetPoolAllowance(tc.org, tc.plan, tc.month, tc.allowance); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if sh, _ := l.PoolShare("acme", PlanDomestic, month); sh.Allowance != 0 || sh.Licensed != 6 {
		t.Fatalf("share after refusals %+v, want allowance 0 of 6 licensed", sh)
	}

	// Two minutes allowed: the call holds two, then ends.
	if _, err := l.SetPoolAllowance("acme", PlanDomestic, month, 2); err != nil {
		t.Fatal(err)
	}
	if inc, err := l.OpenCall(poolCall("c2", "acme", "0.60", false), t0); err != nil || inc.Source != SourcePool {
		t.Fatalf("open with 2 allowed: %+v, %v", inc, err)
	}
	must(l.Answer("c2", t0))
	if _, err := l.Step("c2", 1, at(60)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Step("c2", 2, at(120)); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("step past the allowance: %v; want ErrPoolExhausted", err)
	}
	sh, _ := l.PoolShare("acme", PlanDomestic, month)
	if sh.Used != 2 || sh.Held != 0 || sh.Available() != 0 {
		t.Fatalf("share %+v, want 2 used, none available", sh)
	}
	// Lowering below used + held is refused; at it, accepted.
	if _, err := l.SetPoolAllowance("acme", PlanDomestic, month, 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("allowance below used: %v; want ErrInvalid", err)
	}
	if _, err := l.SetPoolAllowance("acme", PlanDomestic, month, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CloseCall("c2", CallEnd{At: at(120), Reason: ReasonCreditExhausted}); err != nil {
		t.Fatal(err)
	}
	check(t, l)
	l.Close()

	// The allowance is durable; LimitPools is not (a cluster node turns it
	// on at every start).
	l = openWith(t, dir, Options{Plans: smallPlans()})
	defer l.Close()
	shares := l.PoolShares()
	if len(shares) != 1 || shares[0].Allowance != 3 || shares[0].Used != 2 || shares[0].Plan != PlanDomestic || shares[0].Month != month {
		t.Fatalf("shares after restart %+v", shares)
	}
	if inc, err := l.OpenCall(poolCall("c3", "acme", "0.60", false), t0); err != nil || inc.Source != SourcePool {
		t.Fatalf("open without LimitPools: %+v, %v", inc, err)
	}
	must(l.Answer("c3", t0))
	for n := 1; n <= 2; n++ { // 2 used + c3's 3: past the allowance of 3
		if _, err := l.Step("c3", n, at(60*n)); err != nil {
			t.Fatalf("step %d without LimitPools: %v", n, err)
		}
	}
	// The licensed pool has a sixth minute; the allowance has none.
	l.LimitPools()
	if _, err := l.Step("c3", 3, at(180)); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("step with LimitPools again: %v", err)
	}
	// Minutes held past the allowance while it was off break the
	// invariant LimitPools keeps, which CheckInvariants names.
	if err := l.CheckInvariants(); err == nil {
		t.Fatal("used + held above the allowance passed CheckInvariants")
	}
	if _, err := l.SetPoolAllowance("acme", PlanDomestic, month, 5); err != nil {
		t.Fatal(err)
	}
	check(t, l)
}

func TestSplitPoolID(t *testing.T) {
	for _, tc := range []struct{ id, org, plan, month string }{
		{"acme/domestic/2026-11", "acme", "domestic", "2026-11"},
		{"acme/a/b/2026-11", "acme", "a/b", "2026-11"},
	} {
		if o, p, m := splitPoolID(tc.id); o != tc.org || p != tc.plan || m != tc.month {
			t.Errorf("splitPoolID(%q) = %q %q %q", tc.id, o, p, m)
		}
	}
}
