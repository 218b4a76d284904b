package api

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestFundingRetryReplays(t *testing.T) {
	h := setup(t)
	first := h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"r1"}`, 201)
	again := h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"r1"}`, 200)
	var a, b struct {
		Replayed    bool
		Transaction map[string]any
		Org         struct{ Balance string }
	}
	_ = json.Unmarshal(first.body, &a)
	_ = json.Unmarshal(again.body, &b)
	if a.Replayed || !b.Replayed || !reflect.DeepEqual(a.Transaction, b.Transaction) || b.Org.Balance != "110.00" {
		t.Fatalf("first %s\nretry %s\nwant the same transaction, replayed, balance 110.00 once", first.body, again.body)
	}
}

func TestFundingAcrossRegionsNeedsIncident(t *testing.T) {
	h := setup(t)
	if r := h.do("POST", "/v1/orgs/split/credits", `{"amount":"60.00","idempotency_key":"x"}`); r.status != 409 || r.errorCode() != "region_mismatch" {
		t.Fatalf("without incident: %d %s", r.status, r.body)
	}
	r := h.mustDo("POST", "/v1/orgs/split/credits", `{"amount":"60.00","idempotency_key":"x","incident":"INC-77"}`, 201)
	var out struct {
		Transaction struct{ Incident, Amount string }
	}
	_ = json.Unmarshal(r.body, &out)
	if out.Transaction.Incident != "INC-77" || out.Transaction.Amount != "60.00" {
		t.Fatalf("with incident: %s", r.body)
	}
}

func TestAutoRechargeSettings(t *testing.T) {
	h := setup(t)
	good := `{"enabled":true,"threshold":"10.00","amount":"100.00","payment_method":"pm_card_visa","customer":"cus_acme"}`
	if r := h.do("PUT", "/v1/orgs/acme/auto-recharge", good); r.status != 409 || r.errorCode() != "payments_not_configured" {
		t.Fatalf("without a payment provider: %d %s", r.status, r.body)
	}
	h.srv.SetPayments(true)
	before := h.org("acme")
	for _, tc := range []struct {
		name, org, body string
		status          int
		code            string
	}{
		{"below minimum", "acme", `{"enabled":true,"threshold":"10.00","amount":"20.00","payment_method":"pm_card_visa","customer":"cus_acme"}`, 422, "below_minimum"},
		{"amount as number", "acme", `{"enabled":true,"threshold":"10.00","amount":100,"payment_method":"pm_card_visa","customer":"cus_acme"}`, 422, "invalid_amount"},
		{"no amount", "acme", `{"enabled":true,"threshold":"10.00","payment_method":"pm_card_visa","customer":"cus_acme"}`, 422, "invalid_amount"},
		{"negative threshold", "acme", `{"enabled":true,"threshold":"-1.00","amount":"100.00","payment_method":"pm_card_visa","customer":"cus_acme"}`, 422, "invalid_amount"},
		{"card number as method", "acme", `{"enabled":true,"threshold":"10.00","amount":"100.00","payment_method":"4242424242424242","customer":"cus_acme"}`, 422, "invalid_request"},
		{"no customer", "acme", `{"enabled":true,"threshold":"10.00","amount":"100.00","payment_method":"pm_card_visa"}`, 422, "invalid_request"},
		{"unknown field", "acme", `{"enabled":true,"card":"4242"}`, 400, "bad_json"},
		{"region mismatch", "split", good, 409, "region_mismatch"},
		{"unknown org", "nope", good, 404, "unknown_org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("PUT", "/v1/orgs/"+tc.org+"/auto-recharge", tc.body)
			if r.status != tc.status || r.errorCode() != tc.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tc.status, tc.code)
			}
			if after := h.org("acme"); !reflect.DeepEqual(after, before) {
				t.Fatalf("refusal changed the org:\n%v\n%v", before, after)
			}
		})
	}
	h.mustDo("PUT", "/v1/orgs/acme/auto-recharge", good, 200)
	ar := h.org("acme")["auto_recharge"].(map[string]any)
	if ar["enabled"] != true || ar["threshold"] != "10.00" || ar["amount"] != "100.00" || ar["payment_method"] != "pm_card_visa" || ar["pending"] != nil {
		t.Fatalf("auto_recharge %v", ar)
	}
	// Above the threshold with 50.00: nothing pending. Raising the
	// threshold above the balance starts a purchase at once.
	h.mustDo("PUT", "/v1/orgs/acme/auto-recharge", `{"enabled":true,"threshold":"75.00","amount":"100.00","payment_method":"pm_card_visa","customer":"cus_acme"}`, 200)
	if ar := h.org("acme")["auto_recharge"].(map[string]any); ar["pending"] == nil {
		t.Fatalf("no purchase pending below the threshold: %v", ar)
	}
	h.mustDo("PUT", "/v1/orgs/acme/auto-recharge", `{"enabled":false}`, 200)
	if ar := h.org("acme")["auto_recharge"].(map[string]any); ar["enabled"] != false {
		t.Fatalf("disable: %v", ar)
	}
}

func TestContacts(t *testing.T) {
	h := setup(t)
	before := h.org("acme")
	for _, body := range []string{
		`{"contacts":{"emails":["not an address"]}}`,
		`{"contacts":{"webhook":"https://hooks.example/cg"}}`,
		`{"contacts":{"webhook":"gopher://hooks.example","webhook_secret":"0123456789abcdef"}}`,
		`{"contacts":{"emails":"ap@acme.example"}}`,
		`{"contacts":{"emails":["ap@acme.example"]},"block_premium":"yes"}`,
	} {
		r := h.do("PATCH", "/v1/orgs/acme", body)
		if r.status/100 != 4 {
			t.Fatalf("%s accepted: %d %s", body, r.status, r.body)
		}
		if after := h.org("acme"); !reflect.DeepEqual(after, before) {
			t.Fatalf("%s changed the org", body)
		}
	}
	r := h.mustDo("PATCH", "/v1/orgs/acme", `{"contacts":{"emails":["ap@acme.example"],"webhook":"https://hooks.example/cg","webhook_secret":"whsec_0123456789abcdef"}}`, 200)
	var o struct {
		Contacts map[string]any
	}
	_ = json.Unmarshal(r.body, &o)
	if o.Contacts["webhook"] != "https://hooks.example/cg" || o.Contacts["webhook_signed"] != true || o.Contacts["webhook_secret"] != nil ||
		!reflect.DeepEqual(o.Contacts["emails"], []any{"ap@acme.example"}) {
		t.Fatalf("contacts %v", o.Contacts)
	}
	if strings.Contains(string(r.body), "whsec_0123456789abcdef") || strings.Contains(string(h.mustDo("GET", "/v1/orgs/acme", "", 200).body), "whsec_") {
		t.Fatal("the webhook secret was shown back")
	}
}

func TestOrgForecast(t *testing.T) {
	h := setup(t)
	usageCalls(t, h)
	// setup's funding answer computed advice before the calls; it is kept
	// adviceTTL, and a test does not wait that long.
	h.srv.adviceMu.Lock()
	h.srv.adviceCache = nil
	h.srv.adviceMu.Unlock()
	f, ok := h.org("acme")["forecast"].(map[string]any)
	if !ok {
		t.Fatal("GET org has no forecast")
	}
	// The org is new: one day observed, 0.243456 spent of 50.00.
	if f["days"] != float64(1) || f["spend"] != "0.243456" || f["burn_per_day"] != "0.2435" || f["zero_at"] == nil ||
		f["suggested_threshold"] != "1.00" || f["suggested_amount"] != "50.00" {
		t.Fatalf("forecast %v", f)
	}
}

func TestFraudGuardSettings(t *testing.T) {
	h := setup(t)
	before := h.org("acme")
	for _, body := range []string{
		`{"max_calls":-1}`,
		`{"max_calls_per_user":"5"}`,
		`{"max_spend_per_hour":20}`,
		`{"max_spend_per_hour":"-5.00"}`,
		`{"max_spend_per_hour_per_user":"1.001"}`,
		`{"allow_everything":true}`,
	} {
		if r := h.do("PUT", "/v1/orgs/acme/fraud-guard", body); r.status/100 != 4 {
			t.Fatalf("%s accepted: %d %s", body, r.status, r.body)
		}
		if after := h.org("acme"); !reflect.DeepEqual(after, before) {
			t.Fatalf("%s changed the org", body)
		}
	}
	h.mustDo("PUT", "/v1/orgs/acme/fraud-guard", `{"max_calls":20,"max_calls_per_user":2,"max_spend_per_hour":"100.00","max_spend_per_hour_per_user":"10.00"}`, 200)
	fg := h.org("acme")["fraud_guard"].(map[string]any)
	if fg["max_calls"] != float64(20) || fg["max_calls_per_user"] != float64(2) || fg["max_spend_per_hour"] != "100.00" ||
		fg["max_spend_per_hour_per_user"] != "10.00" || fg["allow_high_risk"] != false {
		t.Fatalf("fraud_guard %v", fg)
	}
	if r := h.do("PUT", "/v1/orgs/nope/fraud-guard", `{}`); r.status != 404 {
		t.Fatalf("unknown org: %d", r.status)
	}
}
