// An org's money in, as only etcd has it: in cluster mode a funding (the
// API's POST …/credits) and a paid purchase (the payer's auto-recharge or
// one-time purchase) land in etcd as fundings/<org>/<key> (account.go,
// payer.go), not in any node's ledger, so no node's transaction list has
// them. Fundings lists them for the org's cluster-wide transactions
// (api/cluster_transactions.go).
//
// Order and cursor: a funding's etcd create revision. It rises with every
// funding that lands (etcd's one total order of writes), never changes
// (a funding record is written once, by the transaction that funds), and a
// record is never deleted, so "the fundings created after revision R" is a
// stable position: paging by it gives every funding exactly once. The
// records' key order (the idempotency key's) is no order a reader wants,
// so the pages are not read with eachKV (which pages by key) but with one
// range read filtered on the create revision and sorted by it; etcd sorts
// the org's fundings server-side and answers at most limit+1 of them.

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// maxFundingsPage bounds one page of Fundings (the API's largest page).
const maxFundingsPage = 10000

// Fundings lists the org's fundings created after etcd revision after,
// oldest first, at most limit of them, as ledger entries: Seq is the
// funding's create revision (the next page's after), Kind funding, or
// recharge / purchase for a paid purchase (Key then the purchase's id, as
// a single node's ledger has it), Balance the cluster balance (funded −
// spent) right after it. next is the last entry's Seq when more follow, 0
// on the last page. Records written before their time was kept show a
// zero At and their purchase's close time, if any. It reads without the
// fence: a list decides nothing.
func (n *Node) Fundings(ctx context.Context, org string, after uint64, limit int) (es []ledger.Entry, next uint64, err error) {
	if err := validID("org", org); err != nil {
		return nil, 0, err
	}
	if limit < 1 || limit > maxFundingsPage {
		return nil, 0, fmt.Errorf("fundings of %s: limit %d, want 1 to %d: %w", org, limit, maxFundingsPage, ErrInvalid)
	}
	if after >= 1<<62 {
		return nil, 0, nil // past any revision etcd will reach
	}
	prefix := n.k.funding(org, "")
	rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	resp, err := n.cli.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithMinCreateRev(int64(after)+1),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(int64(limit)+1))
	cancel()
	if err != nil {
		return nil, 0, fmt.Errorf("fundings of %s: %w", org, err)
	}
	kvs := resp.Kvs
	if len(kvs) > limit {
		kvs = kvs[:limit]
		next = uint64(kvs[len(kvs)-1].CreateRevision)
	}
	purchases := map[int]string{} // entry index → purchase id
	for _, kv := range kvs {
		var f funding
		if err := json.Unmarshal(kv.Value, &f); err != nil {
			return nil, 0, fmt.Errorf("fundings of %s: %s: %w", org, kv.Key, err)
		}
		// The record's own key segment tells a purchase ("%P" never
		// begins an escaped API key: fundingKey escapes '%' as %25).
		segment := strings.TrimPrefix(string(kv.Key), prefix)
		key := f.Key
		if key == "" {
			key = unescapeFundingKey(segment)
		}
		e := ledger.Entry{Seq: uint64(kv.CreateRevision), At: f.At, Kind: ledger.EntryFunding, Amount: f.Amount,
			Balance: decimal.Zero, Key: key, Incident: f.Incident}
		if f.Balance != nil {
			e.Balance = *f.Balance
		}
		if id, ok := strings.CutPrefix(segment, "%P"); ok {
			e.Key = id
			purchases[len(es)] = id
		}
		es = append(es, e)
	}
	if len(purchases) > 0 {
		if err := n.purchaseEntries(ctx, org, purchases, es); err != nil {
			return nil, 0, err
		}
	}
	return es, next, nil
}

// purchaseEntries gives the entries of paid purchases their kind (an
// auto-recharge or a one-time purchase) and incident from the purchases'
// records, read in transactions of up to 100 gets.
func (n *Node) purchaseEntries(ctx context.Context, org string, which map[int]string, es []ledger.Entry) error {
	ids := make([]string, 0, len(which))
	for _, id := range which {
		ids = append(ids, id)
	}
	got := map[string]purchaseRecord{}
	for len(ids) > 0 {
		batch := ids[:min(len(ids), 100)]
		ids = ids[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, id := range batch {
			ops[i] = clientv3.OpGet(n.k.purchase(org, id))
		}
		rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		resp, err := n.cli.Txn(rctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("purchases of %s: %w", org, err)
		}
		for i, id := range batch {
			if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) == 1 {
				var rec purchaseRecord
				if err := json.Unmarshal(kvs[0].Value, &rec); err != nil {
					return fmt.Errorf("purchase %s: %w", id, err)
				}
				got[id] = rec
			}
		}
	}
	for i, id := range which {
		rec, ok := got[id]
		if !ok {
			// Its record is gone (purchases.go never deletes one): the
			// money came in all the same, shown as a funding.
			continue
		}
		es[i].Kind = ledger.EntryRecharge
		if rec.OneTime() {
			es[i].Kind = ledger.EntryPurchase
		}
		es[i].Incident = rec.Incident
		if es[i].At.IsZero() {
			es[i].At = rec.Closed
		}
	}
	return nil
}

// unescapeFundingKey undoes fundingKey's escapes ('%' and two hex digits);
// a hashed key ("sha-…") stays as it is.
func unescapeFundingKey(k string) string {
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] == '%' && i+2 < len(k) {
			if c, err := strconv.ParseUint(k[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(k[i])
	}
	return b.String()
}
