package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Slice is credit granted to one node for one org, at slices/<node>/<org>:
// the node spends it locally and reports what it spent.
//
// Invariant: 0 ≤ Spent ≤ Granted; Spent only grows; its unspent
// (Granted − Spent) counts in the org's Account invariant until the slice
// is returned or reclaimed, which deletes it. Resize (spend_etcd.go) moves
// Granted both ways: up when money comes from unallocated (or back from
// spent after a refund), down when money goes back to unallocated.
//
// The slice key is not itself attached to the node's lease, on purpose: a
// key attached to a lease is deleted by etcd when the lease expires, and
// this one holds money of record, which must move back to unallocated in a
// transaction (Reclaim), not vanish. It is bound to the lease through its
// Epoch: only the holder's fenced writes may change it while members/<epoch>
// lives, and only a survivor may reclaim it once etcd has removed that key.
type Slice struct {
	ID      string          `json:"id"`
	Node    string          `json:"node"`
	Epoch   int64           `json:"epoch"`
	Org     string          `json:"org"`
	Granted decimal.Decimal `json:"granted"`
	Spent   decimal.Decimal `json:"spent"`
	// Moves numbers the slice's movements of money in or out (the grant is
	// 1, each Resize that moves money adds one) and LastMove is the last
	// one's amount (negative: given back), so a restarted holder can tell
	// whether its last movement reached etcd (cluster/books.go).
	Moves    int64           `json:"moves"`
	LastMove decimal.Decimal `json:"last_move"`
	// AsOf is the holder's local ledger sequence number at which it read
	// the balance the slice's unspent was last set to (ResizeReq.AsOf; 0:
	// never set so). A survivor reaping the holder counts a call's charge
	// changes after it as spent since (reap.go).
	AsOf uint64 `json:"as_of,omitempty"`

	modRev int64 // the slice key's mod revision as the holder last wrote it
}

// Unspent is what the slice's holder may still sell from it.
func (s *Slice) Unspent() decimal.Decimal { return s.Granted.Sub(s.Spent) }

func decodeSlice(kv *mvccpb.KeyValue) (*Slice, error) {
	s := &Slice{}
	if err := json.Unmarshal(kv.Value, s); err != nil {
		return nil, fmt.Errorf("slice %s: %w", kv.Key, err)
	}
	s.modRev = kv.ModRevision
	return s, nil
}

// Grant moves amount of the org's unallocated credit into a new slice held
// by this node. One slice per org per node: ErrGrantInFlight while the
// node's previous slice of the org is neither returned nor reclaimed;
// ErrInsufficientCredit when unallocated < amount (the org belongs in direct
// mode then).
func (n *Node) Grant(ctx context.Context, org string, amount decimal.Decimal) (*Slice, error) {
	if err := validID("org", org); err != nil {
		return nil, err
	}
	if err := positive("grant", amount); err != nil {
		return nil, err
	}
	ak, sk := n.k.account(org), n.k.slice(n.cfg.NodeID, org)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, ak, sk)
		if err != nil {
			return nil, fmt.Errorf("grant %s: %w", org, err)
		}
		if kvs[sk] != nil {
			return nil, fmt.Errorf("grant %s to %s: %w", org, n.cfg.NodeID, ErrGrantInFlight)
		}
		a, err := decodeAccount(kvs[ak])
		if err != nil {
			return nil, fmt.Errorf("grant %s: %w", org, err)
		}
		if a.Unallocated.LessThan(amount) {
			return nil, fmt.Errorf("grant %s %s, unallocated %s: %w", org, amount, a.Unallocated, ErrInsufficientCredit)
		}
		a.Unallocated = a.Unallocated.Sub(amount)
		s := &Slice{ID: uuid.NewString(), Node: n.cfg.NodeID, Epoch: n.epoch, Org: org, Granted: amount, Spent: decimal.Zero, Moves: 1, LastMove: amount}
		ok, rev, err := n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.CreateRevision(sk), "=", 0),
			},
			[]clientv3.Op{clientv3.OpPut(ak, encode(a)), clientv3.OpPut(sk, encode(s))})
		if err != nil {
			return nil, fmt.Errorf("grant %s: %w", org, err)
		}
		if ok {
			s.modRev = rev
			return s, nil
		}
	}
	return nil, fmt.Errorf("grant %s: %w", org, ErrContention)
}

// Report records that the holder has spent spentSoFar of the slice in all
// (not a delta, so a retried Report is harmless): the difference moves from
// the slice's unspent to the org's spent. ErrSliceGone if the slice was
// returned or reclaimed.
func (n *Node) Report(ctx context.Context, s *Slice, spentSoFar decimal.Decimal) error {
	if spentSoFar.LessThan(s.Spent) || spentSoFar.GreaterThan(s.Granted) {
		return fmt.Errorf("report slice %s spent %s, want %s to %s: %w", s.ID, spentSoFar, s.Spent, s.Granted, ErrInvalid)
	}
	if spentSoFar.Equal(s.Spent) {
		return nil
	}
	next := *s
	next.Spent = spentSoFar
	rev, err := n.settle(ctx, s, spentSoFar.Sub(s.Spent), decimal.Zero, clientv3.OpPut(n.k.slice(s.Node, s.Org), encode(&next)))
	if err != nil {
		return fmt.Errorf("report slice %s: %w", s.ID, err)
	}
	s.Spent, s.modRev = spentSoFar, rev
	return nil
}

// Return closes the slice: unspent goes back to the org's unallocated
// credit and the rest of the slice (Granted − unspent − what was already
// reported) to spent. ErrSliceGone if it was already returned or reclaimed.
func (n *Node) Return(ctx context.Context, s *Slice, unspent decimal.Decimal) error {
	if unspent.IsNegative() || unspent.GreaterThan(s.Unspent()) {
		return fmt.Errorf("return slice %s unspent %s, want 0 to %s: %w", s.ID, unspent, s.Unspent(), ErrInvalid)
	}
	spent := s.Unspent().Sub(unspent)
	if _, err := n.settle(ctx, s, spent, unspent, clientv3.OpDelete(n.k.slice(s.Node, s.Org))); err != nil {
		return fmt.Errorf("return slice %s: %w", s.ID, err)
	}
	s.Spent, s.modRev = s.Spent.Add(spent), 0
	return nil
}

// settle moves spent from the slice to the org's spent and back to its
// unallocated credit, with sliceOp rewriting or deleting the slice, in one
// fenced transaction that the slice is still as the holder left it.
func (n *Node) settle(ctx context.Context, s *Slice, spent, back decimal.Decimal, sliceOp clientv3.Op) (int64, error) {
	if s.Node != n.cfg.NodeID || s.Epoch != n.epoch {
		return 0, fmt.Errorf("slice of %s epoch %d, not this node's (%s epoch %d): %w", s.Node, s.Epoch, n.cfg.NodeID, n.epoch, ErrSliceGone)
	}
	ak, sk := n.k.account(s.Org), n.k.slice(s.Node, s.Org)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, ak, sk)
		if err != nil {
			return 0, err
		}
		if s.modRev == 0 || modRev(kvs[sk]) != s.modRev { // 0: this holder returned it
			return 0, ErrSliceGone
		}
		a, err := decodeAccount(kvs[ak])
		if err != nil {
			return 0, err
		}
		a.Spent = a.Spent.Add(spent)
		a.Unallocated = a.Unallocated.Add(back)
		ok, rev, err := n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.ModRevision(sk), "=", s.modRev),
			},
			[]clientv3.Op{clientv3.OpPut(ak, encode(a)), sliceOp})
		if err != nil {
			return 0, err
		}
		if ok {
			return rev, nil
		}
	}
	return 0, ErrContention
}

// Reclaimed is one slice a survivor gave back to its org.
type Reclaimed struct {
	Slice   Slice
	Unspent decimal.Decimal
}

// reclaimRecord is written at reclaims/<slice id>, in the same transaction
// that deletes the slice: who reclaimed it and how much went back.
type reclaimRecord struct {
	By       string          `json:"by"`
	Epoch    int64           `json:"epoch"`
	Org      string          `json:"org"`
	Unspent  decimal.Decimal `json:"unspent"`
	Moves    int64           `json:"moves"`
	LastMove decimal.Decimal `json:"last_move"`
	// Reaped: a reaper (reap.go) settled the slice exactly, from the dead
	// incarnation's takeover records: SpentAfter (what its calls committed
	// after its last report) went to spent, Unspent back to unallocated.
	// The node's next incarnation charges nothing more for it.
	Reaped     bool            `json:"reaped,omitempty"`
	SpentAfter decimal.Decimal `json:"spent_after,omitzero"`
}

// Reclaim gives the unspent credit of every slice of deadNode whose
// incarnation's lease etcd has expired or revoked back to the slice's org,
// each exactly once however many survivors try at the same time: the
// transaction deletes the slice on the condition that it is unchanged, so
// one reclaimer wins and the others find it gone. Slices of a live
// incarnation are left alone (ErrNodeAlive, after reclaiming the others).
// It returns the slices this call reclaimed.
//
// What the dead node sold after its last Report is not in the record: that
// money goes back to unallocated with the rest, and the takeover (issue 17)
// must settle it from the dead node's own ledger.
func (n *Node) Reclaim(ctx context.Context, deadNode string) ([]Reclaimed, error) {
	if err := validID("node", deadNode); err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	resp, err := n.cli.Get(lctx, n.k.slicesOf(deadNode), clientv3.WithPrefix(), clientv3.WithLimit(maxSlicesPerNode))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("reclaim %s: list slices: %w", deadNode, err)
	}
	var out []Reclaimed
	alive := false
	for _, kv := range resp.Kvs {
		r, err := n.reclaimOne(ctx, string(kv.Key))
		switch {
		case errors.Is(err, ErrNodeAlive):
			alive = true
		case err != nil:
			return out, fmt.Errorf("reclaim %s: %w", deadNode, err)
		case r != nil:
			out = append(out, *r)
		}
	}
	if alive {
		return out, fmt.Errorf("reclaim %s: %w", deadNode, ErrNodeAlive)
	}
	return out, nil
}

// maxSlicesPerNode bounds one Reclaim's listing: a node holds at most one
// slice per org, and a larger node is reclaimed by calling Reclaim again.
const maxSlicesPerNode = 10000

// reclaimOne reclaims the slice at sk; nil, nil when another survivor (or
// the holder's Return) got there first.
func (n *Node) reclaimOne(ctx context.Context, sk string) (*Reclaimed, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, sk)
		if err != nil {
			return nil, err
		}
		if kvs[sk] == nil {
			return nil, nil
		}
		s, err := decodeSlice(kvs[sk])
		if err != nil {
			return nil, err
		}
		ak, mk, rk := n.k.account(s.Org), n.k.member(s.Epoch), n.k.reclaim(s.ID)
		kvs, err = n.read(ctx, ak, mk, sk)
		if err != nil {
			return nil, err
		}
		if kvs[mk] != nil {
			return nil, ErrNodeAlive
		}
		if modRev(kvs[sk]) != s.modRev {
			continue
		}
		a, err := decodeAccount(kvs[ak])
		if err != nil {
			return nil, err
		}
		a.Unallocated = a.Unallocated.Add(s.Unspent())
		ok, _, err := n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.CreateRevision(mk), "=", 0),
				clientv3.Compare(clientv3.ModRevision(sk), "=", s.modRev),
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.CreateRevision(rk), "=", 0),
			},
			[]clientv3.Op{
				clientv3.OpDelete(sk),
				clientv3.OpPut(ak, encode(a)),
				clientv3.OpPut(rk, encode(reclaimRecord{By: n.cfg.NodeID, Epoch: n.epoch, Org: s.Org, Unspent: s.Unspent(), Moves: s.Moves, LastMove: s.LastMove})),
			})
		if err != nil {
			return nil, err
		}
		if ok {
			return &Reclaimed{Slice: *s, Unspent: s.Unspent()}, nil
		}
	}
	return nil, ErrContention
}
