package ledger

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/creditgate/creditgate/rating"
	"github.com/shopspring/decimal"
)

// A call's money moves as two-phase transfers, one per billing increment,
// in the spirit of TigerBeetle's pending → post / void transfers: increment
// N is held (pending), then committed (posted, in whole or in part) or
// released (voided). (call id, N) is the transfer's idempotent id: a
// retried operation whose effect is already there applies nothing and
// answers as the first time did, once that first time is durable.
//
// The increments of a call are strictly sequential: N+1 can be held only
// once N is committed or released. Step does both in one durable operation,
// which is what metering does at every increment boundary.

// OpenCall records a call being authorized and holds its first increment:
// a minute of its plan's pool if it has one and the pool is not used up,
// else the connection fee plus the first increment on credits. Emergency
// calls (Free) hold nothing and are never refused for money.
func (l *Ledger) OpenCall(c Call, at time.Time) (Increment, error) {
	if err := l.validCall(&c); err != nil {
		return Increment{}, err
	}
	if !c.Fresh && l.endedOnDisk(c.ID) {
		return Increment{}, fmt.Errorf("%w: %s", ErrCallEnded, c.ID)
	}
	if _, err := timeKey(at); err != nil {
		// Its CDR could not be filed by start; the gateway connects an
		// emergency call without a record all the same.
		return Increment{}, fmt.Errorf("%w: open call %s: %w", ErrUnavailable, c.ID, err)
	}
	c.Start = at
	c.CallState = CallState{LastAt: at, Charge: decimal.Zero, HoldFrom: at}
	if !c.Free {
		_, credit := c.creditIncrement(1)                            // prices the call here, not under the ledger's lock
		release, err := l.reserveGuard(c.Org, c.User, 1, credit, at) // peerguard.go: before the lock
		if err != nil {
			return Increment{}, fmt.Errorf("open call %s: %w", c.ID, err)
		}
		defer release()
	}
	op, err := l.do(Op{Kind: "open", Org: c.Org, Call: c.ID, N: 1}, at, func(t *txn) error {
		if old, ok := l.calls[c.ID]; ok {
			if old.Org != c.Org || old.To != c.To {
				return invalidf("call id %s is in use by another call", c.ID)
			}
			t.result = old.Hold
			return nil
		}
		if _, ok := l.ended.get(c.ID); ok {
			return fmt.Errorf("%w: %s", ErrCallEnded, c.ID)
		}
		st, ok := l.orgs[c.Org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, c.Org)
		}
		call := c
		if call.Free {
			call.Hold = Increment{N: 1, Source: SourceFree}
		} else {
			if err := st.admitCall(&call); err != nil {
				return err
			}
			inc, err := l.next(st, &call, 1, at)
			if err != nil {
				return err
			}
			l.hold(t, st, &call, inc)
			st.countCall(&call, +1)
		}
		l.calls[call.ID] = &call
		t.put(keyCall(call.ID), call)
		t.put(keyCallState(call.ID), call.CallState)
		t.result = call.Hold
		t.unsynced = c.Unsynced && !t.wakePayer && !t.wakeOutbox
		return nil
	})
	return op.Result, err
}

func (l *Ledger) validCall(c *Call) error {
	switch {
	case !ValidID(c.ID):
		return invalidf("call id %q: want 1 to %d letters, digits, '.', '_' or '-'", c.ID, MaxIDLength)
	case c.Free:
		return nil
	case c.FirstIncrement < 1 || c.NextIncrement < 1 || c.FirstIncrement > 3600 || c.NextIncrement > 3600:
		return invalidf("increments %d/%d s: want 1 to 3600 seconds each", c.FirstIncrement, c.NextIncrement)
	case c.RatePerMinute.IsNegative() || c.ConnectionFee.IsNegative():
		return invalidf("negative rate %s or connection fee %s", c.RatePerMinute, c.ConnectionFee)
	case c.Plan != "" && l.planIndex(c.Plan) < 0:
		return invalidf("unknown plan %q", c.Plan)
	case c.Plan == "" && !c.Spill:
		return invalidf("call %s has neither a plan nor credits to draw", c.ID)
	}
	return nil
}

// endedOnDisk reports whether a call id has a CDR already, beyond the ids
// the ledger remembers in memory.
func (l *Ledger) endedOnDisk(id string) bool {
	_, found, _ := get(l.db, keyEnded(id))
	return found
}

// loadCalls reads the calls that were up (a/) and their state (s/), and
// counts them into their orgs' fraud guard; settleOpenCalls ends them, and
// counts them out.
func (l *Ledger) loadCalls() error {
	if err := scan(l.db, []byte("a/"), func(_ []byte, c *Call) error {
		l.calls[c.ID] = c
		return nil
	}); err != nil {
		return err
	}
	if err := scanOnto(l.db, []byte("s/"), l.calls, func(c *Call, cs *CallState) { c.CallState = *cs }); err != nil {
		return err
	}
	for _, c := range l.calls {
		if st, ok := l.orgs[c.Org]; ok {
			st.countCall(c, +1)
		}
	}
	return nil
}

// Answer marks the call answered: from here its increments are charged.
func (l *Ledger) Answer(callID string, at time.Time) error {
	return l.AnswerDialog(callID, at, nil)
}

// AnswerDialog is Answer that also records, in the same durable operation,
// what the SIP side needs to end the call's legs after a crash (see
// Dialogs). A retry of an answered call changes nothing.
func (l *Ledger) AnswerDialog(callID string, at time.Time, dialog json.RawMessage) error {
	if dialog != nil && !json.Valid(dialog) {
		return invalidf("call %s: dialog record is not JSON", callID)
	}
	_, err := l.do(Op{Kind: "answer", Call: callID}, at, func(t *txn) error {
		c, _, err := l.callFor(callID)
		if err != nil {
			return err
		}
		if c.Answered() {
			return nil
		}
		c.Answer, c.LastAt, c.HoldFrom = at, at, at
		t.put(keyCallState(c.ID), c.CallState)
		if dialog != nil {
			t.raw(keyDialog(c.ID), bytes.Clone(dialog))
		}
		return nil
	})
	return err
}

// Hold takes increment n of an answered call, whose increment n-1 must be
// committed or released already.
func (l *Ledger) Hold(callID string, n int, at time.Time) (Increment, error) {
	release, err := l.reserveStep(callID, n, at) // peerguard.go: before the lock
	if err != nil {
		return Increment{}, err
	}
	defer release()
	op, err := l.do(Op{Kind: "hold", Call: callID, N: n}, at, func(t *txn) error {
		c, st, err := l.callFor(callID)
		if err != nil {
			return err
		}
		if n <= c.Hold.N {
			t.result = settled(c, n)
			return nil
		}
		if err := l.meterable(c, n); err != nil {
			return err
		}
		if c.Hold.Open {
			return invalidf("call %s: increment %d is still held; commit or release it first", c.ID, c.Hold.N)
		}
		inc, err := l.next(st, c, n, at)
		if err != nil {
			return err
		}
		l.hold(t, st, c, inc)
		c.LastAt, c.HoldFrom = at, at
		t.put(keyCallState(c.ID), c.CallState)
		t.result = c.Hold
		return nil
	})
	return op.Result, err
}

// Commit posts increment n whole.
func (l *Ledger) Commit(callID string, n int, at time.Time) error {
	return l.secondPhase(callID, n, at, "commit", nil)
}

// CommitPart posts part of increment n and releases the rest. The part may
// not exceed what was held.
func (l *Ledger) CommitPart(callID string, n int, at time.Time, part Amount) error {
	return l.secondPhase(callID, n, at, "commit", &part)
}

// Release voids increment n: nothing of it is charged.
func (l *Ledger) Release(callID string, n int, at time.Time) error {
	return l.secondPhase(callID, n, at, "release", &Amount{})
}

// secondPhase is the second phase of increment n's transfer: post part of it
// (all of it when part is nil) and void the rest. Releasing posts nothing.
func (l *Ledger) secondPhase(callID string, n int, at time.Time, kind string, part *Amount) error {
	_, err := l.do(Op{Kind: kind, Call: callID, N: n}, at, func(t *txn) error {
		c, st, err := l.callFor(callID)
		if err != nil {
			return err
		}
		if n < c.Hold.N || (n == c.Hold.N && !c.Hold.Open) {
			return nil
		}
		if n > c.Hold.N {
			return invalidf("call %s: increment %d was never held", c.ID, n)
		}
		amt := full(c.Hold)
		if part != nil {
			if err := fits(*part, c.Hold); err != nil {
				return fmt.Errorf("call %s increment %d: %w", c.ID, n, err)
			}
			amt = *part
		}
		if kind == "commit" && !c.Answered() {
			return invalidf("call %s is not answered: an unanswered call costs nothing, release its hold", c.ID)
		}
		l.settle(t, st, c, amt)
		c.Tail = nil // no liveness given: alive now (liveness.go)
		c.LastAt = at
		t.put(keyCallState(c.ID), c.CallState)
		return nil
	})
	return err
}

// Step is metering's increment boundary, in one durable operation: commit
// increment n (it was used) and hold n+1. If n+1 cannot be held, n is still
// committed and the error (ErrInsufficientCredit or ErrPoolExhausted) says
// the call must end now, at the end of what was paid for. It is StepAlive
// with the call alive now.
func (l *Ledger) Step(callID string, n int, at time.Time) (Increment, error) {
	return l.StepAlive(callID, n, at, Liveness{})
}

// StepAlive is Step that also records the call's Liveness: the committed
// increments that started after live.Alive are kept in the call's tail, to
// be given back if the call closes with a BillTo (liveness.go). at is the
// end of increment n.
func (l *Ledger) StepAlive(callID string, n int, at time.Time, live Liveness) (Increment, error) {
	release, err := l.reserveStep(callID, n+1, at) // peerguard.go: before the lock
	if err != nil {
		return Increment{}, err
	}
	defer release()
	op, err := l.do(Op{Kind: "step", Call: callID, N: n, Live: live}, at, func(t *txn) error {
		c, st, err := l.callFor(callID)
		if err != nil {
			return err
		}
		if c.Hold.N == n+1 {
			t.result = c.Hold
			return nil
		}
		if c.Hold.N != n {
			return invalidf("call %s: step from increment %d, but its latest is %d", c.ID, n, c.Hold.N)
		}
		if err := l.meterable(c, n+1); err != nil {
			return err
		}
		// Committing turns held into spent and leaves what is available
		// unchanged, so whether n+1 fits can be decided first.
		inc, nextErr := l.next(st, c, n+1, at)
		if !c.Hold.Open && nextErr != nil {
			return nextErr // nothing to commit and nothing to hold: a refusal
		}
		if c.Hold.Open {
			c.remember(c.Hold, c.HoldFrom)
			l.settle(t, st, c, full(c.Hold))
		}
		alive := live.Alive
		if alive.IsZero() {
			alive = at
		}
		c.forgetUntil(alive)
		c.Alive, c.Expires = live.Alive, live.Expires
		if nextErr == nil {
			l.hold(t, st, c, inc)
			c.HoldFrom = at
		}
		t.after = nextErr
		c.LastAt = at
		t.put(keyCallState(c.ID), c.CallState)
		t.result = c.Hold
		return nil
	})
	return op.Result, err
}

// CloseCall ends the call: an answered call pays its open increment (the
// started one counts whole), an unanswered one releases it. It writes and
// returns the CDR. Closing a call that has ended returns its CDR again.
func (l *Ledger) CloseCall(callID string, end CallEnd) (CDR, error) {
	var cdr CDR
	var replay string
	_, err := l.do(Op{Kind: "close", Call: callID, BillTo: end.BillTo}, end.At, func(t *txn) error {
		if k, ok := l.ended.get(callID); ok {
			replay = k
			return nil
		}
		c, st, err := l.callFor(callID)
		if err != nil {
			return err
		}
		cdr = l.end(t, st, c, end)
		return nil
	})
	if errors.Is(err, ErrUnknownCall) {
		// Ended longer ago than memory remembers.
		if v, found, gerr := get(l.db, keyEnded(callID)); found && gerr == nil {
			replay, err = string(v), nil
		}
	}
	if err != nil {
		return CDR{}, err
	}
	if replay != "" {
		if isSettledKey([]byte(replay)) {
			return CDR{}, errSettledElsewhere(callID)
		}
		return l.readCDR([]byte(replay))
	}
	return cdr, nil
}

// end settles a call and writes its CDR.
func (l *Ledger) end(t *txn, st *orgState, c *Call, end CallEnd) CDR {
	billTo := !end.BillTo.IsZero() && c.Answered()
	if billTo {
		c.forgetUntil(end.BillTo)
	}
	if c.Hold.Open {
		// The started increment of an answered call counts, unless it
		// started after the call's last proof of life; an unanswered
		// call costs nothing.
		pay := c.Answered() && !(billTo && c.HoldFrom.After(end.BillTo))
		l.settle(t, st, c, map[bool]Amount{true: full(c.Hold), false: {}}[pay])
	}
	if billTo {
		l.refundTail(t, st, c)
	}
	c.Tail = nil
	cdr := CDR{CallID: c.ID, Details: c.Details, Start: c.Start.UTC(), End: end.At.UTC(),
		BilledS: c.BilledS, PoolMinutes: c.PoolMinutes, Charge: c.Charge,
		DisconnectReason: end.Reason, SIPStatus: end.SIPStatus}
	if c.PoolMinutes > 0 {
		cdr.Pool = c.Plan
	}
	if c.Answered() {
		cdr.Answer = c.Answer.UTC()
		if d := end.At.Sub(c.Answer); d > 0 {
			cdr.DurationS = int((d + time.Second - 1) / time.Second)
		}
	}
	key := keyCDR(c.Org, c.Start, c.ID)
	t.put(key, cdr)
	t.raw(keyEnded(c.ID), key) // not JSON: the key is binary
	t.del(keyCall(c.ID))
	t.del(keyCallState(c.ID))
	delete(l.calls, c.ID)
	st.countCall(c, -1)
	l.ended.add(c.ID, string(key))
	return cdr
}

func (l *Ledger) readCDR(key []byte) (CDR, error) {
	var c CDR
	found, err := getRecord(l.db, key, &c)
	if err == nil && !found {
		err = fmt.Errorf("%w: CDR %q missing", ErrUnavailable, key)
	}
	return c, err
}

// callFor finds an open call and its org.
func (l *Ledger) callFor(id string) (*Call, *orgState, error) {
	c, ok := l.calls[id]
	if !ok {
		if _, ended := l.ended.get(id); ended {
			return nil, nil, fmt.Errorf("%w: %s", ErrCallEnded, id)
		}
		return nil, nil, fmt.Errorf("%w: %s", ErrUnknownCall, id)
	}
	return c, l.orgs[c.Org], nil
}

// meterable refuses increments a call may not take.
func (l *Ledger) meterable(c *Call, n int) error {
	switch {
	case c.Free:
		return invalidf("call %s is an emergency call: it is never metered", c.ID)
	case !c.Answered():
		return invalidf("call %s is not answered: only its first increment may be held", c.ID)
	case n != c.Hold.N+1:
		return invalidf("call %s: increment %d does not follow %d", c.ID, n, c.Hold.N)
	}
	return nil
}

// settled answers a retried hold of increment n ≤ the call's latest.
func settled(c *Call, n int) Increment {
	if n == c.Hold.N {
		return c.Hold
	}
	return Increment{N: n}
}

// next decides, without changing anything, what increment n of the call
// would hold: a minute of its plan's pool while the pool lasts, then
// credits if the caller may spend them.
func (l *Ledger) next(st *orgState, c *Call, n int, at time.Time) (Increment, error) {
	if c.Plan != "" {
		month := at.In(st.loc).Format("2006-01")
		i := l.planIndex(c.Plan)
		if p := l.peekPool(st, i, month); l.poolAvailable(st, i, p) >= 1 {
			return Increment{N: n, Source: SourcePool, Seconds: 60, Minutes: 1, Month: month}, nil
		}
		if !c.Spill {
			return Increment{}, fmt.Errorf("%w: the %s pool of %s is used up", ErrPoolExhausted, c.Plan, month)
		}
	}
	secs, credit := c.creditIncrement(n)
	if st.Available().LessThan(credit) {
		return Increment{}, fmt.Errorf("%w: %s available, increment %d costs %s", ErrInsufficientCredit, st.Available(), n, credit)
	}
	if err := st.checkSpend(c, credit, at); err != nil {
		return Increment{}, err
	}
	return Increment{N: n, Source: SourceCredits, Seconds: secs, Credit: credit}, nil
}

// creditIncrement is the length and price of increment n on credits, by
// rating's one rounding rule. Only a call's very first increment is
// FirstIncrement long and carries the connection fee; a call that moves from
// its pool to credits goes on in NextIncrement steps. The two prices are
// worked out once per call: decimal division is the dearest thing metering
// would otherwise do under the ledger's lock.
func (c *Call) creditIncrement(n int) (int, decimal.Decimal) {
	if c.prices == nil {
		r := rating.Rate{PerMinute: c.RatePerMinute, ConnectionFee: c.ConnectionFee,
			FirstIncrement: time.Duration(c.FirstIncrement) * time.Second, NextIncrement: time.Duration(c.NextIncrement) * time.Second}
		c.prices = &[2]decimal.Decimal{r.FirstCharge(), r.NextCharge()}
	}
	if n == 1 {
		return c.FirstIncrement, c.prices[0]
	}
	return c.NextIncrement, c.prices[1]
}

// hold applies a decided increment.
func (l *Ledger) hold(t *txn, st *orgState, c *Call, inc Increment) {
	inc.Open = true
	switch inc.Source {
	case SourcePool:
		p := l.pool(st, l.planIndex(c.Plan), inc.Month)
		p.Held += inc.Minutes
		t.put(keyPool(p), *p)
	case SourceCredits:
		st.Held = st.Held.Add(inc.Credit)
		t.put(keyBalances(st.ID), st.Balances)
		st.recordSpend(c, inc.Credit, t.at)
	}
	c.Hold = inc
}

// settle closes the open increment: amt of it is committed, the rest
// released.
func (l *Ledger) settle(t *txn, st *orgState, c *Call, amt Amount) {
	h := c.Hold
	switch h.Source {
	case SourcePool:
		p := st.pools[poolKey{l.planIndex(c.Plan), h.Month}]
		p.Held -= h.Minutes
		p.Used += amt.Minutes
		c.PoolMinutes += amt.Minutes
		t.put(keyPool(p), *p)
	case SourceCredits:
		st.Held = st.Held.Sub(h.Credit)
		if amt.Credit.IsPositive() {
			before := st.Balance
			st.Balance = st.Balance.Sub(amt.Credit)
			st.Debited = st.Debited.Add(amt.Credit)
			c.Charge = c.Charge.Add(amt.Credit)
			en := Entry{Seq: t.entrySeq(), At: t.at, Kind: EntryDebit, Amount: amt.Credit.Neg(), Balance: st.Balance, CallID: c.ID, N: h.N}
			t.put(keyEntry(st.ID, en.Seq), en)
			l.debits.Inc()
			if before.IsPositive() && !st.Balance.IsPositive() {
				l.notify(t, Notification{Org: st.ID, Kind: NotifyBalanceZero, Balance: st.Balance, Currency: st.Currency})
			}
			l.maybeRecharge(t, st)
		}
		t.put(keyBalances(st.ID), st.Balances)
	}
	c.BilledS += amt.Seconds
	c.Hold.Open = false
}

func full(h Increment) Amount {
	return Amount{Credit: h.Credit, Minutes: h.Minutes, Seconds: h.Seconds}
}

func fits(a Amount, h Increment) error {
	switch {
	case a.Credit.IsNegative() || a.Minutes < 0 || a.Seconds < 0:
		return invalidf("negative amount to commit")
	case a.Credit.GreaterThan(h.Credit) || a.Minutes > h.Minutes || a.Seconds > h.Seconds:
		return invalidf("commit of %s/%d min/%d s exceeds the hold of %s/%d min/%d s",
			a.Credit, a.Minutes, a.Seconds, h.Credit, h.Minutes, h.Seconds)
	}
	return nil
}

// endedCalls remembers the ids of recently ended calls, so a retried close
// or increment of a call that has just ended is answered as such and a
// reused id is refused. Two generations bound its memory; older ids are
// found on disk (z/ records).
type endedCalls struct {
	cur, prev map[string]string // call id → CDR key
}

const endedGeneration = 1 << 16

func (e *endedCalls) add(id, cdrKey string) {
	if e.cur == nil || len(e.cur) >= endedGeneration {
		e.prev, e.cur = e.cur, make(map[string]string, 1024)
	}
	e.cur[id] = cdrKey
}

func (e *endedCalls) get(id string) (string, bool) {
	if k, ok := e.cur[id]; ok {
		return k, true
	}
	k, ok := e.prev[id]
	return k, ok
}
