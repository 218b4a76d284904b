package api

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/payments"
	"github.com/creditgate/creditgate/payments/stripetest"
)

type purchaseBody struct {
	ID, Org, Kind, Amount, Currency, State, Reason, Payment string
	IdempotencyKey                                          string `json:"idempotency_key"`
	Created                                                 time.Time
}

func (r response) purchase(t *testing.T) purchaseBody {
	t.Helper()
	var p purchaseBody
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("%s: %v", r.body, err)
	}
	return p
}

// runPayer runs a real payer against srv until the test ends, as
// cmd/creditgate does.
func runPayer(t *testing.T, h *harness, srv *stripetest.Server) {
	t.Helper()
	p, err := payments.New(h.ledger, payments.Config{APIKey: "sk_test_creditgate", BaseURL: srv.URL, Backoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond, MaxAttempts: 5}, clock.Real{}, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// settled GETs the purchase until the payer has closed it (bounded: a
// purchase still pending after 20 s fails the test).
func (h *harness) settled(org, id string) purchaseBody {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p := h.mustDo("GET", "/v1/orgs/"+org+"/purchases/"+id, "", 200).purchase(h.t)
		if p.State != "pending" {
			return p
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("purchase %s still pending", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Buying credits end to end: the API starts a purchase, the real payer
// charges it on stripe-mock, the org is credited exactly the amount once; a
// declining card fails with the reason and moves no money.
func TestBuyCreditsThroughStripe(t *testing.T) {
	stripe := stripetest.Start(t)
	h := setup(t)
	buy := `{"amount":"75.00","idempotency_key":"buy-1","payment_method":"pm_card_visa"}`
	if r := h.do("POST", "/v1/orgs/acme/purchases", buy); r.status != 409 || r.errorCode() != "payments_not_configured" {
		t.Fatalf("without purchases: %d %s", r.status, r.body)
	}
	h.srv.SetPurchases(h.ledger)
	if r := h.do("POST", "/v1/orgs/acme/purchases", buy); r.status != 409 || r.errorCode() != "payments_not_configured" {
		t.Fatalf("without a payment provider: %d %s", r.status, r.body)
	}
	h.srv.SetPayments(true)
	runPayer(t, h, stripe)
	before := h.org("acme")["balance"]

	start := time.Now()
	r := h.mustDo("POST", "/v1/orgs/acme/purchases", buy, 202)
	p := r.purchase(t)
	if p.Org != "acme" || p.Kind != "one_time" || p.Amount != "75.00" || p.Currency != "USD" || p.State != "pending" ||
		p.IdempotencyKey != "buy-1" || p.Created.IsZero() || r.header.Get("Location") != "/v1/orgs/acme/purchases/"+p.ID {
		t.Fatalf("202 %s (Location %q)", r.body, r.header.Get("Location"))
	}
	paid := h.settled("acme", p.ID)
	t.Logf("POST to succeeded (stripe-mock, real payer): %v", time.Since(start))
	if paid.State != "succeeded" || paid.Payment == "" || paid.Reason != "" || paid.ID != p.ID {
		t.Fatalf("after the payer: %+v", paid)
	}
	if before != "50.00" || h.org("acme")["balance"] != "125.00" {
		t.Fatalf("balance %v → %v, want 50.00 → 125.00", before, h.org("acme")["balance"])
	}
	// A retry answers the purchase as it is now and buys nothing more.
	again := h.mustDo("POST", "/v1/orgs/acme/purchases", buy, 200).purchase(t)
	if again != paid {
		t.Fatalf("retry %+v, want %+v", again, paid)
	}
	var tx struct {
		Transactions []struct{ Kind, Amount, Balance string } `json:"transactions"`
	}
	_ = json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme/transactions", "", 200).body, &tx)
	last := tx.Transactions[len(tx.Transactions)-1]
	if len(tx.Transactions) != 2 || last.Kind != "purchase" || last.Amount != "75.00" || last.Balance != "125.00" {
		t.Fatalf("transactions %+v, want the funding and one purchase", tx.Transactions)
	}

	start = time.Now()
	declined := h.mustDo("POST", "/v1/orgs/acme/purchases",
		`{"amount":"60.00","idempotency_key":"buy-2","payment_method":"pm_card_chargeDeclined"}`, 202).purchase(t)
	failed := h.settled("acme", declined.ID)
	t.Logf("POST to failed (declined card): %v; %d requests reached Stripe", time.Since(start), stripe.Requests())
	if failed.State != "failed" || failed.Reason != "generic_decline: Your card was declined." || failed.Payment != "" {
		t.Fatalf("declined card: %+v", failed)
	}
	o := h.org("acme")
	if o["balance"] != "125.00" {
		t.Fatalf("balance %v after a decline, want 125.00", o["balance"])
	}
	if ar := o["auto_recharge"].(map[string]any); ar["suspended"] != nil {
		t.Fatalf("a declined purchase suspended auto-recharge: %v", ar)
	}
	if n, total := stripe.Charges(); n != 1 || total != 7500 {
		t.Fatalf("Stripe charged %d payments of %d cents; want one of 7500", n, total)
	}

	// Another org cannot read acme's purchases, nor an unknown one.
	for _, path := range []string{"/v1/orgs/split/purchases/" + p.ID, "/v1/orgs/acme/purchases/acme-p1-000000000000"} {
		if r := h.do("GET", path, ""); r.status != 404 || r.errorCode() != "unknown_purchase" {
			t.Errorf("GET %s: %d %s", path, r.status, r.body)
		}
	}
	if r := h.do("GET", "/v1/orgs/nope/purchases/"+p.ID, ""); r.status != 404 || r.errorCode() != "unknown_org" {
		t.Errorf("GET of an unknown org: %d %s", r.status, r.body)
	}
	if err := h.ledger.CheckHistory(); err != nil {
		t.Fatal(err)
	}
}

// Every refusal of POST …/purchases answers its code and changes nothing.
func TestBuyCreditsRefusals(t *testing.T) {
	h := setup(t)
	h.srv.SetPurchases(h.ledger)
	h.srv.SetPayments(true)
	h.mustDo("POST", "/v1/orgs/acme/purchases", `{"amount":"60.00","idempotency_key":"taken","payment_method":"pm_card_visa"}`, 202)
	for _, tc := range []struct {
		name, org, body string
		status          int
		code            string
	}{
		{"below minimum", "acme", `{"amount":"25.00","idempotency_key":"k","payment_method":"pm_card_visa"}`, 422, "below_minimum"},
		{"amount as number", "acme", `{"amount":75,"idempotency_key":"k","payment_method":"pm_card_visa"}`, 422, "invalid_amount"},
		{"three places", "acme", `{"amount":"75.001","idempotency_key":"k","payment_method":"pm_card_visa"}`, 422, "invalid_amount"},
		{"no amount", "acme", `{"idempotency_key":"k","payment_method":"pm_card_visa"}`, 422, "invalid_amount"},
		{"no key", "acme", `{"amount":"75.00","payment_method":"pm_card_visa"}`, 422, "invalid_request"},
		{"card number", "acme", `{"amount":"75.00","idempotency_key":"k","payment_method":"4242424242424242"}`, 422, "invalid_request"},
		{"no payment method", "acme", `{"amount":"75.00","idempotency_key":"k"}`, 422, "invalid_request"},
		{"bad customer", "acme", `{"amount":"75.00","idempotency_key":"k","payment_method":"pm_card_visa","customer":"acme"}`, 422, "invalid_request"},
		{"unknown field", "acme", `{"amount":"75.00","idempotency_key":"k","payment_method":"pm_card_visa","card":"4242"}`, 400, "bad_json"},
		{"key used with another amount", "acme", `{"amount":"70.00","idempotency_key":"taken","payment_method":"pm_card_visa"}`, 409, "duplicate_idempotency_key"},
		{"region mismatch", "split", `{"amount":"75.00","idempotency_key":"k","payment_method":"pm_card_visa"}`, 409, "region_mismatch"},
		{"unknown org", "nope", `{"amount":"75.00","idempotency_key":"k","payment_method":"pm_card_visa"}`, 404, "unknown_org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, split := h.org("acme"), h.org("split")
			pending, err := h.ledger.PendingPurchases()
			if err != nil {
				t.Fatal(err)
			}
			r := h.do("POST", "/v1/orgs/"+tc.org+"/purchases", tc.body)
			if r.status != tc.status || r.errorCode() != tc.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tc.status, tc.code)
			}
			after, err := h.ledger.PendingPurchases()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h.org("acme"), before) || !reflect.DeepEqual(h.org("split"), split) || len(after) != len(pending) {
				t.Fatal("the refusal changed something")
			}
		})
	}
	// With the incident that resolved the region mismatch, split may buy.
	p := h.mustDo("POST", "/v1/orgs/split/purchases",
		`{"amount":"75.00","idempotency_key":"k","payment_method":"pm_card_visa","incident":"INC-77"}`, 202).purchase(t)
	if p.Org != "split" || p.State != "pending" {
		t.Fatalf("with an incident: %+v", p)
	}
}
