// Settling the node's last incarnation when it starts again: its slices
// reclaimed, its unreported spend charged, the leftover taken back.

package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// settleRestart settles, at start, what the node's last incarnation left
// in etcd and in the local ledger, org by org:
//
//   - its old slice is reclaimed (after etcd has expired the old lease:
//     NewBooks waits for that), or was reclaimed by a survivor (the
//     reclaim record), or was given back by its holder (nothing in etcd);
//   - what the old incarnation spent after its last report is the slice's
//     reported unspent, minus the local ledger's leftover, minus a movement
//     that reached only one side (Slice.Moves against the ledger's last
//     SliceMove); it is charged to etcd (Charge, idempotent on the slice),
//     or given back if negative (refunds after the last report);
//   - then the leftover is taken back locally (ReturnSlice), so it is not
//     spent twice. A crash in between replays both (same keys).
//
// Exposure that remains: if survivors reclaimed the slice and sold its
// money before this restart, the unreported spend may find less than it
// needs unallocated; Charge takes what there is and the rest was sold
// twice (logged). It is bounded by what the node sells in one report
// interval. And a slice the last incarnation created but never credited
// locally (a crash between the etcd grant and the Pebble write), if a
// survivor reclaimed it before this restart, is not found: its money went
// back to unallocated, and the leftover is counted as refunded.
//
// Before anything of it is written to etcd, the claims of the earlier
// incarnations this one settles from its disk are marked Settling
// (markSettling): from then on no survivor takes them over.
func (b *Books) settleRestart(ctx context.Context) error {
	if err := b.markSettling(ctx); err != nil { // rejoin.go
		return err
	}
	if err := restartCrash("marked"); err != nil {
		return err
	}
	if err := b.resolveAdoptions(ctx); err != nil { // reap_adopt.go
		return fmt.Errorf("cluster start: pending adoptions: %w", err)
	}
	reclaimed, err := b.reclaimSelf(ctx)
	if err != nil {
		return err
	}
	if err := restartCrash("reclaimed"); err != nil {
		return err
	}
	for _, id := range b.local.OrgIDs() {
		if err := b.settleOrg(ctx, id, reclaimed[id]); err != nil {
			return fmt.Errorf("cluster start: settle org %s: %w", id, err)
		}
	}
	return restartCrash("settled")
}

// restartCrashAt, when set (tests only), runs at the points of the
// restart settlement named in settleRestart; an error it returns ends the
// settlement there, as a crash or an etcd error would (NewBooks fails).
var restartCrashAt func(point string) error

func restartCrash(point string) error {
	if h := restartCrashAt; h != nil {
		return h(point)
	}
	return nil
}

// reclaimSelf reclaims the slices of this node's earlier incarnations,
// waiting (real time: it is etcd's lease clock that matters) until etcd
// has expired their leases. It returns them by org.
func (b *Books) reclaimSelf(ctx context.Context) (map[string]*Reclaimed, error) {
	out := map[string]*Reclaimed{}
	limit := time.Now().Add(3*b.n.cfg.LeaseTTL + b.n.cfg.OpTimeout)
	for {
		rs, err := b.n.Reclaim(ctx, b.n.ID())
		for i := range rs {
			out[rs[i].Slice.Org] = &rs[i]
		}
		if err == nil {
			return out, nil
		}
		if !errors.Is(err, ErrNodeAlive) {
			return nil, fmt.Errorf("cluster start: reclaim earlier incarnations of %s: %w", b.n.ID(), err)
		}
		if time.Now().After(limit) {
			return nil, fmt.Errorf("cluster start: earlier incarnation of %s still alive after %s: %w", b.n.ID(), 3*b.n.cfg.LeaseTTL, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (b *Books) settleOrg(ctx context.Context, id string, r *Reclaimed) error {
	lo, err := b.local.Org(id)
	if err != nil {
		return err
	}
	last, moved := b.local.LastSliceMove(id)
	if !moved {
		if !lo.Balance.IsZero() {
			return fmt.Errorf("local balance %s did not come from the cluster (a single-node ledger?): %w", lo.Balance, ErrInvalid)
		}
		if r == nil {
			return nil
		}
	}
	if moved && strings.HasPrefix(last.Slice, restartPrefix) && lo.Balance.IsZero() && r == nil {
		return nil // settled by an earlier start
	}
	// The old slice as etcd last had it.
	var unspent, inflight decimal.Decimal
	var moves int64
	reaped := false // a reaper settled the slice exactly (reap_money.go)
	var lastMove decimal.Decimal
	found := false
	if r != nil {
		found, unspent, moves, lastMove = true, r.Unspent, r.Slice.Moves, r.Slice.LastMove
		if r.Slice.ID != last.Slice {
			// A slice the local ledger never heard of: created in etcd,
			// then a crash before its credit landed here.
			if moves == 1 && lastMove.IsPositive() {
				inflight = lastMove
			}
			found = false
		}
	} else if rec, ok, err := b.n.Reclaimed(ctx, last.Slice); err != nil {
		return err
	} else if ok {
		found, unspent, moves, lastMove = true, rec.Unspent, rec.Moves, rec.LastMove
		reaped = rec.Reaped
	}
	if found {
		switch {
		case moves == last.Move+1 && lastMove.IsPositive():
			inflight = lastMove // granted in etcd, never credited here
		case last.Move == moves+1 && last.Entry.Amount.IsNegative():
			inflight = last.Entry.Amount.Neg() // returned here (a negative entry), never in etcd
		}
	}
	owed := unspent.Sub(lo.Balance).Sub(inflight)
	if r := b.n.rejoin; reaped || r != nil && r.LastReaped && r.ReapedOrgs[id] {
		// A survivor reaped the last incarnation's slice of the org: it
		// settled the money in etcd exactly, from the takeover records
		// (reap_money.go); the leftover here goes back locally only. Not
		// so for an org the reaper found no slice of (the slice was given
		// back whole, then a call's refund or release brought money back
		// here, which etcd counts as spent): owed is then −leftover, and
		// Charge gives it back to unallocated.
		owed = decimal.Zero
	}
	key := restartPrefix + last.Slice
	if !moved {
		key = restartPrefix + r.Slice.ID
	}
	if !owed.IsZero() {
		charged, err := b.n.Charge(ctx, id, owed, key)
		b.ops.charges.Add(1)
		if err != nil {
			return b.fail(err)
		}
		if charged.LessThan(owed) {
			b.log.Error("cluster start: the last incarnation's unreported spend was sold again by other nodes",
				"org", id, "owed", owed.String(), "charged", charged.String())
		}
	}
	if lo.Balance.IsPositive() {
		if _, err := b.local.ReturnSlice(id, key, 1, lo.Balance); err != nil {
			return err
		}
	}
	if owed.IsZero() && lo.Balance.IsZero() {
		return nil
	}
	b.log.Info("cluster start: settled the last incarnation's slice", "org", id, "slice", last.Slice,
		"reported_unspent", unspent.String(), "local_leftover", lo.Balance.String(), "in_flight", inflight.String(), "charged", owed.String())
	return nil
}

const restartPrefix = "restart."
