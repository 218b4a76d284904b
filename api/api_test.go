package api

import (
	"crypto/tls"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/loadtest/testcert"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

const testToken = "test-token-0123456789abcdef"

type harness struct {
	t      *testing.T
	base   string
	ledger *ledger.Ledger
	srv    *Server
}

func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newLimitedHarness(t, Limits{})
}

// newLimitedHarness serves the API with limits (zero: none).
func newLimitedHarness(t *testing.T, lim Limits) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := ledger.Open(t.TempDir(), ledger.Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gatewayConfig(), l, rating.SampleDeck(), clock.Real{}, reg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	srv := New(l, gw, testToken, reg, time.Now, quiet())
	srv.SetLimits(lim)
	return serveHarness(t, l, gw, srv)
}

// serveHarness serves srv on a loopback port until the test ends, then
// shuts it down and closes its gateway and ledger.
func serveHarness(t *testing.T, l *ledger.Ledger, gw *gateway.Gateway, srv *Server) *harness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		_ = gw.Close()
		_ = l.Close()
	})
	return &harness{t: t, base: "http://" + ln.Addr().String(), ledger: l, srv: srv}
}

type response struct {
	status int
	body   []byte
	header http.Header
}

func (r response) errorCode() string {
	var e struct {
		Error struct{ Code, Message string }
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Code
}

func (h *harness) do(method, path, body string, token ...string) response {
	h.t.Helper()
	tok := testToken
	if len(token) > 0 {
		tok = token[0]
	}
	return h.doWith(method, path, body, tok, nil)
}

// doWith is do with a token ("" for none) and more request headers.
func (h *harness) doWith(method, path, body, tok string, headers map[string]string) response {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.base+path, strings.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, body: b, header: res.Header}
}

func (h *harness) mustDo(method, path, body string, status int) response {
	h.t.Helper()
	r := h.do(method, path, body)
	if r.status != status {
		h.t.Fatalf("%s %s: %d %s, want %d", method, path, r.status, r.body, status)
	}
	return r
}

func (h *harness) org(id string) map[string]any {
	h.t.Helper()
	var o map[string]any
	if err := json.Unmarshal(h.mustDo("GET", "/v1/orgs/"+id, "", 200).body, &o); err != nil {
		h.t.Fatal(err)
	}
	return o
}

func setup(t *testing.T) *harness {
	h := newHarness(t)
	h.mustDo("POST", "/v1/orgs", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201)
	h.mustDo("POST", "/v1/orgs", `{"id":"split","name":"Split","country":"GB","region":"eu","billing_region":"us"}`, 201)
	h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"50.00","idempotency_key":"k0"}`, 201)
	return h
}

func TestOrgAndFunding(t *testing.T) {
	h := setup(t)
	o := h.org("acme")
	if o["balance"] != "50.00" || o["available"] != "50.00" || o["held"] != "0.00" || o["currency"] != "USD" {
		t.Fatalf("org %v", o)
	}
	r := h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"75.25","idempotency_key":"k1"}`, 201)
	var out struct {
		Transaction struct{ Amount, Balance, Kind string }
	}
	_ = json.Unmarshal(r.body, &out)
	if out.Transaction.Amount != "75.25" || out.Transaction.Balance != "125.25" || out.Transaction.Kind != "funding" {
		t.Fatalf("funding answer %s", r.body)
	}
	var txs struct{ Transactions []map[string]any }
	_ = json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme/transactions", "", 200).body, &txs)
	if len(txs.Transactions) != 2 {
		t.Fatalf("transactions %v", txs)
	}
}

// TestTransactionsPagesAndPools: the transaction list pages with a cursor
// that neither skips nor repeats an entry, and the org shows this month's
// pools from its users' licenses.
func TestTransactionsPagesAndPools(t *testing.T) {
	h := setup(t)
	for i := 1; i <= 4; i++ {
		h.mustDo("POST", "/v1/orgs/acme/credits", fmt.Sprintf(`{"amount":"5%d.00","idempotency_key":"p%d"}`, i, i), 201)
	}
	type page struct {
		Transactions []struct {
			Seq    uint64
			Amount string
		}
		NextAfter *uint64 `json:"next_after"`
	}
	var amounts []string
	path := "/v1/orgs/acme/transactions?limit=2"
	for pages := 0; ; pages++ {
		var p page
		if err := json.Unmarshal(h.mustDo("GET", path, "", 200).body, &p); err != nil {
			t.Fatal(err)
		}
		for _, tx := range p.Transactions {
			amounts = append(amounts, tx.Amount)
		}
		if p.NextAfter == nil {
			break
		}
		if pages > 5 {
			t.Fatal("cursor does not advance")
		}
		path = fmt.Sprintf("/v1/orgs/acme/transactions?limit=2&after=%d", *p.NextAfter)
	}
	if got := strings.Join(amounts, " "); got != "50.00 51.00 52.00 53.00 54.00" {
		t.Fatalf("paged amounts %q", got)
	}

	h.mustDo("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["international_calling_plan"]}`, 200)
	h.mustDo("PUT", "/v1/orgs/acme/users/bob", `{"numbers":["+12125550101"],"licenses":["domestic_calling_plan","audio_conferencing"]}`, 200)
	var o struct {
		Timezone string
		Pools    []struct {
			Plan                   string
			Month                  string
			Total, Used, Available int
		}
	}
	if err := json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme", "", 200).body, &o); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, p := range o.Pools {
		got[p.Plan] = p.Total
		if p.Used != 0 || p.Available != p.Total || p.Month != time.Now().UTC().Format("2006-01") {
			t.Fatalf("pool %+v", p)
		}
	}
	if o.Timezone != "UTC" || got["domestic"] != 6000 || got["international"] != 600 || got["conferencing"] != 60 {
		t.Fatalf("org timezone %q pools %v: want UTC, domestic 2×3000, international 600, conferencing 60", o.Timezone, got)
	}
}

// TestRefusalsChangeNothing: every refused request answers its 4xx with a
// JSON error code, and the org's money and history are as before.
func TestRefusalsChangeNothing(t *testing.T) {
	h := setup(t)
	cases := []struct {
		name, method, path, body, token string
		status                          int
		code                            string
	}{
		{"missing token", "POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"x1"}`, "-", 401, "unauthorized"},
		{"wrong token", "POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"x1"}`, "nope", 401, "unauthorized"},
		{"profiler without token", "GET", "/debug/pprof/heap", "", "-", 401, "unauthorized"},
		{"bad JSON", "POST", "/v1/orgs/acme/credits", `{"amount":"60.00",`, "", 400, "bad_json"},
		{"not an object", "POST", "/v1/orgs/acme/credits", `["60.00"]`, "", 400, "bad_json"},
		{"unknown field", "POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"x1","extra":1}`, "", 400, "bad_json"},
		{"trailing data", "POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"x1"}{}`, "", 400, "bad_json"},
		{"amount as a JSON number", "POST", "/v1/orgs/acme/credits", `{"amount":60.00,"idempotency_key":"x1"}`, "", 422, "invalid_amount"},
		{"negative amount", "POST", "/v1/orgs/acme/credits", `{"amount":"-60.00","idempotency_key":"x1"}`, "", 422, "invalid_amount"},
		{"non-numeric amount", "POST", "/v1/orgs/acme/credits", `{"amount":"sixty","idempotency_key":"x1"}`, "", 422, "invalid_amount"},
		{"exponent amount", "POST", "/v1/orgs/acme/credits", `{"amount":"6e1","idempotency_key":"x1"}`, "", 422, "invalid_amount"},
		{"too precise amount", "POST", "/v1/orgs/acme/credits", `{"amount":"60.001","idempotency_key":"x1"}`, "", 422, "invalid_amount"},
		{"missing amount", "POST", "/v1/orgs/acme/credits", `{"idempotency_key":"x1"}`, "", 422, "invalid_amount"},
		{"below minimum", "POST", "/v1/orgs/acme/credits", `{"amount":"49.99","idempotency_key":"x1"}`, "", 422, "below_minimum"},
		{"missing idempotency key", "POST", "/v1/orgs/acme/credits", `{"amount":"60.00"}`, "", 422, "invalid_request"},
		{"repeated idempotency key, other amount", "POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"k0"}`, "", 409, "duplicate_idempotency_key"},
		{"unknown org", "POST", "/v1/orgs/nope/credits", `{"amount":"60.00","idempotency_key":"x1"}`, "", 404, "unknown_org"},
		{"region mismatch", "POST", "/v1/orgs/split/credits", `{"amount":"60.00","idempotency_key":"x1"}`, "", 409, "region_mismatch"},
		{"duplicate org", "POST", "/v1/orgs", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, "", 409, "org_exists"},
		{"bad country", "POST", "/v1/orgs", `{"id":"x","name":"X","country":"Narnia","region":"us"}`, "", 422, "invalid_request"},
		{"bad org id", "POST", "/v1/orgs", `{"id":"../x","name":"X","country":"US","region":"us"}`, "", 422, "invalid_request"},
		{"get unknown org", "GET", "/v1/orgs/nope", "", "", 404, "unknown_org"},
		{"bad timezone", "POST", "/v1/orgs", `{"id":"tz","name":"X","country":"US","region":"us","timezone":"Mars/Olympus"}`, "", 422, "invalid_request"},
		{"transactions bad cursor", "GET", "/v1/orgs/acme/transactions?after=abc", "", "", 422, "invalid_request"},
		{"transactions negative cursor", "GET", "/v1/orgs/acme/transactions?after=-1", "", "", 422, "invalid_request"},
		{"transactions zero limit", "GET", "/v1/orgs/acme/transactions?limit=0", "", "", 422, "invalid_request"},
		{"transactions huge limit", "GET", "/v1/orgs/acme/transactions?limit=1000000", "", "", 422, "invalid_request"},
		{"transactions unknown org", "GET", "/v1/orgs/nope/transactions", "", "", 404, "unknown_org"},
		{"bad license", "PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["free_calls"]}`, "", 422, "invalid_request"},
		{"number without +", "PUT", "/v1/orgs/acme/users/alice", `{"numbers":["12125550100"]}`, "", 422, "invalid_request"},
		{"garbage number", "PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+1abc"]}`, "", 422, "invalid_request"},
		{"user of unknown org", "PUT", "/v1/orgs/nope/users/alice", `{"numbers":["+12125550100"]}`, "", 404, "unknown_org"},
		{"trunk bad kind", "PUT", "/v1/trunks/t1", `{"kind":"peer","org":"acme","addresses":["10.0.0.1"]}`, "", 422, "invalid_trunk"},
		{"carrier without uri", "PUT", "/v1/trunks/t1", `{"kind":"carrier"}`, "", 422, "invalid_trunk"},
		{"trunk bad address", "PUT", "/v1/trunks/t1", `{"kind":"customer","org":"acme","addresses":["pbx.example.com"]}`, "", 422, "invalid_trunk"},
		{"trunk unknown org", "PUT", "/v1/trunks/t1", `{"kind":"customer","org":"nope","addresses":["10.0.0.1"]}`, "", 422, "invalid_request"},
		{"bad rate deck", "PUT", "/v1/rates", "prefix,country,destination,type,rate_per_minute\n44,GB,UK,geographic,abc\n", "", 422, "invalid_rate_deck"},
		{"rate for garbage", "GET", "/v1/rates?number=%2Bxyz", "", "", 422, "not_dialable"},
		{"rate without rate", "GET", "/v1/rates?number=%2B8869123456789", "", "", 404, "no_rate"},
		{"usage bad date", "GET", "/v1/orgs/acme/usage?from=yesterday", "", "", 422, "invalid_request"},
		{"usage bad format", "GET", "/v1/orgs/acme/usage?format=pdf", "", "", 422, "invalid_request"},
		{"end unknown call", "DELETE", "/v1/calls/nope", "", "", 404, "unknown_call"},
		{"patch nothing", "PATCH", "/v1/orgs/acme", `{}`, "", 422, "invalid_request"},
		{"patch not a bool", "PATCH", "/v1/orgs/acme", `{"block_premium":"yes"}`, "", 400, "bad_json"},
		{"patch unknown field", "PATCH", "/v1/orgs/acme", `{"balance":"1000.00"}`, "", 400, "bad_json"},
		{"patch unknown org", "PATCH", "/v1/orgs/nope", `{"block_premium":true}`, "", 404, "unknown_org"},
		{"toll-free geographic number", "PUT", "/v1/orgs/acme/toll-free/+12125550100", "", "", 422, "invalid_request"},
		{"toll-free garbage", "PUT", "/v1/orgs/acme/toll-free/free", "", "", 422, "not_dialable"},
		{"toll-free unknown org", "PUT", "/v1/orgs/nope/toll-free/+18005550100", "", "", 404, "unknown_org"},
		{"toll-free unknown trunk", "PUT", "/v1/orgs/acme/toll-free/+18005550100", `{"trunk":"nope"}`, "", 422, "invalid_request"},
		{"toll-free bad body", "PUT", "/v1/orgs/acme/toll-free/+18005550100", `{"trunk":1}`, "", 400, "bad_json"},
		{"delete toll-free not assigned", "DELETE", "/v1/orgs/acme/toll-free/+18005550100", "", "", 404, "not_found"},
		{"customer trunk with prefixes", "PUT", "/v1/trunks/t1", `{"kind":"customer","org":"acme","addresses":["10.0.0.1"],"prefixes":["44"]}`, "", 422, "invalid_trunk"},
		{"customer trunk bad uri", "PUT", "/v1/trunks/t1", `{"kind":"customer","org":"acme","addresses":["10.0.0.1"],"uri":"pbx"}`, "", 422, "invalid_trunk"},
		{"JSON body over the limit", "POST", "/v1/orgs/acme/credits", "{" + strings.Repeat(" ", MaxJSONBody) + `"amount":"60.00","idempotency_key":"x1"}`, "", 413, "body_too_large"},
		{"wrong method", "DELETE", "/v1/orgs/acme", "", "", 405, "method_not_allowed"},
		{"unknown path", "GET", "/v2/orgs", "", "", 404, "not_found"},
	}
	before := h.org("acme")
	txBefore := h.mustDo("GET", "/v1/orgs/acme/transactions", "", 200).body
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r response
			switch tc.token {
			case "":
				r = h.do(tc.method, tc.path, tc.body)
			case "-":
				r = h.do(tc.method, tc.path, tc.body, "")
			default:
				r = h.do(tc.method, tc.path, tc.body, tc.token)
			}
			if r.status != tc.status || r.errorCode() != tc.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tc.status, tc.code)
			}
			if !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
				t.Fatalf("error not JSON: %s", r.header.Get("Content-Type"))
			}
			after := h.org("acme")
			for _, k := range []string{"balance", "held", "available"} {
				if after[k] != before[k] {
					t.Fatalf("%s changed from %v to %v", k, before[k], after[k])
				}
			}
			if tx := h.mustDo("GET", "/v1/orgs/acme/transactions", "", 200).body; string(tx) != string(txBefore) {
				t.Fatalf("transactions changed:\n%s\n%s", txBefore, tx)
			}
		})
	}
	if _, ok := h.ledger.User("acme", "alice"); ok {
		t.Fatal("a refused user request stored a user")
	}
	if len(h.ledger.Trunks()) != 0 {
		t.Fatal("a refused trunk request stored a trunk")
	}
	if o := h.org("acme"); o["block_premium"] != false || len(o["toll_free"].([]any)) != 0 {
		t.Fatalf("refused requests changed the org's settings: %v", o)
	}
	r := h.mustDo("GET", "/v1/rates?number=%2B442079460018", "", 200)
	if !strings.Contains(string(r.body), `"rate_per_minute":"0.018"`) {
		t.Fatalf("a refused deck replaced the sample deck: %s", r.body)
	}
	if err := h.ledger.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

func TestRefusedDeckNamesEveryLine(t *testing.T) {
	h := newHarness(t)
	r := h.mustDo("PUT", "/v1/rates", "prefix,country,destination,type,rate_per_minute\n44,GB,UK,geographic,0.01\n33,XX,FR,geographic,0.01\n49,DE,DE,geographic,-1\n", 422)
	var e struct {
		Error struct {
			Lines []struct{ Line int }
		}
	}
	_ = json.Unmarshal(r.body, &e)
	if len(e.Error.Lines) != 2 || e.Error.Lines[0].Line != 3 || e.Error.Lines[1].Line != 4 {
		t.Fatalf("want lines 3 and 4 named: %s", r.body)
	}
	h.mustDo("PUT", "/v1/rates", "prefix,country,destination,type,rate_per_minute\n44,GB,UK,geographic,0.0123\n", 200)
	r = h.mustDo("GET", "/v1/rates?number=020%207946%200018&org=gb", "", 404)
	h.mustDo("POST", "/v1/orgs", `{"id":"gb","name":"GB","country":"GB","region":"eu"}`, 201)
	r = h.mustDo("GET", "/v1/rates?number=020%207946%200018&org=gb", "", 200)
	var rate map[string]any
	_ = json.Unmarshal(r.body, &rate)
	if rate["rate_per_minute"] != "0.0123" || rate["domestic"] != true || rate["number"] != "+442079460018" || rate["first_charge"] != "0.0123" {
		t.Fatalf("rate %v", rate)
	}
}

func TestUsersTrunksUsageAndOpenEndpoints(t *testing.T) {
	h := setup(t)
	h.mustDo("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200)
	r := h.do("PUT", "/v1/orgs/acme/users/bob", `{"numbers":["+12125550100"]}`)
	if r.status != 409 || r.errorCode() != "number_taken" {
		t.Fatalf("second owner of a number: %d %s", r.status, r.body)
	}
	r = h.mustDo("PUT", "/v1/trunks/carrier", `{"kind":"carrier","uri":"sip:127.0.0.1:5080","prefixes":["","44"],"password":"secret"}`, 200)
	if strings.Contains(string(r.body), "secret") {
		t.Fatal("trunk password echoed back")
	}
	r = h.mustDo("GET", "/v1/orgs/acme/usage?format=csv&from=2026-01-01", "", 200)
	if ct := r.header.Get("Content-Type"); ct != "text/csv; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}
	recs, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(string(r.body), "\ufeff"))).ReadAll()
	if err != nil || len(recs) != 1 || strings.Join(recs[0], ",") != strings.Join(CDRColumns, ",") {
		t.Fatalf("usage CSV header: %v %v", recs, err)
	}
	h.mustDo("GET", "/v1/calls", "", 200)
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if r := h.do("GET", p, "", ""); r.status != 200 {
			t.Fatalf("%s without token: %d", p, r.status)
		}
	}
	r = h.do("GET", "/metrics", "", "")
	for _, m := range []string{"creditgate_debits_total", "creditgate_ledger_commit_seconds", "creditgate_calls_active"} {
		if !strings.Contains(string(r.body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// FuzzAdminJSON throws arbitrary bodies at every JSON endpoint in process:
// nothing may panic or answer 5xx, and money may only move on a 201 funding.
func FuzzAdminJSON(f *testing.F) {
	for _, s := range []string{`{"amount":"50.00","idempotency_key":"a"}`, `{"id":"o","country":"US","region":"r"}`,
		`{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, `{"kind":"carrier","uri":"sip:1.2.3.4"}`, `{`, `null`,
		`{"enabled":true,"threshold":"10.00","amount":"60.00","payment_method":"pm_card_visa","customer":"cus_a"}`,
		`{"contacts":{"emails":["a@b.example"],"webhook":"https://h.example/x","webhook_secret":"0123456789abcdef"}}`,
		`{"max_calls":2,"max_spend_per_hour":"10.00","allow_high_risk":true}`, `{"trunk":"t"}`} {
		f.Add(0, s)
		f.Add(3, s)
	}
	reg := prometheus.NewRegistry()
	l, err := ledger.Open(f.TempDir(), ledger.Options{Registerer: reg})
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	gw, _ := gateway.New(gatewayConfig(), l, rating.SampleDeck(), clock.Real{}, reg, quiet())
	srv := New(l, gw, testToken, reg, time.Now, quiet())
	srv.SetPayments(true)
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Country: "US", Region: "r", BillingRegion: "r"}); err != nil {
		f.Fatal(err)
	}
	targets := []struct{ method, path string }{
		{"POST", "/v1/orgs/acme/credits"}, {"POST", "/v1/orgs"}, {"PUT", "/v1/orgs/acme/users/u"},
		{"PUT", "/v1/trunks/t"}, {"PUT", "/v1/rates"}, {"PUT", "/v1/orgs/acme/auto-recharge"}, {"PATCH", "/v1/orgs/acme"},
		{"PUT", "/v1/orgs/acme/fraud-guard"}, {"PUT", "/v1/orgs/acme/toll-free/+18005550100"},
	}
	f.Fuzz(func(t *testing.T, which int, body string) {
		tg := targets[(which%len(targets)+len(targets))%len(targets)]
		before, _ := l.Org("acme")
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(tg.method)
		ctx.Request.SetRequestURI(tg.path)
		ctx.Request.Header.Set("Authorization", "Bearer "+testToken)
		ctx.Request.SetBodyString(body)
		srv.Handle(&ctx)
		status := ctx.Response.StatusCode()
		if status >= 500 {
			t.Fatalf("%s %s %q: %d %s", tg.method, tg.path, body, status, ctx.Response.Body())
		}
		after, _ := l.Org("acme")
		if status/100 == 4 && !reflect.DeepEqual(after, before) {
			t.Fatalf("refused request changed the org: %+v → %+v", before, after)
		}
		if status != 201 && !after.Balance.Equal(before.Balance) {
			t.Fatalf("refused request moved money: %s → %s", before.Balance, after.Balance)
		}
		if err := l.CheckInvariants(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTollFreeAndPremiumSettings: toll-free numbers are assigned, shown,
// guarded against a second owner and taken away; premium blocking is an
// org setting; the rate endpoint answers for an org.
func TestTollFreeAndPremiumSettings(t *testing.T) {
	h := setup(t)
	h.mustDo("PUT", "/v1/trunks/acme-pbx", `{"kind":"customer","org":"acme","addresses":["10.0.0.1"],"uri":"sip:10.0.0.1:5060"}`, 200)
	h.mustDo("PUT", "/v1/orgs/acme/toll-free/+1-800-555-0100", `{"trunk":"acme-pbx"}`, 200)
	o := h.org("acme")
	tf := o["toll_free"].([]any)
	if len(tf) != 1 || tf[0].(map[string]any)["number"] != "+18005550100" || tf[0].(map[string]any)["trunk"] != "acme-pbx" {
		t.Fatalf("toll-free numbers %v", o["toll_free"])
	}
	if r := h.do("PUT", "/v1/orgs/split/toll-free/18005550100", ""); r.status != 409 || r.errorCode() != "number_taken" {
		t.Fatalf("second owner: %d %s", r.status, r.body)
	}
	if r := h.do("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+18005550100"]}`); r.status != 409 || r.errorCode() != "number_taken" {
		t.Fatalf("toll-free number given to a user: %d %s", r.status, r.body)
	}
	h.mustDo("DELETE", "/v1/orgs/acme/toll-free/+18005550100", "", 204)
	if o := h.org("acme"); len(o["toll_free"].([]any)) != 0 {
		t.Fatalf("toll-free number not removed: %v", o["toll_free"])
	}
	h.mustDo("PUT", "/v1/orgs/split/toll-free/+448001234567", "", 200)

	var org map[string]any
	_ = json.Unmarshal(h.mustDo("PATCH", "/v1/orgs/acme", `{"block_premium":true}`, 200).body, &org)
	if org["block_premium"] != true {
		t.Fatalf("patched org %v", org)
	}
	if o, err := h.ledger.Org("acme"); err != nil || !o.BlockPremium {
		t.Fatalf("ledger org %+v, %v", o, err)
	}

	var rate map[string]any
	_ = json.Unmarshal(h.mustDo("GET", "/v1/rates?number=0033142270000&org=split", "", 200).body, &rate)
	if rate["number"] != "+33142270000" || rate["scope"] != "international" || rate["prefix"] != "33" || rate["first_charge"] != "0.019" {
		t.Fatalf("rate for a GB org dialling France: %v", rate)
	}
	_ = json.Unmarshal(h.mustDo("GET", "/v1/rates?number=2125550100&org=acme", "", 200).body, &rate)
	if rate["scope"] != "domestic" || rate["number"] != "+12125550100" {
		t.Fatalf("rate for a US org's national number: %v", rate)
	}
	rate = nil
	_ = json.Unmarshal(h.mustDo("GET", "/v1/rates?number=999&org=split", "", 200).body, &rate)
	if rate["emergency"] != true || rate["first_charge"] != "0.00" {
		t.Fatalf("999 from a GB org: %v", rate)
	}
}

// TestServeTLS: with a certificate the API answers over HTTPS, and a
// plaintext request on the same port gets no answer.
// TestOversizedHeadersRefused: request headers past the 16 KiB read
// buffer are refused before any handler runs (the token is not even
// looked at), and the server goes on serving.
func TestOversizedHeadersRefused(t *testing.T) {
	h := setup(t)
	req, _ := http.NewRequest("GET", h.base+"/v1/orgs/acme", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("X-Padding", strings.Repeat("a", 32<<10))
	res, err := http.DefaultClient.Do(req)
	if err == nil {
		res.Body.Close()
		if res.StatusCode < 400 {
			t.Fatalf("a 32 KiB header got %d, want it refused", res.StatusCode)
		}
	}
	if o := h.org("acme"); o["balance"] != "50.00" {
		t.Fatalf("server after an oversized request: %v", o)
	}
}

func TestServeTLS(t *testing.T) {
	h := newHarness(t)
	tlsCfg, certFile, keyFile := testcert.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = h.srv.ServeTLS(ln, certFile, keyFile) }()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tlsCfg.RootCAs}}}
	req, _ := http.NewRequest("GET", "https://"+ln.Addr().String()+"/v1/calls", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.TLS == nil || res.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("HTTPS: %d %+v", res.StatusCode, res.TLS)
	}
	if res, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Fatal("plain HTTP answered on the TLS port")
		}
	}
	if err := h.srv.ServeTLS(ln, certFile, certFile); err == nil {
		t.Fatal("a certificate as its own key was accepted")
	}
}
