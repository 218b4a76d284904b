// Rejoin (issue 17, item 3): a node restarted on its data directory comes
// back under a new epoch and settles nothing twice.

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// Rejoin is what a restarted node learned about its earlier incarnations
// before it opened its ledger (ClaimOwn).
type Rejoin struct {
	// SettledElsewhere are the calls survivors ended and settled (reap.go),
	// with what they settled them at: ledger.Options.SettledElsewhere, so
	// the ledger's restart settlement ends them without a CDR or a charge
	// of its own.
	SettledElsewhere map[string]ledger.Settled
	// Claimed are the earlier incarnations this one claimed: nobody reaped
	// them, so they are settled from this node's disk as a single node's
	// restart is (restart CDRs, BYEs through Dialogs, settleRestart), then
	// their records are deleted (NewBooks).
	Claimed []int64
	// Reaped are the earlier incarnations survivors reaped.
	Reaped []int64
	// LastReaped: the latest earlier incarnation found was reaped by a
	// survivor, who settled its money exactly in etcd: the restart
	// settlement charges nothing for it, and the ledger's leftover goes
	// back locally only. It goes to ledger.Options.LastReaped: an
	// answered call whose record never landed is released there, not
	// charged (the survivor returned its hold as unspent).
	LastReaped bool
	// ReapedOrgs are the orgs whose slice of that last incarnation the
	// survivor settled (its claim's Slices): only for them does the
	// restart charge nothing. An org whose slice the last incarnation had
	// given back entirely, then was refunded or released money of (it
	// holds money etcd counts as spent), is settled as after any crash:
	// the leftover given back to unallocated (books_restart.go).
	ReapedOrgs map[string]bool
}

// ClaimOwn claims, for this (new) incarnation, each earlier incarnation of
// the node that left takeover records, slices or pool slices and that no
// survivor claimed — at once, without waiting for the old lease: the
// caller holds the data directory's lock, so the old process is gone. An
// earlier incarnation a survivor is reaping is waited for until its money
// is settled (up to 3 lease TTLs + OpTimeout; the survivor's BYEs may
// still be due) — unless its claimer died before adopting a CDR: then it
// is taken over here and settled from disk (a two-node cluster has nobody
// else to take it over). What it claims, survivors may take over again
// if this incarnation dies before NewBooks marks the claims Settling
// (markSettling), never after. Call it after Join and before opening the ledger; the
// result goes to ledger.Options.SettledElsewhere, and NewBooks reads it
// from the node.
func (n *Node) ClaimOwn(ctx context.Context) (*Rejoin, error) {
	r := &Rejoin{SettledElsewhere: map[string]ledger.Settled{}, ReapedOrgs: map[string]bool{}}
	reapedOrgs := map[int64]map[string]bool{}
	limit := time.Now().Add(3*n.cfg.LeaseTTL + n.cfg.OpTimeout)
	for {
		incs, err := n.incarnations(ctx, n.ID())
		if err != nil {
			return nil, fmt.Errorf("cluster rejoin %s: %w", n.ID(), err)
		}
		waiting := false
		r.Claimed = r.Claimed[:0]
		for _, c := range incs {
			if c.epoch >= n.Epoch() {
				continue
			}
			cl, _, other, err := n.takeClaim(ctx, c, true)
			if err != nil {
				return nil, fmt.Errorf("cluster rejoin %s: claim epoch %d: %w", n.ID(), c.epoch, err)
			}
			switch {
			case cl != nil:
				r.Claimed = append(r.Claimed, c.epoch)
			case other != nil && !other.Done && !other.Settled:
				if other.Self {
					return nil, fmt.Errorf("cluster rejoin %s: epoch %d is being settled by incarnation %d of this node, still alive: %w",
						n.ID(), c.epoch, other.ByEpoch, ErrNodeAlive)
				}
				waiting = true
			}
		}
		if !waiting {
			break
		}
		if time.Now().After(limit) {
			return nil, fmt.Errorf("cluster rejoin %s: survivors still reaping an earlier incarnation after %s: %w", n.ID(), 3*n.cfg.LeaseTTL, ErrNodeAlive)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	var lastClaimed, lastReaped int64
	for _, e := range r.Claimed {
		lastClaimed = max(lastClaimed, e)
	}
	err := n.eachKV(ctx, n.k.prefix+"reaps/"+n.ID()+"/", false, func(kv *mvccpb.KeyValue) error {
		var cl claim
		if err := json.Unmarshal(kv.Value, &cl); err != nil {
			return fmt.Errorf("claim %s: %w", kv.Key, err)
		}
		if !cl.Settled || cl.Self {
			return nil // (a survivor's claim is settled before it is done)
		}
		e, err := strconv.ParseInt(strings.TrimPrefix(string(kv.Key), n.k.prefix+"reaps/"+n.ID()+"/"), 10, 64)
		if err != nil {
			return fmt.Errorf("claim %s: %w", kv.Key, err)
		}
		r.Reaped = append(r.Reaped, e)
		reapedOrgs[e] = cl.Slices
		lastReaped = max(lastReaped, e)
		for id, c := range cl.Calls {
			if c.Live {
				r.SettledElsewhere[id] = c.Settled
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cluster rejoin %s: %w", n.ID(), err)
	}
	r.LastReaped = lastReaped > lastClaimed
	if r.LastReaped {
		for org := range reapedOrgs[lastReaped] {
			r.ReapedOrgs[org] = true
		}
	}
	n.rejoin = r
	return r, nil
}

// finishRejoin deletes the takeover records of the earlier incarnations
// this one claimed and marks their claims done: NewBooks calls it once the
// ledger's restart settlement and settleRestart have settled them from
// this node's disk.
func (b *Books) finishRejoin(ctx context.Context) error {
	r := b.n.rejoin
	if r == nil {
		return nil
	}
	for _, e := range r.Claimed {
		ck := b.n.k.reap(b.n.ID(), e)
		cl, rev, err := b.n.readClaim(ctx, ck)
		if err != nil {
			return err
		}
		if cl == nil || cl.By != b.n.ID() || cl.ByEpoch != b.n.Epoch() || cl.Done {
			continue
		}
		cl.Done = true
		if _, ok, err := b.n.claimStep(ctx, ck, rev, cl, nil,
			[]clientv3.Op{clientv3.OpDelete(b.n.k.takeoverOf(b.n.ID(), e), clientv3.WithPrefix())}); err != nil {
			return fmt.Errorf("cluster start: finish epoch %d: %w", e, err)
		} else if !ok {
			return fmt.Errorf("cluster start: finish epoch %d: %w", e, errClaimLost)
		}
		b.log.Info("cluster start: settled an earlier incarnation from this node's disk", "epoch", e)
	}
	return nil
}

// markSettling marks Settling on the claims of the earlier incarnations
// this one claimed (each a fenced step on the claim's mod revision and on
// this incarnation's member key), before settleRestart writes anything of
// their money to etcd. A survivor takes a self-claim over only when its
// claimer's member key is gone and Settling is unset (takeClaim): either
// the mark lands first, and no survivor takes the claim over after it, or
// the takeover does, and the mark fails here (errClaimLost) so this start
// settles nothing — its ledger's restart CDRs, the only thing written
// before, are superseded at the next start by the survivor's.
func (b *Books) markSettling(ctx context.Context) error {
	r := b.n.rejoin
	if r == nil {
		return nil
	}
	for _, e := range r.Claimed {
		ck := b.n.k.reap(b.n.ID(), e)
		cl, rev, err := b.n.readClaim(ctx, ck)
		if err != nil {
			return fmt.Errorf("cluster start: mark epoch %d settling: %w", e, err)
		}
		if cl == nil || cl.By != b.n.ID() || cl.ByEpoch != b.n.Epoch() {
			return fmt.Errorf("cluster start: mark epoch %d settling: %w", e, errClaimLost)
		}
		if cl.Done || cl.Settling {
			continue
		}
		cl.Settling = true
		if _, ok, err := b.n.claimStep(ctx, ck, rev, cl, nil, nil); err != nil {
			return fmt.Errorf("cluster start: mark epoch %d settling: %w", e, err)
		} else if !ok {
			return fmt.Errorf("cluster start: mark epoch %d settling: %w", e, errClaimLost)
		}
	}
	return nil
}
