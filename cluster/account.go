package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Account is an org's credit of record, in etcd at accounts/<org>.
//
// Invariant (Check verifies it in one revision):
//
//	funded = unallocated + Σ unspent of the org's outstanding slices + spent
//
// with every term ≥ 0, where a slice's unspent is granted − spent as its
// holder last reported. funded only grows (Fund); money moves from
// unallocated to a slice (Grant), from a slice to spent (Report) or back to
// unallocated (Return, Reclaim), and from unallocated straight to spent
// (Debit, direct mode). Every move is one transaction, so the invariant
// holds at every revision.
type Account struct {
	Funded      decimal.Decimal `json:"funded"`
	Unallocated decimal.Decimal `json:"unallocated"`
	Spent       decimal.Decimal `json:"spent"`
}

// funding is the idempotency record of one Fund.
type funding struct {
	Amount decimal.Decimal `json:"amount"`
	Node   string          `json:"node"`
	Epoch  int64           `json:"epoch"`
	// For the org's transactions (fundings_list.go): when it landed (the
	// funding node's clock), the cluster balance (funded − spent) right
	// after it, the key as given (the record's key is escaped, or hashed
	// when long) and the support incident that allowed it across regions.
	// Absent in records written before they were kept.
	At       time.Time        `json:"at,omitzero"`
	Balance  *decimal.Decimal `json:"balance,omitempty"`
	Key      string           `json:"key,omitempty"`
	Incident string           `json:"incident,omitempty"`
}

func positive(what string, d decimal.Decimal) error {
	if !d.IsPositive() {
		return fmt.Errorf("%s %s: must be positive: %w", what, d, ErrInvalid)
	}
	return nil
}

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("cluster: encode %T: %v", v, err)) // plain structs of decimals and strings
	}
	return string(b)
}

// decodeAccount reads an account's key; an absent key is a zero account.
func decodeAccount(kv *mvccpb.KeyValue) (Account, error) {
	a := Account{}
	if kv == nil {
		return a, nil
	}
	if err := json.Unmarshal(kv.Value, &a); err != nil {
		return a, fmt.Errorf("account %s: %w", kv.Key, err)
	}
	return a, nil
}

// modRev is a key's mod revision, 0 when absent (etcd compares an absent
// key's revisions as 0).
func modRev(kv *mvccpb.KeyValue) int64 {
	if kv == nil {
		return 0
	}
	return kv.ModRevision
}

// read gets keys at one revision (one transaction of reads); absent keys
// map to nil. It reads the node's fence key too and returns ErrFenced when
// it is gone, so a fenced node is refused before it decides anything, not
// only when it writes.
func (n *Node) read(ctx context.Context, keys ...string) (map[string]*mvccpb.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	ops := make([]clientv3.Op, len(keys), len(keys)+1)
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	resp, err := n.cli.Txn(ctx).Then(append(ops, clientv3.OpGet(n.k.member(n.epoch)))...).Commit()
	if err != nil {
		return nil, err
	}
	fence := &clientv3.TxnResponse{Responses: resp.Responses[len(keys):]}
	if n.fenced(fence) {
		return nil, ErrFenced
	}
	out := make(map[string]*mvccpb.KeyValue, len(keys))
	for i, k := range keys {
		out[k] = nil
		if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) == 1 {
			out[k] = kvs[0]
		}
	}
	return out, nil
}

// Fund adds amount to the org's funded and unallocated credit, once per
// idempotency key: a replay with the same key and amount is a no-op that
// returns nil, with another amount ErrIdempotencyConflict. The first Fund
// of an org creates its account.
func (n *Node) Fund(ctx context.Context, org string, amount decimal.Decimal, idempotencyKey string) error {
	_, err := n.FundReplay(ctx, org, amount, idempotencyKey)
	return err
}

// FundReplay is Fund that also says whether the key had funded already
// (replayed: nothing changed).
func (n *Node) FundReplay(ctx context.Context, org string, amount decimal.Decimal, idempotencyKey string) (replayed bool, err error) {
	return n.fund(ctx, org, amount, idempotencyKey, idempotencyKey, "")
}

// fund is FundReplay keeping, for the transactions list, the key as the
// client gave it (given) and the incident that allowed the funding.
func (n *Node) fund(ctx context.Context, org string, amount decimal.Decimal, idempotencyKey, given, incident string) (replayed bool, err error) {
	if err := validID("org", org); err != nil {
		return false, err
	}
	if err := validID("idempotency key", idempotencyKey); err != nil {
		return false, err
	}
	if err := positive("funding", amount); err != nil {
		return false, err
	}
	ak, fk := n.k.account(org), n.k.funding(org, idempotencyKey)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, ak, fk)
		if err != nil {
			return false, fmt.Errorf("fund %s: %w", org, err)
		}
		if kv := kvs[fk]; kv != nil {
			var f funding
			if err := json.Unmarshal(kv.Value, &f); err != nil {
				return false, fmt.Errorf("fund %s: funding %s: %w", org, idempotencyKey, err)
			}
			if !f.Amount.Equal(amount) {
				return false, fmt.Errorf("fund %s key %s: %s then %s: %w", org, idempotencyKey, f.Amount, amount, ErrIdempotencyConflict)
			}
			return true, nil
		}
		a, err := decodeAccount(kvs[ak])
		if err != nil {
			return false, fmt.Errorf("fund %s: %w", org, err)
		}
		a.Funded = a.Funded.Add(amount)
		a.Unallocated = a.Unallocated.Add(amount)
		bal := a.Funded.Sub(a.Spent)
		ok, _, err := n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(ak), "=", modRev(kvs[ak])),
				clientv3.Compare(clientv3.CreateRevision(fk), "=", 0),
			},
			[]clientv3.Op{
				clientv3.OpPut(fk, encode(funding{Amount: amount, Node: n.cfg.NodeID, Epoch: n.epoch, At: n.clk.Now().UTC(),
					Balance: &bal, Key: given, Incident: incident})),
				clientv3.OpPut(ak, encode(a)),
			})
		if err != nil {
			return false, fmt.Errorf("fund %s: %w", org, err)
		}
		if ok {
			return false, nil
		}
	}
	return false, fmt.Errorf("fund %s: %w", org, ErrContention)
}

// DebitReq is one direct-mode debit: amount straight from the org's
// unallocated credit to spent.
type DebitReq struct {
	Org    string
	Amount decimal.Decimal
}

// maxDebitOrgs bounds the distinct orgs of one DebitMany: each is a
// comparison and a put in one transaction, and etcd refuses transactions of
// more than --max-txn-ops (128 by default) operations.
const maxDebitOrgs = 64

// Debit is direct mode for one amount: a compare-and-set on the org's
// unallocated credit. ErrInsufficientCredit when unallocated < amount.
func (n *Node) Debit(ctx context.Context, org string, amount decimal.Decimal) error {
	res, err := n.DebitMany(ctx, []DebitReq{{Org: org, Amount: amount}})
	if err != nil {
		return err
	}
	return res[0]
}

// DebitMany applies debits in order, all in one transaction (one etcd
// write for a node's batch of increment holds): each either lands or is
// refused on its own with ErrInsufficientCredit, res[i] saying which. err
// is for the batch as a whole (fenced, etcd unreachable, contention,
// invalid); then nothing landed.
func (n *Node) DebitMany(ctx context.Context, reqs []DebitReq) (res []error, err error) {
	var keys []string
	seen := map[string]bool{}
	for _, r := range reqs {
		if err := validID("org", r.Org); err != nil {
			return nil, err
		}
		if err := positive("debit", r.Amount); err != nil {
			return nil, err
		}
		if k := n.k.account(r.Org); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 || len(keys) > maxDebitOrgs {
		return nil, fmt.Errorf("debit batch of %d orgs, want 1 to %d: %w", len(keys), maxDebitOrgs, ErrInvalid)
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, keys...)
		if err != nil {
			return nil, fmt.Errorf("debit: %w", err)
		}
		accts := map[string]Account{}
		for _, k := range keys {
			if accts[k], err = decodeAccount(kvs[k]); err != nil {
				return nil, fmt.Errorf("debit: %w", err)
			}
		}
		res = make([]error, len(reqs))
		changed := map[string]bool{}
		for i, r := range reqs {
			k := n.k.account(r.Org)
			a := accts[k]
			if a.Unallocated.LessThan(r.Amount) {
				res[i] = fmt.Errorf("debit %s %s, unallocated %s: %w", r.Org, r.Amount, a.Unallocated, ErrInsufficientCredit)
				continue
			}
			a.Unallocated = a.Unallocated.Sub(r.Amount)
			a.Spent = a.Spent.Add(r.Amount)
			accts[k] = a
			changed[k] = true
		}
		if len(changed) == 0 {
			return res, nil
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, k := range keys {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", modRev(kvs[k])))
			if changed[k] {
				ops = append(ops, clientv3.OpPut(k, encode(accts[k])))
			}
		}
		ok, _, err := n.commit(ctx, cmps, ops)
		if err != nil {
			return nil, fmt.Errorf("debit: %w", err)
		}
		if ok {
			return res, nil
		}
	}
	return nil, fmt.Errorf("debit: %w", ErrContention)
}
