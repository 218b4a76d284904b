package console

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
)

// These tests use scoped API keys (issue 19's POST /v1/keys and GET
// /v1/whoami, in api/): the console decides nothing about roles, so what
// they check is that it passes the API's answers on, page by page and
// form by form.

// key creates an API key through the API as the operator and returns its
// secret.
func (h *harness) key(name, role, org string) string {
	h.t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name, "role": role, "org": org})
	var k struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(h.api("POST", "/v1/keys", string(body), 201), &k); err != nil || k.Secret == "" {
		h.t.Fatalf("key %s: %v %+v", name, err, k)
	}
	return k.Secret
}

func TestOrgAdminSeesAndChangesOnlyItsOrg(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	h.api("POST", "/v1/orgs", `{"id":"globex","name":"Globex","country":"US","region":"us"}`, 201)
	h.api("POST", "/v1/orgs/globex/credits", `{"amount":"75.00","idempotency_key":"g-1"}`, 201)
	acmeAdmin := h.key("acme admin", "org_admin", "acme")
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

	// Another org's pages: refused by the API, shown as refused.
	for _, p := range []string{"/console/org/globex", "/console/org/globex/users", "/console/org/globex/usage", "/console/org/globex/usage.csv"} {
		if pg := b.get(p); pg.status == 200 || strings.Contains(pg.body, "75.00") {
			t.Fatalf("acme's admin got %s: %d\n%s", p, pg.status, pg.body)
		}
	}
	// Lists are the org's own.
	if pg := b.get("/console/op/orgs"); strings.Contains(pg.body, "globex") {
		t.Fatalf("acme's admin sees globex in the org list:\n%s", pg.body)
	}

	// A form aimed at another org, with a good token: the API refuses it,
	// nothing changes.
	before := h.api("GET", "/v1/orgs/globex", "", 200)
	res = b.post("/console/org/globex/contacts", url.Values{"csrf": {csrf}, "emails": {"evil@example.com"}}, h.base)
	if res.status != 303 || !strings.Contains(b.get(res.location).body, `class="error"`) {
		t.Fatalf("contacts of another org: %d %q, want a redirect to the refusal", res.status, res.location)
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

	// Read-only: sees, cannot change; the page says the role may not.
	r := h.browser()
	rcsrf := r.login(acmeRead)
	before = h.api("GET", "/v1/orgs/acme", "", 200)
	res = r.post("/console/org/acme/contacts", url.Values{"csrf": {rcsrf}, "emails": {"other@acme.example"}}, h.base)
	if res.status != 303 {
		t.Fatalf("org_read changing contacts: %d %q", res.status, res.location)
	}
	if shown := r.get(res.location); !strings.Contains(shown.body, "role may not") {
		t.Fatalf("the refusal is not shown:\n%s", shown.body)
	}
	if after := h.api("GET", "/v1/orgs/acme", "", 200); string(after) != string(before) {
		t.Fatalf("org_read changed acme:\n%s\n%s", before, after)
	}
}
