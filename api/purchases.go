// One-time purchases ("buy credits"): an org's admin asks for credits paid
// through the payment provider; the payer (package payments) charges the
// card and the ledger credits the org once the payment succeeded.

package api

import (
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

// Purchases is what the API needs of the ledger for one-time purchases,
// apart from ledger.Books so that a Books without them (cluster mode, for
// now) needs nothing new; *ledger.Ledger satisfies it. Its methods'
// contracts are the ledger's (ledger/purchase.go): StartPurchase is durable
// when it returns and idempotent per (org, key), a retry answering the
// first purchase with Replayed set.
type Purchases interface {
	StartPurchase(org string, amount decimal.Decimal, key, paymentMethod, customer, incident string) (ledger.Purchase, error)
	OrgPurchase(org, id string) (ledger.Purchase, error)
}

// SetPurchases gives the API the one-time purchases; without them (nil)
// both purchase routes answer 409 payments_not_configured. Starting one
// also needs SetPayments(true): a purchase nothing pays would wait forever.
func (s *Server) SetPurchases(p Purchases) { s.purchases = p }

// purchaseView is a purchase on the wire.
type purchaseView struct {
	ID             string    `json:"id"`
	Org            string    `json:"org"`
	Kind           string    `json:"kind"`
	Amount         string    `json:"amount"`
	Currency       string    `json:"currency"`
	State          string    `json:"state"`
	Reason         string    `json:"reason,omitempty"`
	PaymentMethod  string    `json:"payment_method"`
	Customer       string    `json:"customer,omitempty"`
	Payment        string    `json:"payment,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	Incident       string    `json:"incident,omitempty"`
	Created        time.Time `json:"created"`
	Closed         time.Time `json:"closed,omitzero"`
}

func viewPurchase(p ledger.Purchase) purchaseView {
	kind := p.Kind
	if kind == "" {
		kind = ledger.PurchaseAutoRecharge // stored before purchases had kinds
	}
	return purchaseView{ID: p.ID, Org: p.Org, Kind: kind, Amount: money(p.Amount), Currency: p.Currency, State: p.State,
		Reason: p.Reason, PaymentMethod: p.PaymentMethod, Customer: p.Customer, Payment: p.Payment, IdempotencyKey: p.Key,
		Incident: p.Incident, Created: p.Created, Closed: p.Closed}
}

// startPurchase: POST /v1/orgs/{org}/purchases. 202 with the pending
// purchase (the payer charges it next; GET it for the outcome), 200 with
// the purchase as it is now on a retry with the same key.
func (s *Server) startPurchase(ctx *fasthttp.RequestCtx, org string) error {
	var req struct {
		Amount         json.RawMessage `json:"amount"`
		IdempotencyKey string          `json:"idempotency_key"`
		PaymentMethod  string          `json:"payment_method"`
		Customer       string          `json:"customer"`
		Incident       string          `json:"incident"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	amount, err := parseAmount(req.Amount)
	if err != nil {
		return err
	}
	if req.IdempotencyKey == "" {
		return badRequest("idempotency_key is required, so a retried request buys once")
	}
	if s.purchases == nil || !s.payments {
		return fmt.Errorf("%w: no payment provider is configured (payments.stripe_api_key), so a purchase could not be paid", errNoPayments)
	}
	p, err := s.purchases.StartPurchase(org, amount, req.IdempotencyKey, req.PaymentMethod, req.Customer, req.Incident)
	if err != nil {
		return err
	}
	status := 202
	if p.Replayed {
		status = 200
	}
	ctx.Response.Header.Set("Location", "/v1/orgs/"+url.PathEscape(org)+"/purchases/"+url.PathEscape(p.ID))
	writeJSON(ctx, status, viewPurchase(p))
	return nil
}

// getPurchase: GET /v1/orgs/{org}/purchases/{id}, one-time or
// auto-recharge; another org's id is 404 unknown_purchase.
func (s *Server) getPurchase(ctx *fasthttp.RequestCtx, org, id string) error {
	if s.purchases == nil {
		return fmt.Errorf("%w: this ledger keeps no purchases the API can read", errNoPayments)
	}
	p, err := s.purchases.OrgPurchase(org, id)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, viewPurchase(p))
	return nil
}
