package cluster

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The etcd operations cluster.Books spends through, besides Grant, Report,
// Return, Reclaim and Debit: one general resize of a node's slice (grant,
// extend, report, give back, return: one fenced transaction for a batch of
// orgs) and the idempotent charge a restarted node settles its last
// incarnation's unreported spend with.

// ResizeReq asks to bring the holder's slice of Org in line with what the
// holder has and move money between the org's unallocated credit and it:
//
//   - Have is what the holder still has of the org's money locally (its
//     local balance, held money included). The slice's unspent becomes Have
//     first: the difference moves to the org's spent (what was sold since
//     the last report) or, after a refund, back from it.
//   - then Move is taken from unallocated into the slice: with Max > 0,
//     as much as unallocated allows up to Max, refused
//     (ErrInsufficientCredit) below Min; with Max ≤ 0, −Max is given back
//     to unallocated (Min is ignored).
//
// The slice is created if Slice is nil and money ends up in it, and deleted
// when its unspent ends at zero.
type ResizeReq struct {
	Org   string
	Slice *Slice
	// NewID names the slice if this request creates one (empty: a new
	// UUID), so the holder can record it before etcd has it.
	NewID string
	Have  decimal.Decimal
	// AsOf is the local ledger's sequence number at which Have was read
	// (ledger.OrgAsOf): stored in the slice (Slice.AsOf) for a reaper.
	AsOf uint64
	// Keep keeps the slice when its unspent ends at zero (the holder has
	// calls up: a refund may bring money back after, which a reaper must
	// find a slice to settle).
	Keep     bool
	Min, Max decimal.Decimal
	// Share, when positive, caps what moves in at this fraction of what is
	// unallocated (but never below Min): one node's top-up leaves the other
	// nodes something to take.
	Share decimal.Decimal
}

// ResizeRes is one request's outcome: the slice after (nil: none held),
// what moved from unallocated into it (negative: given back), the org's
// account after, and the request's own refusal (then nothing of it
// changed): ErrInsufficientCredit, ErrSliceGone (the slice was reclaimed
// or is not the one etcd has), ErrGrantInFlight (etcd has a slice of this
// node for the org the holder does not know of), ErrInvalid.
type ResizeRes struct {
	Slice   *Slice
	Moved   decimal.Decimal
	Account Account
	Err     error
}

// maxResizeOrgs bounds one ResizeMany: each org is two comparisons and two
// operations, and etcd refuses transactions of more than --max-txn-ops (128
// by default) comparisons or operations (the fence is one more).
const maxResizeOrgs = 60

// Resize is ResizeMany of one request.
func (n *Node) Resize(ctx context.Context, r ResizeReq) (ResizeRes, error) {
	res, err := n.ResizeMany(ctx, []ResizeReq{r})
	if err != nil {
		return ResizeRes{}, err
	}
	return res[0], res[0].Err
}

// ResizeMany applies requests for distinct orgs in one fenced transaction
// (the node's batched report is one etcd write). err is for the batch
// (fenced, unreachable, contention, invalid); then nothing landed.
func (n *Node) ResizeMany(ctx context.Context, reqs []ResizeReq) ([]ResizeRes, error) {
	if len(reqs) == 0 || len(reqs) > maxResizeOrgs {
		return nil, fmt.Errorf("resize batch of %d orgs, want 1 to %d: %w", len(reqs), maxResizeOrgs, ErrInvalid)
	}
	seen := map[string]bool{}
	var keys []string
	for _, r := range reqs {
		if err := validID("org", r.Org); err != nil {
			return nil, err
		}
		if seen[r.Org] {
			return nil, fmt.Errorf("resize batch names org %s twice: %w", r.Org, ErrInvalid)
		}
		seen[r.Org] = true
		if r.Slice != nil && (r.Slice.Node != n.cfg.NodeID || r.Slice.Epoch != n.epoch || r.Slice.Org != r.Org) {
			return nil, fmt.Errorf("resize %s: slice of %s epoch %d org %s is not this node's: %w", r.Org, r.Slice.Node, r.Slice.Epoch, r.Slice.Org, ErrInvalid)
		}
		keys = append(keys, n.k.account(r.Org), n.k.slice(n.cfg.NodeID, r.Org))
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, keys...)
		if err != nil {
			return nil, fmt.Errorf("resize: %w", err)
		}
		res := make([]ResizeRes, len(reqs))
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for i, r := range reqs {
			ak, sk := n.k.account(r.Org), n.k.slice(n.cfg.NodeID, r.Org)
			a, err := decodeAccount(kvs[ak])
			if err != nil {
				return nil, fmt.Errorf("resize: %w", err)
			}
			res[i].Account, res[i].Slice, res[i].Moved = a, r.Slice, decimal.Zero
			ns, na, moved, err := resized(r, kvs[sk] != nil, modRev(kvs[sk]), a)
			if err != nil {
				res[i].Err = fmt.Errorf("resize %s: %w", r.Org, err)
				continue
			}
			if ns != nil && ns.ID == "" {
				ns.ID, ns.Node, ns.Epoch, ns.Org = r.NewID, n.cfg.NodeID, n.epoch, r.Org
				if ns.ID == "" {
					ns.ID = uuid.NewString()
				}
			}
			res[i].Slice, res[i].Account, res[i].Moved = ns, na, moved
			cmps = append(cmps,
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.ModRevision(sk), "=", modRev(kvs[sk])))
			ops = append(ops, clientv3.OpPut(ak, encode(na)))
			if ns == nil {
				ops = append(ops, clientv3.OpDelete(sk))
			} else {
				ops = append(ops, clientv3.OpPut(sk, encode(ns)))
			}
		}
		if len(ops) == 0 {
			return res, nil
		}
		ok, rev, err := n.commit(ctx, cmps, ops)
		if err != nil {
			return nil, fmt.Errorf("resize: %w", err)
		}
		if ok {
			for i := range res {
				if res[i].Err == nil && res[i].Slice != nil {
					res[i].Slice.modRev = rev
				}
			}
			return res, nil
		}
	}
	return nil, fmt.Errorf("resize: %w", ErrContention)
}

// resized computes one request against the account and the slice key as
// read (present, at modRev): the new slice (nil: deleted or none), the new
// account and what moved from unallocated. It changes nothing it is given.
func resized(r ResizeReq, present bool, rev int64, a Account) (*Slice, Account, decimal.Decimal, error) {
	switch {
	case r.Slice == nil && present:
		return nil, a, decimal.Zero, ErrGrantInFlight
	case r.Slice != nil && (r.Slice.modRev == 0 || !present || rev != r.Slice.modRev):
		return nil, a, decimal.Zero, ErrSliceGone
	case r.Have.IsNegative():
		return nil, a, decimal.Zero, fmt.Errorf("have %s: %w", r.Have, ErrInvalid)
	case r.Max.IsPositive() && (r.Min.IsNegative() || r.Min.GreaterThan(r.Max)):
		return nil, a, decimal.Zero, fmt.Errorf("move %s to %s: %w", r.Min, r.Max, ErrInvalid)
	}
	unspent := decimal.Zero
	if r.Slice != nil {
		unspent = r.Slice.Unspent()
	}
	sold := unspent.Sub(r.Have) // negative: refunded after it was reported
	a.Spent = a.Spent.Add(sold)
	if a.Spent.IsNegative() {
		return nil, a, decimal.Zero, fmt.Errorf("have %s of a slice with %s unspent: gives back more than the org spent: %w", r.Have, unspent, ErrInvalid)
	}
	move := r.Max
	if move.IsPositive() {
		if r.Share.IsPositive() {
			move = decimal.Min(move, decimal.Max(r.Min, a.Unallocated.Mul(r.Share).RoundDown(2)))
		}
		move = decimal.Min(move, a.Unallocated)
		if move.LessThan(r.Min) || !move.IsPositive() && r.Min.IsPositive() {
			return nil, a, decimal.Zero, fmt.Errorf("move %s to %s, unallocated %s: %w", r.Min, r.Max, a.Unallocated, ErrInsufficientCredit)
		}
	} else if r.Have.Add(move).IsNegative() {
		return nil, a, decimal.Zero, fmt.Errorf("give back %s of %s: %w", move.Neg(), r.Have, ErrInvalid)
	}
	a.Unallocated = a.Unallocated.Sub(move)
	after := r.Have.Add(move)
	if after.IsZero() && (!r.Keep || r.Slice == nil) {
		return nil, a, move, nil
	}
	ns := &Slice{Spent: decimal.Zero, LastMove: decimal.Zero}
	if r.Slice != nil {
		*ns = *r.Slice
	}
	if sold.IsPositive() {
		ns.Spent = ns.Spent.Add(sold)
	}
	if r.AsOf > ns.AsOf {
		ns.AsOf = r.AsOf
	}
	ns.Granted = ns.Spent.Add(after)
	if !move.IsZero() {
		ns.Moves++
		ns.LastMove = move
	}
	return ns, a, move, nil
}

// OwnSlice reads this node's slice of org, whatever incarnation holds it
// (nil when none): a restarted node finds its last incarnation's.
func (n *Node) OwnSlice(ctx context.Context, org string) (*Slice, error) {
	sk := n.k.slice(n.cfg.NodeID, org)
	kvs, err := n.read(ctx, sk)
	if err != nil {
		return nil, err
	}
	if kvs[sk] == nil {
		return nil, nil
	}
	return decodeSlice(kvs[sk])
}

// ReclaimOf is the record of a reclaimed slice, if it was reclaimed.
type ReclaimOf struct {
	By       string
	Unspent  decimal.Decimal
	Moves    int64
	LastMove decimal.Decimal
	// Reaped: settled exactly by a reaper from the takeover records.
	Reaped bool
}

// Reclaimed reads the reclaim record of slice id; false if none.
func (n *Node) Reclaimed(ctx context.Context, sliceID string) (ReclaimOf, bool, error) {
	rk := n.k.reclaim(sliceID)
	kvs, err := n.read(ctx, rk)
	if err != nil || kvs[rk] == nil {
		return ReclaimOf{}, false, err
	}
	var r reclaimRecord
	if err := json.Unmarshal(kvs[rk].Value, &r); err != nil {
		return ReclaimOf{}, false, fmt.Errorf("reclaim record %s: %w", sliceID, err)
	}
	return ReclaimOf{By: r.By, Unspent: r.Unspent, Moves: r.Moves, LastMove: r.LastMove, Reaped: r.Reaped}, true, nil
}

// charge is the record of one Charge, at charges/<org>/<key>.
type charge struct {
	Asked   decimal.Decimal `json:"asked"`
	Charged decimal.Decimal `json:"charged"`
	Node    string          `json:"node"`
	Epoch   int64           `json:"epoch"`
}

func (k keys) charge(org, key string) string { return k.prefix + "charges/" + org + "/" + key }

// Charge settles, once per key, spend the account never saw: amount > 0
// moves from unallocated to spent (as much of it as unallocated has: the
// rest was sold twice, and charged says how much did land); amount < 0 moves
// back from spent to unallocated (money counted spent that was not). A
// replay returns the first outcome. A restarted node settles its last
// incarnation's unreported spend with it (Books, at NewBooks).
func (n *Node) Charge(ctx context.Context, org string, amount decimal.Decimal, key string) (charged decimal.Decimal, err error) {
	if err := validID("org", org); err != nil {
		return decimal.Zero, err
	}
	if err := validID("charge key", key); err != nil {
		return decimal.Zero, err
	}
	ak, ck := n.k.account(org), n.k.charge(org, key)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, ak, ck)
		if err != nil {
			return decimal.Zero, fmt.Errorf("charge %s: %w", org, err)
		}
		if kv := kvs[ck]; kv != nil {
			var c charge
			if err := json.Unmarshal(kv.Value, &c); err != nil {
				return decimal.Zero, fmt.Errorf("charge %s: record %s: %w", org, key, err)
			}
			return c.Charged, nil
		}
		a, err := decodeAccount(kvs[ak])
		if err != nil {
			return decimal.Zero, fmt.Errorf("charge %s: %w", org, err)
		}
		charged = amount
		if amount.IsPositive() {
			charged = decimal.Min(amount, a.Unallocated)
		} else if a.Spent.LessThan(amount.Neg()) {
			return decimal.Zero, fmt.Errorf("charge %s %s: spent is only %s: %w", org, amount, a.Spent, ErrInvalid)
		}
		a.Unallocated = a.Unallocated.Sub(charged)
		a.Spent = a.Spent.Add(charged)
		ok, _, err := n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.CreateRevision(ck), "=", 0),
			},
			[]clientv3.Op{
				clientv3.OpPut(ak, encode(a)),
				clientv3.OpPut(ck, encode(charge{Asked: amount, Charged: charged, Node: n.cfg.NodeID, Epoch: n.epoch})),
			})
		if err != nil {
			return decimal.Zero, fmt.Errorf("charge %s: %w", org, err)
		}
		if ok {
			return charged, nil
		}
	}
	return decimal.Zero, fmt.Errorf("charge %s: %w", org, ErrContention)
}

// ReadAccounts reads the orgs' accounts at one revision (absent: zero).
func (n *Node) ReadAccounts(ctx context.Context, orgs []string) (map[string]Account, error) {
	keys := make([]string, len(orgs))
	for i, o := range orgs {
		keys[i] = n.k.account(o)
	}
	kvs, err := n.read(ctx, keys...)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Account, len(orgs))
	for i, o := range orgs {
		if out[o], err = decodeAccount(kvs[keys[i]]); err != nil {
			return nil, err
		}
	}
	return out, nil
}
