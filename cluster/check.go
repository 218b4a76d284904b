package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrInvariant: Check found the money of record inconsistent. It is a bug,
// never a refusal: nothing the package allows produces it.
var ErrInvariant = errors.New("cluster: invariant violated")

// maxCheckKeys bounds the one read Check makes.
const maxCheckKeys = 1_000_000

// OrgTotals is one org's money of record at one revision.
type OrgTotals struct {
	Account
	// Outstanding is Σ unspent of the org's slices; Slices their number.
	Outstanding decimal.Decimal
	Slices      int
	// Fundings is Σ of the org's funding records.
	Fundings decimal.Decimal
}

// State is everything Check read, at Revision.
type State struct {
	Revision int64
	Orgs     map[string]OrgTotals
	// Pools is every minute pool by "org/plan/month" (pools.go).
	Pools map[string]PoolTotals
}

// PoolTotals is one minute pool at one revision: its account, Σ unused
// of its slices (Outstanding) and Σ of their used, and their number.
type PoolTotals struct {
	PoolAccount
	Outstanding int
	SliceUsed   int
	Slices      int
}

// Check reads the node's whole prefix in one revision and verifies, for
// every org, the Account invariant (funded = unallocated + Σ slices'
// unspent + spent, each term ≥ 0), each slice's (0 ≤ spent ≤ granted), and
// that funded is the sum of the org's funding records; and for every
// minute pool (pools.go), total = unallocated + Σ slices' unused + used with
// used = Σ slices' used, each slice 0 ≤ used ≤ granted.
func (n *Node) Check(ctx context.Context) (State, error) {
	return Check(ctx, n.cli, n.cfg.Prefix, n.cfg.OpTimeout)
}

// Check is Node.Check for any client, e.g. a test's or an operator's.
func Check(ctx context.Context, cli *clientv3.Client, prefix string, timeout time.Duration) (State, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithLimit(maxCheckKeys))
	if err != nil {
		return State{}, fmt.Errorf("check: %w", err)
	}
	if resp.More {
		return State{}, fmt.Errorf("check: more than %d keys under %s", maxCheckKeys, prefix)
	}
	k := keys{prefix}
	st := State{Revision: resp.Header.Revision, Orgs: map[string]OrgTotals{}, Pools: map[string]PoolTotals{}}
	var bad []string
	org := func(id string) OrgTotals {
		t, ok := st.Orgs[id]
		if !ok {
			t = OrgTotals{Outstanding: decimal.Zero, Fundings: decimal.Zero}
		}
		return t
	}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case strings.HasPrefix(key, k.accounts()):
			id := strings.TrimPrefix(key, k.accounts())
			a, err := decodeAccount(kv)
			if err != nil {
				return st, fmt.Errorf("check: %w", err)
			}
			t := org(id)
			t.Account = a
			st.Orgs[id] = t
		case strings.HasPrefix(key, k.fundings()):
			id, _, _ := strings.Cut(strings.TrimPrefix(key, k.fundings()), "/")
			var f funding
			if err := json.Unmarshal(kv.Value, &f); err != nil {
				return st, fmt.Errorf("check: funding %s: %w", key, err)
			}
			t := org(id)
			t.Fundings = t.Fundings.Add(f.Amount)
			st.Orgs[id] = t
		case strings.HasPrefix(key, k.pools()):
			a, _, err := decodePool(kv, nil)
			if err != nil {
				return st, fmt.Errorf("check: %w", err)
			}
			id := strings.TrimPrefix(key, k.pools())
			t := st.Pools[id]
			t.PoolAccount = a
			st.Pools[id] = t
		case strings.HasPrefix(key, k.poolSlices()):
			_, s, err := decodePool(nil, kv)
			if err != nil {
				return st, fmt.Errorf("check: %w", err)
			}
			if s.Used < 0 || s.Used > s.Granted {
				bad = append(bad, fmt.Sprintf("pool slice %s: used %d of granted %d", key, s.Used, s.Granted))
			}
			id := s.Org + "/" + s.Plan + "/" + s.Month
			t := st.Pools[id]
			t.Outstanding += s.Unused()
			t.SliceUsed += s.Used
			t.Slices++
			st.Pools[id] = t
		case strings.HasPrefix(key, k.slices()):
			s, err := decodeSlice(kv)
			if err != nil {
				return st, fmt.Errorf("check: %w", err)
			}
			if s.Spent.IsNegative() || s.Spent.GreaterThan(s.Granted) {
				bad = append(bad, fmt.Sprintf("slice %s: spent %s of granted %s", key, s.Spent, s.Granted))
			}
			t := org(s.Org)
			t.Outstanding = t.Outstanding.Add(s.Unspent())
			t.Slices++
			st.Orgs[s.Org] = t
		}
	}
	ids := make([]string, 0, len(st.Orgs))
	for id := range st.Orgs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		t := st.Orgs[id]
		sum := t.Unallocated.Add(t.Outstanding).Add(t.Spent)
		switch {
		case t.Unallocated.IsNegative() || t.Spent.IsNegative() || t.Outstanding.IsNegative():
			bad = append(bad, fmt.Sprintf("org %s: negative term: %+v", id, t))
		case !t.Funded.Equal(sum):
			bad = append(bad, fmt.Sprintf("org %s: funded %s ≠ unallocated %s + outstanding %s + spent %s", id, t.Funded, t.Unallocated, t.Outstanding, t.Spent))
		case !t.Funded.Equal(t.Fundings):
			bad = append(bad, fmt.Sprintf("org %s: funded %s ≠ Σ fundings %s", id, t.Funded, t.Fundings))
		}
	}
	bad = append(bad, checkPools(st.Pools)...)
	if len(bad) > 0 {
		return st, fmt.Errorf("check at revision %d: %s: %w", st.Revision, strings.Join(bad, "; "), ErrInvariant)
	}
	return st, nil
}

// checkPools verifies each pool's invariant: Total = Unallocated + Σ
// slices' unused + Used, every term ≥ 0, and Used ≥ Σ slices' used (the
// account's used counts every node's reports, the slices only their last).
func checkPools(pools map[string]PoolTotals) []string {
	ids := make([]string, 0, len(pools))
	for id := range pools {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var bad []string
	for _, id := range ids {
		t := pools[id]
		switch {
		case t.Unallocated < 0 || t.Used < 0 || t.Outstanding < 0:
			bad = append(bad, fmt.Sprintf("pool %s: negative term: %+v", id, t))
		case t.Total != t.Unallocated+t.Outstanding+t.Used:
			bad = append(bad, fmt.Sprintf("pool %s: total %d ≠ unallocated %d + outstanding %d + used %d", id, t.Total, t.Unallocated, t.Outstanding, t.Used))
		case t.Used != t.SliceUsed:
			bad = append(bad, fmt.Sprintf("pool %s: used %d ≠ Σ slices' used %d", id, t.Used, t.SliceUsed))
		}
	}
	return bad
}
