package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo"
)

type callState int

const (
	stateRinging callState = iota
	stateAnswered
	stateEnded
)

func (s callState) String() string {
	return [...]string{"ringing", "answered", "ended"}[s]
}

// call is one B2BUA call: the caller's leg (in), the carrier's leg (out) and
// its metering. Its mutable state is guarded by mu; the ledger owns its money.
//
// Lock order: g.mu before c.mu; never the other way. c.mu may be held
// across a ledger call (answer, step), which never calls back into the
// gateway; never hold g.mu across a ledger call or network I/O (see
// Gateway). trunk and streamSrc belong to the registry and are guarded by
// g.mu, not c.mu. c.mu is never held while waiting for a takeover record
// to land in etcd (cluster mode, pendingBooks): the step's money decision
// is made and applied under c.mu, its durability in etcd is waited for
// after c.mu is released, so a hang-up, a limit or the next increment's
// end is never held up by an etcd leader election. (AnswerDialog still
// waits under c.mu: the 200 is relayed only once a survivor could end the
// call; before the answer nothing is billed.)
//
// Invariant while answered: the ledger holds increment hold.N, which ends at
// paidUntil, and a timer fires at paidUntil to debit it and hold the next —
// or, if the next cannot be held, to end the call right then. Increments
// differ in length (a plan minute, then the rate's increments on credits),
// so each one's length comes from the ledger's answer. The timer is set
// as soon as the step is decided, whether or not its takeover record has
// landed: the call ends at its paid time even if a record is still on its
// way. A call never runs on an increment the ledger did not sell; what a
// survivor would bill, should this node die with a record in flight, is
// the last landed record's (ended at once, as its paid-through is past):
// never more than was recorded (cluster.Books.StepPending).
type call struct {
	g         *Gateway
	id        string
	org       string
	user      string
	from, to  string
	rate      rating.Rate
	direction ledger.Direction // outbound, or inbound to a toll-free number
	routes    []ledger.Trunk   // the trunks the call may go out on, in failover order
	trunk     string           // the source trunk it counts against (guarded by g.mu)
	streamSrc string           // TCP/TLS: the remote address its INVITE came from (guarded by g.mu)
	free      bool             // emergency: never metered, never probed, never cut
	// maxDuration ends the call this long after its answer (0: no limit).
	maxDuration time.Duration
	tracked     bool // the ledger has a record of this call
	start       time.Time
	inCallID    string

	in  *sipgo.DialogServerSession
	out *sipgo.DialogClientSession

	mu        sync.Mutex
	state     callState
	answered  time.Time
	hold      ledger.Increment // the increment the ledger holds for the call now
	paidUntil time.Time
	timer     clock.Timer
	inID      string
	outID     string
	// sendMu serializes the requests the gateway sends inside the legs'
	// dialogs (probes, relays, BYEs): a sipgo dialog session is not safe
	// for concurrent requests (its CSeq). Never held with c.mu.
	sendMu sync.Mutex
	// confirmed: the caller has its 200 OK (bridge); no probe before it
	// (guarded by sendMu).
	confirmed bool
	live      liveness // proof of life, session timer, limits (liveness.go)
	// callerTimer: the caller's INVITE supports RFC 4028 timers, so its
	// 200 carries Require: timer (sessiontimer.go).
	callerTimer bool
	endAt       time.Time // when set, the latest instant the call ends at (an expiry, a limit)
	endDecided  bool      // endAt and live.billTo were set by the first limit, cap or loss (decideEnd)
}

// CallInfo is what GET /v1/calls shows of a call.
type CallInfo struct {
	ID          string           `json:"id"`
	Org         string           `json:"org"`
	User        string           `json:"user"`
	From        string           `json:"from"`
	To          string           `json:"to"`
	Direction   ledger.Direction `json:"direction"`
	State       string           `json:"state"`
	Emergency   bool             `json:"emergency"`
	Start       time.Time        `json:"start"`
	Answer      time.Time        `json:"answer,omitzero"`
	PaidUntil   time.Time        `json:"paid_until,omitzero"`
	Increment   int              `json:"increment"`
	PaidFrom    string           `json:"paid_from"` // pool, credits or free
	RemainingS  float64          `json:"remaining_paid_s"`
	RatePerMin  string           `json:"rate_per_minute"`
	InboundCall string           `json:"inbound_call_id"`
}

func (c *call) info(now time.Time) CallInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	ci := CallInfo{ID: c.id, Org: c.org, User: c.user, From: "+" + c.from, To: c.to, Direction: c.direction, State: c.state.String(),
		Emergency: c.free, Start: c.start.UTC(), RatePerMin: c.rate.PerMinute.String(), InboundCall: c.inCallID,
		Increment: c.hold.N, PaidFrom: c.hold.Source}
	if c.free {
		ci.PaidFrom = ledger.SourceFree
	}
	if c.state == stateAnswered {
		ci.Answer = c.answered.UTC()
		if !c.free {
			ci.PaidUntil = c.paidUntil.UTC()
			ci.RemainingS = (c.paidUntil.Sub(c.answered) - c.g.clock.Since(c.answered)).Seconds()
		}
	}
	return ci
}

// answer starts billing: the first increment, held at authorization, now
// runs; a timer debits it at its end.
func (c *call) answer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateRinging {
		return errors.New("call ended before answer")
	}
	now := c.g.clock.Now()
	if c.tracked {
		// With the answer goes what it takes to BYE both legs after a
		// crash (dialogs.go).
		if err := c.g.ledger.AnswerDialog(c.id, now, c.dialogRecord()); err != nil && !c.free {
			return err
		}
	}
	c.state = stateAnswered
	c.answered = now
	if c.free {
		return nil
	}
	first := time.Duration(c.hold.Seconds) * time.Second
	c.paidUntil = now.Add(first)
	c.timer = c.g.clock.AfterFunc(first, c.boundary)
	c.startLiveness(now)
	return nil
}

// pendingBooks is a ledger.Books whose billing step and dialog update can
// return before their takeover record is in etcd (cluster.Books): the
// local change is made and durable on the node when they return, and
// landed yields once the record is in etcd (nil) or could not get there
// (the error: the books failed closed). landed is nil when there is
// nothing to wait for. The gateway waits for it with c.mu released.
type pendingBooks interface {
	StepPending(callID string, n int, at time.Time, live ledger.Liveness) (ledger.Increment, <-chan error, error)
	UpdateDialogPending(callID string, dialog json.RawMessage) (<-chan error, error)
}

// boundary runs when the paid increment ends: debit it, hold the next, or end
// the call exactly now if the org cannot pay the next one. It runs on a
// timer goroutine of its own; a panic in it ends this call (failed, BYE to
// both legs) and no other.
func (c *call) boundary() {
	defer panics.Recover(c.g.log, panics.Call, func() { c.end(ledger.ReasonFailed, 200, byeBoth) },
		"call_id", c.id, "org", c.org)
	reason, err, landed := c.step()
	if landed != nil {
		// The step is decided and the next boundary set; its takeover
		// record is on its way to etcd (an etcd leader election can take
		// a second). Waited for here, without c.mu: meanwhile a hang-up
		// ends the call at once and the next boundary fires on time.
		// The wait is bounded by the books (a record that cannot land
		// fails them closed within their op timeout).
		if werr := <-landed; werr != nil {
			c.g.log.Error("metering failed: the step's takeover record could not land, ending call", "call_id", c.id, "org", c.org, "error", werr)
			c.end(ledger.ReasonFailed, 200, byeBoth)
		}
		return
	}
	if reason == "" {
		return
	}
	if reason == ledger.ReasonFraudGuard {
		c.g.tripped(err)
	}
	if reason == ledger.ReasonMaxCharge {
		c.g.log.Info("call reached its maximum charge", "call_id", c.id, "org", c.org)
	}
	c.end(reason, 200, byeBoth)
}

// step debits the increment that just ended and holds the next, and
// schedules the next boundary. When the next cannot be held it returns the
// reason the call ends for (and the ledger's refusal); "" means it goes on,
// and landed (non-nil in cluster mode) yields once the step's takeover
// record is in etcd: the caller waits for it after c.mu is released.
// c.mu is released by defer, so a panic in the ledger cannot leave the call
// locked for the clean-up that ends it.
func (c *call) step() (reason ledger.Reason, err error, landed <-chan error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateAnswered {
		return "", nil, nil
	}
	if !c.live.maxEnd.IsZero() && !c.paidUntil.Before(c.live.maxEnd) {
		// The limit and the boundary fall together: end at the limit
		// rather than hold an increment past it.
		c.decideEnd(c.live.maxEnd, time.Time{})
		return ledger.ReasonMaxDuration, nil, nil
	}
	used := c.hold
	var inc ledger.Increment
	if c.g.later != nil {
		inc, landed, err = c.g.later.StepPending(c.id, c.hold.N, c.paidUntil, c.live.ledger())
	} else {
		inc, err = c.g.ledger.StepAlive(c.id, c.hold.N, c.paidUntil, c.live.ledger())
	}
	if err == nil && used.Source == ledger.SourceCredits {
		c.live.spent = c.live.spent.Add(used.Credit)
	}
	if err == nil && c.live.maxCharge.IsPositive() && c.live.spent.Add(inc.Credit).GreaterThan(c.live.maxCharge) {
		// The next increment would take the call past its maximum
		// charge: it ends at the end of this one, and the next, held
		// by the step, is released (it started after the bill-to
		// instant, ledger/liveness.go). Its record need not be waited
		// for: the close's follows it.
		c.decideEnd(c.paidUntil, c.paidUntil.Add(-time.Nanosecond))
		return ledger.ReasonMaxCharge, nil, nil
	}
	if err == nil {
		c.hold = inc
		c.paidUntil = c.paidUntil.Add(time.Duration(inc.Seconds) * time.Second)
		// Schedule by the time actually elapsed since answer, not by
		// paidUntil − Now: a late timer does not stack up, and a step of
		// the wall clock neither fires an hour of boundaries at once nor
		// lets the call run unbilled for an hour.
		c.timer = c.g.clock.AfterFunc(c.paidUntil.Sub(c.answered)-c.g.clock.Since(c.answered), c.boundary)
		return "", nil, landed
	}
	switch {
	case errors.Is(err, ledger.ErrPoolExhausted):
		c.g.m.exhausted.Inc()
		return ledger.ReasonPoolExhausted, err, nil
	case errors.Is(err, ledger.ErrInsufficientCredit):
		c.g.m.exhausted.Inc()
		return ledger.ReasonCreditExhausted, err, nil
	case errors.Is(err, ledger.ErrFraudGuard):
		// A spend limit: the call ends at the end of what it paid.
		return ledger.ReasonFraudGuard, err, nil
	default:
		// The ledger cannot take the debit durably: end the call rather
		// than let it run on money nobody recorded (fail closed).
		c.g.log.Error("metering failed, ending call", "call_id", c.id, "org", c.org, "error", err)
		return ledger.ReasonFailed, err, nil
	}
}

// legs says which legs of an answered call get a BYE from the gateway when
// it ends: those still up. A leg that hung up itself needs none.
type legs uint8

const (
	byeCaller  legs = 1 << iota // the caller's leg (we are its UAS)
	byeCarrier                  // the carrier's leg (we are its UAC)

	byeNone legs = 0                      // neither
	byeBoth      = byeCaller | byeCarrier // both: the gateway ends the call
)

// end finishes the call once: stops metering, settles it in the ledger,
// forgets it, and sends BYE to the legs in bye (if it was answered). It
// reports whether this was the end that finished it; a later one does
// nothing.
func (c *call) end(reason ledger.Reason, status int, bye legs) (finished bool) {
	byeIn, byeOut := bye&byeCaller != 0, bye&byeCarrier != 0
	c.mu.Lock()
	if c.state == stateEnded {
		c.mu.Unlock()
		return false
	}
	wasAnswered := c.state == stateAnswered
	c.state = stateEnded
	if c.timer != nil {
		c.timer.Stop()
	}
	c.stopLiveness()
	// The end in the answer's (or the start's) wall frame plus the time
	// that really passed, so the CDR's duration is right even if the wall
	// clock stepped during the call.
	at := c.start.Add(c.g.clock.Since(c.start))
	if wasAnswered {
		at = c.answered.Add(c.g.clock.Since(c.answered))
	}
	if (reason == ledger.ReasonCreditExhausted || reason == ledger.ReasonPoolExhausted) && at.After(c.paidUntil) {
		// The timer may fire a little late on a real clock; the call ended,
		// for billing purposes, when its paid time did.
		at = c.paidUntil
	}
	if !c.endAt.IsZero() && at.After(c.endAt) {
		// An expiry or a limit: the call ended then, however late its
		// timer ran.
		at = c.endAt
	}
	billTo := c.live.billTo
	inID, outID := c.inID, c.outID
	c.mu.Unlock()

	if c.tracked {
		cdr, err := c.g.ledger.CloseCall(c.id, ledger.CallEnd{At: at, Reason: reason, SIPStatus: status, BillTo: billTo})
		if err != nil {
			c.g.log.Error("settling call failed; it will be settled on restart", "call_id", c.id, "org", c.org, "error", err)
		} else {
			c.g.log.Info("call ended", "call_id", c.id, "org", c.org, "reason", reason,
				"billed_s", cdr.BilledS, "charge", cdr.Charge.String())
		}
	}
	c.g.m.ended.WithLabelValues(string(reason)).Inc()
	if !wasAnswered || !byeIn {
		c.g.forget(c, inID, outID)
	} else {
		// The caller's leg stays findable until its BYE is done: an ACK
		// of the 200 still on its way (a call ended within a round trip
		// of its answer) must reach the session, which will not send
		// the BYE before the dialog is confirmed.
		c.g.forget(c, "", outID)
	}
	if !wasAnswered {
		return true
	}
	// The dialog record goes once the BYEs are done, so a crash before
	// then still leaves it for the next start to act on.
	var byes []func(context.Context) error
	var legs []string
	if byeOut {
		byes, legs = append(byes, c.serialized(c.out.Bye)), append(legs, "carrier")
	}
	if byeIn {
		byes, legs = append(byes, c.serialized(c.in.Bye)), append(legs, "caller")
	}
	c.g.wg.Add(1)
	go func() {
		defer c.g.wg.Done()
		defer panics.Recover(c.g.log, panics.Call, nil, "call_id", c.id, "org", c.org)
		var wg sync.WaitGroup
		for i, bye := range byes {
			wg.Add(1)
			go func() { defer wg.Done(); c.g.bye(legs[i], c.id, bye) }()
		}
		wg.Wait()
		if byeIn {
			c.g.forgetIn(c, inID)
		}
		c.g.forgetDialog(c)
	}()
	return true
}

// goBye sends one BYE in the background.
func (g *Gateway) goBye(leg, callID string, bye func(context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.bye(leg, callID, bye)
	}()
}

func (g *Gateway) bye(leg, callID string, bye func(context.Context) error) {
	defer panics.Recover(g.log, panics.Call, nil, "call_id", callID, "leg", leg)
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.ByeTimeout)
	defer cancel()
	if err := bye(ctx); err != nil {
		g.log.Warn("BYE failed", "call_id", callID, "leg", leg, "error", err)
	}
}

// serialized wraps a request in a leg's dialog in c.sendMu.
func (c *call) serialized(f func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		c.sendMu.Lock()
		defer c.sendMu.Unlock()
		return f(ctx)
	}
}
