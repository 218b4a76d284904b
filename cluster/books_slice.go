// The org's slice moving between etcd and the local ledger: a hold's fill
// (a slice's worth, or in direct mode exactly the shortfall), the resize
// under it, a give-back, and the recovery after an etcd failure (a pending
// give-back completed, an unsure slice read back and adopted). All of an
// org's etcd operations on this node are serialized by orgSpend.etcd (see
// Books).

package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/ledger"
)

// fill brings the org's local available money to at least need, from etcd:
// in normal mode a whole slice's worth (as much as is unallocated, at
// least the shortfall), in direct mode exactly the shortfall. Under o.etcd.
func (b *Books) fill(o *orgSpend, need decimal.Decimal) error {
	lo, asOf, err := b.balanceAsOf(b.ctx, o)
	if err != nil {
		return err
	}
	short := need.Sub(lo.Available())
	if !short.IsPositive() {
		return nil // another hold's fill brought it
	}
	b.mu.Lock()
	direct, want := o.direct, b.sliceTarget(o)
	b.mu.Unlock()
	max := short
	if !direct && want.GreaterThan(max) {
		max = want
	}
	moved, err := b.resize(b.ctx, o, lo.Balance, asOf, short, max)
	if errors.Is(err, ErrInsufficientCredit) {
		// Not even the shortfall is unallocated: the org's last money is
		// in slices, ours and others'. Direct mode; and what this node
		// has available (less than this hold needs) goes back now, so
		// that pieces of the last money stranded on several nodes come
		// together in unallocated, where one node's hold can take them
		// (the other nodes do the same at their next refusal or tick).
		b.setDirect(o, true)
		if gerr := b.giveBack(b.ctx, o, false); gerr != nil {
			b.log.Warn("cluster give-back failed", "org", o.id, "error", gerr)
		}
		return err
	}
	if err != nil {
		return err
	}
	if moved.IsPositive() {
		b.ops.grants.Add(1)
	}
	return nil
}

// resize is Resize of this org's slice to have, taking between min and max
// from unallocated, then credits what came into the local ledger and
// updates the org's view. have is the local balance as of the ledger's
// sequence number asOf (balanceAsOf). Under o.etcd.
func (b *Books) resize(ctx context.Context, o *orgSpend, have decimal.Decimal, asOf uint64, min, max decimal.Decimal) (decimal.Decimal, error) {
	if err := b.settlePending(ctx, o, have, asOf); err != nil {
		return decimal.Zero, err
	}
	b.mu.Lock()
	s := o.slice
	b.mu.Unlock()
	res, err := b.n.Resize(ctx, ResizeReq{Org: o.id, Slice: s, Have: have, AsOf: asOf, Keep: b.keep(o), Min: min, Max: max, Share: maxShare})
	if err != nil {
		if errors.Is(err, ErrInsufficientCredit) {
			b.observe(o, res.Account, s)
			return decimal.Zero, err
		}
		return decimal.Zero, b.etcdErr(o, err)
	}
	b.observe(o, res.Account, res.Slice)
	b.landed(o, asOf)
	if res.Moved.IsPositive() {
		if _, err := b.local.CreditSlice(o.id, res.Slice.ID, res.Slice.Moves, res.Moved); err != nil {
			// etcd granted it and the local ledger failed: the books
			// fail closed; the restart counts the grant back (Moves).
			return decimal.Zero, b.fail(err)
		}
	}
	return res.Moved, nil
}

// etcdErr handles an etcd refusal of this org's operation: fenced fails
// the books; a slice a survivor reclaimed (this node was taken for dead)
// fails them too, as its local money is no longer backed.
func (b *Books) etcdErr(o *orgSpend, err error) error {
	if !errors.Is(err, ErrFenced) && !errors.Is(err, ErrContention) && !errors.Is(err, ErrInvalid) &&
		!errors.Is(err, ErrSliceGone) && !errors.Is(err, ErrGrantInFlight) {
		// Not a refusal: the transaction may or may not have landed.
		b.mu.Lock()
		o.unsure = true
		b.mu.Unlock()
	}
	if errors.Is(err, ErrSliceGone) || errors.Is(err, ErrGrantInFlight) {
		b.mu.Lock()
		if b.failed == nil {
			b.failed = fmt.Errorf("%w: org %s: %w", ledger.ErrUnavailable, o.id, err)
		}
		b.mu.Unlock()
		return b.Err()
	}
	return b.fail(err)
}

// giveBack gives the org's available money back to unallocated (all of the
// slice when all is true and the node is closing: held money goes to
// spent and the slice is deleted). The local return comes first, so the
// money cannot be held meanwhile. Under o.etcd.
func (b *Books) giveBack(ctx context.Context, o *orgSpend, all bool) error {
	b.mu.Lock()
	s := o.slice
	b.mu.Unlock()
	lo, asOf, err := b.balanceAsOf(ctx, o)
	if err != nil {
		return err
	}
	x := lo.Available()
	if s == nil && !x.IsPositive() {
		return nil
	}
	if err := b.settlePending(ctx, o, lo.Balance, asOf); err != nil {
		return err
	}
	if s == nil {
		// Money without a slice (released or refunded after the slice
		// was given back; etcd counts it spent): into a slice first, so
		// the give-back below is a numbered movement of a slice etcd
		// has, which a restart or a reconcile can check.
		if _, err := b.resize(ctx, o, lo.Balance, asOf, decimal.Zero, decimal.Zero); err != nil {
			return err
		}
		b.mu.Lock()
		s = o.slice
		b.mu.Unlock()
	}
	if x.IsPositive() && s != nil {
		if _, err := b.local.ReturnSlice(o.id, s.ID, s.Moves+1, x); err != nil {
			if errors.Is(err, ledger.ErrInsufficientCredit) {
				return nil // held meanwhile: the next tick tries again
			}
			return b.fail(err)
		}
		b.mu.Lock()
		o.back, o.backMove = x, s.Moves+1
		b.mu.Unlock()
		if err := b.settlePending(ctx, o, lo.Balance.Sub(x), asOf); err != nil {
			return err
		}
	}
	b.mu.Lock()
	s = o.slice
	b.mu.Unlock()
	if all && s != nil {
		// Money still held: calls up at Close. It counts as spent (a call
		// settled by the next start pays its started increment).
		if err := b.n.Return(ctx, s, decimal.Zero); err != nil {
			return b.etcdErr(o, err)
		}
		b.mu.Lock()
		o.slice = nil
		b.mu.Unlock()
	}
	return nil
}

// settlePending first reconciles the org's slice after an etcd failure
// that may have landed, then completes a give-back the local ledger made
// and etcd did not (have is the local balance, which no longer counts
// it, as of the ledger's sequence number asOf). Under o.etcd.
func (b *Books) settlePending(ctx context.Context, o *orgSpend, have decimal.Decimal, asOf uint64) error {
	b.mu.Lock()
	unsure := o.unsure
	b.mu.Unlock()
	if unsure {
		if err := b.reconcile(ctx, o); err != nil {
			return err
		}
	}
	b.mu.Lock()
	back, s := o.back, o.slice
	b.mu.Unlock()
	if !back.IsPositive() {
		return nil
	}
	if s == nil {
		return b.etcdErr(o, fmt.Errorf("give-back of %s pending without a slice: %w", back, ErrSliceGone))
	}
	res, err := b.n.Resize(ctx, ResizeReq{Org: o.id, Slice: s, Have: have.Add(back), AsOf: asOf, Keep: b.keep(o), Min: back.Neg(), Max: back.Neg()})
	if err != nil {
		return b.etcdErr(o, err)
	}
	b.observe(o, res.Account, res.Slice)
	b.landed(o, asOf)
	b.ops.returns.Add(1)
	b.mu.Lock()
	o.back, o.backMove = decimal.Zero, 0
	b.mu.Unlock()
	return nil
}

// reconcile reads the node's slice of the org back from etcd after an
// operation that may or may not have landed, and adopts it: a grant that
// landed and was not credited is credited now (idempotent on its
// movement), a give-back that landed is no longer pending. A slice that
// is gone with a reclaim record was taken for dead: the books fail closed.
// Under o.etcd.
func (b *Books) reconcile(ctx context.Context, o *orgSpend) error {
	got, err := b.n.OwnSlice(ctx, o.id)
	if err != nil {
		return b.fail(err)
	}
	b.mu.Lock()
	cur, backMove := o.slice, o.backMove
	b.mu.Unlock()
	gone := func(why string) error {
		return b.etcdErr(o, fmt.Errorf("org %s: %s: %w", o.id, why, ErrSliceGone))
	}
	switch {
	case got == nil && cur != nil:
		if _, reclaimed, err := b.n.Reclaimed(ctx, cur.ID); err != nil {
			return b.fail(err)
		} else if reclaimed {
			return gone("slice reclaimed")
		}
		// The delete landed (a give-back of everything).
		if backMove == cur.Moves+1 {
			backMove = 0
		}
	case got != nil && got.Epoch != b.n.Epoch():
		return gone(fmt.Sprintf("etcd has a slice of epoch %d", got.Epoch))
	case got != nil && (cur == nil || got.ID != cur.ID || got.Moves == cur.Moves+1):
		if got.LastMove.IsPositive() {
			if _, err := b.local.CreditSlice(o.id, got.ID, got.Moves, got.LastMove); err != nil {
				return b.fail(err)
			}
		} else if backMove == got.Moves {
			backMove = 0 // the give-back landed
		}
	case got != nil && got.Moves != cur.Moves:
		return gone(fmt.Sprintf("slice moved %d times, this node knows %d", got.Moves, cur.Moves))
	}
	b.mu.Lock()
	o.slice, o.unsure = got, false
	if backMove == 0 {
		o.back, o.backMove = decimal.Zero, 0
	}
	b.mu.Unlock()
	return nil
}

// observe records what etcd said of the org and decides its mode.
func (b *Books) observe(o *orgSpend, a Account, s *Slice) {
	b.mu.Lock()
	o.acct, o.known, o.slice = a, true, s
	b.mu.Unlock()
	b.decideMode(o)
}
