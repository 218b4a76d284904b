package ledger

import (
	"errors"
	"strings"
	"testing"
)

// storedPurchases reads every purchase record on disk, pending or closed.
func storedPurchases(t *testing.T, l *Ledger) []Purchase {
	t.Helper()
	var ps []Purchase
	if err := scan(l.db, []byte("q/"), func(_ []byte, p *Purchase) error {
		ps = append(ps, *p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ps
}

func lastSeq(l *Ledger) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

func startPurchase(t *testing.T, l *Ledger, org, amount, key string) Purchase {
	t.Helper()
	p, err := l.StartPurchase(org, d(amount), key, "pm_card_visa", "", "")
	if err != nil {
		t.Fatalf("StartPurchase(%s, %s, %s): %v", org, amount, key, err)
	}
	return p
}

func TestStartPurchaseIsIdempotentPerOrgAndKey(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	newOrg(t, l, "beta", "")
	first := startPurchase(t, l, "acme", "75.00", "buy-1")
	if first.Replayed || first.State != PurchasePending || !first.OneTime() || first.Key != "buy-1" || first.Currency != "USD" ||
		!first.Amount.Equal(d("75")) || first.Org != "acme" || !strings.HasPrefix(first.ID, "acme-p") {
		t.Fatalf("first purchase %+v", first)
	}
	select {
	case <-l.PayerWake():
	default:
		t.Fatal("payer not woken by a new purchase")
	}
	seq := lastSeq(l)
	again := startPurchase(t, l, "acme", "75.00", "buy-1")
	if !again.Replayed || again.ID != first.ID || lastSeq(l) != seq {
		t.Fatalf("retry %+v (seq %d → %d): want the first purchase, replayed, nothing written", again, seq, lastSeq(l))
	}
	for name, start := range map[string]func() error{
		"another amount": func() error { _, err := l.StartPurchase("acme", d("80"), "buy-1", "pm_card_visa", "", ""); return err },
		"another method": func() error {
			_, err := l.StartPurchase("acme", d("75"), "buy-1", "pm_card_mastercard", "", "")
			return err
		},
		"another customer": func() error {
			_, err := l.StartPurchase("acme", d("75"), "buy-1", "pm_card_visa", "cus_acme", "")
			return err
		},
	} {
		if err := start(); !errors.Is(err, ErrDuplicateFunding) {
			t.Fatalf("%s with a used key: %v, want ErrDuplicateFunding", name, err)
		}
	}
	if lastSeq(l) != seq {
		t.Fatal("a refused retry wrote something")
	}
	// Keys are per org, and apart from manual fundings' keys.
	other := startPurchase(t, l, "beta", "75.00", "buy-1")
	if other.ID == first.ID || other.Org != "beta" {
		t.Fatalf("beta's purchase with acme's key: %+v", other)
	}
	if en, err := l.Fund("acme", d("60"), "buy-1"); err != nil || en.Replayed {
		t.Fatalf("a funding with a purchase's key: %+v, %v", en, err)
	}
	if ps := pendingPurchases(t, l); len(ps) != 2 {
		t.Fatalf("pending %+v, want acme's and beta's", ps)
	}
	// Once closed, a retry still answers the same purchase, now as it ended.
	if _, err := l.CompletePurchase(first.ID, "pi_1"); err != nil {
		t.Fatal(err)
	}
	closed := startPurchase(t, l, "acme", "75.00", "buy-1")
	if !closed.Replayed || closed.ID != first.ID || closed.State != PurchaseSucceeded || closed.Payment != "pi_1" {
		t.Fatalf("retry after success %+v", closed)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("185")) {
		t.Fatalf("balance %s, want 50 + 60 + 75 once", o.Balance)
	}
	check(t, l)
}

func TestStartPurchaseRefusalsChangeNothing(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.CreateOrg(Org{ID: "split", Region: "eu", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateOrg(Org{ID: "yen", Currency: "JPY", Region: "jp"}); err != nil {
		t.Fatal(err)
	}
	startPurchase(t, l, "acme", "60.00", "taken")
	long := strings.Repeat("k", MaxFundingKey+1)
	for _, tc := range []struct {
		name, org, amount, key, pm, customer, incident string
		want                                           error
	}{
		{"below minimum", "acme", "49.99", "k", "pm_card_visa", "", "", ErrBelowMinimum},
		{"zero", "acme", "0", "k", "pm_card_visa", "", "", ErrBelowMinimum},
		{"negative", "acme", "-60", "k", "pm_card_visa", "", "", ErrBelowMinimum},
		{"region mismatch", "split", "60", "k", "pm_card_visa", "", "", ErrRegionMismatch},
		{"unknown org", "nope", "60", "k", "pm_card_visa", "", "", ErrUnknownOrg},
		{"no key", "acme", "60", "", "pm_card_visa", "", "", ErrInvalid},
		{"long key", "acme", "60", long, "pm_card_visa", "", "", ErrInvalid},
		{"long incident", "split", "60", "k", "pm_card_visa", "", strings.Repeat("i", 129), ErrInvalid},
		{"card number", "acme", "60", "k", "4242424242424242", "", "", ErrInvalid},
		{"no payment method", "acme", "60", "k", "", "", "", ErrInvalid},
		{"bad customer", "acme", "60", "k", "pm_card_visa", "acme", "", ErrInvalid},
		{"cents of yen", "yen", "60.50", "k", "pm_card_visa", "", "", ErrInvalid},
		{"more than cents", "acme", "60.001", "k", "pm_card_visa", "", "", ErrInvalid},
		{"used key, other amount", "acme", "70", "taken", "pm_card_visa", "", "", ErrDuplicateFunding},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq, stored, before := lastSeq(l), storedPurchases(t, l), balance(t, l, "acme")
			_, err := l.StartPurchase(tc.org, d(tc.amount), tc.key, tc.pm, tc.customer, tc.incident)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if lastSeq(l) != seq || !same(storedPurchases(t, l), stored) || !same(balance(t, l, "acme"), before) ||
				len(pendingPurchases(t, l)) != 1 {
				t.Fatalf("refusal changed something (seq %d → %d)", seq, lastSeq(l))
			}
			check(t, l)
		})
	}
	// The incident lifts the region rule and stays with the purchase.
	p, err := l.StartPurchase("split", d("60"), "k", "pm_card_visa", "", "INC-77")
	if err != nil || p.Incident != "INC-77" {
		t.Fatalf("with an incident: %+v, %v", p, err)
	}
	en, err := l.CompletePurchase(p.ID, "pi_2")
	if err != nil || en.Incident != "INC-77" || en.Kind != EntryPurchase {
		t.Fatalf("its entry %+v, %v", en, err)
	}
	check(t, l)
}

func TestPendingPurchasesAreBounded(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "")
	var ids []string
	for i := range MaxPendingPurchases {
		ids = append(ids, startPurchase(t, l, "acme", "50", "k"+string(rune('a'+i))).ID)
	}
	seq := lastSeq(l)
	if _, err := l.StartPurchase("acme", d("50"), "one-more", "pm_card_visa", "", ""); !errors.Is(err, ErrTooManyPurchases) || lastSeq(l) != seq {
		t.Fatalf("purchase %d: %v (seq %d → %d), want ErrTooManyPurchases, nothing written", MaxPendingPurchases+1, err, seq, lastSeq(l))
	}
	// A retry of one pending is no new purchase, so it is not refused.
	if p := startPurchase(t, l, "acme", "50", "ka"); !p.Replayed || p.ID != ids[0] {
		t.Fatalf("retry at the limit: %+v", p)
	}
	if err := l.FailPurchase(ids[0], "generic_decline"); err != nil {
		t.Fatal(err)
	}
	startPurchase(t, l, "acme", "50", "one-more")
	check(t, l)
}

func TestPurchaseSurvivesReopenAndCreditsOnce(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	p := startPurchase(t, l, "acme", "120.50", "buy")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir)
	ps := pendingPurchases(t, l)
	if len(ps) != 1 || !same(ps[0], p) {
		t.Fatalf("pending after reopen %+v, want %+v", ps, p)
	}
	if again := startPurchase(t, l, "acme", "120.50", "buy"); !again.Replayed || again.ID != p.ID {
		t.Fatalf("retry after reopen %+v", again)
	}
	en, err := l.CompletePurchase(p.ID, "pi_1")
	if err != nil || en.Kind != EntryPurchase || !en.Amount.Equal(d("120.50")) || !en.Balance.Equal(d("170.50")) || en.Key != p.ID {
		t.Fatalf("CompletePurchase = %+v, %v", en, err)
	}
	if again, err := l.CompletePurchase(p.ID, "pi_1"); err != nil || again.Seq != en.Seq {
		t.Fatalf("second CompletePurchase = %+v, %v; want the first entry", again, err)
	}
	if ns := outbox(t, l); len(ns) != 0 {
		t.Fatalf("a one-time purchase's success queued %+v", ns)
	}
	check(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir)
	defer l.Close()
	if again, err := l.CompletePurchase(p.ID, "pi_1"); err != nil || again.Seq != en.Seq {
		t.Fatalf("CompletePurchase after reopen = %+v, %v", again, err)
	}
	if err := l.FailPurchase(p.ID, "late decline"); err != nil {
		t.Fatalf("FailPurchase of a succeeded purchase: %v", err)
	}
	got, err := l.OrgPurchase("acme", p.ID)
	if err != nil || got.State != PurchaseSucceeded || got.Payment != "pi_1" || got.Reason != "" {
		t.Fatalf("OrgPurchase = %+v, %v", got, err)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("170.50")) || !o.Funded.Equal(d("170.50")) {
		t.Fatalf("after reopen: balance %s funded %s, want 170.50 credited once", o.Balance, o.Funded)
	}
	if ps := pendingPurchases(t, l); len(ps) != 0 {
		t.Fatalf("still pending: %+v", ps)
	}
	if again := startPurchase(t, l, "acme", "120.50", "buy"); again.ID != p.ID || again.State != PurchaseSucceeded {
		t.Fatalf("retry after success and reopen %+v", again)
	}
	check(t, l)
}

func TestOrgPurchaseIsTheOrgsOnly(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "")
	newOrg(t, l, "beta", "")
	p := startPurchase(t, l, "acme", "50", "k")
	for _, tc := range []struct {
		org, id string
		want    error
	}{
		{"beta", p.ID, ErrUnknownPurchase},
		{"acme", "acme-p1-000000000000", ErrUnknownPurchase},
		{"acme", "", ErrUnknownPurchase},
		{"acme", strings.Repeat("x", 300), ErrUnknownPurchase},
		{"nope", p.ID, ErrUnknownOrg},
	} {
		if got, err := l.OrgPurchase(tc.org, tc.id); !errors.Is(err, tc.want) {
			t.Errorf("OrgPurchase(%s, %.20s) = %+v, %v; want %v", tc.org, tc.id, got, err, tc.want)
		}
	}
	if got, err := l.OrgPurchase("acme", p.ID); err != nil || got.ID != p.ID || got.State != PurchasePending {
		t.Fatalf("OrgPurchase of its own = %+v, %v", got, err)
	}
}

// A one-time purchase and auto-recharge are independent: one may be pending
// beside the other, closing one leaves the other's state alone, and a
// declined one-time purchase does not suspend auto-recharge.
func TestDeclinedPurchaseDoesNotSuspendAutoRecharge(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	if _, err := l.SetAutoRecharge("acme", autoRecharge("10.00", "100.00")); err != nil {
		t.Fatal(err)
	}
	declined := startPurchase(t, l, "acme", "60", "declined")
	paid := startPurchase(t, l, "acme", "70", "paid")
	spend(t, l, "c1", 41, "1") // 9.00: below the threshold
	auto := l.PendingPurchaseOf("acme")
	if auto == "" || auto == declined.ID || auto == paid.ID || len(pendingPurchases(t, l)) != 3 {
		t.Fatalf("auto-recharge %q beside one-time %s, %s: pending %+v", auto, declined.ID, paid.ID, pendingPurchases(t, l))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, dir) // which kind each is survives a restart
	defer l.Close()
	if got := l.PendingPurchaseOf("acme"); got != auto {
		t.Fatalf("after reopen the org's auto-recharge is %q, want %q", got, auto)
	}
	reason := "expired_card: Your card has expired."
	if err := l.FailPurchase(declined.ID, reason); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CompletePurchase(paid.ID, "pi_paid"); err != nil {
		t.Fatal(err)
	}
	o := balance(t, l, "acme")
	if o.AutoRecharge.Suspended != "" || !o.AutoRecharge.Enabled || l.PendingPurchaseOf("acme") != auto || !o.Balance.Equal(d("79")) {
		t.Fatalf("after a declined and a paid one-time purchase: %+v, balance %s, pending auto %q", o.AutoRecharge, o.Balance, l.PendingPurchaseOf("acme"))
	}
	ns := outbox(t, l)
	if len(ns) != 1 || ns[0].Kind != NotifyPurchaseFailed || ns[0].Reason != reason || ns[0].Purchase != declined.ID || !ns[0].Amount.Equal(d("60")) {
		t.Fatalf("outbox %+v, want one purchase_failed", ns)
	}
	got, err := l.OrgPurchase("acme", declined.ID)
	if err != nil || got.State != PurchaseFailed || got.Reason != reason {
		t.Fatalf("declined purchase %+v, %v", got, err)
	}
	// Auto-recharge still works: its purchase pays, and the next crossing
	// starts another.
	if _, err := l.CompletePurchase(auto, "pi_auto"); err != nil {
		t.Fatal(err)
	}
	spend(t, l, "c2", 171, "1") // 179 → 8.00
	if next := l.PendingPurchaseOf("acme"); next == "" || next == auto {
		t.Fatalf("no new auto-recharge after the crossing: %q", next)
	}
	check(t, l)
}
