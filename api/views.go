// The JSON views: what the API answers for an org and a ledger entry.

package api

import (
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

type orgView struct {
	ID            string           `json:"id"`
	Name          string           `json:"name"`
	Country       string           `json:"country"`
	Region        string           `json:"region"`
	BillingRegion string           `json:"billing_region"`
	Currency      string           `json:"currency"`
	Balance       string           `json:"balance"`
	Available     string           `json:"available"`
	Held          string           `json:"held"`
	Timezone      string           `json:"timezone"`
	BlockPremium  bool             `json:"block_premium"`
	Pools         []poolView       `json:"pools"`
	TollFree      []tollFree       `json:"toll_free"`
	CreatedAt     time.Time        `json:"created_at"`
	AutoRecharge  autoRechargeView `json:"auto_recharge"`
	Contacts      contactsView     `json:"contacts"`
	Forecast      *forecastView    `json:"forecast,omitempty"`
	FraudGuard    fraudGuardView   `json:"fraud_guard"`

	// Cluster mode only (cluster_org.go). The cluster's view: Partial
	// says the held figures and the forecast lack the nodes named in
	// Unavailable. A node's own view (?scope=local): Node is the node,
	// AdviceInputs its forecast's inputs when asked (?advice_at=).
	Partial      *bool                `json:"partial,omitempty"`
	Unavailable  *[]Unavailable       `json:"unavailable,omitempty"`
	Node         string               `json:"node,omitempty"`
	AdviceInputs *ledger.AdviceInputs `json:"advice_inputs,omitempty"`
}

// fraudGuardView is an org's fraud guard; 0 and "0.00" mean no limit.
type fraudGuardView struct {
	MaxCalls               int    `json:"max_calls"`
	MaxCallsPerUser        int    `json:"max_calls_per_user"`
	MaxSpendPerHour        string `json:"max_spend_per_hour"`
	MaxSpendPerHourPerUser string `json:"max_spend_per_hour_per_user"`
	AllowHighRisk          bool   `json:"allow_high_risk"`
	MaxChargePerCall       string `json:"max_charge_per_call"`
	MaxCallDurationS       int    `json:"max_call_duration_s"`
}

// forecastView is the funding advisor's answer (ledger.Advise documents
// the formula).
type forecastView struct {
	Days               int        `json:"days"`
	Spend              string     `json:"spend"`
	BurnPerDay         string     `json:"burn_per_day"`
	P95Day             string     `json:"p95_day"`
	ZeroAt             *time.Time `json:"zero_at"` // null: nothing is being spent
	SuggestedThreshold string     `json:"suggested_threshold"`
	SuggestedAmount    string     `json:"suggested_amount"`
	ComputedAt         time.Time  `json:"computed_at"`
}

type autoRechargeView struct {
	Enabled       bool   `json:"enabled"`
	Threshold     string `json:"threshold"`
	Amount        string `json:"amount"`
	PaymentMethod string `json:"payment_method,omitempty"`
	Customer      string `json:"customer,omitempty"`
	Incident      string `json:"incident,omitempty"`
	// Suspended says why purchases stopped (a declined card); put the
	// setting again to resume.
	Suspended string `json:"suspended,omitempty"`
	// Pending is the purchase being paid now, if any.
	Pending string `json:"pending,omitempty"`
}

// contactsView never shows the webhook secret back.
type contactsView struct {
	Emails        []string `json:"emails"`
	Webhook       string   `json:"webhook,omitempty"`
	WebhookSigned bool     `json:"webhook_signed"`
}

// tollFree is one of an org's toll-free numbers and where its calls go.
type tollFree struct {
	Number string `json:"number"`
	Trunk  string `json:"trunk,omitempty"`
}

// poolView is a minute pool of the current month, in whole minutes.
type poolView struct {
	Plan      string `json:"plan"`
	Month     string `json:"month"`
	Total     int    `json:"total"`
	Used      int    `json:"used"`
	Held      int    `json:"held"`
	Available int    `json:"available"`
	Licensed  int    `json:"licensed"`
}

// viewOrg shows an org with its pools of the month that is current for it
// and its funding forecast.
func (s *Server) viewOrg(o ledger.Org) (orgView, error) {
	v, err := s.viewOrgFacts(o)
	if err != nil {
		return v, err
	}
	if a, err := s.advice(o.ID); err == nil {
		v.Forecast = s.viewForecast(a, o.Available())
	} else {
		s.log.Warn("funding advice unavailable", "org", o.ID, "err", err)
	}
	return v, nil
}

// viewOrgFacts is viewOrg without the forecast (cluster_org.go computes
// the cluster's).
func (s *Server) viewOrgFacts(o ledger.Org) (orgView, error) {
	v := orgView{ID: o.ID, Name: o.Name, Country: o.Country, Region: o.Region, BillingRegion: o.BillingRegion,
		Currency: o.Currency, Balance: money(o.Balance), Available: money(o.Available()), Held: money(o.Held),
		Timezone: o.Timezone, BlockPremium: o.BlockPremium, CreatedAt: o.CreatedAt, TollFree: []tollFree{},
		AutoRecharge: s.viewAutoRecharge(o), Contacts: viewContacts(o.Contacts), FraudGuard: viewFraudGuard(o.FraudGuard)}
	for _, tf := range s.ledger.TollFreeNumbers(o.ID) {
		v.TollFree = append(v.TollFree, tollFree{Number: "+" + tf.Number, Trunk: tf.Trunk})
	}
	if v.Timezone == "" {
		v.Timezone = "UTC"
	}
	pools, err := s.ledger.Pools(o.ID, s.now())
	if err != nil {
		return v, err
	}
	for _, p := range pools {
		v.Pools = append(v.Pools, poolView{Plan: p.Plan, Month: p.Month, Total: p.Total, Used: p.Used, Held: p.Held,
			Available: p.Available(), Licensed: p.Licensed})
	}
	return v, nil
}

// viewForecast shows advice, its zero time for the money available now.
func (s *Server) viewForecast(a ledger.Advice, available decimal.Decimal) *forecastView {
	f := &forecastView{Days: a.Days, Spend: money(a.Spend), BurnPerDay: money(a.BurnPerDay), P95Day: money(a.P95Day),
		SuggestedThreshold: money(a.Threshold), SuggestedAmount: money(a.Amount), ComputedAt: a.ComputedAt}
	if z := a.ZeroAfter(available, s.now()); !z.IsZero() {
		f.ZeroAt = &z
	}
	return f
}

func (s *Server) viewAutoRecharge(o ledger.Org) autoRechargeView {
	return autoRechargeView{Enabled: o.AutoRecharge.Enabled, Threshold: money(o.AutoRecharge.Threshold),
		Amount: money(o.AutoRecharge.Amount), PaymentMethod: o.AutoRecharge.PaymentMethod, Customer: o.AutoRecharge.Customer,
		Incident: o.AutoRecharge.Incident, Suspended: o.AutoRecharge.Suspended, Pending: s.ledger.PendingPurchaseOf(o.ID)}
}

func viewContacts(c ledger.Contacts) contactsView {
	return contactsView{Emails: append([]string{}, c.Emails...), Webhook: c.Webhook, WebhookSigned: c.WebhookSecret != ""}
}

func viewFraudGuard(fg ledger.FraudGuard) fraudGuardView {
	return fraudGuardView{MaxCalls: fg.MaxCalls, MaxCallsPerUser: fg.MaxCallsPerUser,
		MaxSpendPerHour: money(fg.MaxSpendPerHour), MaxSpendPerHourPerUser: money(fg.MaxSpendPerHourPerUser),
		AllowHighRisk: fg.AllowHighRisk, MaxChargePerCall: money(fg.MaxChargePerCall), MaxCallDurationS: fg.MaxCallDurationS}
}

// writeOrgByID answers with the org as the ledger has it now, after
// whatever the handler changed (extra as in writeOrg).
func (s *Server) writeOrgByID(ctx *fasthttp.RequestCtx, status int, id string, extra map[string]any) error {
	o, err := s.ledger.Org(id)
	if err != nil {
		return err
	}
	return s.writeOrg(ctx, status, o, extra)
}

// writeOrg answers with the org's view; with extra, the view is extra's
// "org" member and extra the body.
func (s *Server) writeOrg(ctx *fasthttp.RequestCtx, status int, o ledger.Org, extra map[string]any) error {
	v, err := s.viewOrg(o)
	if err != nil {
		return err
	}
	if extra == nil {
		writeJSON(ctx, status, v)
		return nil
	}
	extra["org"] = v
	writeJSON(ctx, status, extra)
	return nil
}

type entryView struct {
	Seq     uint64    `json:"seq"`
	At      time.Time `json:"at"`
	Kind    string    `json:"kind"`
	Amount  string    `json:"amount"`
	Balance string    `json:"balance"`
	CallID  string    `json:"call_id,omitempty"`
	N       int       `json:"increment,omitempty"`
	Key     string    `json:"idempotency_key,omitempty"`
	// Incident is the support incident that allowed a funding across
	// regions.
	Incident string `json:"incident,omitempty"`
}

func viewEntry(e ledger.Entry) entryView {
	return entryView{Seq: e.Seq, At: e.At, Kind: e.Kind, Amount: money(e.Amount), Balance: money(e.Balance), CallID: e.CallID, N: e.N, Key: e.Key, Incident: e.Incident}
}
