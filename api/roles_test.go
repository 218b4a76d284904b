package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/loadtest"
	"github.com/creditgate/creditgate/rating"
)

// world is an API with two orgs, acme (the test keys' own org) and globex
// (another org), a key of every role, and real calls up through the
// gateway's SIP listener on loopback, placed by the load tool.
type world struct {
	*harness
	secret map[Role]string // a key of each role; org roles' keys are acme's
	keyID  map[Role]string
	n      int

	ctx    context.Context
	caller map[string]string // org → the PBX's address (its trunk's)
	dial   map[string]string // org → the number it calls
	from   map[string]string // org → its user's number
	carr   map[string]string // org → the carrier side's address for its calls
	runs   map[string]chan struct{}
}

// freeUDPPort is a loopback port free a moment ago.
func freeUDPPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

func newWorld(t *testing.T) *world {
	t.Helper()
	h := newHarness(t)
	// Purchases are accepted (and stay pending: no payer runs here).
	h.srv.SetPayments(true)
	h.srv.SetPurchases(h.ledger)
	if err := h.srv.gw.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &world{harness: h, secret: map[Role]string{}, keyID: map[Role]string{}, ctx: ctx,
		caller: map[string]string{"acme": freeUDPPort(t), "globex": freeUDPPort(t)},
		carr:   map[string]string{"acme": freeUDPPort(t), "globex": freeUDPPort(t)},
		dial:   map[string]string{"acme": "+33142278186", "globex": "+442079460018"},
		from:   map[string]string{"acme": "+12125550100", "globex": "+12125550200"},
		runs:   map[string]chan struct{}{}}
	t.Cleanup(func() {
		cancel() // the callers hang up; wait for them before the gateway closes
		for _, ch := range w.runs {
			<-ch
		}
	})
	for _, org := range []string{"acme", "globex"} {
		h.mustDo("POST", "/v1/orgs", fmt.Sprintf(`{"id":%q,"name":%q,"country":"US","region":"us"}`, org, org), 201)
		h.mustDo("POST", "/v1/orgs/"+org+"/credits", `{"amount":"500.00","idempotency_key":"seed"}`, 201)
		h.mustDo("PUT", "/v1/orgs/"+org+"/users/caller", fmt.Sprintf(`{"numbers":[%q],"licenses":["communications_credits"]}`, w.from[org]), 200)
		h.mustDo("PUT", "/v1/trunks/pbx-"+org, fmt.Sprintf(`{"kind":"customer","org":%q,"addresses":[%q]}`, org, w.caller[org]), 200)
		h.mustDo("PUT", "/v1/trunks/carrier-"+org, fmt.Sprintf(`{"kind":"carrier","uri":"sip:%s","prefixes":[%q]}`,
			w.carr[org], strings.TrimPrefix(w.dial[org], "+")[:2]), 200)
	}
	for _, r := range Roles {
		org := ""
		if r.OrgScoped() {
			org = "acme"
		}
		var k struct{ ID, Secret string }
		body := fmt.Sprintf(`{"name":"test %s","role":%q,"org":%q}`, r, r, org)
		if err := json.Unmarshal(h.mustDo("POST", "/v1/keys", body, 201).body, &k); err != nil {
			t.Fatal(err)
		}
		w.secret[r], w.keyID[r] = k.Secret, k.ID
	}
	// globex has a key too, which acme's keys must not see.
	h.mustDo("POST", "/v1/keys", `{"name":"globex desk","role":"org_read","org":"globex"}`, 201)
	return w
}

func (w *world) next() int { w.n++; return w.n }

// callUp is a call of org's that is up and answered, placed if there is
// none: the load tool's caller (org's PBX) through the gateway to the
// load tool's carrier, held until the test ends it or ends.
func (w *world) callUp(org string) string {
	w.t.Helper()
	if id := w.answered(org); id != "" {
		return id
	}
	if ch := w.runs[org]; ch != nil {
		select { // the last call's run must let go of its ports
		case <-ch:
		case <-time.After(15 * time.Second):
			w.t.Fatalf("the last call of %s did not finish", org)
		}
	}
	done := make(chan struct{})
	w.runs[org] = done
	go func() {
		defer close(done)
		_, _ = loadtest.Run(w.ctx, loadtest.Config{Target: w.srv.gw.Addr(), Caller: w.caller[org], Carrier: w.carr[org],
			Rate: 10, Calls: 1, Hold: 10 * time.Minute, Dialled: w.dial[org], From: []string{w.from[org]},
			SetupTimeout: 10 * time.Second, HangupTimeout: 2 * time.Second}, nil)
	}()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if id := w.answered(org); id != "" {
			return id
		}
	}
	w.t.Fatalf("no call of %s was answered", org)
	return ""
}

func (w *world) answered(org string) string {
	for _, c := range w.srv.gw.Calls() {
		if c.Org == org && c.State == "answered" {
			return c.ID
		}
	}
	return ""
}

// newKey makes a key of org (bootstrap) and answers its id.
func (w *world) newKey(org string) string {
	w.t.Helper()
	var k struct{ ID string }
	_ = json.Unmarshal(w.mustDo("POST", "/v1/keys", fmt.Sprintf(`{"name":"k%d","role":"org_read","org":%q}`, w.next(), org), 201).body, &k)
	return k.ID
}

// fixture makes a valid request of one route for org (the keys' own,
// acme, or another, globex), preparing with the bootstrap key what it
// needs: the path's {name} values, a query and a body. kind is the audit
// kind the request journals when it is not the route's.
type fixture struct {
	prepare func(w *world, org string) (args map[string]string, query, body string)
	kind    string
}

func orgOnly(_ *world, org string) (map[string]string, string, string) {
	return map[string]string{"org": org}, "", ""
}

func nothing(*world, string) (map[string]string, string, string) { return nil, "", "" }

var tollFreeOf = map[string]string{"acme": "+18005550100", "globex": "+18005550200"}

// fixtures has one entry per route; a route without one fails
// TestRolesOverEveryRoute.
var fixtures = map[string]fixture{
	"GET /v1/openapi.yaml": {prepare: nothing},
	"GET /v1/whoami":       {prepare: nothing},
	"POST /v1/orgs": {prepare: func(w *world, _ string) (map[string]string, string, string) {
		return nil, "", fmt.Sprintf(`{"id":"new-%d","name":"New","country":"US","region":"us"}`, w.next())
	}},
	"GET /v1/orgs":                    {prepare: nothing},
	"GET /v1/orgs/{org}/users":        {prepare: orgOnly},
	"GET /v1/orgs/{org}":              {prepare: orgOnly},
	"GET /v1/orgs/{org}/usage":        {prepare: orgOnly},
	"GET /v1/orgs/{org}/transactions": {prepare: orgOnly},
	"GET /v1/orgs/{org}/toll-free":    {prepare: orgOnly},
	"DELETE /v1/orgs/{org}/users/{user}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		u := fmt.Sprintf("tmp-%d", w.next())
		w.mustDo("PUT", "/v1/orgs/"+org+"/users/"+u, `{"licenses":["communications_credits"]}`, 200)
		return map[string]string{"org": org, "user": u}, "", ""
	}},
	"PUT /v1/orgs/{org}/users/{user}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"org": org, "user": "bob"}, "", fmt.Sprintf(`{"numbers":["+1212555%04d"],"licenses":["communications_credits"]}`, w.next())
	}},
	"GET /v1/trunks": {prepare: nothing},
	"DELETE /v1/trunks/{id}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		id := fmt.Sprintf("tmp-%d", w.next())
		w.mustDo("PUT", "/v1/trunks/"+id, fmt.Sprintf(`{"kind":"customer","org":%q,"addresses":["10.77.0.%d"]}`, org, w.n%250+1), 200)
		return map[string]string{"id": id}, "", ""
	}},
	"PUT /v1/trunks/{id}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"id": "pbx2-" + org}, "", fmt.Sprintf(`{"kind":"customer","org":%q,"addresses":["10.78.0.%d"]}`, org, w.next()%250+1)
	}},
	"PATCH /v1/orgs/{org}": {kind: ledger.AuditContacts, prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"org": org}, "", fmt.Sprintf(`{"contacts":{"emails":["ops%d@example.com"]}}`, w.next())
	}},
	"PUT /v1/orgs/{org}/toll-free/{number}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"org": org, "number": tollFreeOf[org]}, "", "{}"
	}},
	"DELETE /v1/orgs/{org}/toll-free/{number}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		w.mustDo("PUT", "/v1/orgs/"+org+"/toll-free/"+tollFreeOf[org], "", 200)
		return map[string]string{"org": org, "number": tollFreeOf[org]}, "", ""
	}},
	"POST /v1/orgs/{org}/credits": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"org": org}, "", fmt.Sprintf(`{"amount":"50.00","idempotency_key":"f%d"}`, w.next())
	}},
	"POST /v1/orgs/{org}/purchases": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"org": org}, "", fmt.Sprintf(`{"amount":"60.00","idempotency_key":"p%d","payment_method":"pm_card_visa"}`, w.next())
	}},
	"GET /v1/orgs/{org}/purchases/{id}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		var p struct{ ID string }
		body := fmt.Sprintf(`{"amount":"60.00","idempotency_key":"g%d","payment_method":"pm_card_visa"}`, w.next())
		if err := json.Unmarshal(w.mustDo("POST", "/v1/orgs/"+org+"/purchases", body, 202).body, &p); err != nil {
			w.t.Fatal(err)
		}
		return map[string]string{"org": org, "id": p.ID}, "", ""
	}},
	"PUT /v1/orgs/{org}/fraud-guard": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"org": org}, "", fmt.Sprintf(`{"max_calls":%d}`, 100+w.next())
	}},
	"PUT /v1/orgs/{org}/auto-recharge": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"org": org}, "", `{"enabled":false}`
	}},
	"PUT /v1/rates": {prepare: func(*world, string) (map[string]string, string, string) {
		return nil, "", string(rating.SampleDeckCSV)
	}},
	"GET /v1/rates": {prepare: func(*world, string) (map[string]string, string, string) {
		return nil, "number=" + url.QueryEscape("+442079460018"), ""
	}},
	"GET /v1/calls": {prepare: func(w *world, _ string) (map[string]string, string, string) {
		w.callUp("acme")
		w.callUp("globex")
		return nil, "", ""
	}},
	"DELETE /v1/calls/{id}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"id": w.callUp(org)}, "", ""
	}},
	"GET /v1/keys": {prepare: nothing},
	"POST /v1/keys": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return nil, "", fmt.Sprintf(`{"name":"made %d","role":"org_read","org":%q}`, w.next(), org)
	}},
	"POST /v1/keys/{id}/rotate": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"id": w.newKey(org)}, "", ""
	}},
	"DELETE /v1/keys/{id}": {prepare: func(w *world, org string) (map[string]string, string, string) {
		return map[string]string{"id": w.newKey(org)}, "", ""
	}},
	"GET /v1/audit": {prepare: nothing},
}

// path fills a route's pattern with args and adds the query.
func fill(pattern string, args map[string]string, query string) string {
	segs := strings.Split(pattern, "/")
	for i, s := range segs {
		if strings.HasPrefix(s, "{") {
			segs[i] = url.PathEscape(args[strings.Trim(s, "{}")])
		}
	}
	p := strings.Join(segs, "/")
	if query != "" {
		p += "?" + query
	}
	return p
}

// auditCount is how many entries the journal has.
func (w *world) audit() []ledger.AuditEntry {
	w.t.Helper()
	es, _, err := w.ledger.AuditEntries(ledger.AuditFilter{}, 0, 100000)
	if err != nil {
		w.t.Fatal(err)
	}
	return es
}

// TestRolesOverEveryRoute runs every route of the routes table with a key
// of every role, on the key's own org and on another, and expects what the
// route's access column says: a role it leaves out gets 403 forbidden; an
// org-scoped key on another org's org, call or key the same 404 as for
// one that does not exist; lists show an org-scoped key its own org only;
// anything else succeeds. A change that succeeded leaves exactly one
// audit entry with the key's id; a refused one leaves none and changes
// nothing.
func TestRolesOverEveryRoute(t *testing.T) {
	w := newWorld(t)
	cases, calls := 0, 0
	start := time.Now()
	for _, r := range routes {
		fx, ok := fixtures[r.method+" "+r.pattern]
		if !ok {
			t.Errorf("route %s %s has no fixture: add one to fixtures", r.method, r.pattern)
			continue
		}
		for _, role := range Roles {
			for _, org := range []string{"acme", "globex"} {
				name := fmt.Sprintf("%s %s as %s on %s", r.method, r.pattern, role, org)
				cases++
				args, query, body := fx.prepare(w, org)
				before := w.audit()
				var calledOff string
				if r.access.scope == scopeCall {
					calledOff = args["id"]
					calls++
				}
				res := w.do(r.method, fill(r.pattern, args, query), body, w.secret[role])
				after := w.audit()
				added := after[len(before):]
				allowedRole := r.access.roles.has(role)
				isolated := role.OrgScoped() && org != "acme" &&
					(r.access.scope == scopePath || r.access.scope == scopeCall || r.access.scope == scopeKey || r.access.scope == scopeBody)
				switch {
				case !allowedRole:
					if res.status != 403 || res.errorCode() != "forbidden" {
						t.Errorf("%s: %d %s, want 403 forbidden", name, res.status, res.body)
					}
				case isolated:
					if res.status != 404 {
						t.Errorf("%s: %d %s, want the 404 of a missing object", name, res.status, res.body)
					}
				default:
					if res.status < 200 || res.status > 299 {
						t.Errorf("%s: %d %s, want success", name, res.status, res.body)
					}
				}
				refused := !allowedRole || isolated
				switch {
				case refused && len(added) != 0:
					t.Errorf("%s: refused, yet journaled %+v", name, added)
				case refused && calledOff != "" && w.answered(org) != calledOff:
					t.Errorf("%s: refused, yet the call ended", name)
				case !refused && r.method != "GET" && (len(added) != 1 || added[0].KeyID != w.keyID[role]):
					t.Errorf("%s: journaled %+v, want one entry by %s", name, added, w.keyID[role])
				case !refused && r.method == "GET" && len(added) != 0:
					t.Errorf("%s: a read journaled %+v", name, added)
				}
				if !refused && r.access.scope == scopeList {
					sawOther := strings.Contains(string(res.body), "globex")
					if role.OrgScoped() && sawOther {
						t.Errorf("%s: an acme key sees globex: %s", name, res.body)
					}
					if !role.OrgScoped() && !sawOther {
						t.Errorf("%s: an operator key does not see globex: %s", name, res.body)
					}
					if !strings.Contains(string(res.body), "acme") {
						t.Errorf("%s: acme's own items missing: %s", name, res.body)
					}
				}
			}
		}
	}
	t.Logf("%d routes × %d roles × 2 orgs = %d requests (%d on calls up), %v", len(routes), len(Roles), cases, calls,
		time.Since(start).Round(time.Millisecond))
	if err := w.ledger.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestAccessColumnMatchesTheContract: the access column against the roles
// as the README states them, written here independently of it (which
// routes each role may call at all): a column that drifts from the
// contract fails here, since TestRolesOverEveryRoute can only check that
// the server does what the column says.
func TestAccessColumnMatchesTheContract(t *testing.T) {
	orgAdmin := []string{
		"GET /v1/openapi.yaml", "GET /v1/whoami", "GET /v1/orgs", "GET /v1/orgs/{org}", "PATCH /v1/orgs/{org}",
		"GET /v1/orgs/{org}/users", "PUT /v1/orgs/{org}/users/{user}", "DELETE /v1/orgs/{org}/users/{user}",
		"PUT /v1/orgs/{org}/auto-recharge", "POST /v1/orgs/{org}/credits", "GET /v1/orgs/{org}/usage",
		"POST /v1/orgs/{org}/purchases", "GET /v1/orgs/{org}/purchases/{id}",
		"GET /v1/orgs/{org}/transactions", "GET /v1/calls", "DELETE /v1/calls/{id}", "GET /v1/orgs/{org}/toll-free",
		"GET /v1/keys", "POST /v1/keys", "POST /v1/keys/{id}/rotate", "DELETE /v1/keys/{id}", "GET /v1/audit",
	}
	operatorOnlyReads := []string{"GET /v1/trunks", "GET /v1/rates"}
	may := func(role Role, r route) bool {
		op := r.method + " " + r.pattern
		switch role {
		case RoleOperatorAdmin:
			return true
		case RoleOperatorRead:
			return r.method == "GET"
		case RoleSupport:
			return r.method == "GET" || op == "DELETE /v1/calls/{id}"
		case RoleOrgAdmin:
			return slices.Contains(orgAdmin, op)
		case RoleOrgRead:
			return r.method == "GET" && !slices.Contains(operatorOnlyReads, op)
		}
		return false
	}
	for _, r := range routes {
		for _, role := range Roles {
			if got, want := r.access.roles.has(role), may(role, r); got != want {
				t.Errorf("%s %s: open to %s is %v, the contract says %v", r.method, r.pattern, role, got, want)
			}
		}
		// Whatever an org role may call names an org's object, or is a
		// list filtered to its org, or names no org's object at all.
		if r.access.roles&rolesOf(RoleOrgAdmin, RoleOrgRead) != 0 && r.access.scope == scopeNone &&
			r.pattern != "/v1/openapi.yaml" && r.pattern != "/v1/whoami" {
			t.Errorf("%s %s: open to org roles without an org scope", r.method, r.pattern)
		}
	}
}

// TestEveryRouteHasItsColumns: a route needs an access column and, if it
// changes anything, a journal column (reads have none); an operation the
// access column closes to a role lists 403 in openapi.yaml's statuses
// (through handlerStatuses), and one open to every role does not.
func TestEveryRouteHasItsColumns(t *testing.T) {
	for _, r := range routes {
		name := r.method + " " + r.pattern
		if r.access.scope == scopeUnset || r.access.roles == 0 {
			t.Errorf("%s: no access column", name)
		}
		switch {
		case r.method == "GET" && r.journal.kind != "":
			t.Errorf("%s: a read with a journal column", name)
		case r.method != "GET" && (r.journal.kind == "" || (r.journal.state == nil && !r.journal.self)):
			t.Errorf("%s: a change without a journal column (kind and state)", name)
		case r.journal.kind != "" && !validKind(r.journal.kind):
			t.Errorf("%s: journal kind %q is not one of ledger.AuditKinds", name, r.journal.kind)
		}
		closed := r.access.roles != allRoles
		if slices.Contains(handlerStatuses[r.key()], 403) != closed {
			t.Errorf("%s: 403 in handlerStatuses is %v, want %v (closed to some role: %v)", name, !closed, closed, closed)
		}
	}
}

// TestRevokedAndRotatedKeys: a revoked key and a rotated-away secret get
// 401 at once; the rotated new secret works; the bootstrap key can be
// neither rotated nor revoked; an org admin makes keys of its own org
// with org roles only; the profiler is for operator admins.
func TestRevokedAndRotatedKeys(t *testing.T) {
	h := newHarness(t)
	h.mustDo("POST", "/v1/orgs", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201)
	h.mustDo("POST", "/v1/orgs", `{"id":"globex","name":"Globex","country":"US","region":"us"}`, 201)
	var k struct{ ID, Secret, Role, Org string }
	if err := json.Unmarshal(h.mustDo("POST", "/v1/keys", `{"name":"it desk","role":"org_admin","org":"acme"}`, 201).body, &k); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.ID, "key_") || !strings.HasPrefix(k.Secret, "cgk_") || k.Role != "org_admin" || k.Org != "acme" {
		t.Fatalf("created key %+v", k)
	}
	whoami := func(secret string) response { return h.do("GET", "/v1/whoami", "", secret) }
	if r := whoami(k.Secret); r.status != 200 || !strings.Contains(string(r.body), `"key_id":"`+k.ID+`"`) {
		t.Fatalf("whoami: %d %s", r.status, r.body)
	}
	if r := whoami(testToken); !strings.Contains(string(r.body), `"key_id":"bootstrap","org":"","role":"operator_admin"`) {
		t.Fatalf("whoami with the bootstrap token: %s", r.body)
	}

	for _, tc := range []struct{ body, code string }{
		{`{"name":"x","role":"operator_read"}`, "forbidden"},
		{`{"name":"x","role":"org_read","org":"globex"}`, "unknown_org"},
		{`{"name":"x","role":"org_read","org":"nowhere"}`, "unknown_org"},
		{`{"name":"x","role":"root","org":"acme"}`, "invalid_request"},
		{`{"name":"x","role":"org_read"}`, "invalid_request"},
	} {
		if r := h.do("POST", "/v1/keys", tc.body, k.Secret); r.errorCode() != tc.code {
			t.Errorf("an org admin's POST /v1/keys %s: %d %s, want %s", tc.body, r.status, r.body, tc.code)
		}
	}
	if r := h.do("POST", "/v1/keys", `{"name":"x","role":"operator_read","org":"acme"}`); r.errorCode() != "invalid_request" {
		t.Errorf("an operator key with an org: %d %s", r.status, r.body)
	}
	if r := h.do("GET", "/debug/pprof/cmdline", "", k.Secret); r.status != 403 {
		t.Errorf("the profiler to an org admin: %d", r.status)
	}

	var rot struct{ ID, Secret string }
	if err := json.Unmarshal(h.do("POST", "/v1/keys/"+k.ID+"/rotate", "", k.Secret).body, &rot); err != nil || rot.ID != k.ID || rot.Secret == k.Secret {
		t.Fatalf("rotate: %+v %v", rot, err)
	}
	if r := whoami(k.Secret); r.status != 401 || r.errorCode() != "unauthorized" {
		t.Fatalf("the rotated-away secret: %d %s", r.status, r.body)
	}
	if r := whoami(rot.Secret); r.status != 200 {
		t.Fatalf("the new secret: %d %s", r.status, r.body)
	}
	// A secret of the right shape for the key but not its own.
	forged := rot.Secret[:len(rot.Secret)-4] + "AAAA"
	if r := whoami(forged); r.status != 401 {
		t.Fatalf("a forged secret: %d", r.status)
	}
	h.mustDo("DELETE", "/v1/keys/"+k.ID, "", 204)
	if r := whoami(rot.Secret); r.status != 401 {
		t.Fatalf("a revoked key: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/v1/keys/"+k.ID+"/rotate", ""); r.status != 422 {
		t.Fatalf("rotate a revoked key: %d %s", r.status, r.body)
	}
	for _, m := range []string{"DELETE /v1/keys/bootstrap", "POST /v1/keys/bootstrap/rotate"} {
		method, path, _ := strings.Cut(m, " ")
		if r := h.do(method, path, ""); r.status != 422 {
			t.Errorf("%s: %d %s, want 422", m, r.status, r.body)
		}
	}
	var list struct {
		Keys []struct {
			ID, Role, Org string
			RevokedAt     *time.Time `json:"revoked_at"`
			RotatedAt     *time.Time `json:"rotated_at"`
			LastUsedAt    *time.Time `json:"last_used_at"`
		}
	}
	r := h.mustDo("GET", "/v1/keys", "", 200)
	if err := json.Unmarshal(r.body, &list); err != nil || len(list.Keys) != 2 {
		t.Fatalf("keys: %s", r.body)
	}
	if b := list.Keys[0]; b.ID != "bootstrap" || b.Role != "operator_admin" || b.LastUsedAt == nil {
		t.Fatalf("the bootstrap key in the list: %+v", b)
	}
	if l := list.Keys[1]; l.ID != k.ID || l.RevokedAt == nil || l.RotatedAt == nil || l.LastUsedAt == nil {
		t.Fatalf("the revoked key in the list: %+v", l)
	}
	if strings.Contains(string(r.body), "cgk_") || strings.Contains(string(r.body), "hash") {
		t.Fatalf("the list shows a secret: %s", r.body)
	}
	es, _, err := h.ledger.AuditEntries(ledger.AuditFilter{Kind: ledger.AuditKey}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	// Created, rotated, revoked: the refusals left nothing.
	if len(es) != 3 {
		t.Fatalf("%d key entries, want 3: %+v", len(es), es)
	}
	for _, e := range es {
		if strings.Contains(string(e.Before)+string(e.After), "cgk_") || strings.Contains(string(e.Before)+string(e.After), "hash") {
			t.Fatalf("a key's audit entry shows its secret: %+v", e)
		}
	}
	if es[1].KeyID != k.ID || es[1].Action != "POST /v1/keys/{id}/rotate" || es[2].KeyID != "bootstrap" {
		t.Fatalf("key entries %+v", es)
	}
}
