package console

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/creditgate/creditgate/api"
)

// These tests use scoped API keys (issue 19's POST /v1/keys and GET
// /v1/whoami, in api/): the console decides nothing about roles, so what
// they check is that it passes the API's answers on, page by page and
// form by form.

// key creates an API key through the API as the operator and returns its
// secret.
func (h *harness) key(name, role, org string) string {
	h.t.Helper()
	_, secret := h.keyWithID(name, role, org)
	return secret
}

// keyWithID creates an API key and returns its id and secret.
func (h *harness) keyWithID(name, role, org string) (id, secret string) {
	h.t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name, "role": role, "org": org})
	var k struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(h.api("POST", "/v1/keys", string(body), 201), &k); err != nil || k.Secret == "" || k.ID == "" {
		h.t.Fatalf("key %s: %v %+v", name, err, k)
	}
	return k.ID, k.Secret
}

func TestOrgAdminSeesAndChangesOnlyItsOrg(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	h.api("POST", "/v1/orgs", `{"id":"globex","name":"Globex","country":"US","region":"us"}`, 201)
	h.api("POST", "/v1/orgs/globex/credits", `{"amount":"75.00","idempotency_key":"g-1"}`, 201)
	acmeAdminID, acmeAdmin := h.keyWithID("acme admin", "org_admin", "acme")
	acmeRead := h.key("acme read", "org_read", "acme")

	b := h.browser()
	lp := b.get("/console/login")
	res := b.post("/console/login", url.Values{"csrf": {lp.csrf(t)}, "key": {acmeAdmin}}, h.base)
	if res.status != 303 || res.location != "/console/org/acme" {
		t.Fatalf("org admin login: %d to %q, want /console/org/acme", res.status, res.location)
	}
	home := b.get("/console/org/acme")
	if home.status != 200 || !strings.Contains(home.body, `<dd id="available">50.00 USD</dd>`) || strings.Contains(home.body, "/console/op/") {
		t.Fatalf("org admin's overview %d (no operator links expected):\n%s", home.status, home.body)
	}
	csrf := home.csrf(t)

	// Another org's pages: the API answers an org key 404 for another
	// org's objects, as if they did not exist; the console passes the
	// status on and shows nothing of globex.
	for _, p := range []string{"/console/org/globex", "/console/org/globex/users", "/console/org/globex/usage",
		"/console/org/globex/usage.csv", "/console/org/globex/usage.xlsx", "/console/org/globex/calls"} {
		if pg := b.get(p); pg.status != 404 || strings.Contains(pg.body, "75.00") || strings.Contains(pg.body, "Globex") {
			t.Fatalf("acme's admin got %s: %d, want 404\n%s", p, pg.status, pg.body)
		}
	}
	// Lists are the org's own.
	if pg := b.get("/console/op/orgs"); pg.status != 200 || strings.Contains(pg.body, "globex") || !strings.Contains(pg.body, `href="/console/org/acme"`) {
		t.Fatalf("acme's admin's org list (%d) is not acme alone:\n%s", pg.status, pg.body)
	}
	// The operator's pages read lists the API filters to the key's org
	// (the audit trail, calls up); the gateway-wide figures from the
	// metrics are not the API's and are shown to operator roles only.
	if pg := b.get("/console/op/audit"); pg.status != 200 || strings.Contains(pg.body, "globex") || !strings.Contains(pg.body, "<td>acme</td>") {
		t.Fatalf("acme's admin's audit page (%d) is not acme's alone:\n%s", pg.status, pg.body)
	}
	if pg := b.get("/console/op/live"); pg.status != 200 || strings.Contains(pg.body, "Calls per second") {
		t.Fatalf("acme's admin's live page (%d) shows the gateway's figures:\n%s", pg.status, pg.body)
	}
	// A route no org role may call: 403 forbidden, shown as the role's
	// refusal, nothing changed.
	deck := h.api("GET", "/v1/rates?number=%2B442079460018", "", 200)
	res = b.post("/console/op/deck", url.Values{"csrf": {csrf}, "deck": {formNamed(t, "deck").sampleValues.Get("deck")}}, h.base)
	if shown := b.get(res.location); res.status != 303 || !strings.Contains(shown.body, "role may not") || !strings.Contains(shown.body, "org_admin") {
		t.Fatalf("org admin's deck upload: %d %q\n%s", res.status, res.location, shown.body)
	}
	if after := h.api("GET", "/v1/rates?number=%2B442079460018", "", 200); string(after) != string(deck) {
		t.Fatalf("the org admin changed the deck:\n%s\n%s", deck, after)
	}

	// A form aimed at another org, with a good token: the API refuses it,
	// nothing changes.
	before := h.api("GET", "/v1/orgs/globex", "", 200)
	res = b.post("/console/org/globex/contacts", url.Values{"csrf": {csrf}, "emails": {"evil@example.com"}}, h.base)
	if res.status != 303 {
		t.Fatalf("contacts of another org: %d %q, want a redirect to the refusal", res.status, res.location)
	}
	if shown := b.get(res.location); !strings.Contains(shown.body, `class="error"`) || !strings.Contains(shown.body, "unknown org") {
		t.Fatalf("the refusal (the API's 404) is not shown:\n%s", shown.body)
	}
	if after := h.api("GET", "/v1/orgs/globex", "", 200); string(after) != string(before) {
		t.Fatalf("globex changed:\n%s\n%s", before, after)
	}

	// Its own org: the change goes through.
	res = b.post("/console/org/acme/contacts", url.Values{"csrf": {csrf}, "emails": {"finance@acme.example"}}, h.base)
	if shown := b.get(res.location); res.status != 303 || !strings.Contains(shown.body, "Notification contacts saved.") {
		t.Fatalf("own contacts: %d %q\n%s", res.status, res.location, shown.body)
	}
	if o := h.api("GET", "/v1/orgs/acme", "", 200); !strings.Contains(string(o), "finance@acme.example") {
		t.Fatalf("acme's contacts not saved: %s", o)
	}
	// The API journaled it as the org admin's change, made through the
	// console (the header the console sends is the one the API reads).
	if ViaHeader != api.ViaHeader {
		t.Fatalf("console sends %q, the API reads %q", ViaHeader, api.ViaHeader)
	}
	var journal struct {
		Entries []struct {
			KeyID  string `json:"key_id"`
			Role   string `json:"role"`
			Org    string `json:"org"`
			Action string `json:"action"`
			Via    string `json:"via"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(h.api("GET", "/v1/audit?org=acme&key="+acmeAdminID, "", 200), &journal); err != nil {
		t.Fatal(err)
	}
	if n := len(journal.Entries); n != 1 || journal.Entries[0].Via != "console" || journal.Entries[0].Role != "org_admin" ||
		journal.Entries[0].Action != "PATCH /v1/orgs/{org}" {
		t.Fatalf("acme admin's audit entries %+v: want one PATCH of the org, via console", journal.Entries)
	}

	// Read-only: sees, cannot change; the page says the role may not.
	r := h.browser()
	rcsrf := r.login(acmeRead)
	before = h.api("GET", "/v1/orgs/acme", "", 200)
	res = r.post("/console/org/acme/contacts", url.Values{"csrf": {rcsrf}, "emails": {"other@acme.example"}}, h.base)
	if res.status != 303 {
		t.Fatalf("org_read changing contacts: %d %q", res.status, res.location)
	}
	if shown := r.get(res.location); !strings.Contains(shown.body, "role may not") || !strings.Contains(shown.body, "org_read") {
		t.Fatalf("the refusal is not shown:\n%s", shown.body)
	}
	if after := h.api("GET", "/v1/orgs/acme", "", 200); string(after) != string(before) {
		t.Fatalf("org_read changed acme:\n%s\n%s", before, after)
	}
}

// formNamed is the form of that name in the table.
func formNamed(t *testing.T, name string) form {
	t.Helper()
	for _, f := range forms {
		if f.name == name {
			return f
		}
	}
	t.Fatalf("no form %q", name)
	return form{}
}
