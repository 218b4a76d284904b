// Money in and its history: one-time funding, auto-recharge settings, the
// funding advisor's cache, and the paged transactions.

package api

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

const adviceTTL = 5 * time.Minute

// advice is the org's funding advice from this node's books, kept
// adviceTTL.
func (s *Server) advice(org string) (ledger.Advice, error) {
	now := s.now()
	if a, ok := s.cachedAdvice(org, now); ok {
		return a, nil
	}
	a, err := s.ledger.Advise(org, now)
	if err != nil {
		return a, err
	}
	s.keepAdvice(org, a)
	return a, nil
}

// cachedAdvice is the advice kept under key, if computed less than
// adviceTTL before now.
func (s *Server) cachedAdvice(key string, now time.Time) (ledger.Advice, bool) {
	s.adviceMu.Lock()
	a, ok := s.adviceCache[key]
	s.adviceMu.Unlock()
	return a, ok && now.Sub(a.ComputedAt) < adviceTTL && !now.Before(a.ComputedAt)
}

// keepAdvice keeps a under key (the cache is dropped whole past 100,000
// keys: a bound, not an eviction policy worth more).
func (s *Server) keepAdvice(key string, a ledger.Advice) {
	s.adviceMu.Lock()
	if s.adviceCache == nil || len(s.adviceCache) > 100_000 {
		s.adviceCache = map[string]ledger.Advice{}
	}
	s.adviceCache[key] = a
	s.adviceMu.Unlock()
}

// putAutoRecharge replaces the org's auto-recharge setting (and lifts a
// suspension after a declined card).
func (s *Server) putAutoRecharge(ctx *fasthttp.RequestCtx, org string) error {
	var req struct {
		Enabled       bool            `json:"enabled"`
		Threshold     json.RawMessage `json:"threshold"`
		Amount        json.RawMessage `json:"amount"`
		PaymentMethod string          `json:"payment_method"`
		Customer      string          `json:"customer"`
		Incident      string          `json:"incident"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	ar := ledger.AutoRecharge{Enabled: req.Enabled, PaymentMethod: req.PaymentMethod, Customer: req.Customer,
		Incident: req.Incident, Threshold: decimal.Zero, Amount: decimal.Zero}
	if req.Enabled || len(req.Threshold) > 0 || len(req.Amount) > 0 {
		var err error
		if ar.Threshold, err = parseAmountOrZero(req.Threshold); err != nil {
			return fmt.Errorf("threshold: %w", err)
		}
		if ar.Amount, err = parseAmount(req.Amount); err != nil {
			return fmt.Errorf("amount: %w", err)
		}
	}
	if req.Enabled && !s.payments {
		return fmt.Errorf("%w: no payment provider is configured (payments.stripe_api_key), so auto-recharge could not pay", errNoPayments)
	}
	if _, err := s.ledger.SetAutoRecharge(org, ar); err != nil {
		return err
	}
	return s.writeOrgByID(ctx, 200, org, nil)
}

func (s *Server) fund(ctx *fasthttp.RequestCtx, rq *request) error {
	org := rq.arg("org")
	var req struct {
		Amount         json.RawMessage `json:"amount"`
		IdempotencyKey string          `json:"idempotency_key"`
		// Incident is the support incident that allows funding an org
		// whose region differs from its billing region.
		Incident string `json:"incident"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	amount, err := parseAmount(req.Amount)
	if err != nil {
		return err
	}
	if req.IdempotencyKey == "" {
		return badRequest("idempotency_key is required, so a retried request funds once")
	}
	en, err := s.ledger.FundAcrossRegions(org, amount, req.IdempotencyKey, req.Incident)
	if err != nil {
		return err
	}
	// A retry gets the first answer's transaction, as 200, not 201: the
	// client can tell it created nothing.
	status := 201
	if en.Replayed {
		status = 200
	}
	if o, err := s.ledger.Org(org); err == nil {
		rq.after = map[string]any{"balance": money(o.Balance), "available": money(o.Available()), "held": money(o.Held),
			"transaction": viewEntry(en), "replayed": en.Replayed}
	}
	return s.writeOrgByID(ctx, status, org, map[string]any{"transaction": viewEntry(en), "replayed": en.Replayed})
}

// transactions pages through an org's ledger entries, oldest first:
// ?after=SEQ&limit=N (default 1000, at most 10000); next_after is the
// cursor of the next page, absent on the last one. In cluster mode the
// cluster's, unless ?scope=local (cluster_transactions.go); after is then
// the previous page's next_after, a cursor of every source's position.
func (s *Server) transactions(ctx *fasthttp.RequestCtx, org string) error {
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	local, err := localOnly(ctx)
	if err != nil {
		return err
	}
	fanOut := s.cluster.Load() != nil && !local
	var after uint64
	if !fanOut {
		if after, err = uintArg(ctx, "after", 0, math.MaxUint64); err != nil {
			return err
		}
	}
	limit, err := uintArg(ctx, "limit", 1000, 10000)
	if err != nil {
		return err
	}
	if limit == 0 {
		return badRequest("limit=0: want 1 to 10000")
	}
	if fanOut {
		return s.clusterTransactions(ctx, org, string(ctx.QueryArgs().Peek("after")), int(limit))
	}
	es, next, err := s.localTransactions(org, after, int(limit))
	if err != nil {
		return err
	}
	resp := map[string]any{"transactions": es}
	if next != 0 {
		resp["next_after"] = next
	}
	writeJSON(ctx, 200, resp)
	return nil
}
