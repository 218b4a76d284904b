package payments

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/ledgertest"
	"github.com/creditgate/creditgate/payments/stripetest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shopspring/decimal"
	"github.com/stripe/stripe-go/v85"
)

var t0 = time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

func openLedger(t *testing.T, dir string) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(dir, ledger.Options{Now: func() time.Time { return t0 }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// org creates acme with 50.00 and auto-recharge of 100.00 below 10.00 on pm.
func org(t *testing.T, l *ledger.Ledger, pm string) {
	t.Helper()
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fund("acme", d("50"), "initial"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SetAutoRecharge("acme", ledger.AutoRecharge{Enabled: true, Threshold: d("10"), Amount: d("100"),
		PaymentMethod: pm, Customer: "cus_acme"}); err != nil {
		t.Fatal(err)
	}
}

// spend runs one answered call on credits costing n × 1.00.
func spend(t *testing.T, l *ledger.Ledger, id string, n int) {
	ledgertest.Spend(t, l, "acme", id, n, t0)
}

func newPayer(t *testing.T, l *ledger.Ledger, url string, clk clock.Clock, reg prometheus.Registerer) *Payer {
	t.Helper()
	p, err := New(l, Config{APIKey: "sk_test_creditgate", BaseURL: url, Backoff: time.Second, MaxBackoff: 8 * time.Second, MaxAttempts: 5}, clk, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func balance(t *testing.T, l *ledger.Ledger) decimal.Decimal {
	t.Helper()
	o, err := l.Org("acme")
	if err != nil {
		t.Fatal(err)
	}
	return o.Balance
}

func TestThresholdCrossingRechargesOnce(t *testing.T) {
	srv := stripetest.Start(t)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	org(t, l, "pm_card_visa")
	reg := prometheus.NewRegistry()
	p := newPayer(t, l, srv.URL, clock.Real{}, reg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	defer func() { cancel(); <-done }()

	spend(t, l, "c1", 30) // 20.00 left
	spend(t, l, "c2", 11) // 9.00: below the threshold
	want := d("109")
	deadline := time.Now().Add(10 * time.Second)
	for !balance(t, l).Equal(want) {
		if time.Now().After(deadline) {
			t.Fatalf("balance %s, want %s after one recharge", balance(t, l), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	spend(t, l, "c3", 5) // 104.00: above the threshold, nothing more
	if n, total := srv.Charges(); n != 1 || total != 10000 {
		t.Fatalf("Stripe charged %d payments, %d cents; want one of 10000", n, total)
	}
	if got := testutil.ToFloat64(p.c.results.WithLabelValues(ResultSucceeded)); got != 1 {
		t.Fatalf("recharges_total{result=succeeded} = %v", got)
	}
	ns, err := l.Outbox()
	if err != nil || len(ns) != 1 || ns[0].Kind != ledger.NotifyRechargeSucceeded || !ns[0].Balance.Equal(want) {
		t.Fatalf("outbox %+v, %v", ns, err)
	}
	if err := l.CheckHistory(); err != nil {
		t.Fatal(err)
	}
}

func TestDeclinesStopAndSaySo(t *testing.T) {
	srv := stripetest.Start(t)
	for _, tc := range []struct{ pm, reason string }{
		{"pm_card_chargeDeclinedExpiredCard", "expired_card: Your card has expired."},
		{"pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds: Your card has insufficient funds."},
		{"pm_card_chargeDeclined", "generic_decline: Your card was declined."},
	} {
		t.Run(tc.pm, func(t *testing.T) {
			l := openLedger(t, t.TempDir())
			defer l.Close()
			org(t, l, tc.pm)
			clk := clock.NewFake(t0)
			p := newPayer(t, l, srv.URL, clk, nil)
			spend(t, l, "c1", 45)
			before := srv.Requests()
			if next := p.PayDue(context.Background()); !next.IsZero() {
				t.Fatalf("a decline was scheduled for retry at %v", next)
			}
			// No retry, however long we wait or however much is spent.
			clk.Advance(time.Hour)
			spend(t, l, "c2", 1)
			p.PayDue(context.Background())
			if got := srv.Requests() - before; got != 1 {
				t.Fatalf("%d payment requests, want 1", got)
			}
			o, _ := l.Org("acme")
			if o.AutoRecharge.Suspended != tc.reason || !o.Balance.Equal(d("4")) {
				t.Fatalf("org %+v: want suspended for %q, balance 4", o.AutoRecharge, tc.reason)
			}
			ns, _ := l.Outbox()
			if len(ns) != 1 || ns[0].Kind != ledger.NotifyRechargeFailed || ns[0].Reason != tc.reason {
				t.Fatalf("outbox %+v", ns)
			}
			if got := testutil.ToFloat64(p.c.results.WithLabelValues(ResultDeclined)); got != 1 {
				t.Fatalf("declined = %v", got)
			}
		})
	}
}

func TestOutageRetriesWithBackoff(t *testing.T) {
	srv := stripetest.Start(t)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	org(t, l, "pm_card_visa")
	clk := clock.NewFake(t0)
	p := newPayer(t, l, srv.URL, clk, nil)
	spend(t, l, "c1", 45)
	srv.FailNext(3)
	var gaps []time.Duration
	for i := 0; i < 3; i++ {
		next := p.PayDue(context.Background())
		if next.IsZero() {
			t.Fatalf("attempt %d: no retry scheduled", i+1)
		}
		gaps = append(gaps, next.Sub(clk.Now()))
		// Before the backoff has passed, nothing is tried.
		reqs := srv.Requests()
		p.PayDue(context.Background())
		if srv.Requests() != reqs {
			t.Fatal("retried before the backoff passed")
		}
		clk.Advance(next.Sub(clk.Now()))
	}
	if gaps[0] != time.Second || gaps[1] != 2*time.Second || gaps[2] != 4*time.Second {
		t.Fatalf("backoff %v, want 1s 2s 4s", gaps)
	}
	if next := p.PayDue(context.Background()); !next.IsZero() {
		t.Fatal("still retrying after the outage")
	}
	if !balance(t, l).Equal(d("105")) {
		t.Fatalf("balance %s, want 105", balance(t, l))
	}
	if n, _ := srv.Charges(); n != 1 {
		t.Fatalf("%d charges", n)
	}
	if got := testutil.ToFloat64(p.c.results.WithLabelValues(ResultRetry)); got != 3 {
		t.Fatalf("retry = %v, want 3", got)
	}
}

func TestOutageGivesUpAndSays(t *testing.T) {
	srv := stripetest.Start(t)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	org(t, l, "pm_card_visa")
	clk := clock.NewFake(t0)
	p := newPayer(t, l, srv.URL, clk, nil)
	spend(t, l, "c1", 45)
	srv.FailNext(100)
	for i := 0; i < 5; i++ {
		next := p.PayDue(context.Background())
		if next.IsZero() {
			break
		}
		clk.Advance(next.Sub(clk.Now()))
	}
	o, _ := l.Org("acme")
	if !strings.HasPrefix(o.AutoRecharge.Suspended, "payment provider unavailable: api_error (HTTP 500)") {
		t.Fatalf("suspended %q", o.AutoRecharge.Suspended)
	}
	if got := srv.Requests(); got != 5 {
		t.Fatalf("%d attempts, want MaxAttempts 5", got)
	}
}

// A crash after Stripe charged the card and before the ledger credited it:
// on restart the purchase is still pending, the payment is asked for again
// with the same idempotency key, Stripe replays it, and the ledger credits
// once.
func TestCrashBetweenPaymentAndCredit(t *testing.T) {
	srv := stripetest.Start(t)
	dir := t.TempDir()
	l := openLedger(t, dir)
	org(t, l, "pm_card_visa")
	spend(t, l, "c1", 45)
	p := newPayer(t, l, srv.URL, clock.NewFake(t0), nil)
	var paid string
	p.beforeCredit = func(_ ledger.Purchase, pi *stripe.PaymentIntent) error {
		paid = pi.ID
		return errors.New("crash")
	}
	p.PayDue(context.Background())
	if paid == "" || !balance(t, l).Equal(d("5")) {
		t.Fatalf("payment %q, balance %s: want paid and not credited", paid, balance(t, l))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLedger(t, dir)
	defer l.Close()
	ps, err := l.PendingPurchases()
	if err != nil || len(ps) != 1 {
		t.Fatalf("pending after restart: %+v, %v", ps, err)
	}
	p = newPayer(t, l, srv.URL, clock.NewFake(t0), nil)
	p.PayDue(context.Background())
	p.PayDue(context.Background())
	if !balance(t, l).Equal(d("105")) {
		t.Fatalf("balance %s, want 105: credited once", balance(t, l))
	}
	pu, _, _ := l.Purchase(ps[0].ID)
	if pu.State != ledger.PurchaseSucceeded || pu.Payment != paid {
		t.Fatalf("purchase %+v, want succeeded with the first payment %s", pu, paid)
	}
	if n, total := srv.Charges(); n != 1 || total != 10000 || srv.Requests() != 2 {
		t.Fatalf("%d charges of %d cents in %d requests; want 1 charge, the second request replayed", n, total, srv.Requests())
	}
	if err := l.CheckHistory(); err != nil {
		t.Fatal(err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	l := openLedger(t, t.TempDir())
	defer l.Close()
	// Each case is a configuration New accepts but for one field.
	d := configs.Default().Payments
	good := Config{APIKey: "sk_test_x", BaseURL: d.StripeBaseURL, Backoff: d.RetryBackoff, MaxBackoff: d.MaxBackoff,
		MaxAttempts: d.MaxAttempts}
	if _, err := New(l, good, clock.Real{}, nil, nil); err != nil {
		t.Fatalf("New refused a good config: %v", err)
	}
	for name, set := range map[string]func(*Config){
		"no API key":                func(c *Config) { c.APIKey = "" },
		"ftp base URL":              func(c *Config) { c.BaseURL = "ftp://stripe" },
		"no base URL":               func(c *Config) { c.BaseURL = "" },
		"no backoff":                func(c *Config) { c.Backoff = 0 },
		"max backoff below backoff": func(c *Config) { c.MaxBackoff = c.Backoff / 2 },
		"no attempts":               func(c *Config) { c.MaxAttempts = 0 },
	} {
		cfg := good
		set(&cfg)
		if _, err := New(l, cfg, clock.Real{}, nil, nil); err == nil {
			t.Errorf("%s: New(%+v) accepted", name, cfg)
		}
	}
	for _, cfg := range []Config{{}, {APIKey: "sk_test_x", BaseURL: "ftp://stripe"}} {
		if _, err := New(l, cfg, clock.Real{}, nil, nil); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		pi     *stripe.PaymentIntent
		err    error
		result string
	}{
		{&stripe.PaymentIntent{Status: stripe.PaymentIntentStatusSucceeded}, nil, ResultSucceeded},
		{&stripe.PaymentIntent{Status: stripe.PaymentIntentStatusProcessing}, nil, ResultRetry},
		{&stripe.PaymentIntent{Status: stripe.PaymentIntentStatusRequiresAction}, nil, ResultDeclined},
		{nil, &stripe.Error{Type: stripe.ErrorTypeCard, Code: stripe.ErrorCodeExpiredCard}, ResultDeclined},
		{nil, &stripe.Error{Type: stripe.ErrorTypeRateLimit, HTTPStatusCode: 429}, ResultRetry},
		{nil, &stripe.Error{Type: stripe.ErrorTypeAPI, HTTPStatusCode: 503}, ResultRetry},
		{nil, &stripe.Error{Type: stripe.ErrorTypeInvalidRequest, HTTPStatusCode: 400, Code: "resource_missing"}, ResultFailed},
		{nil, errors.New("dial tcp: connection refused"), ResultRetry},
	} {
		if got, reason := classify(tc.pi, tc.err); got != tc.result {
			t.Errorf("classify(%v, %v) = %s (%s), want %s", tc.pi, tc.err, got, reason, tc.result)
		}
	}
}
