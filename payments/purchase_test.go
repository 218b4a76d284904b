package payments

import (
	"context"
	"errors"
	"testing"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/payments/stripetest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stripe/stripe-go/v85"
)

// buy starts a one-time purchase of acme's.
func buy(t *testing.T, l *ledger.Ledger, amount, key, pm string) ledger.Purchase {
	t.Helper()
	p, err := l.StartPurchase("acme", d(amount), key, pm, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func purchase(t *testing.T, l *ledger.Ledger, id string) ledger.Purchase {
	t.Helper()
	p, err := l.OrgPurchase("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A one-time purchase with a payment method no customer owns is charged
// once, on-session, and credited once.
func TestOneTimePurchasePaidAndCreditedOnce(t *testing.T) {
	srv := stripetest.Start(t)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us"}); err != nil {
		t.Fatal(err)
	}
	p := newPayer(t, l, srv.URL, clock.NewFake(t0), nil)
	pu := buy(t, l, "75.25", "buy-1", "pm_card_visa")
	if next := p.PayDue(context.Background()); !next.IsZero() {
		t.Fatalf("a paid purchase was scheduled again at %v", next)
	}
	p.PayDue(context.Background()) // nothing left to pay
	got := purchase(t, l, pu.ID)
	if got.State != ledger.PurchaseSucceeded || got.Payment == "" || !balance(t, l).Equal(d("75.25")) {
		t.Fatalf("purchase %+v, balance %s: want succeeded and 75.25 credited", got, balance(t, l))
	}
	if n, total := srv.Charges(); n != 1 || total != 7525 || srv.Requests() != 1 {
		t.Fatalf("%d charges of %d cents in %d requests; want one of 7525", n, total, srv.Requests())
	}
	if got := testutil.ToFloat64(p.c.results.WithLabelValues(ResultSucceeded)); got != 1 {
		t.Fatalf("recharges_total{result=succeeded} = %v", got)
	}
	if ns, err := l.Outbox(); err != nil || len(ns) != 0 {
		t.Fatalf("outbox %+v, %v: a bought purchase notifies nobody", ns, err)
	}
	if err := l.CheckHistory(); err != nil {
		t.Fatal(err)
	}
}

// One payer run pays an auto-recharge and one-time purchases side by side;
// the declined one-time purchase fails alone and suspends nothing.
func TestOneTimeDeclineLeavesAutoRechargeAlone(t *testing.T) {
	srv := stripetest.Start(t)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	org(t, l, "pm_card_visa")
	declined := buy(t, l, "60", "declined", "pm_card_chargeDeclinedInsufficientFunds")
	paid := buy(t, l, "70", "paid", "pm_card_visa")
	spend(t, l, "c1", 45) // 5.00: below the threshold, auto-recharge pending
	auto := l.PendingPurchaseOf("acme")
	if auto == "" {
		t.Fatal("no auto-recharge pending")
	}
	p := newPayer(t, l, srv.URL, clock.NewFake(t0), nil)
	if next := p.PayDue(context.Background()); !next.IsZero() {
		t.Fatalf("retry scheduled at %v after final outcomes", next)
	}
	reason := "insufficient_funds: Your card has insufficient funds."
	if got := purchase(t, l, declined.ID); got.State != ledger.PurchaseFailed || got.Reason != reason {
		t.Fatalf("declined purchase %+v", got)
	}
	for _, id := range []string{paid.ID, auto} {
		if got := purchase(t, l, id); got.State != ledger.PurchaseSucceeded {
			t.Fatalf("purchase %+v, want succeeded", got)
		}
	}
	o, _ := l.Org("acme")
	if o.AutoRecharge.Suspended != "" || !o.Balance.Equal(d("175")) {
		t.Fatalf("org %+v balance %s: want auto-recharge on and 5 + 70 + 100", o.AutoRecharge, o.Balance)
	}
	if n, total := srv.Charges(); n != 2 || total != 17000 {
		t.Fatalf("%d charges of %d cents, want 2 of 17000", n, total)
	}
	ns, err := l.Outbox()
	kinds := map[string]string{}
	for _, n := range ns {
		kinds[n.Kind] = n.Reason
	}
	if err != nil || len(ns) != 2 || kinds[ledger.NotifyPurchaseFailed] != reason || kinds[ledger.NotifyRechargeSucceeded] != "" {
		t.Fatalf("outbox %+v, %v: want purchase_failed and recharge_succeeded", ns, err)
	}
	if got := testutil.ToFloat64(p.c.results.WithLabelValues(ResultDeclined)); got != 1 {
		t.Fatalf("declined = %v", got)
	}
}

// The crash the payer already survives for auto-recharge, for a one-time
// purchase: Stripe charged, the ledger did not credit; after a restart the
// same idempotency key replays the payment and the ledger credits once.
func TestOneTimeCrashBetweenPaymentAndCredit(t *testing.T) {
	srv := stripetest.Start(t)
	dir := t.TempDir()
	l := openLedger(t, dir)
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us"}); err != nil {
		t.Fatal(err)
	}
	pu := buy(t, l, "80", "buy", "pm_card_visa")
	p := newPayer(t, l, srv.URL, clock.NewFake(t0), nil)
	var paid string
	p.beforeCredit = func(_ ledger.Purchase, pi *stripe.PaymentIntent) error {
		paid = pi.ID
		return errors.New("crash")
	}
	p.PayDue(context.Background())
	if paid == "" || !balance(t, l).IsZero() {
		t.Fatalf("payment %q, balance %s: want paid and not credited", paid, balance(t, l))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLedger(t, dir)
	defer l.Close()
	p = newPayer(t, l, srv.URL, clock.NewFake(t0), nil)
	p.PayDue(context.Background())
	p.PayDue(context.Background())
	if got := purchase(t, l, pu.ID); got.State != ledger.PurchaseSucceeded || got.Payment != paid || !balance(t, l).Equal(d("80")) {
		t.Fatalf("purchase %+v, balance %s: want succeeded with the first payment %s, 80 credited once", got, balance(t, l), paid)
	}
	if n, total := srv.Charges(); n != 1 || total != 8000 || srv.Requests() != 2 {
		t.Fatalf("%d charges of %d cents in %d requests; want 1 charge, the second request replayed", n, total, srv.Requests())
	}
	if err := l.CheckHistory(); err != nil {
		t.Fatal(err)
	}
}
