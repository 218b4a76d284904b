// The reaper (issue 17): a survivor ends and settles the calls and the
// money of a node incarnation whose lease etcd expired or revoked.
//
// This file holds the reaper's life (StartReaper, StopReaper), its watch
// on members/ and its loop, and the steps of one reap (reapOne,
// reapClaimed). The claim and the reads it decides on are in
// reap_claim.go, the money's settlement in reap_money.go, the CDRs and the
// legs' BYEs in reap_legs.go.

package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// reapState is the reaper's part of Books.
type reapState struct {
	mu      sync.Mutex
	ender   LegEnder        // guarded by mu
	started bool            // guarded by mu
	active  map[string]bool // guarded by mu; claims this node is working on

	reaps, calls atomic.Int64
	kick         chan struct{}

	// ctx is the reaper's: a child of the Books' context, cancelled by
	// StopReaper (or Close). Its goroutines are in wg as well as in
	// Books.wg, added under Books.mu while ctx stands and cancelled
	// under Books.mu, so StopReaper's Wait never races an Add.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StopReaper stops the reaper and waits for its goroutines: a reap under
// way stops before its next step, its claim left for a survivor to take
// over (its BYEs, if due, sent by that survivor). The binary calls it
// before closing the gateway, whose closing would make the BYEs fail.
func (b *Books) StopReaper() {
	b.mu.Lock()
	b.reap.cancel()
	b.mu.Unlock()
	b.reap.wg.Wait()
}

// SetLegEnder gives the reaper the function that ends a dead node's call's
// legs. Set it before StartReaper.
func (b *Books) SetLegEnder(f LegEnder) {
	b.reap.mu.Lock()
	b.reap.ender = f
	b.reap.mu.Unlock()
}

// Reaped are the dead incarnations this node reaped and their live calls.
func (b *Books) Reaped() (incarnations, calls int64) {
	return b.reap.reaps.Load(), b.reap.calls.Load()
}

// StartReaper starts watching members/: when an incarnation's member key
// goes (its lease expired or was revoked), this node tries to claim and
// reap it (see claim); it also looks every 5 lease TTLs, for what a lost
// watch missed. Start it once the gateway can send BYEs. Close stops it.
// It also gives this node's lease up should its Books fail closed
// (watchFailed), so that survivors reap its calls.
func (b *Books) StartReaper() {
	b.reap.mu.Lock()
	defer b.reap.mu.Unlock()
	if b.reap.started {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.reap.ctx.Err() != nil {
		return
	}
	b.reap.started = true
	b.reap.kick = make(chan struct{}, 1)
	b.wg.Add(3)
	b.reap.wg.Add(3)
	go b.watchMembers()
	go b.reapLoop()
	go b.watchFailed() // reap_failed.go
}

func (b *Books) kickReaper() {
	select {
	case b.reap.kick <- struct{}{}:
	default:
	}
}

// watchMembers turns deletions under members/ into reaper kicks; a watch
// that ends (compaction, lost connection) is started again after a pause.
func (b *Books) watchMembers() {
	defer b.wg.Done()
	defer b.reap.wg.Done()
	for b.reap.ctx.Err() == nil {
		wch := b.n.cli.Watch(clientv3.WithRequireLeader(b.reap.ctx), b.n.k.members(), clientv3.WithPrefix(),
			clientv3.WithFilterPut())
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			if len(resp.Events) > 0 {
				b.kickReaper()
			}
		}
		select {
		case <-b.reap.ctx.Done():
			return
		case <-time.After(time.Second):
			b.kickReaper() // a deletion may have come while no watch was up
		}
	}
}

// reapLoop scans for dead incarnations at start, at every kick and every
// 5 lease TTLs (on the injected clock); a scan that failed (etcd out of
// reach, an election) is tried again after a second.
func (b *Books) reapLoop() {
	defer b.wg.Done()
	defer b.reap.wg.Done()
	wake := make(chan struct{}, 1)
	b.kickReaper()
	next := 5 * b.n.cfg.LeaseTTL
	for {
		t := b.clk.AfterFunc(next, func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		})
		select {
		case <-b.reap.ctx.Done():
			t.Stop()
			return
		case <-wake:
		case <-b.reap.kick:
			t.Stop()
		}
		next = 5 * b.n.cfg.LeaseTTL
		if b.Err() != nil {
			continue
		}
		if err := b.ReapDead(b.reap.ctx); err != nil && b.reap.ctx.Err() == nil {
			b.log.Warn("cluster reaper: scan failed; trying again in a second", "error", err)
			next = time.Second
		}
	}
}

// ReapDead reaps every incarnation of another node that is dead (no
// members/<epoch>) and left takeover records, slices, pool slices or an
// unfinished claim. It is what the reaper loop runs; tests call it too.
func (b *Books) ReapDead(ctx context.Context) error {
	if err := b.resolveAdoptions(ctx); err != nil {
		return err
	}
	cands, err := b.n.incarnations(ctx, "")
	if err != nil {
		return err
	}
	live, err := b.n.liveEpochs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cands {
		if c.node == b.n.ID() || live[c.epoch] {
			continue // this node's earlier incarnations are settled by its start (rejoin.go)
		}
		if err := b.reapOne(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("reap %s epoch %d: %w", c.node, c.epoch, err))
		}
	}
	return errors.Join(errs...)
}

// reapOne claims a dead incarnation and, if this node holds the claim,
// settles it (reapClaimed); one reap of an incarnation at a time on this
// node (its last step, after the BYEs, runs on a goroutine of its own).
func (b *Books) reapOne(ctx context.Context, c incarnation) error {
	ck := b.n.k.reap(c.node, c.epoch)
	b.reap.mu.Lock()
	if b.reap.active[ck] {
		b.reap.mu.Unlock()
		return nil
	}
	if b.reap.active == nil {
		b.reap.active = map[string]bool{}
	}
	b.reap.active[ck] = true
	b.reap.mu.Unlock()
	finishing := false
	defer func() {
		if !finishing {
			b.reapDone(ck)
		}
	}()
	cl, rev, _, err := b.n.takeClaim(ctx, c, false)
	if errors.Is(err, ErrNodeAlive) {
		return nil
	}
	if err != nil || cl == nil {
		return err
	}
	finishing, err = b.reapClaimed(ctx, c, cl, rev)
	if errors.Is(err, errClaimLost) {
		b.log.Warn("cluster reaper: claim taken over by another node", "node", c.node, "epoch", c.epoch)
		return nil
	}
	return err
}

func (b *Books) reapDone(ck string) {
	b.reap.mu.Lock()
	delete(b.reap.active, ck)
	b.reap.mu.Unlock()
}

// reapClaimed settles a dead incarnation this node claimed, step by step
// (each step lands once, with the claim's progress):
//
//  1. plan: each record's settlement (its final: committed + held for a
//     call up) and, for a call up, its end (max(now, PaidThrough)),
//     written into the claim;
//  2. the CDRs (reason node_failure) of the calls that were up adopted
//     into this node's ledger as pending, then Adopted (AdoptedBy this
//     incarnation) landing in the claim, then confirmed locally (adopt);
//  3. per org slice of the incarnation: its true unspent = reported
//     unspent − what its calls committed after the report's AsOf (from the
//     records), to unallocated, the rest to spent, slice deleted, reclaim
//     record written (Reaped); per pool slice likewise in minutes
//     (Settled: the dead node may rejoin);
//  4. on a goroutine of its own: the BYEs of both legs of each call that
//     was up, at its end (LegEnder), then the records deleted and the claim
//     done. A claimer that dies before has its claim taken over: its
//     successor sends the BYEs again (a leg already ended answers 481).
//
// finishing says step 4 runs (it clears the claim from reapState.active).
func (b *Books) reapClaimed(ctx context.Context, c incarnation, cl *claim, rev int64) (finishing bool, err error) {
	ck := b.n.k.reap(c.node, c.epoch)
	recs, err := b.n.records(ctx, c)
	if err != nil {
		return false, err
	}
	step := func(cmps []clientv3.Cmp, ops []clientv3.Op) error {
		nrev, ok, err := b.n.claimStep(ctx, ck, rev, cl, cmps, ops)
		if err != nil {
			return err
		}
		if !ok {
			return errClaimLost
		}
		rev = nrev
		return nil
	}
	if !cl.Planned {
		now := b.clk.Now()
		cl.Calls = map[string]reapedCall{}
		for id, r := range recs {
			charge, minutes := r.final()
			rc := reapedCall{Settled: ledger.Settled{Charge: charge, PoolMinutes: minutes}, Live: r.Closed == nil}
			if rc.Live {
				rc.End = r.PaidThrough
				if rc.End.Before(now) {
					rc.End = now
				}
			}
			cl.Calls[id] = rc
		}
		cl.Planned = true
		if err := step(nil, nil); err != nil {
			return false, err
		}
	}
	live := 0
	for id, rc := range cl.Calls {
		if rc.Live && recs[id] != nil {
			live++
		}
	}
	if err := b.adopt(ctx, c, cl, recs, step); err != nil {
		return false, err
	}
	var slices []*Slice
	if !cl.Settled {
		spentAfter := func(org string, asOf uint64) decimal.Decimal {
			sum := decimal.Zero
			for id, r := range recs {
				rc, ok := cl.Calls[id]
				if !ok || r.Call.Org != org {
					continue
				}
				at, _ := r.at(asOf)
				sum = sum.Add(rc.Charge.Sub(at))
			}
			return sum
		}
		err = b.n.eachKV(ctx, b.n.k.slicesOf(c.node), false, func(kv *mvccpb.KeyValue) error {
			s, err := decodeSlice(kv)
			if err != nil {
				return err
			}
			if s.Epoch == c.epoch && !cl.Slices[s.Org] {
				slices = append(slices, s)
			}
			return nil
		})
		if err != nil {
			return false, err
		}
		if cl.Slices == nil {
			cl.Slices = map[string]bool{}
		}
		for _, s := range slices {
			back, err := b.reapSlice(ctx, ck, &rev, cl, s, spentAfter(s.Org, s.AsOf))
			if err != nil {
				return false, err
			}
			cl.Returned = cl.Returned.Add(back)
		}
		for id, r := range recs {
			if _, ok := cl.Calls[id]; ok && !cl.Slices[r.Call.Org] {
				// No slice of this incarnation: its last write gave the
				// whole slice back (no call of the org was up), so every
				// call had settled within a report.
				if sa := spentAfter(r.Call.Org, ^uint64(0)); !sa.IsZero() {
					b.log.Error("cluster reaper: records of an org without a slice", "node", c.node, "epoch", c.epoch, "org", r.Call.Org)
				}
			}
		}
		if err := b.reapPools(ctx, c, ck, &rev, cl, recs); err != nil {
			return false, err
		}
		cl.Settled = true
		if err := step(nil, nil); err != nil {
			return false, err
		}
	}
	b.log.Warn("cluster reaper: settled a dead node's incarnation; ending its calls' legs", "node", c.node, "epoch", c.epoch,
		"calls_up", live, "records", len(recs), "slices", len(slices), "money_returned", cl.Returned.String())
	// 4. The BYEs, then done.
	b.mu.Lock()
	if b.reap.ctx.Err() != nil {
		b.mu.Unlock()
		return false, b.reap.ctx.Err()
	}
	b.wg.Add(1)
	b.reap.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		defer b.reap.wg.Done()
		defer b.reapDone(ck)
		var byes sync.WaitGroup
		var unsent atomic.Int64
		sem := make(chan struct{}, maxReapByes)
		for id, rc := range cl.Calls {
			if r := recs[id]; rc.Live && r != nil {
				byes.Add(1)
				go func() {
					defer byes.Done()
					if !b.endLegs(id, r.Dialog, rc.End, sem) {
						unsent.Add(1)
					}
				}()
			}
		}
		byes.Wait()
		if b.reap.ctx.Err() != nil || unsent.Load() > 0 {
			// Closing (the Books, or the gateway whose BYEs could not
			// leave): the claim stays undone, and a survivor takes it
			// over once this node's member key is gone and sends them
			// again.
			b.log.Warn("cluster reaper: a reap's BYEs did not all leave; leaving it to be taken over", "node", c.node, "epoch", c.epoch, "unsent", unsent.Load())
			return
		}
		cl.Done = true
		if err := step(nil, []clientv3.Op{clientv3.OpDelete(b.n.k.takeoverOf(c.node, c.epoch), clientv3.WithPrefix())}); err != nil {
			b.log.Warn("cluster reaper: could not finish a reap", "node", c.node, "epoch", c.epoch, "error", err)
			return
		}
		b.reap.reaps.Add(1)
		b.reap.calls.Add(int64(live))
		b.log.Warn("cluster reaper: reaped a dead node's incarnation", "node", c.node, "epoch", c.epoch,
			"calls_ended", live, "money_returned", cl.Returned.String())
	}()
	return true, nil
}
