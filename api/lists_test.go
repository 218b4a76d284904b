package api

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// Lists page by id with the transactions' cursor style.
func TestListsPageByID(t *testing.T) {
	h := setup(t) // orgs acme and split
	for i := range 5 {
		h.mustDo("PUT", fmt.Sprintf("/v1/orgs/acme/users/u%d", i), fmt.Sprintf(`{"numbers":["+1212555020%d"]}`, i), 200)
		h.mustDo("PUT", fmt.Sprintf("/v1/trunks/t%d", i), `{"kind":"carrier","uri":"sip:127.0.0.1:5080","prefixes":[""],"username":"u","password":"secret-pw"}`, 200)
	}
	var users struct {
		Users []struct {
			ID      string
			Numbers []string
		}
		NextAfter string `json:"next_after"`
	}
	must(t, json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme/users?limit=2", "", 200).body, &users))
	if len(users.Users) != 2 || users.NextAfter != users.Users[1].ID || users.Users[0].Numbers[0][0] != '+' {
		t.Fatalf("first page: %+v", users)
	}
	seen := len(users.Users)
	for users.NextAfter != "" {
		after := users.NextAfter
		users.NextAfter = ""
		must(t, json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme/users?limit=2&after="+after, "", 200).body, &users))
		for _, u := range users.Users {
			if u.ID <= after {
				t.Fatalf("page after %s holds %s", after, u.ID)
			}
		}
		seen += len(users.Users)
	}
	if seen != 5 {
		t.Fatalf("paged through %d users, want 5", seen)
	}

	var orgs struct {
		Orgs []struct{ ID, Balance, Currency string }
	}
	must(t, json.Unmarshal(h.mustDo("GET", "/v1/orgs", "", 200).body, &orgs))
	if len(orgs.Orgs) != 2 || orgs.Orgs[0].ID != "acme" || orgs.Orgs[0].Balance != "50.00" || orgs.Orgs[1].ID != "split" {
		t.Fatalf("orgs: %+v", orgs)
	}
	r := h.mustDo("GET", "/v1/trunks?after=t1", "", 200)
	var trunks struct{ Trunks []map[string]any }
	must(t, json.Unmarshal(r.body, &trunks))
	if len(trunks.Trunks) != 3 || trunks.Trunks[0]["id"] != "t2" {
		t.Fatalf("trunks after t1: %s", r.body)
	}
	for _, tr := range trunks.Trunks {
		if _, shown := tr["password"]; shown {
			t.Fatalf("a trunk's password in a list: %s", r.body)
		}
	}
	for _, q := range []string{"/v1/orgs?limit=0", "/v1/trunks?limit=10001", "/v1/orgs/acme/users?limit=x"} {
		if r := h.do("GET", q, ""); r.status != 422 {
			t.Errorf("%s: %d, want 422", q, r.status)
		}
	}
	if r := h.do("GET", "/v1/orgs/nobody/users", ""); r.status != 404 || r.errorCode() != "unknown_org" {
		t.Errorf("users of an unknown org: %d %s", r.status, r.body)
	}
}

// A user with a call up, a toll-free number with a call to it up and a
// trunk that delivers a toll-free number are not deleted: 409 in_use, and
// nothing changes. Once free, each goes (204), a second DELETE is 404.
func TestDeletesRefusedWhileInUse(t *testing.T) {
	h := setup(t)
	h.mustDo("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["communications_credits","domestic_calling_plan"]}`, 200)
	h.mustDo("PUT", "/v1/trunks/pbx", `{"kind":"customer","org":"acme","addresses":["127.0.0.1"],"uri":"sip:127.0.0.1:5090"}`, 200)
	h.mustDo("PUT", "/v1/orgs/acme/toll-free/+18005550100", `{"trunk":"pbx"}`, 200)
	start := time.Now().UTC()
	open := func(id, user string, dir ledger.Direction, to string) {
		c := ledger.Call{ID: id, Details: ledger.Details{Org: "acme", User: user, From: "12125550100", To: to, Country: "US",
			Type: "geographic", Direction: dir, RatePerMinute: decimal.RequireFromString("0.60"), Currency: "USD"},
			FirstIncrement: 60, NextIncrement: 60, Spill: true}
		if _, err := h.ledger.OpenCall(c, start); err != nil {
			t.Fatal(err)
		}
	}
	open("out-1", "alice", "outbound", "442079460018")
	open("in-1", "", "inbound", "18005550100")
	before := h.org("acme")

	for _, path := range []string{"/v1/orgs/acme/users/alice", "/v1/orgs/acme/toll-free/+18005550100", "/v1/trunks/pbx"} {
		if r := h.do("DELETE", path, ""); r.status != 409 || r.errorCode() != "in_use" {
			t.Fatalf("DELETE %s with a call up: %d %s, want 409 in_use", path, r.status, r.body)
		}
	}
	if _, ok := h.ledger.User("acme", "alice"); !ok {
		t.Fatal("a refused DELETE removed the user")
	}
	after := h.org("acme")
	if fmt.Sprint(after["pools"]) != fmt.Sprint(before["pools"]) || fmt.Sprint(after["toll_free"]) != fmt.Sprint(before["toll_free"]) {
		t.Fatalf("a refused DELETE changed the org: %v → %v", before, after)
	}

	for _, id := range []string{"out-1", "in-1"} {
		if _, err := h.ledger.CloseCall(id, ledger.CallEnd{At: start.Add(time.Second), Reason: ledger.ReasonCallerHangup, SIPStatus: 487}); err != nil {
			t.Fatal(err)
		}
	}
	for _, path := range []string{"/v1/orgs/acme/users/alice", "/v1/orgs/acme/toll-free/+18005550100", "/v1/trunks/pbx"} {
		h.mustDo("DELETE", path, "", 204)
		if r := h.do("DELETE", path, ""); r.status != 404 {
			t.Fatalf("second DELETE %s: %d %s", path, r.status, r.body)
		}
	}
	// The user's licenses left the month's pools; its number is free.
	for _, p := range h.org("acme")["pools"].([]any) {
		if p.(map[string]any)["licensed"].(float64) != 0 {
			t.Fatalf("pools still licensed after the user went: %v", p)
		}
	}
	h.mustDo("PUT", "/v1/orgs/split/users/bob", `{"numbers":["+12125550100"]}`, 200)
	if err := h.ledger.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
