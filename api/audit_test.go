package api

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// mutatingOps are the POST, PUT, PATCH and DELETE operations of
// openapi.yaml, as "METHOD /path/{name}", and whether each takes a body.
func mutatingOps(t *testing.T) map[string]bool {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	ops := map[string]bool{}
	for p, item := range doc.Paths {
		for m, op := range item {
			switch m {
			case "post", "put", "patch", "delete":
				o, _ := op.(map[string]any)
				ops[strings.ToUpper(m)+" "+p] = o["requestBody"] != nil
			}
		}
	}
	return ops
}

// TestAuditCompleteness walks openapi.yaml's mutating operations: each,
// asked validly by an operator_admin key, leaves exactly one new audit
// entry with that key's id, the route's kind and the operation as its
// action; asked with a bad body (or, without a body, for an object that
// does not exist) it is refused and leaves none.
func TestAuditCompleteness(t *testing.T) {
	w := newWorld(t)
	key, secret := w.keyID[RoleOperatorAdmin], w.secret[RoleOperatorAdmin]
	ops := mutatingOps(t)
	if len(ops) < 15 {
		t.Fatalf("only %d mutating operations in openapi.yaml", len(ops))
	}
	byOp := map[string]route{}
	for _, r := range routes {
		byOp[r.method+" "+r.pattern] = r
	}
	for op, hasBody := range ops {
		r, ok := byOp[op]
		if !ok {
			t.Errorf("%s: no route", op)
			continue
		}
		fx := fixtures[op]
		args, query, body := fx.prepare(w, "acme")
		before := w.audit()
		res := w.do(r.method, fill(r.pattern, args, query), body, secret)
		added := w.audit()[len(before):]
		if res.status < 200 || res.status > 299 {
			t.Errorf("%s: %d %s", op, res.status, res.body)
			continue
		}
		kind := r.journal.kind
		if fx.kind != "" {
			kind = fx.kind
		}
		if len(added) != 1 {
			t.Errorf("%s: %d entries, want 1: %+v", op, len(added), added)
			continue
		}
		e := added[0]
		if e.KeyID != key || e.Role != string(RoleOperatorAdmin) || e.Kind != kind || e.Action != op || e.Via != "api" {
			t.Errorf("%s: entry %+v, want key %s, kind %s", op, e, key, kind)
		}
		if !json.Valid(e.Before) || !json.Valid(e.After) || string(e.Before)+string(e.After) == "nullnull" {
			t.Errorf("%s: before %s after %s", op, e.Before, e.After)
		}
		if strings.Contains(string(res.body), "cgk_") && strings.Contains(string(e.After), "cgk_") {
			t.Errorf("%s: the entry shows the secret: %s", op, e.After)
		}

		// Refused: a body that is no JSON (no CSV deck), or a target that
		// is not there.
		refArgs, refBody := args, "{not json"
		if !hasBody {
			refArgs = map[string]string{}
			for k, v := range args {
				refArgs[k] = v
			}
			for _, name := range []string{"user", "id"} {
				if _, ok := refArgs[name]; ok {
					refArgs[name] = "key_00000000nobody"
				}
			}
			if _, ok := refArgs["number"]; ok {
				refArgs["number"] = "+18005559999"
			}
			refBody = ""
		}
		before = w.audit()
		res = w.do(r.method, fill(r.pattern, refArgs, query), refBody, secret)
		if res.status < 400 {
			t.Errorf("%s refused: %d %s, want a refusal", op, res.status, res.body)
		}
		if added := w.audit()[len(before):]; len(added) != 0 {
			t.Errorf("%s refused (%d): journaled %+v", op, res.status, added)
		}
	}

	t.Logf("%d mutating operations, each journaled once and refused once with nothing journaled", len(ops))

	// Through the API: the filters, and an org-scoped key sees its org's
	// entries only, whatever org= it asks for.
	var page struct {
		Entries   []ledger.AuditEntry
		NextAfter uint64 `json:"next_after"`
	}
	get := func(path, secret string) {
		t.Helper()
		page.Entries, page.NextAfter = nil, 0
		r := w.do("GET", path, "", secret)
		if r.status != 200 || json.Unmarshal(r.body, &page) != nil {
			t.Fatalf("GET %s: %d %s", path, r.status, r.body)
		}
	}
	get("/v1/audit?kind=funding&org=globex", testToken)
	for _, e := range page.Entries {
		if e.Kind != "funding" || e.Org != "globex" {
			t.Fatalf("kind=funding&org=globex: %+v", e)
		}
	}
	if len(page.Entries) == 0 {
		t.Fatal("no funding entry of globex (the world funds it)")
	}
	get("/v1/audit?key="+key, w.secret[RoleOrgRead])
	for _, e := range page.Entries {
		if e.Org != "acme" || e.KeyID != key {
			t.Fatalf("an acme key reading key=%s: %+v", key, e)
		}
	}
	get("/v1/audit?org=globex", w.secret[RoleOrgAdmin])
	if len(page.Entries) != 0 {
		t.Fatalf("an acme key reading org=globex: %+v", page.Entries)
	}
	get("/v1/audit?limit=3", testToken)
	if len(page.Entries) != 3 || page.NextAfter != page.Entries[2].Seq {
		t.Fatalf("limit=3: %d entries, next_after %d", len(page.Entries), page.NextAfter)
	}
	if r := w.do("GET", "/v1/audit?kind=nonsense", ""); r.status != 422 {
		t.Fatalf("kind=nonsense: %d %s", r.status, r.body)
	}
	// The console's label.
	res := w.doHeader("PUT", "/v1/orgs/acme/fraud-guard", `{"max_calls":7}`, secret, ViaHeader, "console")
	if res.status != 200 {
		t.Fatalf("%d %s", res.status, res.body)
	}
	if all := w.audit(); all[len(all)-1].Via != "console" {
		t.Fatalf("via: %+v", all[len(all)-1])
	}
}

// doHeader is do with one more request header.
func (h *harness) doHeader(method, path, body, token, name, value string) response {
	h.t.Helper()
	return h.doWith(method, path, body, token, map[string]string{name: value})
}

// TestKeysAndAuditSurviveARestart: a key made through the API, and the
// journal, read the same after the process's ledger is closed and the
// same data directory opened again; the rotated-away secret stays dead.
func TestKeysAndAuditSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	serve := func() (*harness, func()) {
		reg := prometheus.NewRegistry()
		l, err := ledger.Open(dir, ledger.Options{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		gw, err := gateway.New(gatewayConfig(), l, rating.SampleDeck(), clock.Real{}, reg, quiet())
		if err != nil {
			t.Fatal(err)
		}
		srv := New(l, gw, testToken, reg, time.Now, quiet())
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan struct{})
		go func() { defer close(served); _ = srv.Serve(ln) }()
		stop := func() {
			_ = srv.Shutdown()
			<-served
			_ = gw.Close()
			_ = l.Close()
		}
		return &harness{t: t, base: "http://" + ln.Addr().String(), ledger: l, srv: srv}, stop
	}
	h, stop := serve()
	h.mustDo("POST", "/v1/orgs", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201)
	var k, rot struct{ ID, Secret string }
	_ = json.Unmarshal(h.mustDo("POST", "/v1/keys", `{"name":"desk","role":"org_admin","org":"acme"}`, 201).body, &k)
	_ = json.Unmarshal(h.do("POST", "/v1/keys/"+k.ID+"/rotate", "", k.Secret).body, &rot)
	if r := h.do("PUT", "/v1/orgs/acme/users/alice", `{"licenses":["communications_credits"]}`, rot.Secret); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	journal := h.mustDo("GET", "/v1/audit", "", 200).body
	stop()

	h, stop = serve()
	defer stop()
	if r := h.do("GET", "/v1/whoami", "", rot.Secret); r.status != 200 || !strings.Contains(string(r.body), k.ID) {
		t.Fatalf("the key after a restart: %d %s", r.status, r.body)
	}
	if r := h.do("GET", "/v1/whoami", "", k.Secret); r.status != 401 {
		t.Fatalf("the rotated-away secret after a restart: %d", r.status)
	}
	if again := h.mustDo("GET", "/v1/audit", "", 200).body; string(again) != string(journal) {
		t.Fatalf("the journal after a restart:\n%s\nbefore:\n%s", again, journal)
	}
	var page struct{ Entries []ledger.AuditEntry }
	_ = json.Unmarshal(journal, &page)
	kinds := ""
	for _, e := range page.Entries {
		kinds += fmt.Sprintf("%s:%s ", e.Kind, e.KeyID)
	}
	if want := fmt.Sprintf("org:bootstrap key:bootstrap key:%s user:%s ", k.ID, k.ID); kinds != want {
		t.Fatalf("journal %q, want %q", kinds, want)
	}
}

// lostJournal is the real ledger whose journal cannot be written: what the
// API meets when the ledger fails closed between a change and its entry
// (the window audit.go documents), which no real fault can be timed to
// hit.
type lostJournal struct{ *ledger.Ledger }

func (lostJournal) Audit(ledger.AuditEntry) (ledger.AuditEntry, error) {
	return ledger.AuditEntry{}, fmt.Errorf("%w: test: the disk went away", ledger.ErrUnavailable)
}

// TestLostAuditEntryIsAnswered503: a change whose entry cannot be written
// stands (the ledger made it durable first), and the client is told so
// with 503 ledger_unavailable instead of a success it cannot audit.
func TestLostAuditEntryIsAnswered503(t *testing.T) {
	h := setup(t)
	h.srv.SetAccess(lostJournal{h.ledger})
	r := h.do("PUT", "/v1/orgs/acme/users/alice", `{"licenses":["communications_credits"]}`)
	if r.status != 503 || r.errorCode() != "ledger_unavailable" || !strings.Contains(string(r.body), "the change was made") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if _, ok := h.ledger.User("acme", "alice"); !ok {
		t.Fatal("the change did not stand")
	}
}

// TestConcurrentChangesEachJournaledOnce: changes made at once by
// different keys each leave exactly one entry, with their own key and
// target, in seq order; and a key rotated while others use the API stops
// working the moment the rotation has answered.
func TestConcurrentChangesEachJournaledOnce(t *testing.T) {
	h := setup(t)
	const n = 16
	secrets, ids := make([]string, n), make([]string, n)
	for i := range n {
		var k struct{ ID, Secret string }
		_ = json.Unmarshal(h.mustDo("POST", "/v1/keys", fmt.Sprintf(`{"name":"k%d","role":"org_admin","org":"acme"}`, i), 201).body, &k)
		secrets[i], ids[i] = k.Secret, k.ID
	}
	start, _, _ := h.ledger.AuditEntries(ledger.AuditFilter{}, 0, 10000)
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = h.do("PUT", fmt.Sprintf("/v1/orgs/acme/users/u%d", i), `{"licenses":["communications_credits"]}`, secrets[i]).status
		}()
	}
	wg.Wait()
	all, _, _ := h.ledger.AuditEntries(ledger.AuditFilter{}, 0, 10000)
	added := all[len(start):]
	if len(added) != n {
		t.Fatalf("%d entries for %d changes (statuses %v)", len(added), n, statuses)
	}
	seen := map[string]bool{}
	for i, e := range added {
		if i > 0 && e.Seq <= added[i-1].Seq {
			t.Fatalf("seq %d after %d", e.Seq, added[i-1].Seq)
		}
		var k int
		if _, err := fmt.Sscanf(e.Target, "acme/u%d", &k); err != nil || e.KeyID != ids[k] || seen[e.Target] {
			t.Fatalf("entry %+v (key %d is %s)", e, k, ids[k])
		}
		seen[e.Target] = true
	}

	// Rotation while the old secret is in use: once the rotation has
	// answered, no request with the old secret gets in.
	stop := make(chan struct{})
	rotated := make(chan struct{})
	var after atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				done := false
				select {
				case <-rotated:
					done = true
				default:
				}
				r := h.do("GET", "/v1/whoami", "", secrets[0])
				if done && r.status != 401 {
					after.Add(1)
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	h.mustDo("POST", "/v1/keys/"+ids[0]+"/rotate", "", 200)
	close(rotated)
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	if after.Load() != 0 {
		t.Fatalf("%d requests with the rotated-away secret got in after the rotation answered", after.Load())
	}
}

// TestReplayedFundingIsJournaled: a retried funding that changed nothing
// (200, replayed) is still a successful request, so one entry, whose
// after says it was replayed and whose balance did not move.
func TestReplayedFundingIsJournaled(t *testing.T) {
	h := setup(t)
	h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"r1"}`, 201)
	h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"60.00","idempotency_key":"r1"}`, 200)
	es, _, _ := h.ledger.AuditEntries(ledger.AuditFilter{Kind: ledger.AuditFunding}, 0, 100)
	if len(es) != 3 { // setup's, the funding, its replay
		t.Fatalf("%d funding entries: %+v", len(es), es)
	}
	var before, after struct {
		Balance  string
		Replayed bool
	}
	_ = json.Unmarshal(es[2].Before, &before)
	_ = json.Unmarshal(es[2].After, &after)
	if !after.Replayed || before.Balance != "110.00" || after.Balance != "110.00" {
		t.Fatalf("the replay's entry: %s → %s", es[2].Before, es[2].After)
	}
}
