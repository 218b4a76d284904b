package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// How a node spends minute pools (pools.go has the etcd side).
//
//   - A pool hold (OpenCall or Step of a call with a plan) whose pool has
//     no minute left in the node's allowance first asks etcd for minutes,
//     synchronously: poolSliceMinutes in normal mode (at most half of what
//     is unallocated), exactly one in direct mode. If etcd has none, the
//     ledger decides as a single node does with an empty pool: credits if
//     the call may spill, else ErrPoolExhausted.
//   - The pool's lock is held across the local hold (preparePool), so the
//     minute a hold made sure of is the one it takes.
//   - Direct mode: when a pool's unallocated minutes are fewer than
//     poolDirectBelow, the node gives back every minute it is not holding
//     (at the next tick) and asks etcd for exactly the minute each hold
//     needs, so no minute waits on one node while another node's call goes
//     on credits or ends: the pool's last minutes are used exactly,
//     cluster-wide. Back to normal at twice the threshold.
//   - Every tick reports each pool's used minutes whose count changed
//     (one transaction per pool), gives back an idle pool's unused minutes
//     (nothing held, no hold for IdleAfter) and a direct pool's; Close
//     gives every pool's unused minutes back.
//   - At start, each pool the ledger has an allowance for is reported and
//     its allowance set to what etcd granted (see pools.go).
//
// Lock order: poolSpend.etcd, then orgSpend.etcd, then Books.mu.

const (
	// poolSliceMinutes is a normal-mode grant: a few minutes, so one
	// grant covers a call's next few minutes and little waits stranded.
	poolSliceMinutes = 5
	// poolDirectBelow: with fewer minutes unallocated a pool is in direct
	// mode (two normal grants' worth, so three nodes' slices cannot hold
	// most of what is left).
	poolDirectBelow = 2 * poolSliceMinutes
)

// poolSpend is one pool (org, plan, month) on this node: Books.pools keeps
// the pools used since about last month (tickPools forgets older ones once
// they are idle and given back).
type poolSpend struct {
	org, plan, month string
	// etcd serializes the pool's etcd operations and allowance changes on
	// this node.
	etcd sync.Mutex

	// Guarded by Books.mu:
	acct   PoolAccount // as the last PoolMove left it
	slice  PoolSlice
	known  bool // slice and acct were read at least once
	direct bool
	active time.Time // last hold of the pool on this node
	asOf   uint64    // the local sequence number of the last Used that landed (takeover.go)
}

func (b *Books) pool(org, plan, month string) *poolSpend {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := org + "/" + plan + "/" + month
	p, ok := b.pools[id]
	if !ok {
		p = &poolSpend{org: org, plan: plan, month: month}
		b.pools[id] = p
	}
	return p
}

func (b *Books) poolList() []*poolSpend {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*poolSpend, 0, len(b.pools))
	for _, p := range b.pools {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		a, c := out[i], out[j]
		return a.org+"/"+a.plan+"/"+a.month < c.org+"/"+c.plan+"/"+c.month
	})
	return out
}

// preparePool makes sure the pool a hold of (org, plan) at draws from has
// a minute in this node's allowance if the cluster has one. It returns,
// with the pool's lock held, the function that unlocks it, to call once
// the local hold is done: so the minute taken is this hold's, and a call
// never goes on credits (or ends) for want of a minute a concurrent hold
// on this node took while etcd had more. The cost is that one pool's holds
// on one node are serialized, each a local durable write (and an etcd
// round trip when the node's minutes ran out); pool increments are a
// minute long, so even thousands of calls on one pool make tens of holds a
// second.
func (b *Books) preparePool(org, plan string, at time.Time) (func(), error) {
	month, err := b.local.PoolMonth(org, at)
	if err != nil {
		return func() {}, nil // the ledger refuses the hold and says why
	}
	p := b.pool(org, plan, month)
	p.etcd.Lock()
	b.mu.Lock()
	p.active = b.clk.Now()
	direct := p.direct
	b.mu.Unlock()
	sh, err := b.local.PoolShare(org, plan, month)
	if err == nil && sh.Available() < 1 {
		want := poolSliceMinutes
		if direct {
			want = 1
		}
		if err := b.poolMove(b.ctx, p, sh, 1, want, -1); err != nil {
			p.etcd.Unlock()
			return func() {}, b.fail(err)
		}
	}
	return p.etcd.Unlock, nil
}

// poolMove runs one PoolMove with the ledger's numbers sh, then raises the
// ledger's allowance to what etcd granted (see pools.go: the allowance is
// never above it, so raising it is always safe). Under p.etcd.
func (b *Books) poolMove(ctx context.Context, p *poolSpend, sh ledger.PoolShare, need, want, giveTo int) error {
	// Read again as of a sequence number, under the org's gate (see
	// orgSpend.gate): a close may have committed a held minute since sh
	// was read; the allowance only changes under p.etcd, which is held.
	sh, asOf, err := b.poolShareAsOf(ctx, p)
	if err != nil {
		return err
	}
	res, err := b.n.PoolMove(ctx, PoolReq{Org: p.org, Plan: p.plan, Month: p.month, Licensed: sh.Licensed,
		Used: sh.Used, AsOf: asOf, Need: need, Want: want, GiveTo: giveTo})
	if err != nil {
		return err
	}
	b.mu.Lock()
	if asOf > p.asOf {
		p.asOf = asOf
	}
	b.mu.Unlock()
	b.dropCovered(p.org)
	if res.Taken > 0 {
		b.ops.grants.Add(1)
	} else if giveTo >= 0 {
		b.ops.returns.Add(1)
	} else {
		b.ops.reports.Add(1)
	}
	b.mu.Lock()
	p.acct, p.slice, p.known = res.Account, res.Slice, true
	switch {
	case !p.direct && res.Account.Unallocated < poolDirectBelow:
		p.direct = true
	case p.direct && res.Account.Unallocated >= 2*poolDirectBelow:
		p.direct = false
	}
	b.mu.Unlock()
	if res.Slice.Granted != sh.Allowance {
		if _, err := b.local.SetPoolAllowance(p.org, p.plan, p.month, res.Slice.Granted); err != nil {
			return fmt.Errorf("pool %s/%s/%s allowance %d: %w", p.org, p.plan, p.month, res.Slice.Granted, err)
		}
	}
	return nil
}

// poolShareAsOf reads the pool's share and the ledger's sequence number
// at one instant, through the org's gate (see balanceAsOf).
func (b *Books) poolShareAsOf(ctx context.Context, p *poolSpend) (sh ledger.PoolShare, seq uint64, err error) {
	err = b.asOf(ctx, b.org(p.org), func() error {
		sh, seq, err = b.local.PoolShareAsOf(p.org, p.plan, p.month)
		return err
	})
	return sh, seq, err
}

// givePoolBack lowers the ledger's allowance to what it uses and holds,
// then etcd's Granted to it: the rest goes back to unallocated. Under
// p.etcd.
func (b *Books) givePoolBack(ctx context.Context, p *poolSpend) error {
	var sh ledger.PoolShare
	var err error
	// A hold may land between the read and the lowering (holds take no
	// lock in normal mode): the ledger then refuses the lowering, and it is
	// read again.
	for attempt := 0; attempt < maxHoldAttempts; attempt++ {
		if sh, err = b.local.PoolShare(p.org, p.plan, p.month); err != nil {
			return err
		}
		keep := sh.Used + sh.Held
		if sh.Allowance == keep {
			break
		}
		if sh, err = b.local.SetPoolAllowance(p.org, p.plan, p.month, keep); err == nil {
			break
		}
		if !errors.Is(err, ledger.ErrInvalid) {
			return err
		}
	}
	if err != nil {
		return err
	}
	return b.poolMove(ctx, p, sh, 0, 0, sh.Allowance)
}

// tickPools reports, and gives back, each pool whose lock is free (see the
// comment at the top of this file).
func (b *Books) tickPools(ctx context.Context, now time.Time) {
	for _, p := range b.poolList() {
		if b.Err() != nil || ctx.Err() != nil {
			return
		}
		if !p.etcd.TryLock() {
			continue
		}
		sh, err := b.local.PoolShare(p.org, p.plan, p.month)
		if err != nil {
			p.etcd.Unlock()
			continue
		}
		b.mu.Lock()
		s, known, direct, idle := p.slice, p.known, p.direct, now.Sub(p.active) >= b.p.IdleAfter
		b.mu.Unlock()
		switch {
		case (direct || idle && sh.Held == 0) && (!known || s.Granted > sh.Used+sh.Held):
			err = b.givePoolBack(ctx, p)
		case !known || s.Used != sh.Used:
			err = b.poolMove(ctx, p, sh, 0, 0, -1)
		}
		// A month before last, idle and all given back, is forgotten, so
		// the map holds about two months of the pools this node used. A
		// hold that found it just before still works on it (its state is
		// etcd's and the ledger's); the next one makes a new entry.
		b.mu.Lock()
		if err == nil && idle && sh.Held == 0 && p.known && p.slice.Granted == p.slice.Used &&
			p.month < now.UTC().AddDate(0, -1, 0).Format("2006-01") {
			delete(b.pools, p.org+"/"+p.plan+"/"+p.month)
		}
		b.mu.Unlock()
		p.etcd.Unlock()
		if err != nil {
			b.log.Warn("cluster pool report failed", "org", p.org, "plan", p.plan, "month", p.month, "error", err)
			b.fail(err)
		}
	}
}

// settlePools adopts, at start, the pools the ledger has allowances for:
// reports their used minutes and sets each allowance to what etcd granted.
func (b *Books) settlePools(ctx context.Context) error {
	for _, sh := range b.local.PoolShares() {
		p := b.pool(sh.Org, sh.Plan, sh.Month)
		p.etcd.Lock()
		err := b.poolMove(ctx, p, sh, 0, 0, -1)
		p.etcd.Unlock()
		if err != nil {
			return fmt.Errorf("cluster start: settle pool %s/%s/%s: %w", sh.Org, sh.Plan, sh.Month, err)
		}
	}
	return nil
}

// closePools gives every pool's unused minutes back (Close).
func (b *Books) closePools(ctx context.Context) error {
	var errs []error
	for _, p := range b.poolList() {
		p.etcd.Lock()
		if err := b.givePoolBack(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("pool %s/%s/%s: %w", p.org, p.plan, p.month, err))
		}
		p.etcd.Unlock()
	}
	return errors.Join(errs...)
}
