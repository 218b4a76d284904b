package gateway

import (
	"context"
	"strconv"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/emiago/sipgo/sip"
	"github.com/shopspring/decimal"
)

// Liveness: no customer pays for a call nobody is on.
//
// A BYE can be lost (a PBX reboots, a NAT binding expires, a carrier drops a
// leg silently); a call billed until a BYE arrives would then be billed
// until the org's money runs out. So, for every answered call that is not
// an emergency call, the gateway keeps proof that both legs are up:
//
//   - Session timers (RFC 4028). The gateway is the refresher of both of its
//     legs (as a B2BUA each leg is a session of its own): every
//     SessionExpires/2 it sends an UPDATE without a body in each leg's dialog
//     (UPDATE, not re-INVITE, because it needs no offer, RFC 4028 §9). A
//     refresh a peer sends (re-INVITE or UPDATE) is relayed as before and,
//     answered 2xx end to end, refreshes the session too. Accounting is
//     never touched by a refresh. If no refresh succeeded for SessionExpires,
//     the session has expired: BYE to both legs, reason session_expired.
//     A leg that answers the UPDATE 405 or 501 does not support it (RFC
//     4028 §7.4 would have the refresher fall back to a re-INVITE, which
//     needs an offer the gateway does not keep): the answer proves the leg
//     alive but refreshes nothing, and the leg leaves the session timer;
//     its keepalive alone then watches it.
//   - Keepalive: an OPTIONS in each leg's dialog (where the leg's trunk has
//     keepalive on) every KeepaliveInterval. 481 (the dialog is gone) or 408,
//     or no answer within KeepaliveTimeout, ends the call: reason leg_lost.
//     Any other answer, 200 or 405 or 501, proves the dialog is there.
//
// Every probe, refresh, expiry and limit runs as a job of the gateway
// (counted in its WaitGroup, a panic contained to the call), so none
// outlives Close.
//
// Proof of life of a leg is the instant a request that leg answered (or sent
// and the other answered) was sent: the earliest instant it is proved, so
// the customer is never billed for doubt. The call's proof of life is the
// older of its two legs'. Every Step passes it to the ledger, and a call
// that ends for session_expired or leg_lost is closed with BillTo = that
// instant: the increment it fell in counts, later ones are given back
// (ledger/liveness.go).
//
// Maximum call duration and maximum charge per call end a call at the
// limit (max_duration, max_charge). Emergency calls are exempt from all of
// this: they are never probed, never expired, never cut.

// Legs of a call, as indices of its per-leg state.
const (
	legCaller = iota
	legCarrier
)

var legNames = [2]string{"caller", "carrier"}

// liveness is a call's per-leg proof of life and its timers (guarded by
// c.mu).
type liveness struct {
	session   time.Duration // the negotiated session interval
	alive     [2]time.Time  // each leg's last proof of life
	refreshed [2]time.Time  // each leg's last successful session refresh
	noTimer   [2]bool       // the leg answered a refresh 405/501: out of the session timer
	probe     [2]bool       // keepalive on for the leg
	maxEnd    time.Time     // max duration: the call ends here (zero: none)
	maxCharge decimal.Decimal
	spent     decimal.Decimal // credit committed so far (for maxCharge)
	billTo    time.Time       // set when it ends lost or expired

	// One timer per job, re-armed in place.
	refreshT, expiryT, keepT, limitT clock.Timer
}

// aliveAt is the call's proof of life: the older of its watched legs'. A
// leg nobody watches (its keepalive off and out of the session timer, e.g.
// a PBX that answers UPDATE 405 on a trunk with keepalive off) proves
// nothing after its last answer, but must not pin the call's proof either:
// a carrier lost two hours later would otherwise be refunded back to near
// the answer, hours the carrier bills all the same. With no watched leg,
// the newer proof stands (nothing can then end the call as lost).
func (l *liveness) aliveAt() time.Time {
	var t time.Time
	for leg := range 2 {
		if !l.watched(leg) {
			continue
		}
		if t.IsZero() || l.alive[leg].Before(t) {
			t = l.alive[leg]
		}
	}
	if t.IsZero() {
		t = l.alive[legCaller]
		if l.alive[legCarrier].After(t) {
			t = l.alive[legCarrier]
		}
	}
	return t
}

// watched says whether a leg's liveness is checked: its keepalive is on,
// or it is in the session timer.
func (l *liveness) watched(leg int) bool {
	return l.probe[leg] || (l.session > 0 && !l.noTimer[leg])
}

// expires is when the session expires without a further refresh: the
// oldest refresh of the legs in the session timer, plus the interval. Zero
// when no leg is (no session timer).
func (l *liveness) expires() time.Time {
	var r time.Time
	for leg := range 2 {
		if l.noTimer[leg] {
			continue
		}
		if r.IsZero() || l.refreshed[leg].Before(r) {
			r = l.refreshed[leg]
		}
	}
	if r.IsZero() || l.session <= 0 {
		return time.Time{}
	}
	return r.Add(l.session)
}

func (l *liveness) ledger() ledger.Liveness {
	return ledger.Liveness{Alive: l.aliveAt(), Expires: l.expires()}
}

// startLiveness arms a just-answered call's timers (c.mu held).
func (c *call) startLiveness(now time.Time) {
	lv := &c.live
	lv.alive = [2]time.Time{now, now}
	lv.refreshed = [2]time.Time{now, now}
	lv.spent = decimal.Zero
	if d := c.maxDuration; d > 0 {
		lv.maxEnd = now.Add(d)
		c.rearm(&lv.limitT, d, c.limit)
	}
	if lv.session > 0 {
		c.rearm(&lv.refreshT, lv.session/2, c.refresh)
		c.rearm(&lv.expiryT, lv.session, c.checkExpiry)
	}
	if (lv.probe[legCaller] || lv.probe[legCarrier]) && c.g.cfg.KeepaliveInterval > 0 {
		c.rearm(&lv.keepT, c.g.cfg.KeepaliveInterval, c.keepalive)
	}
}

// rearm replaces a timer slot (c.mu held). f runs as a job of the
// gateway (job).
func (c *call) rearm(slot *clock.Timer, d time.Duration, f func()) {
	if *slot != nil {
		(*slot).Stop()
	}
	*slot = c.g.clock.AfterFunc(d, func() { c.job(f) })
}

// job runs one liveness job of the call — a probe, a refresh, an expiry
// check, a limit — in the gateway's WaitGroup, so Close waits for it (its
// network waits end with the gateway's context), and with a panic
// contained to this call (ended failed, BYE to both legs). A job due once
// the gateway is closing does not run: Close ends every call itself.
func (c *call) job(f func()) {
	if !c.g.jobStart() {
		return
	}
	defer c.g.wg.Done()
	defer panics.Recover(c.g.log, panics.Call, func() { c.end(ledger.ReasonFailed, 200, byeBoth) }, "call_id", c.id, "org", c.org)
	f()
}

// jobStart counts a job in g.wg unless the gateway is closing. jobMu makes
// the check and the Add one step, so no Add can race Close's Wait.
func (g *Gateway) jobStart() bool {
	g.jobMu.Lock()
	defer g.jobMu.Unlock()
	if g.jobsClosed {
		return false
	}
	g.wg.Add(1)
	return true
}

// closeJobs stops new jobs; those running are waited for with g.wg.
func (g *Gateway) closeJobs() {
	g.jobMu.Lock()
	g.jobsClosed = true
	g.jobMu.Unlock()
}

// stopLiveness stops every liveness timer (c.mu held).
func (c *call) stopLiveness() {
	for _, t := range []clock.Timer{c.live.refreshT, c.live.expiryT, c.live.keepT, c.live.limitT} {
		if t != nil {
			t.Stop()
		}
	}
}

// up reports whether the call is answered and not ended.
func (c *call) up() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateAnswered
}

// probeLeg sends one in-dialog request on a leg and waits, at most timeout,
// for its final answer. It reports when it was sent, whether the leg
// answered in a way that proves its dialog is there, and the answer's
// status (0: none).
func (c *call) probeLeg(leg int, method sip.RequestMethod, timeout time.Duration, hdrs ...sip.Header) (sent time.Time, ok bool, status int) {
	var target sip.Uri
	if leg == legCarrier {
		target = c.out.InviteRequest.Recipient
		if ct := c.out.InviteResponse.Contact(); ct != nil {
			target = ct.Address
		}
	} else {
		target = c.in.InviteRequest.Contact().Address
	}
	req := sip.NewRequest(method, target)
	for _, h := range hdrs {
		req.AppendHeader(h)
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, timeout)
	defer cancel()
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if !c.confirmed {
		// The caller's 200 is still being written: nothing to probe
		// yet, and nothing proved (a zero time proves nothing).
		return time.Time{}, true, 0
	}
	sent = c.g.clock.Now()
	var res *sip.Response
	var err error
	if leg == legCarrier {
		res, err = c.out.Do(ctx, req)
	} else {
		res, err = c.in.Do(ctx, req)
	}
	switch {
	case err != nil:
		c.g.m.probes.WithLabelValues(string(method), "no_answer").Inc()
		return sent, false, 0
	case res.StatusCode == 481 || res.StatusCode == 408:
		c.g.m.probes.WithLabelValues(string(method), "gone").Inc()
		return sent, false, res.StatusCode
	}
	c.g.m.probes.WithLabelValues(string(method), "ok").Inc()
	return sent, true, res.StatusCode
}

// keepalive sends OPTIONS in each leg with keepalive on; a leg that does
// not prove itself ends the call (leg_lost), billed to the last proof of
// life. It runs as a job on the call's timer and re-arms itself.
func (c *call) keepalive() {
	if !c.up() {
		return
	}
	for leg := range 2 {
		if !c.live.probe[leg] {
			continue
		}
		sent, ok, _ := c.probeLeg(leg, sip.OPTIONS, c.g.cfg.KeepaliveTimeout)
		if !ok {
			c.g.log.Warn("leg lost: keepalive not answered", "call_id", c.id, "org", c.org, "leg", legNames[leg])
			c.endLost(ledger.ReasonLegLost, time.Time{})
			return
		}
		c.proved(leg, sent, false)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateAnswered {
		c.rearm(&c.live.keepT, c.g.cfg.KeepaliveInterval, c.keepalive)
	}
}

// refresh is the gateway's session refresh: an UPDATE in each leg still in
// the session timer. A leg that answers 2xx is refreshed. 481/408/silence
// refreshes nothing and is left to the expiry (a peer's own refresh may
// still come). 405 or 501 (the peer does not support UPDATE, RFC 4028 §7.4)
// proves the leg alive — it answered in its dialog — but refreshes nothing,
// and the leg leaves the session timer: the gateway cannot refresh it
// without an offer for a re-INVITE, so its keepalive alone watches it. Any
// other answer (a 4xx/5xx/6xx of another kind) proves the leg alive and
// refreshes nothing. It runs as a job and re-arms itself.
func (c *call) refresh() {
	if !c.up() {
		return
	}
	c.mu.Lock()
	session, noTimer := c.live.session, c.live.noTimer
	c.mu.Unlock()
	se := sip.NewHeader("Session-Expires", sessionExpiresValue(session, "uac"))
	for leg := range 2 {
		if noTimer[leg] {
			continue
		}
		sent, ok, status := c.probeLeg(leg, sip.UPDATE, c.g.cfg.KeepaliveTimeout, se)
		switch {
		case !ok || sent.IsZero():
		case status >= 200 && status < 300:
			c.proved(leg, sent, true)
		case status == 405 || status == 501:
			c.proved(leg, sent, false)
			c.mu.Lock()
			c.live.noTimer[leg] = true
			c.mu.Unlock()
			c.g.log.Info("leg does not support UPDATE: out of the session timer, watched by its keepalive", "call_id", c.id, "org", c.org, "leg", legNames[leg])
		default:
			c.proved(leg, sent, false)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateAnswered {
		c.rearm(&c.live.refreshT, c.live.session/2, c.refresh)
	}
}

// proved records a proof of life of a leg at sent (and a session refresh),
// never moving it back.
func (c *call) proved(leg int, sent time.Time, refreshed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sent.After(c.live.alive[leg]) {
		c.live.alive[leg] = sent
	}
	if refreshed && sent.After(c.live.refreshed[leg]) {
		c.live.refreshed[leg] = sent
	}
}

// relayed records an in-dialog request a peer sent that the other leg
// answered 2xx: both legs proved at sent, and a refresh if it was one.
func (c *call) relayed(sent time.Time, refresh bool) {
	c.proved(legCaller, sent, refresh)
	c.proved(legCarrier, sent, refresh)
}

// checkExpiry runs when the session may have expired: if it has, the call
// ends (session_expired) at the expiry, billed to its last proof of life;
// if a refresh came meanwhile it waits for the new expiry.
func (c *call) checkExpiry() {
	c.mu.Lock()
	if c.state != stateAnswered {
		c.mu.Unlock()
		return
	}
	exp := c.live.expires()
	if exp.IsZero() {
		// No leg is left in the session timer.
		c.mu.Unlock()
		return
	}
	if now := c.g.clock.Now(); now.Before(exp) {
		c.rearm(&c.live.expiryT, exp.Sub(now), c.checkExpiry)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.g.log.Warn("session expired without a refresh", "call_id", c.id, "org", c.org)
	c.endLost(ledger.ReasonSessionExpired, exp)
}

// endLost ends a call nobody is proved to be on: BYE to both legs, billed
// to the last proof of life; at, when set, is when it ended (the expiry).
func (c *call) endLost(reason ledger.Reason, at time.Time) {
	c.mu.Lock()
	c.decideEnd(at, c.live.aliveAt())
	c.mu.Unlock()
	c.end(reason, 200, byeBoth)
}

// limit ends a call at its maximum duration (a job on the call's timer).
func (c *call) limit() {
	c.mu.Lock()
	c.decideEnd(c.live.maxEnd, time.Time{})
	c.mu.Unlock()
	c.end(ledger.ReasonMaxDuration, 200, byeBoth)
}

// decideEnd records when the call ends and what it is billed to (c.mu
// held), unless a limit, the cap or a lost leg decided it first: two of
// them racing in the same instant must not mix one's end with the other's
// bill-to (end() then settles once, with whichever reason won).
func (c *call) decideEnd(at, billTo time.Time) {
	if c.endDecided {
		return
	}
	c.endDecided = true
	c.endAt, c.live.billTo = at, billTo
}

// sessionExpiresValue is a Session-Expires header value (RFC 4028 §4).
func sessionExpiresValue(d time.Duration, refresher string) string {
	v := strconv.Itoa(int(d / time.Second))
	if refresher != "" {
		v += ";refresher=" + refresher
	}
	return v
}

// limits sets a metered call's session interval, its caller leg's
// keepalive, its maximum duration (the org's, else the source trunk's, else
// the config's) and its maximum charge (the org's fraud guard).
func (g *Gateway) limits(c *call, org ledger.Org, source ledger.Trunk) {
	if c.live.session == 0 {
		c.live.session = g.cfg.SessionExpires
	}
	c.live.probe[legCaller] = source.KeepaliveOn()
	c.maxDuration = g.cfg.MaxCallDuration
	if source.MaxCallDurationS > 0 {
		c.maxDuration = time.Duration(source.MaxCallDurationS) * time.Second
	}
	if org.FraudGuard.MaxCallDurationS > 0 {
		c.maxDuration = time.Duration(org.FraudGuard.MaxCallDurationS) * time.Second
	}
	c.live.maxCharge = org.FraudGuard.MaxChargePerCall
}

// answeredBy sets what the answering carrier trunk says of the carrier leg
// (c.mu held): its keepalive switch, and a shorter maximum duration.
func (c *call) answeredBy(carrier ledger.Trunk) {
	c.live.probe[legCarrier] = carrier.KeepaliveOn()
	if d := time.Duration(carrier.MaxCallDurationS) * time.Second; d > 0 && (c.maxDuration == 0 || d < c.maxDuration) {
		c.maxDuration = d
	}
}
