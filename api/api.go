// Package api is creditgate's admin HTTP API (README, Admin API) on fasthttp: JSON in
// and out, a bearer token on everything but /metrics, /healthz and /readyz,
// money as decimal strings, and every refusal a JSON error that changed
// nothing.
package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// OpenAPI is the API's OpenAPI 3 document, served at /v1/openapi.yaml; a
// test holds it and the routes to each other.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Limits of the API.
const (
	MaxJSONBody = 64 << 10
	MaxDeckBody = 64 << 20
)

// Server serves the admin API.
type Server struct {
	ledger  *ledger.Ledger
	gw      *gateway.Gateway
	token   []byte
	log     *slog.Logger
	now     func() time.Time
	metrics fasthttp.RequestHandler
	srv     *fasthttp.Server
	// payments says whether a payment provider is configured; without
	// one, enabling auto-recharge is refused rather than left to wait.
	payments bool

	limits Limits
	// exports holds a token per streamed export running (stream.go);
	// nil: no limit.
	exports chan struct{}
	// streams counts the producers of streamed responses, which outlive
	// their handlers; Shutdown cancels streamCtx and waits for them.
	streams     sync.WaitGroup
	streamCtx   context.Context
	stopStream  context.CancelFunc
	exportsDone *prometheus.CounterVec

	// adviceCache keeps each org's funding advice for adviceTTL: it reads
	// 30 days of CDRs, too much for every GET of a busy org.
	adviceMu    sync.Mutex
	adviceCache map[string]ledger.Advice
}

const adviceTTL = 5 * time.Minute

func (s *Server) advice(org string) (ledger.Advice, error) {
	now := s.now()
	s.adviceMu.Lock()
	a, ok := s.adviceCache[org]
	s.adviceMu.Unlock()
	if ok && now.Sub(a.ComputedAt) < adviceTTL && !now.Before(a.ComputedAt) {
		return a, nil
	}
	a, err := s.ledger.Advise(org, now)
	if err != nil {
		return a, err
	}
	s.adviceMu.Lock()
	if s.adviceCache == nil || len(s.adviceCache) > 100_000 {
		s.adviceCache = map[string]ledger.Advice{}
	}
	s.adviceCache[org] = a
	s.adviceMu.Unlock()
	return a, nil
}

// SetPayments tells the API whether auto-recharge can pay.
func (s *Server) SetPayments(configured bool) { s.payments = configured }

// New builds the API server. reg serves /metrics and takes the API's own
// metrics.
func New(l *ledger.Ledger, gw *gateway.Gateway, token string, reg *prometheus.Registry, now func() time.Time, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{ledger: l, gw: gw, token: []byte(token), log: log, now: now,
		metrics: fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))}
	s.streamCtx, s.stopStream = context.WithCancel(context.Background())
	s.exportsDone = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_http_exports_total",
		Help: "Streamed exports (usage reports) by how they ended: completed, abandoned by the client, failed, refused busy."},
		[]string{"result"})
	for _, r := range []string{exportCompleted, exportAbandoned, exportFailed, exportBusy} {
		s.exportsDone.WithLabelValues(r)
	}
	reg.MustRegister(s.exportsDone, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "creditgate_http_exports_active",
		Help: "Streamed exports running now (at most http.max_exports)."},
		func() float64 { return float64(len(s.exports)) }))
	s.srv = &fasthttp.Server{
		Handler:            s.Handle,
		Name:               "creditgate",
		MaxRequestBodySize: MaxDeckBody,
		ReadBufferSize:     16 << 10,
		// A stalled client is cut per write (stallConn), not by one
		// deadline for the whole response.
		WriteTimeout: 0,
		// fasthttp's own log line per accept error and per over-cap
		// connection would be the one unstructured line in the log.
		Logger: fasthttpLogger{log},
	}
	return s
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	return s.srv.Serve(stallListener{Listener: ln, timeout: s.limits.WriteTimeout})
}

// ServeTLS serves HTTPS on ln with the certificate and key in the PEM
// files, TLS 1.2 at least, until Shutdown. The bearer token then never
// crosses the network in the clear.
func (s *Server) ServeTLS(ln net.Listener, certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("admin API TLS: %w", err)
	}
	return s.srv.Serve(tls.NewListener(stallListener{Listener: ln, timeout: s.limits.WriteTimeout},
		&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
}

// Shutdown stops accepting, ends the exports still streaming and waits for
// requests in flight and for the exports' producers.
func (s *Server) Shutdown() error {
	s.stopStream()
	err := s.srv.Shutdown()
	s.streams.Wait()
	return err
}

// Handle routes one request. A panic in it is contained to this request:
// counted, logged, answered 500 and the connection closed.
func (s *Server) Handle(ctx *fasthttp.RequestCtx) {
	defer panics.Recover(s.log, panics.HTTP, func() {
		ctx.Response.Reset()
		ctx.SetConnectionClose()
		s.fail(ctx, errInternal)
	}, "method", string(ctx.Method()), "path", string(ctx.Path()))
	path := string(ctx.Path())
	switch path {
	case "/metrics":
		s.metrics(ctx)
		return
	case "/healthz":
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("ok\n")
		return
	case "/readyz":
		ctx.SetContentType("text/plain; charset=utf-8")
		if err := s.ledger.Err(); err != nil {
			ctx.SetStatusCode(503)
			ctx.SetBodyString("not ready: " + err.Error() + "\n")
			return
		}
		if s.gw.Draining() {
			ctx.SetStatusCode(503)
			ctx.SetBodyString("not ready: draining, taking no new calls\n")
			return
		}
		ctx.SetBodyString("ready\n")
		return
	}
	if !s.authorized(ctx) {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="creditgate"`)
		s.fail(ctx, errUnauthorized)
		return
	}
	if strings.HasPrefix(path, "/debug/pprof/") {
		if err := s.pprof(ctx); err != nil {
			s.fail(ctx, err)
		}
		return
	}
	if err := s.route(ctx, path); err != nil {
		s.fail(ctx, err)
	}
}

func (s *Server) authorized(ctx *fasthttp.RequestCtx) bool {
	h := ctx.Request.Header.Peek("Authorization")
	tok, ok := bytes.CutPrefix(h, []byte("Bearer "))
	return ok && len(s.token) > 0 && subtle.ConstantTimeCompare(tok, s.token) == 1
}

// route is one endpoint: a method and a path whose "*" segments are passed
// to the handler in order.
type route struct {
	method  string
	pattern string
	handle  func(s *Server, ctx *fasthttp.RequestCtx, args []string) error
}

var routes = []route{
	{"GET", "/v1/openapi.yaml", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error {
		ctx.SetContentType("application/yaml")
		ctx.SetBody(OpenAPI)
		return nil
	}},
	{"POST", "/v1/orgs", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.createOrg(ctx) }},
	{"GET", "/v1/orgs/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.getOrg(ctx, a[0]) }},
	{"PATCH", "/v1/orgs/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.patchOrg(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/toll-free/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putTollFree(ctx, a[0], a[1]) }},
	{"DELETE", "/v1/orgs/*/toll-free/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error {
		return s.deleteTollFree(ctx, a[0], a[1])
	}},
	{"POST", "/v1/orgs/*/credits", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.fund(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/fraud-guard", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putFraudGuard(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/auto-recharge", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putAutoRecharge(ctx, a[0]) }},
	{"GET", "/v1/orgs/*/usage", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.usage(ctx, a[0]) }},
	{"GET", "/v1/orgs/*/transactions", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.transactions(ctx, a[0]) }},
	{"PUT", "/v1/orgs/*/users/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putUser(ctx, a[0], a[1]) }},
	{"PUT", "/v1/trunks/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error { return s.putTrunk(ctx, a[0]) }},
	{"PUT", "/v1/rates", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.putRates(ctx) }},
	{"GET", "/v1/rates", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error { return s.getRate(ctx) }},
	{"GET", "/v1/calls", func(s *Server, ctx *fasthttp.RequestCtx, _ []string) error {
		writeJSON(ctx, 200, map[string]any{"calls": s.gw.Calls()})
		return nil
	}},
	{"DELETE", "/v1/calls/*", func(s *Server, ctx *fasthttp.RequestCtx, a []string) error {
		if err := s.gw.EndCall(a[0]); err != nil {
			return err
		}
		ctx.SetStatusCode(204)
		return nil
	}},
}

// match reports whether path fits pattern, and the "*" segments.
func match(pattern string, path []string) ([]string, bool) {
	want := strings.Split(strings.Trim(pattern, "/"), "/")
	if len(want) != len(path) {
		return nil, false
	}
	var args []string
	for i, w := range want {
		switch {
		case w == "*" && path[i] != "":
			args = append(args, path[i])
		case w != path[i]:
			return nil, false
		}
	}
	return args, true
}

func (s *Server) route(ctx *fasthttp.RequestCtx, path string) error {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	method := string(ctx.Method())
	found := false
	for _, r := range routes {
		args, ok := match(r.pattern, parts)
		if !ok {
			continue
		}
		found = true
		if r.method == method {
			return r.handle(s, ctx, args)
		}
	}
	if found {
		return errMethod
	}
	return errNotFound
}

func (s *Server) fail(ctx *fasthttp.RequestCtx, err error) {
	e := lookupError(err)
	if e.status >= 500 {
		s.log.Error("admin API request failed", "method", string(ctx.Method()), "path", string(ctx.Path()), "error", err)
	}
	body := map[string]any{"code": e.code, "message": err.Error()}
	var de *rating.DeckError
	if errors.As(err, &de) {
		lines := make([]map[string]any, 0, len(de.Lines))
		for _, l := range de.Lines {
			lines = append(lines, map[string]any{"line": l.Line, "error": l.Err})
		}
		body["lines"] = lines
	}
	writeJSON(ctx, e.status, map[string]any{"error": body})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	enc := json.NewEncoder(ctx)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// decode reads exactly one JSON object into v, refusing unknown fields,
// trailing data and oversized bodies.
func decode(ctx *fasthttp.RequestCtx, v any) error {
	body := ctx.PostBody()
	if len(body) > MaxJSONBody {
		return fmt.Errorf("%w: at most %d bytes of JSON", errTooLarge, MaxJSONBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadJSON, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the JSON object", errBadJSON)
	}
	return nil
}

// Money is formatted with at least the currency's two places and never
// loses a digit (sub-cent charges show in full).
func money(d decimal.Decimal) string {
	if d.Equal(d.Round(2)) {
		return d.StringFixed(2)
	}
	return d.String()
}

var amountRE = regexp.MustCompile(`^[0-9]{1,12}(\.[0-9]{1,2})?$`)

// parseAmount accepts a funding amount: a plain decimal string with at most
// two decimal places. JSON numbers, signs, exponents and more precision than
// the currency has are refused.
func parseAmount(raw json.RawMessage) (decimal.Decimal, error) {
	var s string
	if len(raw) == 0 {
		return decimal.Zero, fmt.Errorf("%w: amount is required, as a string like \"50.00\"", errBadAmount)
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return decimal.Zero, fmt.Errorf("%w: amount must be a decimal string like \"50.00\", not %s", errBadAmount, raw)
	}
	if !amountRE.MatchString(s) {
		return decimal.Zero, fmt.Errorf("%w: %q is not a positive amount with at most 2 decimal places", errBadAmount, s)
	}
	return decimal.RequireFromString(s), nil
}

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
}

// fraudGuardView is an org's fraud guard; 0 and "0.00" mean no limit.
type fraudGuardView struct {
	MaxCalls               int    `json:"max_calls"`
	MaxCallsPerUser        int    `json:"max_calls_per_user"`
	MaxSpendPerHour        string `json:"max_spend_per_hour"`
	MaxSpendPerHourPerUser string `json:"max_spend_per_hour_per_user"`
	AllowHighRisk          bool   `json:"allow_high_risk"`
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

// viewOrg shows an org with its pools of the month that is current for it.
func (s *Server) viewOrg(o ledger.Org) (orgView, error) {
	v := orgView{ID: o.ID, Name: o.Name, Country: o.Country, Region: o.Region, BillingRegion: o.BillingRegion,
		Currency: o.Currency, Balance: money(o.Balance), Available: money(o.Available()), Held: money(o.Held),
		Timezone: o.Timezone, BlockPremium: o.BlockPremium, CreatedAt: o.CreatedAt, TollFree: []tollFree{},
		AutoRecharge: autoRechargeView{Enabled: o.AutoRecharge.Enabled, Threshold: money(o.AutoRecharge.Threshold),
			Amount: money(o.AutoRecharge.Amount), PaymentMethod: o.AutoRecharge.PaymentMethod, Customer: o.AutoRecharge.Customer,
			Incident: o.AutoRecharge.Incident, Suspended: o.AutoRecharge.Suspended, Pending: s.ledger.PendingPurchaseOf(o.ID)},
		Contacts: contactsView{Emails: append([]string{}, o.Contacts.Emails...), Webhook: o.Contacts.Webhook,
			WebhookSigned: o.Contacts.WebhookSecret != ""},
		FraudGuard: fraudGuardView{MaxCalls: o.FraudGuard.MaxCalls, MaxCallsPerUser: o.FraudGuard.MaxCallsPerUser,
			MaxSpendPerHour: money(o.FraudGuard.MaxSpendPerHour), MaxSpendPerHourPerUser: money(o.FraudGuard.MaxSpendPerHourPerUser),
			AllowHighRisk: o.FraudGuard.AllowHighRisk}}
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
	if a, err := s.advice(o.ID); err == nil {
		f := &forecastView{Days: a.Days, Spend: money(a.Spend), BurnPerDay: money(a.BurnPerDay), P95Day: money(a.P95Day),
			SuggestedThreshold: money(a.Threshold), SuggestedAmount: money(a.Amount), ComputedAt: a.ComputedAt}
		if z := a.ZeroAfter(o.Available(), s.now()); !z.IsZero() {
			f.ZeroAt = &z
		}
		v.Forecast = f
	} else {
		s.log.Warn("funding advice unavailable", "org", o.ID, "err", err)
	}
	for _, p := range pools {
		v.Pools = append(v.Pools, poolView{Plan: p.Plan, Month: p.Month, Total: p.Total, Used: p.Used, Held: p.Held,
			Available: p.Available(), Licensed: p.Licensed})
	}
	return v, nil
}

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

func (s *Server) createOrg(ctx *fasthttp.RequestCtx) error {
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
	return s.writeOrg(ctx, 201, o, nil)
}

// patchOrg changes an org's settings: whether it blocks premium-rate
// numbers, and where its notifications go.
func (s *Server) patchOrg(ctx *fasthttp.RequestCtx, id string) error {
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
	if req.BlockPremium != nil {
		if _, err := s.ledger.SetBlockPremium(id, *req.BlockPremium); err != nil {
			return err
		}
	}
	o, err := s.ledger.Org(id)
	if err != nil {
		return err
	}
	return s.writeOrg(ctx, 200, o, nil)
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
	o, err := s.ledger.Org(org)
	if err != nil {
		return err
	}
	return s.writeOrg(ctx, 200, o, nil)
}

// putFraudGuard replaces the org's fraud-guard limits.
func (s *Server) putFraudGuard(ctx *fasthttp.RequestCtx, org string) error {
	var req struct {
		MaxCalls               int             `json:"max_calls"`
		MaxCallsPerUser        int             `json:"max_calls_per_user"`
		MaxSpendPerHour        json.RawMessage `json:"max_spend_per_hour"`
		MaxSpendPerHourPerUser json.RawMessage `json:"max_spend_per_hour_per_user"`
		AllowHighRisk          bool            `json:"allow_high_risk"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	fg := ledger.FraudGuard{MaxCalls: req.MaxCalls, MaxCallsPerUser: req.MaxCallsPerUser, AllowHighRisk: req.AllowHighRisk,
		MaxSpendPerHour: decimal.Zero, MaxSpendPerHourPerUser: decimal.Zero}
	var err error
	if len(req.MaxSpendPerHour) > 0 {
		if fg.MaxSpendPerHour, err = parseAmountOrZero(req.MaxSpendPerHour); err != nil {
			return fmt.Errorf("max_spend_per_hour: %w", err)
		}
	}
	if len(req.MaxSpendPerHourPerUser) > 0 {
		if fg.MaxSpendPerHourPerUser, err = parseAmountOrZero(req.MaxSpendPerHourPerUser); err != nil {
			return fmt.Errorf("max_spend_per_hour_per_user: %w", err)
		}
	}
	o, err := s.ledger.SetFraudGuard(org, fg)
	if err != nil {
		return err
	}
	return s.writeOrg(ctx, 200, o, nil)
}

// parseAmountOrZero is parseAmount that also takes "0" (a threshold of
// zero recharges only once the balance is gone).
func parseAmountOrZero(raw json.RawMessage) (decimal.Decimal, error) {
	if string(raw) == `"0"` || string(raw) == `"0.00"` {
		return decimal.Zero, nil
	}
	return parseAmount(raw)
}

// tollFreeNumber reads a toll-free number from a path segment ("+1800…" or
// digits) and refuses what the numbering plan does not call toll-free.
func tollFreeNumber(seg string) (string, error) {
	e164, err := rating.Normalize("+"+strings.TrimPrefix(seg, "+"), "")
	if err != nil {
		return "", err
	}
	if !rating.IsTollFree(e164) {
		return "", badRequest("+%s is not a toll-free number by its country's numbering plan", e164)
	}
	return e164, nil
}

func (s *Server) putTollFree(ctx *fasthttp.RequestCtx, org, seg string) error {
	var req struct {
		Trunk string `json:"trunk"`
	}
	if len(ctx.PostBody()) > 0 {
		if err := decode(ctx, &req); err != nil {
			return err
		}
	}
	num, err := tollFreeNumber(seg)
	if err != nil {
		return err
	}
	if err := s.ledger.PutTollFree(ledger.TollFree{Number: num, Org: org, Trunk: req.Trunk}); err != nil {
		return err
	}
	writeJSON(ctx, 200, map[string]any{"number": "+" + num, "org": org, "trunk": req.Trunk})
	return nil
}

func (s *Server) deleteTollFree(ctx *fasthttp.RequestCtx, org, seg string) error {
	num, err := tollFreeNumber(seg)
	if err != nil {
		return err
	}
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	found, err := s.ledger.DeleteTollFree(org, num)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: +%s is not a toll-free number of %s", errNotFound, num, org)
	}
	ctx.SetStatusCode(204)
	return nil
}

func (s *Server) getOrg(ctx *fasthttp.RequestCtx, id string) error {
	o, err := s.ledger.Org(id)
	if err != nil {
		return err
	}
	return s.writeOrg(ctx, 200, o, nil)
}

func (s *Server) fund(ctx *fasthttp.RequestCtx, org string) error {
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
	o, err := s.ledger.Org(org)
	if err != nil {
		return err
	}
	// A retry gets the first answer's transaction, as 200, not 201: the
	// client can tell it created nothing.
	status := 201
	if en.Replayed {
		status = 200
	}
	return s.writeOrg(ctx, status, o, map[string]any{"transaction": viewEntry(en), "replayed": en.Replayed})
}

func (s *Server) putUser(ctx *fasthttp.RequestCtx, org, user string) error {
	var req struct {
		Numbers  []string `json:"numbers"`
		Licenses []string `json:"licenses"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	u := ledger.User{Org: org, ID: user}
	for _, n := range req.Numbers {
		if !strings.HasPrefix(n, "+") {
			return badRequest("number %q: want E.164 with a leading +", n)
		}
		e164, err := rating.Normalize(n, "")
		if err != nil {
			return badRequest("number %q: not an E.164 number", n)
		}
		u.Numbers = append(u.Numbers, e164)
	}
	for _, l := range req.Licenses {
		lic, err := rating.ParseLicense(l)
		if err != nil {
			return badRequest("%v", err)
		}
		u.Licenses = append(u.Licenses, string(lic))
	}
	if err := s.ledger.PutUser(u); err != nil {
		return err
	}
	stored, _ := s.ledger.User(org, user)
	writeJSON(ctx, 200, stored)
	return nil
}

func (s *Server) putTrunk(ctx *fasthttp.RequestCtx, id string) error {
	var req struct {
		Kind      string   `json:"kind"`
		Org       string   `json:"org"`
		Addresses []string `json:"addresses"`
		URI       string   `json:"uri"`
		Prefixes  []string `json:"prefixes"`
		MaxCalls  int      `json:"max_calls"`
		Username  string   `json:"username"`
		Password  string   `json:"password"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	t := ledger.Trunk{ID: id, Kind: req.Kind, Org: req.Org, Addresses: req.Addresses, URI: req.URI,
		Prefixes: req.Prefixes, MaxCalls: req.MaxCalls, Username: req.Username, Password: req.Password}
	if err := gateway.ValidateTrunk(t); err != nil {
		return err
	}
	if t.Org != "" {
		if _, err := s.ledger.Org(t.Org); err != nil {
			return badRequest("trunk org %q does not exist", t.Org)
		}
	}
	if err := s.ledger.PutTrunk(t); err != nil {
		return err
	}
	s.gw.ReloadTrunks()
	t.Password = ""
	writeJSON(ctx, 200, t)
	return nil
}

func (s *Server) putRates(ctx *fasthttp.RequestCtx) error {
	body := ctx.PostBody()
	deck, err := rating.ParseDeck(bytes.NewReader(body))
	if err != nil {
		return err
	}
	if err := s.ledger.PutDeck(body); err != nil {
		return err
	}
	s.gw.SetDeck(deck)
	s.log.Info("rate deck replaced", "rows", deck.Rows())
	writeJSON(ctx, 200, map[string]any{"rows": deck.Rows()})
	return nil
}

func (s *Server) getRate(ctx *fasthttp.RequestCtx) error {
	args := ctx.QueryArgs()
	number := string(args.Peek("number"))
	orgID := string(args.Peek("org"))
	country := ""
	var org ledger.Org
	if orgID != "" {
		var err error
		if org, err = s.ledger.Org(orgID); err != nil {
			return err
		}
		country = org.Country
	} else if !strings.HasPrefix(number, "+") {
		return badRequest("number %q: without org=, give E.164 with a leading +", number)
	}
	if orgID != "" && rating.IsEmergency(number, country) {
		// What the gateway would do: connect it free, before any rating.
		writeJSON(ctx, 200, map[string]any{"number": number, "emergency": true, "first_charge": "0.00"})
		return nil
	}
	e164, err := rating.Normalize(number, country)
	if err != nil {
		return err
	}
	r, ok := s.gw.Deck().Lookup(e164, s.now())
	if !ok {
		return fmt.Errorf("%w: +%s", rating.ErrNoRate, e164)
	}
	out := map[string]any{
		"number": "+" + e164, "prefix": r.Prefix, "country": r.Country, "destination": r.Destination, "type": r.Type,
		"rate_per_minute": r.PerMinute.String(), "connection_fee": money(r.ConnectionFee),
		"first_increment": int(r.FirstIncrement / time.Second), "next_increment": int(r.NextIncrement / time.Second),
		"effective_from": r.EffectiveFrom, "first_charge": money(r.FirstCharge()),
	}
	if orgID != "" {
		out["domestic"] = r.Country == org.Country
		out["scope"] = "international"
		if r.Country == org.Country {
			out["scope"] = "domestic"
		}
	}
	writeJSON(ctx, 200, out)
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

// transactions pages through an org's ledger entries, oldest first:
// ?after=SEQ&limit=N (default 1000, at most 10000); next_after is the
// cursor of the next page, absent on the last one.
func (s *Server) transactions(ctx *fasthttp.RequestCtx, org string) error {
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	after, err := uintArg(ctx, "after", 0, math.MaxUint64)
	if err != nil {
		return err
	}
	limit, err := uintArg(ctx, "limit", 1000, 10000)
	if err != nil {
		return err
	}
	if limit == 0 {
		return badRequest("limit=0: want 1 to 10000")
	}
	es, err := s.ledger.Transactions(org, after, int(limit)+1)
	if err != nil {
		return err
	}
	resp := map[string]any{}
	if len(es) > int(limit) {
		es = es[:limit]
		resp["next_after"] = es[len(es)-1].Seq
	}
	out := make([]entryView, 0, len(es))
	for _, e := range es {
		out = append(out, viewEntry(e))
	}
	resp["transactions"] = out
	writeJSON(ctx, 200, resp)
	return nil
}

func uintArg(ctx *fasthttp.RequestCtx, name string, def, maxv uint64) (uint64, error) {
	v := string(ctx.QueryArgs().Peek(name))
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > maxv {
		return 0, badRequest("%s=%q: want a whole number from 0 to %d", name, v, maxv)
	}
	return n, nil
}

// parseTimeArg reads a time bound of the query; a time the ledger's keys
// cannot be compared with (ledger.CheckTime) is refused, naming the range.
func parseTimeArg(ctx *fasthttp.RequestCtx, name string) (time.Time, error) {
	v := string(ctx.QueryArgs().Peek(name))
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		if t, err = time.Parse(time.DateOnly, v); err != nil {
			return time.Time{}, badRequest("%s=%q: want RFC 3339 or YYYY-MM-DD", name, v)
		}
	}
	if err := ledger.CheckTime(t); err != nil {
		return time.Time{}, fmt.Errorf("%s=%q: %w", name, v, err)
	}
	return t, nil
}
