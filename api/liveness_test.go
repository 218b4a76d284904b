package api

import (
	"encoding/json"
	"testing"
)

// A trunk's liveness settings: keepalive (unset is on) and
// max_call_duration_s are taken, validated and shown back, in the PUT's
// answer and in GET /v1/trunks.
func TestTrunkLivenessSettings(t *testing.T) {
	h := setup(t)
	for _, body := range []string{
		`{"kind":"carrier","uri":"sip:127.0.0.1:5080","max_call_duration_s":-1}`,
		`{"kind":"carrier","uri":"sip:127.0.0.1:5080","max_call_duration_s":604801}`,
		`{"kind":"carrier","uri":"sip:127.0.0.1:5080","keepalive":"no"}`,
	} {
		if r := h.do("PUT", "/v1/trunks/c1", body); r.status/100 != 4 {
			t.Fatalf("%s accepted: %d %s", body, r.status, r.body)
		}
	}
	r := h.mustDo("PUT", "/v1/trunks/c1", `{"kind":"carrier","uri":"sip:127.0.0.1:5080","keepalive":false,"max_call_duration_s":3600}`, 200)
	var put map[string]any
	if err := json.Unmarshal(r.body, &put); err != nil {
		t.Fatal(err)
	}
	if put["keepalive"] != false || put["max_call_duration_s"] != float64(3600) {
		t.Fatalf("PUT answered %s", r.body)
	}
	h.mustDo("PUT", "/v1/trunks/c2", `{"kind":"carrier","uri":"sip:127.0.0.1:5081"}`, 200)
	var list struct {
		Trunks []map[string]any `json:"trunks"`
	}
	if err := json.Unmarshal(h.mustDo("GET", "/v1/trunks", "", 200).body, &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for _, tr := range list.Trunks {
		got[tr["id"].(string)] = tr
	}
	if c1 := got["c1"]; c1["keepalive"] != false || c1["max_call_duration_s"] != float64(3600) {
		t.Fatalf("GET c1 %v", c1)
	}
	if c2 := got["c2"]; c2["keepalive"] != nil || c2["max_call_duration_s"] != nil {
		t.Fatalf("GET c2 %v: want keepalive unset (on) and no duration override", c2)
	}
}

// An org's per-call limits in its fraud guard: max_charge_per_call (an
// amount string) and max_call_duration_s, validated and shown in GET.
func TestFraudGuardPerCallLimits(t *testing.T) {
	h := setup(t)
	for _, body := range []string{
		`{"max_charge_per_call":5}`,
		`{"max_charge_per_call":"-1.00"}`,
		`{"max_charge_per_call":"1.001"}`,
		`{"max_call_duration_s":-1}`,
		`{"max_call_duration_s":604801}`,
	} {
		if r := h.do("PUT", "/v1/orgs/acme/fraud-guard", body); r.status/100 != 4 {
			t.Fatalf("%s accepted: %d %s", body, r.status, r.body)
		}
	}
	fg := h.org("acme")["fraud_guard"].(map[string]any)
	if fg["max_charge_per_call"] != "0.00" || fg["max_call_duration_s"] != float64(0) {
		t.Fatalf("default fraud_guard %v: want 0.00 and 0 (no limit)", fg)
	}
	h.mustDo("PUT", "/v1/orgs/acme/fraud-guard", `{"max_charge_per_call":"25.00","max_call_duration_s":7200}`, 200)
	fg = h.org("acme")["fraud_guard"].(map[string]any)
	if fg["max_charge_per_call"] != "25.00" || fg["max_call_duration_s"] != float64(7200) {
		t.Fatalf("fraud_guard %v", fg)
	}
}
