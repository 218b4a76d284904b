package gateway

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"
	"github.com/shopspring/decimal"
)

func (g *Gateway) refuse(req *sip.Request, tx sip.ServerTransaction, err error) {
	g.tripped(err)
	r := refusalFor(err)
	g.m.authorizations.WithLabelValues("refused", r.reason).Inc()
	res := sip.NewResponseFromRequest(req, r.status, r.phrase, nil)
	res.AppendHeader(sip.NewHeader("Warning", fmt.Sprintf("399 creditgate %q", r.warning)))
	if r.status == 503 {
		res.AppendHeader(sip.NewHeader("Retry-After", "5"))
	}
	if r.status == 422 {
		res.AppendHeader(sip.NewHeader("Min-SE", secondsValue(g.cfg.MinSE)))
	}
	var chal challengeError
	if errors.As(err, &chal) {
		res.AppendHeader(g.digest.challenge(chal.stale))
	}
	if r == internalRefusal {
		g.log.Error("INVITE refused on internal error", "call_id", req.CallID().Value(), "error", err)
	}
	_ = tx.Respond(res)
}

// tripped counts a fraud-guard refusal and has the org's contacts told
// (the ledger keeps that to once an hour per guard).
func (g *Gateway) tripped(err error) {
	var tr *ledger.Trip
	if !errors.As(err, &tr) {
		return
	}
	g.m.fraudTrips.WithLabelValues(tr.Guard).Inc()
	g.log.Warn("fraud guard refused a call", "org", tr.Org, "user", tr.User, "guard", tr.Guard, "detail", tr.Detail)
	if err := g.ledger.FraudTripped(tr, g.clock.Now()); err != nil {
		g.log.Error("fraud-guard notification not queued", "org", tr.Org, "error", err)
	}
}

// callerNumber is the caller's number as sent: the P-Asserted-Identity user
// when present, else the From user.
func callerNumber(req *sip.Request) string {
	if h := req.GetHeader("P-Asserted-Identity"); h != nil {
		var u sip.Uri
		params := sip.NewParams()
		if _, err := sip.ParseAddressValue(h.Value(), &u, &params); err == nil && u.User != "" {
			return u.User
		}
	}
	if f := req.From(); f != nil {
		return f.Address.User
	}
	return ""
}

// looped reports an INVITE this gateway sent: its last hop's Via is one
// of the gateway's own listening addresses (sipgo writes the listening
// host and port into the Via of what it sends).
func (g *Gateway) looped(req *sip.Request) bool {
	v := req.Via()
	if v == nil || v.Host != g.addr.host {
		return false
	}
	return v.Port == g.addr.port || (g.tlsPort != 0 && v.Port == g.tlsPort)
}

// missingHeader names the first header every request must carry that req
// lacks, or is "".
func missingHeader(req *sip.Request) string {
	switch {
	case req.CallID() == nil:
		return "Call-ID"
	case req.From() == nil:
		return "From"
	case req.To() == nil:
		return "To"
	case req.CSeq() == nil:
		return "CSeq"
	case req.Via() == nil:
		return "Via"
	}
	return ""
}

func (g *Gateway) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	// RFC 3261 §8.1.1: without these an INVITE is no request at all; the
	// code below may rely on every one of them.
	if h := missingHeader(req); h != "" {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 400, "Missing "+h, nil))
		return
	}
	b := checkRequest(req)
	if b == nil {
		b = checkInvite(req)
	}
	if b != nil {
		g.refuseBadRequest(req, tx, b)
		return
	}
	if _, ok := req.To().Params.Get("tag"); ok {
		g.onInDialog(req, tx)
		return
	}
	if g.looped(req) {
		// A carrier route pointing at the gateway itself (or at a peer
		// that sends the call straight back) would otherwise make each
		// pass a new call holding credit of its own, until Max-Forwards
		// ran out 70 hops later.
		g.refuse(req, tx, ErrLoop)
		return
	}
	// A repeat of an INVITE whose transaction has been let go
	// (sip.transaction_linger) must not become a second call.
	g.mu.Lock()
	_, dup := g.inCalls[req.CallID().Value()]
	g.mu.Unlock()
	if dup {
		g.log.Debug("repeated INVITE of a call in progress dropped", "sip_call_id", req.CallID().Value())
		return
	}
	// A Session-Expires below sip.min_se is refused with 422, but only
	// once authorize knows the call is no emergency call: nothing may keep
	// one of those from connecting.
	session, sessionErr := g.negotiateSession(req)
	received := time.Now()
	// 100 Trying at once: authorization waits for the ledger's fsync, and
	// a caller that hears nothing for 500 ms retransmits the INVITE, which
	// under load only adds to the load (RFC 3261 §17.2.1).
	_ = tx.Respond(sip.NewResponseFromRequest(req, 100, "Trying", nil))
	// Shed before doing any work: an INVITE over the pending bound costs a
	// 503, not a place in a queue that slows every call behind it.
	// Emergency calls are let through; authorize tells them apart.
	n := g.pending.Add(1)
	c, err := g.authorize(req, n > int64(g.cfg.MaxPending), sessionErr)
	g.pending.Add(-1)
	if err != nil {
		g.refuse(req, tx, err)
		return
	}
	if !c.free {
		c.live.session = session
		c.callerTimer = supportsTimer(req)
	}
	// A panic while the call is set up or up must not leave it holding
	// credit with nobody to end it: end it (failed), then answer 500.
	defer panics.Recover(g.log, panics.SIP, func() {
		c.end(ledger.ReasonFailed, 500, byeBoth)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 500, "Server Internal Error", nil))
	}, "call_id", c.id, "org", c.org)
	g.forward(req, tx, c, received)
}

// authorize decides an INVITE and, if allowed, returns the call with its
// first increment already held and the trunk it goes out on. sessionErr is
// the session-timer negotiation's refusal, which stands for every call but
// an emergency one.
func (g *Gateway) authorize(req *sip.Request, overloaded bool, sessionErr error) (*call, error) {
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		return nil, ErrTooManyHops
	}
	// Behind a trusted front proxy the customer is the address it vouches
	// for, not the proxy's (front.go says which decisions follow which).
	src, err := g.front.source(req)
	if err != nil {
		return nil, err
	}
	trunk, ok := g.routes.Load().sourceAddr(src)
	if !ok {
		return nil, ErrUnknownTrunk
	}
	if trunk.Kind == rating.TrunkCarrier {
		if err := g.admissible(overloaded); err != nil {
			return nil, err
		}
		if sessionErr != nil {
			return nil, sessionErr
		}
		return g.authorizeInbound(req, trunk)
	}
	if trunk.Username != "" {
		// Before anything about the call is looked at, emergency calls
		// included: a trunk with a password accepts nothing unproven.
		if err := g.digest.check(req, trunk); err != nil {
			return nil, err
		}
	}
	org, err := g.ledger.Org(trunk.Org)
	if err != nil {
		return nil, err
	}
	now := g.clock.Now()
	dialled := req.Recipient.User

	// Emergency first: no caller check, license, balance or load limit may
	// keep it from connecting.
	if rating.IsEmergency(dialled, org.Country) {
		return g.emergency(req, org, dialled, now), nil
	}
	if sessionErr != nil {
		return nil, sessionErr
	}
	if err := g.admissible(overloaded); err != nil {
		return nil, err
	}
	if !g.perSrc.allow(src.Addr(), g.clock.Now()) {
		return nil, ErrRateLimited
	}
	user, from, ok := g.callerOf(req, org)
	if !ok {
		return nil, ErrUnknownCaller
	}
	licenses := make([]rating.License, 0, len(user.Licenses))
	for _, l := range user.Licenses {
		licenses = append(licenses, rating.License(l))
	}
	pools, err := g.ledger.PoolsLeft(org.ID, now)
	if err != nil {
		return nil, err
	}
	dec, err := rating.Decide(g.deck.Load(), g.cfg.Catalog, rating.Call{Trunk: trunk.Kind, Dialled: dialled,
		Org: rating.OrgTerms{Country: org.Country, BlockPremium: org.BlockPremium}, Licenses: licenses,
		PoolsLeft: pools, Available: org.Available(), Now: now})
	if err != nil {
		return nil, err
	}
	if p := rating.HighRisk(g.cfg.HighRisk, dec.Number); p != "" && !org.FraudGuard.AllowHighRisk {
		return nil, &ledger.Trip{Guard: ledger.GuardHighRisk, Org: org.ID, User: user.ID,
			Detail: fmt.Sprintf("+%s is in the high-risk range +%s (%s) and the org does not allow high-risk destinations", dec.Number, p, dec.Rate.Destination)}
	}
	routes := g.routes.Load().carriers(dec.Number)
	if len(routes) == 0 {
		return nil, ErrNoRoute
	}
	c := &call{g: g, id: uuid.NewString(), org: org.ID, user: user.ID, from: from, to: dec.Number,
		rate: dec.Rate, start: now, inCallID: req.CallID().Value(), routes: routes, direction: ledger.DirectionOutbound}
	g.limits(c, org, trunk)
	if err := g.admit(c, trunk); err != nil {
		return nil, err
	}
	if err := g.open(c, dec, org); err != nil {
		c.release()
		return nil, err
	}
	if cap := org.FraudGuard.MaxChargePerCall; cap.IsPositive() && c.hold.Credit.GreaterThan(cap) {
		// The first increment (with its connection fee) alone would pass
		// the per-call cap, which metering only checks at later steps.
		g.failBeforeAnswer(c, ErrOverCap, 403)
		return nil, &ledger.Trip{Guard: ledger.GuardMaxChargePerCall, Org: org.ID, User: user.ID,
			Detail: fmt.Sprintf("the first increment costs %s, above the org's max_charge_per_call %s", c.hold.Credit, cap)}
	}
	return c, nil
}

// ErrOverCap is how a call refused by max_charge_per_call at authorization
// is settled (it never reached a carrier; it costs nothing).
var ErrOverCap = errors.New("first increment above max_charge_per_call")

// authorizeInbound decides a carrier's INVITE to a toll-free number: the
// owning org pays at the catalogue's inbound rate, and the call goes to the
// org's trunk.
func (g *Gateway) authorizeInbound(req *sip.Request, carrier ledger.Trunk) (*call, error) {
	num, err := rating.Normalize("+"+strings.TrimPrefix(req.Recipient.User, "+"), "")
	if err != nil {
		return nil, err
	}
	tf, ok := g.ledger.TollFreeOwner(num)
	if !ok {
		return nil, ErrUnknownNumber
	}
	org, err := g.ledger.Org(tf.Org)
	if err != nil {
		return nil, err
	}
	route, ok := g.routes.Load().delivery(org.ID, tf.Trunk)
	if !ok {
		return nil, ErrNoDelivery
	}
	now := g.clock.Now()
	dec, err := rating.Decide(g.deck.Load(), g.cfg.Catalog, rating.Call{Trunk: rating.TrunkCarrier, Dialled: "+" + num,
		Org: rating.OrgTerms{Country: org.Country, BlockPremium: org.BlockPremium}, Available: org.Available(), Now: now})
	if err != nil {
		return nil, err
	}
	// Carriers present callers in E.164; anything else is kept as sent
	// (digits only) for the CDR.
	from, err := rating.Normalize(callerNumber(req), org.Country)
	if err != nil {
		from = ""
	}
	c := &call{g: g, id: uuid.NewString(), org: org.ID, from: from, to: dec.Number, rate: dec.Rate, start: now,
		inCallID: req.CallID().Value(), routes: []ledger.Trunk{route}, direction: ledger.DirectionInbound}
	g.limits(c, org, carrier)
	if err := g.admit(c, carrier); err != nil {
		return nil, err
	}
	err = g.open(c, dec, org)
	if err != nil {
		c.release()
	}
	if errors.Is(err, ledger.ErrInsufficientCredit) {
		// Another call took the credit since the decision.
		err = fmt.Errorf("%w: %w", rating.ErrTollFreeNoCredit, err)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// open records a decided call in the ledger and holds its first increment.
func (g *Gateway) open(c *call, dec rating.Decision, org ledger.Org) error {
	rec := ledger.Call{ID: c.id, Details: ledger.Details{Org: org.ID, User: c.user, From: c.from, To: dec.Number,
		Destination: dec.Rate.Destination, Country: dec.Rate.Country, Type: string(dec.Rate.Type), Direction: c.direction,
		RatePerMinute: dec.Rate.PerMinute, Currency: org.Currency}, ConnectionFee: dec.Rate.ConnectionFee,
		FirstIncrement: int(dec.Rate.FirstIncrement / time.Second), NextIncrement: int(dec.Rate.NextIncrement / time.Second),
		Plan: dec.Plan, Spill: dec.Spill, Fresh: true, Unsynced: true}
	inc, err := g.ledger.OpenCall(rec, c.start)
	if err != nil {
		return err
	}
	c.hold = inc
	c.tracked = true
	g.m.authorizations.WithLabelValues("allowed", string(dec.Source)).Inc()
	return nil
}

// emergency lets an emergency call through: routed by the org's country
// code, recorded free, never refused for money, license or load.
func (g *Gateway) emergency(req *sip.Request, org ledger.Org, dialled string, now time.Time) *call {
	c := &call{g: g, id: uuid.NewString(), org: org.ID, free: true, to: dialled, start: now,
		inCallID: req.CallID().Value(), direction: ledger.DirectionOutbound}
	c.routes = g.routes.Load().carriers(rating.CallingCode(org.Country) + dialled)
	var u ledger.User
	u, c.from, _ = g.callerOf(req, org)
	c.user = u.ID
	rec := ledger.Call{ID: c.id, Details: ledger.Details{Org: org.ID, User: c.user, From: c.from, To: dialled,
		Destination: "Emergency services", Country: org.Country, Type: string(rating.Special), Direction: ledger.DirectionOutbound,
		RatePerMinute: decimal.Zero, Currency: org.Currency}, Free: true, Fresh: true, Unsynced: true}
	if _, err := g.ledger.OpenCall(rec, now); err == nil {
		c.tracked = true
	} else {
		g.log.Error("emergency call connected without a ledger record", "call_id", c.id, "org", org.ID, "error", err)
	}
	g.m.authorizations.WithLabelValues("allowed", "emergency").Inc()
	return c
}

// callerOf finds the org's user calling, and the caller's number in E.164
// ("" if it is not a number) for the CDR and the carrier leg's From.
func (g *Gateway) callerOf(req *sip.Request, org ledger.Org) (u ledger.User, from string, ok bool) {
	from, err := rating.Normalize(callerNumber(req), org.Country)
	if err != nil {
		return ledger.User{}, "", false
	}
	u, ok = g.ledger.UserByNumber(from)
	if !ok || u.Org != org.ID {
		return ledger.User{}, from, false
	}
	return u, from, true
}
