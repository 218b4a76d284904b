// Prefill: a call's next increment's money brought onto the node before
// the increment's boundary, so that the step at the boundary is decided
// from the node's own money and never waits for etcd — the way online
// charging asks for the next units before the current ones run out
// (Diameter credit control, RFC 4006, its quota threshold).

package cluster

import (
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/ledger"
)

// prefill is the money reserved on the node for one call's next increment
// (orgSpend.prefills). Guarded by Books.mu.
type prefill struct {
	n     int             // the call's increment when asked: the money is for n+1
	price decimal.Decimal // increment n+1's price, reserved from the org's available money
	done  bool            // the ask returned
	err   error           // its refusal (done): no money left in etcd, or etcd failed
}

// Prefill asks for the money of the call's increment n+1 to be on this
// node before increment n ends (gateway/call.go asks a lead ahead of the
// boundary). It returns at once; the ask runs in the background:
//
//   - The price of n+1 is reserved for the call in the org's available
//     money (orgSpend.prefills): other holds and give-backs on this node
//     leave it alone (tryLocal, giveBack). If the node's available money
//     already covers every reservation, that is all.
//   - Otherwise the shortfall is brought from etcd as a fill does (fill:
//     in direct mode exactly the shortfall, else a slice's worth), under
//     the org's etcd lock. It is a movement into the node's slice, never
//     a debit: nothing is billed before the increment starts, and money a
//     call does not use (it ended first) stays available on the node,
//     given back to unallocated at the next tick in direct mode or when
//     the slice goes idle, like a released hold's.
//
// The step of increment n (StepPending) then takes the reservation and is
// decided from the node's money without waiting for etcd: held if the
// money is there, refused otherwise — ErrInsufficientCredit if etcd said
// the org has no more (in answer to the ask or, if the ask has not
// returned, in its last answer on the org), ErrUnavailable if the ask
// failed, or has not returned and etcd last said the org had money (the
// gateway ends the call at its paid time either way; README, "Metering
// during an etcd leader election").
//
// Only calls paid in credits without a plan are prefilled (a plan's pool
// minutes come from etcd's pools, pools_books.go); for others, and when
// the call is not at increment n any more, Prefill does nothing and the
// step takes the usual path. The last cent stays exact: a prefill only
// moves money of record into a slice, so K increments funded are K
// increments sold cluster-wide; two nodes racing for the last one both
// ask, one fill gets it, the other node's step is refused.
func (b *Books) Prefill(callID string, n int) {
	if b.sellable() != nil {
		return
	}
	if _, _, pooled := b.local.CallPool(callID); pooled {
		return
	}
	org, price, credits := b.local.NextCredit(callID)
	if !credits || !price.IsPositive() {
		return
	}
	if c, _, up := b.local.CallAsOf(callID); !up || c.Hold.N != n {
		return
	}
	o := b.org(org)
	b.touch(o)
	p := &prefill{n: n, price: price}
	b.mu.Lock()
	if o.prefills == nil {
		o.prefills = map[string]*prefill{}
	}
	o.prefills[callID] = p
	start := b.ctx.Err() == nil // cancelled under mu: wg.Add never races Close's Wait
	if start {
		b.wg.Add(1)
	}
	b.mu.Unlock()
	if !start {
		b.unreserve(o, callID, p)
		return
	}
	// A close between the checks above and the reservation released
	// nothing (CloseCall releases after its local close): look again.
	if _, _, up := b.local.CallAsOf(callID); !up {
		b.unreserve(o, callID, p)
		b.wg.Done()
		return
	}
	if b.covered(o) {
		b.prefilled(p, nil)
		b.wg.Done()
		return
	}
	go func() {
		defer b.wg.Done()
		o.etcd.Lock()
		var err error
		switch {
		case !b.current(o, callID, p):
			// Its step came first (and decided without it), or a
			// later ask replaced it: nothing to bring. So asks queued
			// behind an etcd outage do not each wait it out in turn.
		case b.covered(o):
			// Another ask's fill brought it (fill asks for every
			// reservation).
		default:
			if err = b.sellable(); err == nil {
				// Every reservation of the org (this one included)
				// on available money: fill adds them to its need.
				err = b.fill(o, decimal.Zero)
			}
		}
		o.etcd.Unlock()
		b.prefilled(p, err)
	}()
}

// covered says whether the org's available money on the node covers every
// reservation.
func (b *Books) covered(o *orgSpend) bool {
	o.local.Lock()
	defer o.local.Unlock()
	lo, err := b.local.Org(o.id)
	if err != nil {
		return false
	}
	return !b.reserved(o, "").GreaterThan(lo.Available())
}

// current says whether p is still the call's reservation.
func (b *Books) current(o *orgSpend, callID string, p *prefill) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return o.prefills[callID] == p
}

// prefilled records the ask's answer, if the reservation is still the
// call's (its step may have taken it already).
func (b *Books) prefilled(p *prefill, err error) {
	b.mu.Lock()
	p.done, p.err = true, err
	b.mu.Unlock()
}

// reserved is the money reserved on the org's available for prefilled
// increments, but for the call except ("" for all). Takes b.mu.
func (b *Books) reserved(o *orgSpend, except string) decimal.Decimal {
	b.mu.Lock()
	defer b.mu.Unlock()
	sum := decimal.Zero
	for id, p := range o.prefills {
		if id != except {
			sum = sum.Add(p.price)
		}
	}
	return sum
}

// unreserve drops the call's reservation (p, or any if p is nil).
func (b *Books) unreserve(o *orgSpend, callID string, p *prefill) {
	b.mu.Lock()
	if cur, ok := o.prefills[callID]; ok && (p == nil || cur == p) {
		delete(o.prefills, callID)
	}
	b.mu.Unlock()
}

// takePrefill removes and returns the call's reservation (nil: none), with
// the ask's answer as it stands.
func (b *Books) takePrefill(o *orgSpend, callID string) (p prefill, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur, ok := o.prefills[callID]
	if !ok {
		return prefill{}, false
	}
	delete(o.prefills, callID)
	return *cur, true
}

// tryLocal runs a local hold of need (try) unless the org's available
// money, less what is reserved for other calls' prefilled increments,
// cannot cover it: then it is refused as the ledger refuses (the caller
// fills from etcd, asking for the reservations too). Under o.local, so no
// other hold or give-back of the org on this node moves money between the
// check and the hold.
func (b *Books) tryLocal(o *orgSpend, self string, need func() decimal.Decimal, try func() error) error {
	o.local.Lock()
	defer o.local.Unlock()
	if r := b.reserved(o, self); r.IsPositive() {
		lo, err := b.local.Org(o.id)
		if err != nil {
			return err
		}
		if lo.Available().Sub(r).LessThan(need()) {
			return fmt.Errorf("org %s: the money on this node is reserved for prefilled increments: %w", o.id, ledger.ErrInsufficientCredit)
		}
	}
	return try()
}

// stepPrefilled is the step of a call whose next increment was prefilled
// (p, taken from the org's reservations): decided from the node's money
// now, without the org's etcd lock (a prefill or a fill may hold it,
// waiting out an etcd leader election). The takeover record goes behind
// it as any step's (stepRecorded).
func (b *Books) stepPrefilled(o *orgSpend, p prefill, callID string, n int, at time.Time, live ledger.Liveness) (ledger.Increment, <-chan error, error) {
	var inc ledger.Increment
	var landed <-chan error
	err := b.tryLocal(o, callID, func() decimal.Decimal {
		_, price, _ := b.local.NextCredit(callID)
		return price
	}, func() error {
		var err error
		inc, landed, err = b.stepRecorded(o, callID, n, at, live)
		return err
	})
	if err == nil {
		b.maybeTopUp(o)
		return inc, landed, nil
	}
	if !errors.Is(err, ledger.ErrInsufficientCredit) {
		return inc, nil, err
	}
	b.mu.Lock()
	broke := o.known && o.acct.Unallocated.LessThan(p.price)
	b.mu.Unlock()
	switch {
	case !p.done && broke:
		// The ask has not returned (queued behind the org's other etcd
		// operations on this node, or etcd silent), and etcd's last
		// word on the org was that it has not this much unallocated:
		// refused for credit, as etcd last said.
		return inc, nil, err
	case !p.done:
		// etcd has not answered (an election, a partition) and last
		// said the org had money: the node cannot know whether it
		// still has, and does not wait.
		return ledger.Increment{}, nil, fmt.Errorf("step call %s: increment %d's money, asked of etcd before the boundary, has not come: %w",
			callID, n+1, ledger.ErrUnavailable)
	case p.err != nil && !errors.Is(p.err, ErrInsufficientCredit) && !errors.Is(p.err, ledger.ErrInsufficientCredit):
		if !errors.Is(p.err, ledger.ErrUnavailable) {
			p.err = fmt.Errorf("%w: %w", ledger.ErrUnavailable, p.err)
		}
		return ledger.Increment{}, nil, fmt.Errorf("step call %s: increment %d's money could not be asked of etcd: %w", callID, n+1, p.err)
	default:
		// etcd said the org has no more (or it went to another call).
		return inc, nil, err
	}
}

// pruneReservations drops the reservations of calls no longer up on the
// node (a close that failed after the local ledger ended the call): their
// money is the org's available again.
func (b *Books) pruneReservations(o *orgSpend) {
	b.mu.Lock()
	ids := make([]string, 0, len(o.prefills))
	for id := range o.prefills {
		ids = append(ids, id)
	}
	b.mu.Unlock()
	for _, id := range ids {
		if _, _, up := b.local.CallAsOf(id); !up {
			b.unreserve(o, id, nil)
		}
	}
}
