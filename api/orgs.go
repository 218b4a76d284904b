// The org resource: create, read and change an org, and its fraud guard.

package api

import (
	"encoding/json"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

func (s *Server) createOrg(ctx *fasthttp.RequestCtx, rq *request) error {
	var req struct {
		ID            string `json:"id"`
		Name          string `json:"name"`
		Country       string `json:"country"`
		Region        string `json:"region"`
		BillingRegion string `json:"billing_region"`
		Currency      string `json:"currency"`
		Timezone      string `json:"timezone"`
		BlockPremium  bool   `json:"block_premium"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	if !rating.KnownCountry(req.Country) {
		return badRequest("country %q: want an ISO 3166 alpha-2 code creditgate dials for (e.g. US, GB, FR)", req.Country)
	}
	if req.Region == "" || len(req.Region) > 64 {
		return badRequest("region: want 1 to 64 characters")
	}
	if req.BillingRegion == "" {
		req.BillingRegion = req.Region
	}
	if len(req.BillingRegion) > 64 {
		return badRequest("billing_region: at most 64 characters")
	}
	o, err := s.ledger.CreateOrg(ledger.Org{ID: req.ID, Name: req.Name, Country: req.Country, Region: req.Region,
		BillingRegion: req.BillingRegion, Currency: req.Currency, Timezone: req.Timezone, BlockPremium: req.BlockPremium})
	if err != nil {
		return err
	}
	rq.target = o.ID
	return s.writeOrg(ctx, 201, o, nil)
}

// patchOrg changes an org's settings: whether it blocks premium-rate
// numbers, and where its notifications go. A change of contacts alone is
// journaled as kind contacts, anything else as org.
func (s *Server) patchOrg(ctx *fasthttp.RequestCtx, rq *request) error {
	id := rq.arg("org")
	var req struct {
		BlockPremium *bool `json:"block_premium"`
		Contacts     *struct {
			Emails        []string `json:"emails"`
			Webhook       string   `json:"webhook"`
			WebhookSecret string   `json:"webhook_secret"`
		} `json:"contacts"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	if req.BlockPremium == nil && req.Contacts == nil {
		return badRequest("nothing to change: give block_premium or contacts")
	}
	if _, err := s.ledger.Org(id); err != nil {
		return err
	}
	// Contacts first: they are the part that can be refused, and a
	// refused request must change nothing.
	if c := req.Contacts; c != nil {
		if _, err := s.ledger.SetContacts(id, ledger.Contacts{Emails: c.Emails, Webhook: c.Webhook, WebhookSecret: c.WebhookSecret}); err != nil {
			return err
		}
	}
	if req.BlockPremium == nil {
		rq.kind = ledger.AuditContacts
	}
	if req.BlockPremium != nil {
		if _, err := s.ledger.SetBlockPremium(id, *req.BlockPremium); err != nil {
			return err
		}
	}
	return s.writeOrgByID(ctx, 200, id, nil)
}

// putFraudGuard replaces the org's fraud-guard limits.
func (s *Server) putFraudGuard(ctx *fasthttp.RequestCtx, org string) error {
	var req struct {
		MaxCalls               int             `json:"max_calls"`
		MaxCallsPerUser        int             `json:"max_calls_per_user"`
		MaxSpendPerHour        json.RawMessage `json:"max_spend_per_hour"`
		MaxSpendPerHourPerUser json.RawMessage `json:"max_spend_per_hour_per_user"`
		AllowHighRisk          bool            `json:"allow_high_risk"`
		MaxChargePerCall       json.RawMessage `json:"max_charge_per_call"`
		MaxCallDurationS       int             `json:"max_call_duration_s"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	fg := ledger.FraudGuard{MaxCalls: req.MaxCalls, MaxCallsPerUser: req.MaxCallsPerUser, AllowHighRisk: req.AllowHighRisk,
		MaxSpendPerHour: decimal.Zero, MaxSpendPerHourPerUser: decimal.Zero, MaxCallDurationS: req.MaxCallDurationS}
	var err error
	if fg.MaxSpendPerHour, err = optionalAmount("max_spend_per_hour", req.MaxSpendPerHour); err != nil {
		return err
	}
	if fg.MaxSpendPerHourPerUser, err = optionalAmount("max_spend_per_hour_per_user", req.MaxSpendPerHourPerUser); err != nil {
		return err
	}
	if fg.MaxChargePerCall, err = optionalAmount("max_charge_per_call", req.MaxChargePerCall); err != nil {
		return err
	}
	o, err := s.ledger.SetFraudGuard(org, fg)
	if err != nil {
		return err
	}
	return s.writeOrg(ctx, 200, o, nil)
}
