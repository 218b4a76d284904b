// The audit trail (README, Audit trail): every change that succeeds
// through the API leaves exactly one entry — who (key id and role), when,
// what (kind, the route's method and path template, the target), and the
// object before and after — and GET /v1/audit reads them back.
//
// Where it is written: key changes in the same durable ledger operation as
// the change (ledger/keys.go). Every other change goes through a ledger
// method of Books, which has no room for an entry, so its entry is a
// durable operation of its own, queued as soon as the change has
// returned (durable) and before the client is answered. The window
// between the two is one group commit: a crash in it leaves a change
// without its entry. If the entry cannot be written (the ledger failed
// closed), the change stands, the entry is logged at error level with
// everything it would have held, and the client gets 503
// ledger_unavailable, whose message says the change was made.
//
// before is read just before the handler runs and after just after, not
// under one lock with the change: two changes to one object at the same
// instant may show the same before.

package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// journal is a mutating route's audit column: the entry's kind, and how to
// read the object it changes (state). self: the handler journals in the
// ledger's own operation (keys).
type journal struct {
	kind  string
	state func(s *Server, rq *request) (org string, v any)
	self  bool
}

// changes is the journal column of a route that changes an object of kind.
func changes(kind string, state func(s *Server, rq *request) (string, any)) journal {
	return journal{kind: kind, state: state}
}

// keyChanges is the journal column of the key routes, whose entries the
// ledger writes with the change.
var keyChanges = journal{kind: ledger.AuditKey, self: true}

// ViaHeader labels where a request came from in its audit entry: "console"
// for the web console (which calls Handle in-process), "api" otherwise. It
// is a label any caller may set, not an authenticated fact.
const ViaHeader = "X-Creditgate-Via"

func via(ctx *fasthttp.RequestCtx) string {
	if string(ctx.Request.Header.Peek(ViaHeader)) == "console" {
		return "console"
	}
	return "api"
}

// journaled runs a mutating route and journals it once it succeeded.
func (s *Server) journaled(ctx *fasthttp.RequestCtx, r *route, rq *request) error {
	if s.access == nil {
		return fmt.Errorf("%w: no audit journal is configured, so no change can be made", ledger.ErrUnavailable)
	}
	if r.journal.self {
		return r.handle(s, ctx, rq)
	}
	var before any
	org := ""
	if r.journal.state != nil {
		org, before = r.journal.state(s, rq)
	}
	if err := r.handle(s, ctx, rq); err != nil {
		return err
	}
	if st := ctx.Response.StatusCode(); st < 200 || st > 299 {
		return nil
	}
	var after any
	if r.journal.state != nil && !rq.gone {
		var afterOrg string
		afterOrg, after = r.journal.state(s, rq)
		if afterOrg != "" {
			org = afterOrg
		}
	}
	if rq.after != nil {
		after = rq.after
	}
	kind := r.journal.kind
	if rq.kind != "" {
		kind = rq.kind
	}
	e := ledger.AuditEntry{At: s.now(), KeyID: rq.who.KeyID, Role: string(rq.who.Role), Org: org, Kind: kind,
		Action: r.method + " " + r.pattern, Target: rq.auditTarget(r), Before: stateJSON(before), After: stateJSON(after),
		Via: via(ctx)}
	if _, err := s.access.Audit(e); err != nil {
		s.log.Error("audit entry lost: the change was made, its entry could not be written", "error", err,
			"key_id", e.KeyID, "role", e.Role, "org", e.Org, "kind", e.Kind, "action", e.Action, "target", e.Target,
			"before", string(e.Before), "after", string(e.After), "via", e.Via)
		ctx.Response.Reset()
		if errors.Is(err, ledger.ErrUnavailable) {
			return fmt.Errorf("the change was made but its audit entry could not be written: %w", err)
		}
		return fmt.Errorf("%w: the change was made but its audit entry could not be written: %v", errInternal, err)
	}
	return nil
}

// auditTarget names what the request changed: the handler's word, else
// the path's {name} segments in order, joined by "/".
func (rq *request) auditTarget(r *route) string {
	if rq.target != "" {
		return rq.target
	}
	var parts []string
	for _, seg := range strings.Split(strings.Trim(r.pattern, "/"), "/") {
		if strings.HasPrefix(seg, "{") {
			parts = append(parts, rq.args[strings.Trim(seg, "{}")])
		}
	}
	return strings.Join(parts, "/")
}

func stateJSON(v any) json.RawMessage {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return b
}

// The state readers of the journal column: an object as its audit entry
// shows it (never a secret), nil when it does not exist.

// orgSettings is an org's settings, without its money and pools.
type orgSettings struct {
	ID            string       `json:"id"`
	Name          string       `json:"name"`
	Country       string       `json:"country"`
	Region        string       `json:"region"`
	BillingRegion string       `json:"billing_region"`
	Currency      string       `json:"currency"`
	Timezone      string       `json:"timezone"`
	BlockPremium  bool         `json:"block_premium"`
	Contacts      contactsView `json:"contacts"`
}

func orgState(s *Server, rq *request) (string, any) {
	id := rq.arg("org")
	if id == "" {
		id = rq.target // POST /v1/orgs: known once created
	}
	o, err := s.ledger.Org(id)
	if id == "" || err != nil {
		return id, nil
	}
	tz := o.Timezone
	if tz == "" {
		tz = "UTC" // as GET /v1/orgs/{org} shows it
	}
	return id, orgSettings{ID: o.ID, Name: o.Name, Country: o.Country, Region: o.Region, BillingRegion: o.BillingRegion,
		Currency: o.Currency, Timezone: tz, BlockPremium: o.BlockPremium, Contacts: viewContacts(o.Contacts)}
}

func fraudGuardState(s *Server, rq *request) (string, any) {
	o, err := s.ledger.Org(rq.arg("org"))
	if err != nil {
		return rq.arg("org"), nil
	}
	return o.ID, viewFraudGuard(o.FraudGuard)
}

func autoRechargeState(s *Server, rq *request) (string, any) {
	o, err := s.ledger.Org(rq.arg("org"))
	if err != nil {
		return rq.arg("org"), nil
	}
	return o.ID, s.viewAutoRecharge(o)
}

func balanceState(s *Server, rq *request) (string, any) {
	o, err := s.ledger.Org(rq.arg("org"))
	if err != nil {
		return rq.arg("org"), nil
	}
	return o.ID, map[string]string{"balance": money(o.Balance), "available": money(o.Available()), "held": money(o.Held)}
}

func userState(s *Server, rq *request) (string, any) {
	org := rq.arg("org")
	u, ok := s.ledger.User(org, rq.arg("user"))
	if !ok {
		return org, nil
	}
	return org, viewUser(u)
}

func tollFreeState(s *Server, rq *request) (string, any) {
	org := rq.arg("org")
	num, err := tollFreeNumber(rq.arg("number"))
	if err != nil {
		return org, nil
	}
	tf, ok := s.ledger.TollFreeOwner(num)
	if !ok || tf.Org != org {
		return org, nil
	}
	return org, tollFree{Number: "+" + tf.Number, Trunk: tf.Trunk}
}

func trunkState(s *Server, rq *request) (string, any) {
	for _, t := range s.ledger.Trunks() {
		if t.ID == rq.arg("id") {
			t.Password = "" // never journaled
			return t.Org, t
		}
	}
	return "", nil
}

func deckState(s *Server, _ *request) (string, any) {
	return "", map[string]int{"rows": s.gw.Deck().Rows()}
}

func callState(s *Server, rq *request) (string, any) {
	c, ok := s.callUp(rq.arg("id"))
	if !ok {
		return "", nil
	}
	c.From, c.To = e164(c.From), e164(c.To)
	return c.Org, c
}

// callUp finds a call up by id.
func (s *Server) callUp(id string) (gateway.CallInfo, bool) {
	for _, c := range s.gw.Calls() {
		if c.ID == id {
			return c, true
		}
	}
	return gateway.CallInfo{}, false
}

// listAudit is GET /v1/audit?org=&kind=&key=&after=&limit=: entries
// oldest first, paged by seq. An org-scoped key sees its own org's only.
// In cluster mode, unless ?scope=local, every live node's entries merged
// (cluster_audit.go), paged by a cursor of one seq per node.
func (s *Server) listAudit(ctx *fasthttp.RequestCtx, who principal) error {
	if s.access == nil {
		return fmt.Errorf("%w: no audit journal is configured", ledger.ErrUnavailable)
	}
	local, err := localOnly(ctx)
	if err != nil {
		return err
	}
	fanOut := s.cluster.Load() != nil && !local
	q := ctx.QueryArgs()
	f := ledger.AuditFilter{Org: string(q.Peek("org")), Kind: string(q.Peek("kind")), KeyID: string(q.Peek("key"))}
	if f.Kind != "" && !validKind(f.Kind) {
		return badRequest("kind=%q: want one of %s", f.Kind, strings.Join(ledger.AuditKinds, ", "))
	}
	var after uint64
	if !fanOut {
		if after, err = uintArg(ctx, "after", 0, math.MaxUint64); err != nil {
			return err
		}
	} else if _, err := parseCursor(string(q.Peek("after"))); err != nil {
		return err
	}
	limit, err := uintArg(ctx, "limit", 1000, 10000)
	if err != nil {
		return err
	}
	if limit == 0 {
		return badRequest("limit=0: want 1 to 10000")
	}
	resp := map[string]any{}
	entries := []ledger.AuditEntry{}
	if who.Role.OrgScoped() && f.Org != "" && f.Org != who.Org {
		// Another org's entries: none, as for an org with no entries.
		resp["entries"] = entries
		if fanOut {
			resp["unavailable"] = []Unavailable{}
		}
		writeJSON(ctx, 200, resp)
		return nil
	}
	if who.Role.OrgScoped() {
		f.Org = who.Org
	}
	if fanOut {
		return s.clusterAudit(ctx, f, string(q.Peek("after")), int(limit))
	}
	es, next, err := s.access.AuditEntries(f, after, int(limit))
	if err != nil {
		return err
	}
	if es != nil {
		entries = es
	}
	if next != 0 {
		resp["next_after"] = next
	}
	resp["entries"] = entries
	writeJSON(ctx, 200, resp)
	return nil
}

func validKind(k string) bool {
	for _, x := range ledger.AuditKinds {
		if k == x {
			return true
		}
	}
	return false
}
