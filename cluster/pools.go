package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Minute pools across the cluster (issue 16).
//
// An org's monthly pool of a plan is the cluster's, in whole minutes, the
// way credits are: pools/<org>/<plan>/<month> holds the PoolAccount and
// poolslices/<node>/<org>/<plan>/<month> each node's PoolSlice of it. A
// node's ledger may hold only minutes its slice granted it (its allowance,
// ledger/poolslices.go).
//
// Unlike a credit slice, a pool slice is not a sequence of movements but
// two absolute numbers: Granted, the minutes etcd gave the node's ledger in
// all for the month (its allowance, used minutes included), and Used, the
// node's used minutes as last reported. Every PoolMove carries the ledger's
// own numbers, so a retry, a lost answer or a restart is settled by
// setting them again:
//
//   - minutes come into etcd's Granted first, then into the ledger's
//     allowance; they leave the ledger's allowance first, then etcd's
//     Granted: the ledger's allowance is never above Granted, and after any
//     failure the node may simply raise its allowance to Granted;
//   - the slice is per node, not per incarnation: a restarted node adopts
//     it (its ledger kept Used and the allowance) after NewBooks waited for
//     the old lease to expire, so the old incarnation can no longer write.
//
// Invariant, per pool, at every revision (Check verifies it):
//
//	Total = Unallocated + Σ (Granted − Used) of its slices + Used
//
// every term ≥ 0 and each slice 0 ≤ Used ≤ Granted. So the minutes used
// cluster-wide never exceed Total.
//
// Total follows the licenses: the shared configuration gives every node's
// ledger the same users and licenses, so each node counts the same licensed
// minutes for a month; the first PoolMove of a pool creates its account with
// that total, and any later one raises it when licenses grew, or lowers it
// by at most Unallocated when they shrank (minutes given out stay given).

// PoolAccount is one pool (org, plan, month) in etcd, in minutes.
type PoolAccount struct {
	Total       int `json:"total"`
	Unallocated int `json:"unallocated"`
	Used        int `json:"used"`
}

// PoolSlice is one node's part of a pool: Granted, the minutes its ledger
// may have used or held in all for the month; Used, what it reported used.
// Invariant: 0 ≤ Used ≤ Granted. It is never deleted (a month's slice is a
// few bytes per node): giving minutes back lowers Granted.
type PoolSlice struct {
	Node    string `json:"node"`
	Epoch   int64  `json:"epoch"`
	Org     string `json:"org"`
	Plan    string `json:"plan"`
	Month   string `json:"month"`
	Granted int    `json:"granted"`
	Used    int    `json:"used"`
	// AsOf is the holder's local ledger sequence number at which it read
	// the Used it last reported (PoolReq.AsOf), for a reaper (reap.go).
	AsOf uint64 `json:"as_of,omitempty"`
}

// Unused is what the slice still reserves for its node (held minutes
// included).
func (s PoolSlice) Unused() int { return s.Granted - s.Used }

// PoolReq is one PoolMove: the ledger's numbers and what to change.
type PoolReq struct {
	Org, Plan, Month string
	// Licensed is the pool's licensed minutes as the node's ledger counts
	// them: the account's Total follows.
	Licensed int
	// Used is the node's used minutes (its ledger's): reported.
	Used int
	// AsOf is the local ledger's sequence number at which Used was read
	// (ledger.PoolShareAsOf); 0 keeps the slice's.
	AsOf uint64
	// Need, Want: take from Unallocated at least Need minutes (else none)
	// and up to Want, at most half of what is unallocated unless Need is
	// more (a node cannot take a pool away from the others in one grant).
	Need, Want int
	// GiveTo ≥ 0 lowers Granted to it (the node's ledger lowered its
	// allowance to it first), the difference back to Unallocated; -1
	// keeps Granted.
	GiveTo int
}

// PoolRes is what a PoolMove left in etcd, and the minutes it took.
type PoolRes struct {
	Account PoolAccount
	Slice   PoolSlice
	Taken   int
}

// maxPoolMinutes bounds a pool's total: far above any licence count times
// a plan's minutes, far below overflow.
const maxPoolMinutes = 1 << 40

// PoolMove reports the node's used minutes of a pool, makes its Total follow
// the licenses, and takes or gives back minutes, in one fenced transaction
// compared on the account's and the slice's mod revisions. Refusals:
// ErrInvalid (bad ids or numbers, Used above what etcd granted the node,
// GiveTo below Used), ErrFenced, ErrContention.
func (n *Node) PoolMove(ctx context.Context, r PoolReq) (PoolRes, error) {
	if err := r.valid(); err != nil {
		return PoolRes{}, err
	}
	ak, sk := n.k.poolAccount(r.Org, r.Plan, r.Month), n.k.poolSlice(n.cfg.NodeID, r.Org, r.Plan, r.Month)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, ak, sk)
		if err != nil {
			return PoolRes{}, fmt.Errorf("pool move %s: %w", sk, err)
		}
		a, s, err := decodePool(kvs[ak], kvs[sk])
		if err != nil {
			return PoolRes{}, err
		}
		fresh := kvs[sk] == nil
		if fresh {
			s = PoolSlice{Node: n.cfg.NodeID, Org: r.Org, Plan: r.Plan, Month: r.Month}
		}
		before, sBefore := a, s
		res, err := r.apply(&a, &s, fresh)
		if err != nil {
			return PoolRes{}, fmt.Errorf("pool move %s: %w", sk, err)
		}
		s.Epoch = n.epoch
		if a == before && s == sBefore && kvs[ak] != nil && kvs[sk] != nil {
			res.Account, res.Slice = a, s
			return res, nil // nothing to write
		}
		ok, _, err := n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.ModRevision(sk), "=", modRev(kvs[sk])),
			},
			[]clientv3.Op{clientv3.OpPut(ak, encode(a)), clientv3.OpPut(sk, encode(s))})
		if err != nil {
			return PoolRes{}, fmt.Errorf("pool move %s: %w", sk, err)
		}
		if ok {
			res.Account, res.Slice = a, s
			return res, nil
		}
	}
	return PoolRes{}, fmt.Errorf("pool move %s: %w", sk, ErrContention)
}

func (r PoolReq) valid() error {
	for _, id := range []struct{ what, v string }{{"org", r.Org}, {"plan", r.Plan}} {
		if err := validID(id.what, id.v); err != nil {
			return err
		}
	}
	if _, err := time.Parse("2006-01", r.Month); err != nil {
		return fmt.Errorf("pool month %q: %w", r.Month, ErrInvalid)
	}
	if r.Licensed < 0 || r.Licensed > maxPoolMinutes || r.Used < 0 || r.Need < 0 || r.Want < r.Need || r.GiveTo < -1 ||
		(r.GiveTo >= 0 && r.GiveTo < r.Used) || (r.GiveTo >= 0 && r.Need > 0) {
		return fmt.Errorf("pool move %+v: %w", r, ErrInvalid)
	}
	return nil
}

// apply changes the account and the slice as r asks, keeping the
// invariant: the total follows the licenses, the report moves minutes
// between the slice's unused and the account's used, then minutes are taken
// or given back.
//
// A node's first move of a pool (fresh: no slice yet) may carry minutes its
// ledger used before it joined the cluster (a single node made the
// cluster's first node mid-month, Seed): they are adopted as granted and
// used, taken from unallocated as far as it goes and beyond that added to
// the total, as a single node's pool total never drops below what was used.
func (r PoolReq) apply(a *PoolAccount, s *PoolSlice, fresh bool) (PoolRes, error) {
	switch {
	case r.Licensed > a.Total:
		a.Unallocated += r.Licensed - a.Total
		a.Total = r.Licensed
	case r.Licensed < a.Total:
		cut := min(a.Total-r.Licensed, a.Unallocated)
		a.Total -= cut
		a.Unallocated -= cut
	}
	if fresh && r.Used > 0 {
		from := min(r.Used, a.Unallocated)
		a.Unallocated -= from
		a.Total += r.Used - from
		a.Used += r.Used
		s.Granted, s.Used = r.Used, r.Used
	}
	if r.Used > s.Granted {
		return PoolRes{}, fmt.Errorf("node used %d minutes, etcd granted it %d: %w", r.Used, s.Granted, ErrInvalid)
	}
	a.Used += r.Used - s.Used // negative after a refund
	s.Used = r.Used
	if r.AsOf > s.AsOf {
		s.AsOf = r.AsOf
	}
	var res PoolRes
	if r.GiveTo >= 0 && r.GiveTo < s.Granted {
		a.Unallocated += s.Granted - r.GiveTo
		s.Granted = r.GiveTo
	}
	if r.Need > 0 || r.Want > 0 {
		take := min(r.Want, max(r.Need, (a.Unallocated+1)/2), a.Unallocated)
		if take >= r.Need && take > 0 {
			a.Unallocated -= take
			s.Granted += take
			res.Taken = take
		}
	}
	return res, nil
}

func decodePool(akv, skv *mvccpb.KeyValue) (PoolAccount, PoolSlice, error) {
	var a PoolAccount
	var s PoolSlice
	if akv != nil {
		if err := json.Unmarshal(akv.Value, &a); err != nil {
			return a, s, fmt.Errorf("pool account %s: %w", akv.Key, err)
		}
	}
	if skv != nil {
		if err := json.Unmarshal(skv.Value, &s); err != nil {
			return a, s, fmt.Errorf("pool slice %s: %w", skv.Key, err)
		}
	}
	return a, s, nil
}
