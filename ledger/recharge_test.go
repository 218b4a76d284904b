package ledger

import (
	"errors"
	"testing"
)

func autoRecharge(threshold, amount string) AutoRecharge {
	return AutoRecharge{Enabled: true, Threshold: d(threshold), Amount: d(amount), PaymentMethod: "pm_card_visa", Customer: "cus_acme"}
}

// spend runs a credit call of n one-unit increments at perSecond each.
func spend(t *testing.T, l *Ledger, id string, n int, perSecond string) {
	t.Helper()
	if _, err := l.OpenCall(creditCall(id, "acme", perSecond), t0); err != nil {
		t.Fatalf("OpenCall %s: %v", id, err)
	}
	if err := l.Answer(id, t0); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < n; i++ {
		if _, err := l.Step(id, i, at(i)); err != nil {
			t.Fatalf("Step %s %d: %v", id, i, err)
		}
	}
	if _, err := l.CloseCall(id, CallEnd{At: at(n), Reason: ReasonCallerHangup, SIPStatus: 200}); err != nil {
		t.Fatal(err)
	}
}

func pendingPurchases(t *testing.T, l *Ledger) []Purchase {
	t.Helper()
	ps, err := l.PendingPurchases()
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func outbox(t *testing.T, l *Ledger) []Notification {
	t.Helper()
	ns, err := l.Outbox()
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func TestDebitBelowThresholdStartsOnePurchase(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	if _, err := l.SetAutoRecharge("acme", autoRecharge("10.00", "100.00")); err != nil {
		t.Fatal(err)
	}
	spend(t, l, "c1", 39, "1") // 11.00 left: above the threshold
	if ps := pendingPurchases(t, l); len(ps) != 0 {
		t.Fatalf("purchase above the threshold: %+v", ps)
	}
	spend(t, l, "c2", 2, "1") // 9.00: crosses it
	spend(t, l, "c3", 3, "1") // 6.00: still below, one purchase is pending
	ps := pendingPurchases(t, l)
	if len(ps) != 1 || !ps[0].Amount.Equal(d("100")) || ps[0].State != PurchasePending || !ps[0].Balance.Equal(d("9")) ||
		ps[0].PaymentMethod != "pm_card_visa" || ps[0].Customer != "cus_acme" || ps[0].Currency != "USD" {
		t.Fatalf("pending purchases %+v, want one of 100.00 started at 9.00", ps)
	}
	id := ps[0].ID
	select {
	case <-l.PayerWake():
	default:
		t.Fatal("payer not woken")
	}
	check(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// The purchase survives a restart, still the only one.
	l = open(t, dir)
	if ps := pendingPurchases(t, l); len(ps) != 1 || ps[0].ID != id {
		t.Fatalf("after restart: %+v", ps)
	}
	en, err := l.CompletePurchase(id, "pi_1")
	if err != nil || en.Kind != EntryRecharge || !en.Amount.Equal(d("100")) || !en.Balance.Equal(d("106")) {
		t.Fatalf("CompletePurchase = %+v, %v", en, err)
	}
	again, err := l.CompletePurchase(id, "pi_1")
	if err != nil || again.Seq != en.Seq {
		t.Fatalf("retried CompletePurchase = %+v, %v; want the first entry", again, err)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("106")) || !o.Funded.Equal(d("150")) {
		t.Fatalf("after recharge: %+v", o)
	}
	check(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir)
	defer l.Close()
	if again, err := l.CompletePurchase(id, "pi_1"); err != nil || again.Seq != en.Seq {
		t.Fatalf("CompletePurchase after restart = %+v, %v", again, err)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("106")) {
		t.Fatalf("credited twice: balance %s", o.Balance)
	}
	if ps := pendingPurchases(t, l); len(ps) != 0 {
		t.Fatalf("still pending: %+v", ps)
	}
	p, ok, err := l.Purchase(id)
	if err != nil || !ok || p.State != PurchaseSucceeded || p.Payment != "pi_1" {
		t.Fatalf("closed purchase = %+v, %v, %v", p, ok, err)
	}
	ns := outbox(t, l)
	if len(ns) != 1 || ns[0].Kind != NotifyRechargeSucceeded || !ns[0].Amount.Equal(d("100")) || ns[0].Purchase != id {
		t.Fatalf("outbox %+v, want one recharge_succeeded", ns)
	}
	check(t, l)
}

func TestHardDeclineSuspendsAutoRecharge(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.SetAutoRecharge("acme", autoRecharge("45.00", "50.00")); err != nil {
		t.Fatal(err)
	}
	spend(t, l, "c1", 6, "1")
	ps := pendingPurchases(t, l)
	if len(ps) != 1 {
		t.Fatalf("pending %+v", ps)
	}
	if err := l.FailPurchase(ps[0].ID, "expired_card: Your card has expired."); err != nil {
		t.Fatal(err)
	}
	if err := l.FailPurchase(ps[0].ID, "again"); err != nil {
		t.Fatalf("retried FailPurchase: %v", err)
	}
	spend(t, l, "c2", 2, "1")
	if ps := pendingPurchases(t, l); len(ps) != 0 {
		t.Fatalf("a suspended auto-recharge started %+v", ps)
	}
	o := balance(t, l, "acme")
	if o.AutoRecharge.Suspended != "expired_card: Your card has expired." || !o.Balance.Equal(d("42")) {
		t.Fatalf("org after decline: %+v", o)
	}
	ns := outbox(t, l)
	if len(ns) != 1 || ns[0].Kind != NotifyRechargeFailed || ns[0].Reason != "expired_card: Your card has expired." {
		t.Fatalf("outbox %+v", ns)
	}
	// New settings clear the suspension; the balance is below the
	// threshold already, so a purchase starts at once.
	if _, err := l.SetAutoRecharge("acme", autoRecharge("45.00", "50.00")); err != nil {
		t.Fatal(err)
	}
	if ps := pendingPurchases(t, l); len(ps) != 1 {
		t.Fatalf("after new settings: %+v", ps)
	}
	check(t, l)
}

func TestAutoRechargeRefusals(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.CreateOrg(Org{ID: "split", Name: "Split", Country: "FR", Region: "eu", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateOrg(Org{ID: "yen", Name: "Yen", Country: "JP", Region: "ap", BillingRegion: "ap", Currency: "JPY"}); err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*AutoRecharge)) AutoRecharge { ar := autoRecharge("10", "60"); f(&ar); return ar }
	for _, tc := range []struct {
		name string
		org  string
		ar   AutoRecharge
		want error
	}{
		{"below minimum", "acme", mod(func(a *AutoRecharge) { a.Amount = d("49.99") }), ErrBelowMinimum},
		{"negative threshold", "acme", mod(func(a *AutoRecharge) { a.Threshold = d("-1") }), ErrInvalid},
		{"no payment method", "acme", mod(func(a *AutoRecharge) { a.PaymentMethod = "" }), ErrInvalid},
		{"not a payment method id", "acme", mod(func(a *AutoRecharge) { a.PaymentMethod = "4242424242424242" }), ErrInvalid},
		{"no customer", "acme", mod(func(a *AutoRecharge) { a.Customer = "" }), ErrInvalid},
		{"more precise than cents", "acme", mod(func(a *AutoRecharge) { a.Amount = d("60.001") }), ErrInvalid},
		{"yen has no cents", "yen", mod(func(a *AutoRecharge) { a.Amount = d("60.50") }), ErrInvalid},
		{"region mismatch", "split", autoRecharge("10", "60"), ErrRegionMismatch},
		{"unknown org", "nope", autoRecharge("10", "60"), ErrUnknownOrg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := l.Org(tc.org)
			if _, err := l.SetAutoRecharge(tc.org, tc.ar); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if after, _ := l.Org(tc.org); !same(before, after) {
				t.Fatalf("refusal changed the org: %+v → %+v", before, after)
			}
		})
	}
	ar := autoRecharge("10", "60")
	ar.Incident = "INC-4711"
	got, err := l.SetAutoRecharge("split", ar)
	if err != nil || got.Incident != "INC-4711" {
		t.Fatalf("with an incident: %+v, %v", got, err)
	}
	// Disabling needs nothing else.
	if _, err := l.SetAutoRecharge("acme", AutoRecharge{}); err != nil {
		t.Fatal(err)
	}
	// Only the accepted setting started a purchase: split's balance (0) is
	// below its threshold.
	if ps := pendingPurchases(t, l); len(ps) != 1 || ps[0].Org != "split" {
		t.Fatalf("pending %+v, want split's only", ps)
	}
}

func TestMinorUnits(t *testing.T) {
	for _, tc := range []struct {
		amount, currency string
		want             int64
		ok               bool
	}{
		{"50", "USD", 5000, true},
		{"50.5", "EUR", 5050, true},
		{"0.01", "USD", 1, true},
		{"50.001", "USD", 0, false},
		{"500", "JPY", 500, true},
		{"500.5", "JPY", 0, false},
	} {
		got, ok := MinorUnits(d(tc.amount), tc.currency)
		if got != tc.want || ok != tc.ok {
			t.Errorf("MinorUnits(%s %s) = %d, %v; want %d, %v", tc.amount, tc.currency, got, ok, tc.want, tc.ok)
		}
	}
}

func TestBalanceZeroNotifiesOnce(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	spend(t, l, "c1", 50, "1")
	if _, err := l.OpenCall(creditCall("c2", "acme", "1"), t0); !errors.Is(err, ErrInsufficientCredit) {
		t.Fatalf("call at zero: %v", err)
	}
	ns := outbox(t, l)
	if len(ns) != 1 || ns[0].Kind != NotifyBalanceZero || !ns[0].Balance.IsZero() {
		t.Fatalf("outbox %+v, want one balance_zero", ns)
	}
	// One channel delivered, then a restart: the notification is still
	// there, with that channel marked.
	n := ns[0]
	n.Emailed = true
	if err := l.Delivered(n, false); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, dir)
	defer l.Close()
	ns = outbox(t, l)
	if len(ns) != 1 || !ns[0].Emailed || ns[0].Posted {
		t.Fatalf("after restart: %+v", ns)
	}
	if err := l.Delivered(ns[0], true); err != nil {
		t.Fatal(err)
	}
	if err := l.Delivered(ns[0], true); err != nil {
		t.Fatalf("delivered twice: %v", err)
	}
	if ns := outbox(t, l); len(ns) != 0 {
		t.Fatalf("outbox after delivery: %+v", ns)
	}
	if err := l.Delivered(Notification{ID: "../x"}, true); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad id: %v", err)
	}
	// Funding and spending it all again notifies again: it is a new event.
	if _, err := l.Fund("acme", d("50"), "second"); err != nil {
		t.Fatal(err)
	}
	spend(t, l, "c3", 50, "1")
	if ns := outbox(t, l); len(ns) != 1 {
		t.Fatalf("second zero: %+v", ns)
	}
}

func TestFundingRetryAndRegionIncident(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	first, err := l.Fund("acme", d("75.00"), "k1")
	if err != nil || first.Replayed {
		t.Fatal(first, err)
	}
	again, err := l.Fund("acme", d("75"), "k1")
	if err != nil || !again.Replayed || again.Seq != first.Seq {
		t.Fatalf("retry = %+v, %v; want the first entry, replayed", again, err)
	}
	if _, err := l.Fund("acme", d("80"), "k1"); !errors.Is(err, ErrDuplicateFunding) {
		t.Fatalf("same key, other amount: %v", err)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("125")) {
		t.Fatalf("balance %s, want 125", o.Balance)
	}
	if _, err := l.CreateOrg(Org{ID: "split", Name: "Split", Country: "FR", Region: "eu", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fund("split", d("60"), "s1"); !errors.Is(err, ErrRegionMismatch) {
		t.Fatalf("across regions: %v", err)
	}
	en, err := l.FundAcrossRegions("split", d("60"), "s1", "INC-9")
	if err != nil || en.Incident != "INC-9" {
		t.Fatalf("with incident: %+v, %v", en, err)
	}
	if en, err := l.FundAcrossRegions("acme", d("60"), "k2", "INC-9"); err != nil || en.Incident != "" {
		t.Fatalf("an incident on a same-region org is not kept: %+v, %v", en, err)
	}
	check(t, l)
}
