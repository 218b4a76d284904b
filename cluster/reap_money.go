// The money of a reap: a dead incarnation's credit slices and pool slices
// settled exactly from its takeover records (what its calls spent after
// each slice's last report).

package cluster

import (
	"context"
	"fmt"

	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// reapSlice settles one slice of a dead incarnation: its true unspent
// (reported unspent − spentAfter) goes back to unallocated, spentAfter to
// spent, the slice is deleted and a reclaim record (Reaped) written, with
// the claim's progress. It returns what went back.
func (b *Books) reapSlice(ctx context.Context, ck string, rev *int64, cl *claim, s *Slice, spentAfter decimal.Decimal) (decimal.Decimal, error) {
	ak, sk, rk := b.n.k.account(s.Org), b.n.k.slice(s.Node, s.Org), b.n.k.reclaim(s.ID)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := b.n.read(ctx, ak, sk, rk)
		if err != nil {
			return decimal.Zero, err
		}
		if kvs[sk] == nil || kvs[rk] != nil {
			return decimal.Zero, nil // reclaimed (a restart's Reclaim) or given back meanwhile
		}
		cur, err := decodeSlice(kvs[sk])
		if err != nil {
			return decimal.Zero, err
		}
		if cur.ID != s.ID || cur.Epoch != s.Epoch {
			return decimal.Zero, nil
		}
		a, err := decodeAccount(kvs[ak])
		if err != nil {
			return decimal.Zero, err
		}
		unspent := cur.Unspent()
		back := unspent.Sub(spentAfter)
		spent := spentAfter
		if back.IsNegative() {
			// The records show more spent than the slice had: the node
			// sold beyond its slice (cannot happen while the ledger
			// holds only what it was given); take the excess from
			// unallocated as far as it goes.
			take := decimal.Min(back.Neg(), a.Unallocated)
			b.log.Error("cluster reaper: a dead node's calls spent more than its slice had", "org", s.Org,
				"unspent", unspent.String(), "spent_after_report", spentAfter.String(), "taken_from_unallocated", take.String())
			a.Unallocated = a.Unallocated.Sub(take)
			spent, back = unspent.Add(take), decimal.Zero
		}
		a.Unallocated = a.Unallocated.Add(back)
		a.Spent = a.Spent.Add(spent)
		if a.Spent.IsNegative() {
			return decimal.Zero, fmt.Errorf("reap slice %s: spent would go to %s: %w", s.ID, a.Spent, ErrInvalid)
		}
		cl.Slices[s.Org] = true
		nrev, ok, err := b.n.claimStep(ctx, ck, *rev, cl,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(sk), "=", kvs[sk].ModRevision),
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.CreateRevision(rk), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(b.n.k.member(s.Epoch)), "=", 0),
			},
			[]clientv3.Op{
				clientv3.OpDelete(sk),
				clientv3.OpPut(ak, encode(a)),
				clientv3.OpPut(rk, encode(reclaimRecord{By: b.n.ID(), Epoch: b.n.Epoch(), Org: s.Org, Unspent: back,
					Moves: cur.Moves, LastMove: cur.LastMove, Reaped: true, SpentAfter: spent})),
			})
		if err != nil {
			delete(cl.Slices, s.Org)
			return decimal.Zero, err
		}
		if ok {
			*rev = nrev
			return back, nil
		}
		delete(cl.Slices, s.Org)
	}
	return decimal.Zero, ErrContention
}

// reapPools settles the incarnation's pool slices: the minutes its calls
// used after the slice's last report (AsOf) are added to used, the
// unused minutes go back to the pool's unallocated, and the slice keeps
// Granted = Used (a pool slice is never deleted: the node's next
// incarnation adopts it).
func (b *Books) reapPools(ctx context.Context, c incarnation, ck string, rev *int64, cl *claim, recs map[string]*Record) error {
	if cl.Pools == nil {
		cl.Pools = map[string]bool{}
	}
	type ps struct {
		id string
		s  PoolSlice
	}
	var todo []ps
	err := b.n.eachKV(ctx, b.n.k.poolSlices()+c.node+"/", false, func(kv *mvccpb.KeyValue) error {
		_, s, err := decodePool(nil, kv)
		if err != nil {
			return err
		}
		id := s.Org + "/" + s.Plan + "/" + s.Month
		if s.Epoch == c.epoch && !cl.Pools[id] {
			todo = append(todo, ps{id, s})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range todo {
		after := 0
		for id, r := range recs {
			rc, ok := cl.Calls[id]
			if !ok || r.poolID() != p.id {
				continue
			}
			_, at := r.at(p.s.AsOf)
			after += rc.PoolMinutes - at
		}
		ak, sk := b.n.k.poolAccount(p.s.Org, p.s.Plan, p.s.Month), b.n.k.poolSlice(c.node, p.s.Org, p.s.Plan, p.s.Month)
		done := false
		for attempt := 0; attempt < maxAttempts && !done; attempt++ {
			kvs, err := b.n.read(ctx, ak, sk)
			if err != nil {
				return err
			}
			a, s, err := decodePool(kvs[ak], kvs[sk])
			if err != nil {
				return err
			}
			if kvs[sk] == nil || s.Epoch != c.epoch {
				break // adopted by the node's next incarnation meanwhile
			}
			used := s.Used + after
			if used < 0 || used > s.Granted {
				b.log.Error("cluster reaper: a dead node's pool minutes do not add up", "pool", p.id,
					"granted", s.Granted, "reported_used", s.Used, "used_after_report", after)
				used = min(max(used, 0), s.Granted)
			}
			a.Used += used - s.Used
			a.Unallocated += s.Granted - used
			s.Used, s.Granted = used, used
			cl.Pools[p.id] = true
			nrev, ok, err := b.n.claimStep(ctx, ck, *rev, cl,
				[]clientv3.Cmp{
					clientv3.Compare(clientv3.ModRevision(sk), "=", kvs[sk].ModRevision),
					clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				},
				[]clientv3.Op{clientv3.OpPut(ak, encode(a)), clientv3.OpPut(sk, encode(s))})
			if err != nil {
				delete(cl.Pools, p.id)
				return err
			}
			if ok {
				*rev, done = nrev, true
			} else {
				delete(cl.Pools, p.id)
			}
		}
	}
	return nil
}
