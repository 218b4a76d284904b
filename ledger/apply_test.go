package ledger

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestApplyNeverMovesMoney: applying an org's settings replaces them and
// leaves its money, pools and pending purchase as they were, whatever the
// record says about money.
func TestApplyNeverMovesMoney(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "100.00")
	before := balance(t, l, "acme")
	rec := before
	rec.Name = "Acme Renamed"
	rec.BlockPremium = true
	rec.FraudGuard = FraudGuard{MaxCalls: 4}
	rec.Balances = Balances{Balance: d("999"), Held: d("1"), Funded: d("999"), Debited: d("0")}
	if err := l.Apply(Change{Kind: ChangeOrg, Org: rec}); err != nil {
		t.Fatal(err)
	}
	after := balance(t, l, "acme")
	if after.Name != "Acme Renamed" || !after.BlockPremium || after.FraudGuard.MaxCalls != 4 {
		t.Fatalf("settings not applied: %+v", after)
	}
	if !same(after.Balances, before.Balances) {
		t.Fatalf("applying settings moved money: %+v, was %+v", after.Balances, before.Balances)
	}
	check(t, l)
}

// TestApplyNewOrgStartsAtZero: an org first seen through Apply starts with
// zero money, whatever its record says.
func TestApplyNewOrgStartsAtZero(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	rec := Org{ID: "beta", Country: "GB", Currency: "GBP", Timezone: "Europe/London", CreatedAt: t0,
		Balances: Balances{Balance: d("5"), Held: d("0"), Funded: d("5"), Debited: d("0")}}
	if err := l.Apply(Change{Kind: ChangeOrg, Org: rec}); err != nil {
		t.Fatal(err)
	}
	o := balance(t, l, "beta")
	if !o.Balance.IsZero() || !o.Funded.IsZero() || o.Currency != "GBP" {
		t.Fatalf("applied new org: %+v", o)
	}
	check(t, l)
}

// TestApplyMovesNumbers: a user or toll-free assignment applied with a
// number another record held here takes it, and the other record loses it
// on disk as in memory; applying twice changes nothing more.
func TestApplyMovesNumbers(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "")
	if err := l.PutUser(User{Org: "acme", ID: "alice", Numbers: []string{"12125550100", "12125550101"}, Licenses: []string{"international_calling_plan"}}); err != nil {
		t.Fatal(err)
	}
	if err := l.PutTollFree(TollFree{Number: "18005550100", Org: "acme"}); err != nil {
		t.Fatal(err)
	}
	changes := []Change{
		{Kind: ChangeUser, User: User{Org: "acme", ID: "bob", Numbers: []string{"12125550100", "18005550100"}, Licenses: []string{"international_calling_plan"}}},
		{Kind: ChangeTollFree, TollFree: TollFree{Number: "12125550101", Org: "acme"}},
	}
	for round := 0; round < 2; round++ {
		if err := l.Apply(changes...); err != nil {
			t.Fatal(err)
		}
		if u, ok := l.UserByNumber("12125550100"); !ok || u.ID != "bob" {
			t.Fatalf("round %d: +12125550100 is %+v's", round, u)
		}
		if a, _ := l.User("acme", "alice"); len(a.Numbers) != 0 {
			t.Fatalf("round %d: alice kept %v", round, a.Numbers)
		}
		if _, ok := l.TollFreeOwner("18005550100"); ok {
			t.Fatalf("round %d: toll-free 18005550100 survived bob taking it", round)
		}
		if _, ok := l.UserByNumber("12125550101"); ok {
			t.Fatalf("round %d: +12125550101 is still a user's", round)
		}
	}
	pools, err := l.Pools("acme", t0)
	if err != nil {
		t.Fatal(err)
	}
	if p := pools[1]; p.Plan != PlanInternational || p.Licensed != 1200 {
		t.Fatalf("two licensed users, international pool %+v", p)
	}
	check(t, l)
	l.Close()
	l = open(t, dir)
	defer l.Close()
	if a, _ := l.User("acme", "alice"); len(a.Numbers) != 0 {
		t.Fatalf("after reopening, alice has %v", a.Numbers)
	}
	if u, ok := l.UserByNumber("12125550100"); !ok || u.ID != "bob" {
		t.Fatalf("after reopening, +12125550100 is %+v's", u)
	}
	if tf, ok := l.TollFreeOwner("12125550101"); !ok || tf.Org != "acme" {
		t.Fatalf("after reopening, toll-free 12125550101: %+v %v", tf, ok)
	}
	check(t, l)
}

// TestApplyDeletesWithCallUp: a delete applies although a call of that
// user, or to that number, is up here; the call goes on and is billed to
// its org. Deleting what is not here changes nothing.
func TestApplyDeletesWithCallUp(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "100.00")
	if err := l.PutUser(User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}, Licenses: []string{"communications_credits"}}); err != nil {
		t.Fatal(err)
	}
	if err := l.PutTrunk(Trunk{ID: "pbx", Kind: "customer", Org: "acme"}); err != nil {
		t.Fatal(err)
	}
	if err := l.PutTollFree(TollFree{Number: "18005550100", Org: "acme", Trunk: "pbx"}); err != nil {
		t.Fatal(err)
	}
	c := creditCall("c1", "acme", "0.01")
	c.User = "alice"
	if _, err := l.OpenCall(c, at(0)); err != nil {
		t.Fatal(err)
	}
	if err := l.AnswerDialog("c1", at(0), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.DeleteUser("acme", "alice"); err == nil {
		t.Fatal("DeleteUser with a call up was accepted; the test needs it refused")
	}
	err := l.Apply(
		Change{Kind: ChangeDeleteUser, User: User{Org: "acme", ID: "alice"}},
		Change{Kind: ChangeDeleteTrunk, Trunk: Trunk{ID: "pbx"}}, // it still delivers the number: applies anyway
		Change{Kind: ChangeDeleteTollFree, TollFree: TollFree{Number: "18005550100"}},
		Change{Kind: ChangeDeleteUser, User: User{Org: "acme", ID: "nobody"}},
		Change{Kind: ChangeDeleteTrunk, Trunk: Trunk{ID: "nope"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.User("acme", "alice"); ok {
		t.Fatal("alice survived the applied delete")
	}
	if len(l.Trunks()) != 0 || len(l.TollFreeAll()) != 0 {
		t.Fatalf("trunks %v, toll-free %v after the deletes", l.Trunks(), l.TollFreeAll())
	}
	if _, err := l.Step("c1", 1, at(1)); err != nil {
		t.Fatal(err)
	}
	cdr, err := l.CloseCall("c1", CallEnd{At: at(2), Reason: ReasonCallerHangup})
	if err != nil {
		t.Fatal(err)
	}
	if cdr.User != "alice" || !cdr.Charge.Equal(d("0.02")) {
		t.Fatalf("the call of the deleted user: %+v", cdr)
	}
	check(t, l)
}

// TestApplyKeepsLocalSuspension: a suspension the payer recorded here
// survives re-applying the same auto-recharge setting (another setting of
// the org changed), and a newer setting clears it, as SetAutoRecharge does.
func TestApplyKeepsLocalSuspension(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "")
	ar, err := l.SetAutoRecharge("acme", AutoRecharge{Enabled: true, Threshold: d("10"), Amount: d("50"), PaymentMethod: "pm_1", Customer: "cus_1"})
	if err != nil {
		t.Fatal(err)
	}
	id := l.PendingPurchaseOf("acme")
	if id == "" {
		t.Fatal("no purchase started below the threshold")
	}
	if err := l.FailPurchase(id, "card_declined"); err != nil {
		t.Fatal(err)
	}
	rec := balance(t, l, "acme")
	if rec.AutoRecharge.Suspended == "" {
		t.Fatal("not suspended after a hard decline")
	}
	rec.AutoRecharge = ar // as the shared record has it: not suspended
	rec.BlockPremium = true
	if err := l.Apply(Change{Kind: ChangeOrg, Org: rec}); err != nil {
		t.Fatal(err)
	}
	if o := balance(t, l, "acme"); o.AutoRecharge.Suspended == "" || !o.BlockPremium {
		t.Fatalf("re-applying the same setting: %+v", o.AutoRecharge)
	}
	rec.AutoRecharge.UpdatedAt = ar.UpdatedAt.Add(time.Minute)
	if err := l.Apply(Change{Kind: ChangeOrg, Org: rec}); err != nil {
		t.Fatal(err)
	}
	if o := balance(t, l, "acme"); o.AutoRecharge.Suspended != "" {
		t.Fatalf("a newer setting kept the suspension: %+v", o.AutoRecharge)
	}
	if l.PendingPurchaseOf("acme") != "" {
		t.Fatal("applying a setting started a purchase")
	}
	check(t, l)
}

// TestApplyDeck: a deck applied is stored durably; nil removes it.
func TestApplyDeck(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	deck := []byte("prefix,country,destination,type,rate_per_minute\n44,GB,UK,geographic,0.01\n")
	if err := l.Apply(Change{Kind: ChangeDeck, Deck: deck}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = open(t, dir)
	if !bytes.Equal(l.Deck(), deck) {
		t.Fatalf("deck after reopening: %q", l.Deck())
	}
	if err := l.Apply(Change{Kind: ChangeDeck}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = open(t, dir)
	defer l.Close()
	if l.Deck() != nil {
		t.Fatalf("deck after removing it and reopening: %q", l.Deck())
	}
}

// TestRulesAreTheLedgers: the rules apply.go exports are the ones the
// ledger's own admin methods refuse with (a spot check per rule; the
// cluster's table test compares the two implementations whole).
func TestRulesAreTheLedgers(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "")
	many := make([]string, MaxNumbersPerUser+1)
	for i := range many {
		many[i] = fmt.Sprint(12125550000 + i)
	}
	for _, u := range []User{{Org: "acme", ID: "bad id"}, {Org: "acme", ID: "x", Numbers: many}} {
		_, e1 := PrepareUser(u)
		e2 := l.PutUser(u)
		if e1 == nil || e2 == nil || e1.Error() != e2.Error() {
			t.Fatalf("PrepareUser %v, PutUser %v", e1, e2)
		}
	}
	u, err := PrepareUser(User{Org: "acme", ID: "x", Numbers: []string{"2", "1", "2"}})
	if err != nil || !slices.Equal(u.Numbers, []string{"1", "2"}) {
		t.Fatalf("PrepareUser normalises: %+v %v", u, err)
	}
	fg := FraudGuard{MaxCallsPerUser: -1}
	if e1, e2 := ValidateFraudGuard(fg), func() error { _, err := l.SetFraudGuard("acme", fg); return err }(); e1 == nil || e2 == nil || e1.Error() != e2.Error() {
		t.Fatalf("ValidateFraudGuard %v, SetFraudGuard %v", e1, e2)
	}
}
