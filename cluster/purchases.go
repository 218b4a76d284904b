// Purchases in etcd: the cluster's auto-recharges and one-time purchases,
// kept where any node can start one and whichever node runs the payer
// (a Singleton) finds every one, including those a previous leader began.

package cluster

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// The purchases' keys, under Config.Prefix:
//
//	purchases/<org>/<id>      the purchase (purchaseRecord), pending or closed, kept
//	pending/<org>/<id>        the same record while it is pending: the payer's list
//	recharging/<org>          the id of the org's pending auto-recharge (at most one)
//	purchasekeys/<org>/<key>  a one-time purchase's idempotency record (purchaseKey)
//
// Invariants, each kept by the one transaction that changes them:
//   - pending/<org>/<id> exists exactly while purchases/<org>/<id> is
//     pending, with the same value;
//   - recharging/<org> names the org's one pending auto-recharge, and
//     exists exactly while there is one (created with it, if absent; deleted
//     with its close);
//   - an org has at most ledger.MaxPendingPurchases one-time purchases
//     pending (the start compares pending/<org>/ unchanged since counted);
//   - a succeeded purchase funded the org once, with funding key
//     purchaseFunding(id) (Node.Fund is idempotent on it); the funding
//     lands before the record closes, so a purchase that reads succeeded
//     has been credited.
func (k keys) purchase(org, id string) string        { return k.prefix + "purchases/" + org + "/" + id }
func (k keys) pendingPurchase(org, id string) string { return k.prefix + "pending/" + org + "/" + id }
func (k keys) pendingOf(org string) string           { return k.prefix + "pending/" + org + "/" }
func (k keys) pendingAll() string                    { return k.prefix + "pending/" }
func (k keys) recharging(org string) string          { return k.prefix + "recharging/" + org }
func (k keys) purchaseKey(org, key string) string {
	return k.prefix + "purchasekeys/" + org + "/" + fundingKey(key)
}

// purchaseFunding is the funding key a purchase credits the org with. An
// API funding's key goes through fundingKey, whose only '%' is followed by
// two hex digits: "%P" never is, so the two never meet.
func purchaseFunding(id string) string { return "%P" + id }

// purchaseRecord is a purchase as etcd keeps it.
type purchaseRecord struct {
	ledger.Purchase
	// Setting is the UpdatedAt of the auto-recharge setting that started
	// an auto-recharge: a decline suspends that setting, not a newer one
	// an admin put meanwhile.
	Setting time.Time `json:"setting,omitzero"`
}

// purchaseKey is what a one-time purchase's idempotency key must match for
// a retry to be the same request, and the purchase it started.
type purchaseKey struct {
	ID            string          `json:"id"`
	Amount        decimal.Decimal `json:"amount"`
	PaymentMethod string          `json:"payment_method"`
	Customer      string          `json:"customer"`
}

// Purchases keeps the cluster's purchases in etcd. Any node starts
// one-time purchases (the API's api.Purchases, with the same answers as
// the single node's ledger); the payer (Payer, one node) starts
// auto-recharges and closes both kinds. Every write is a fenced
// transaction of the node.
type Purchases struct {
	n     *Node
	local *ledger.Ledger // the replicated org settings and the funding rules
	clk   clock.Clock
	log   *slog.Logger
}

// NewPurchases is the purchases of the cluster n belongs to; local is the
// node's ledger (for the orgs' settings, which the Replica keeps).
func NewPurchases(n *Node, local *ledger.Ledger, clk clock.Clock, log *slog.Logger) *Purchases {
	if log == nil {
		log = slog.Default()
	}
	return &Purchases{n: n, local: local, clk: clk, log: log}
}

// newPurchaseID is a purchase id: the org, the kind's letter, the time and
// a random part. It is the payment's idempotency key, so it must never
// recur (see ledger.maybeRecharge).
func (p *Purchases) newPurchaseID(org string, kind byte) string {
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	return fmt.Sprintf("%s-%c%d-%x", org, kind, p.clk.Now().UnixMilli(), nonce)
}

// StartPurchase is ledger.Ledger.StartPurchase on etcd: the same checks
// and refusals, idempotent per (org, key) across the cluster (a retry with
// the same key, amount, payment method and customer answers the first
// purchase with Replayed set, whatever node it reaches), durable in etcd
// when it returns. The payer charges it next.
func (p *Purchases) StartPurchase(org string, amount decimal.Decimal, key, paymentMethod, customer, incident string) (ledger.Purchase, error) {
	if err := p.local.CheckPurchase(amount, key, paymentMethod, customer, incident); err != nil {
		return ledger.Purchase{}, err
	}
	o, err := p.local.Org(org)
	if err != nil {
		return ledger.Purchase{}, err
	}
	if o.Region == o.BillingRegion {
		incident = ""
	} else if incident == "" {
		return ledger.Purchase{}, fmt.Errorf("%w: org %s is in region %q but bills in %q; open a support incident to purchase Communications Credits, then pass its id as incident",
			ledger.ErrRegionMismatch, o.ID, o.Region, o.BillingRegion)
	}
	if _, ok := ledger.MinorUnits(amount, o.Currency); !ok {
		return ledger.Purchase{}, fmt.Errorf("%w: amount %s: more precision than %s has", ledger.ErrInvalid, amount, o.Currency)
	}
	ctx := context.Background()
	kk := p.n.k.purchaseKey(org, key)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := p.n.read(ctx, kk)
		if err != nil {
			return ledger.Purchase{}, unavailable("start purchase", err)
		}
		if kv := kvs[kk]; kv != nil {
			var prev purchaseKey
			if err := json.Unmarshal(kv.Value, &prev); err != nil {
				return ledger.Purchase{}, fmt.Errorf("purchase key %s: %w", kk, err)
			}
			if !prev.Amount.Equal(amount) || prev.PaymentMethod != paymentMethod || prev.Customer != customer {
				return ledger.Purchase{}, fmt.Errorf("%w: %q started purchase %s of %s with %s already; nothing changed",
					ledger.ErrDuplicateFunding, key, prev.ID, prev.Amount.StringFixed(2), prev.PaymentMethod)
			}
			pu, found, err := p.get(ctx, org, prev.ID)
			if err != nil {
				return ledger.Purchase{}, unavailable("start purchase", err)
			}
			if !found {
				return ledger.Purchase{}, fmt.Errorf("purchase %s of key %q: not in etcd", prev.ID, key)
			}
			pu.Replayed = true
			return pu.Purchase, nil
		}
		pending, rev, err := p.listPending(ctx, p.n.k.pendingOf(org))
		if err != nil {
			return ledger.Purchase{}, unavailable("start purchase", err)
		}
		n := 0
		for _, r := range pending {
			if r.OneTime() {
				n++
			}
		}
		if n >= ledger.MaxPendingPurchases {
			return ledger.Purchase{}, fmt.Errorf("%w: org %s has %d one-time purchases being paid, the most it may; wait for one to succeed or fail",
				ledger.ErrTooManyPurchases, org, n)
		}
		rec := purchaseRecord{Purchase: ledger.Purchase{ID: p.newPurchaseID(org, 'p'), Kind: ledger.PurchaseOneTime, Org: org,
			Amount: amount, Currency: o.Currency, PaymentMethod: paymentMethod, Customer: customer, State: ledger.PurchasePending,
			Created: p.clk.Now().UTC(), Balance: p.balance(ctx, org, o), Key: key, Incident: incident}}
		if incident != "" {
			p.log.Warn("purchase allowed across regions by a support incident", "org", org, "region", o.Region,
				"billing_region", o.BillingRegion, "incident", incident, "amount", amount.String(), "idempotency_key", key)
		}
		v := encode(rec)
		ok, _, err := p.n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.CreateRevision(kk), "=", 0),
				// Nothing pending of the org changed since it was counted.
				clientv3.Compare(clientv3.ModRevision(p.n.k.pendingOf(org)), "<", rev+1).WithPrefix(),
			},
			[]clientv3.Op{
				clientv3.OpPut(kk, encode(purchaseKey{ID: rec.ID, Amount: amount, PaymentMethod: paymentMethod, Customer: customer})),
				clientv3.OpPut(p.n.k.purchase(org, rec.ID), v),
				clientv3.OpPut(p.n.k.pendingPurchase(org, rec.ID), v),
			})
		if err != nil {
			return ledger.Purchase{}, unavailable("start purchase", err)
		}
		if ok {
			return rec.Purchase, nil
		}
	}
	return ledger.Purchase{}, unavailable("start purchase", ErrContention)
}

// OrgPurchase is ledger.Ledger.OrgPurchase on etcd: one of the org's
// purchases, one-time or auto-recharge, pending or closed; another org's
// or a missing one is ErrUnknownPurchase.
func (p *Purchases) OrgPurchase(org, id string) (ledger.Purchase, error) {
	if _, err := p.local.Org(org); err != nil {
		return ledger.Purchase{}, err
	}
	if id == "" || len(id) > 256 || strings.ContainsAny(id, "/\x00") {
		return ledger.Purchase{}, fmt.Errorf("%w: %q", ledger.ErrUnknownPurchase, id)
	}
	rec, found, err := p.get(context.Background(), org, id)
	if err != nil {
		return ledger.Purchase{}, unavailable("read purchase", err)
	}
	if !found || rec.Org != org {
		return ledger.Purchase{}, fmt.Errorf("%w: org %s has no purchase %q", ledger.ErrUnknownPurchase, org, id)
	}
	return rec.Purchase, nil
}

// PendingRecharge is the id of the org's pending auto-recharge, if any
// ("" also when etcd cannot be read).
func (p *Purchases) PendingRecharge(org string) string {
	kvs, err := p.n.read(context.Background(), p.n.k.recharging(org))
	if err != nil || kvs[p.n.k.recharging(org)] == nil {
		return ""
	}
	return string(kvs[p.n.k.recharging(org)].Value)
}

// get reads one purchase.
func (p *Purchases) get(ctx context.Context, org, id string) (purchaseRecord, bool, error) {
	key := p.n.k.purchase(org, id)
	kvs, err := p.n.read(ctx, key)
	if err != nil {
		return purchaseRecord{}, false, err
	}
	if kvs[key] == nil {
		return purchaseRecord{}, false, nil
	}
	var rec purchaseRecord
	if err := json.Unmarshal(kvs[key].Value, &rec); err != nil {
		return purchaseRecord{}, false, fmt.Errorf("purchase %s: %w", key, err)
	}
	return rec, true, nil
}

// listPending reads the pending purchases under prefix (one org's, or
// all), oldest first, and the revision it read them at.
func (p *Purchases) listPending(ctx context.Context, prefix string) ([]purchaseRecord, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, p.n.cfg.OpTimeout)
	defer cancel()
	resp, err := p.n.cli.Get(ctx, prefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, 0, err
	}
	out := make([]purchaseRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec purchaseRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, 0, fmt.Errorf("pending purchase %s: %w", kv.Key, err)
		}
		out = append(out, rec)
	}
	return out, resp.Header.Revision, nil
}

// balance is the org's cluster balance as etcd has it (funded − spent:
// what every node has reported), or the node's view when etcd cannot be
// read; it is only recorded on the purchase.
func (p *Purchases) balance(ctx context.Context, org string, o ledger.Org) decimal.Decimal {
	accts, err := p.n.ReadAccounts(ctx, []string{org})
	if err != nil {
		return o.Balance
	}
	a := accts[org]
	return a.Funded.Sub(a.Spent)
}

// startRecharge starts the org's auto-recharge of setting ar, triggered at
// balance, unless one is pending already (then started is false).
func (p *Purchases) startRecharge(ctx context.Context, o ledger.Org, balance decimal.Decimal) (pu ledger.Purchase, started bool, err error) {
	ar := o.AutoRecharge
	rec := purchaseRecord{Purchase: ledger.Purchase{ID: p.newPurchaseID(o.ID, 'r'), Kind: ledger.PurchaseAutoRecharge, Org: o.ID,
		Amount: ar.Amount, Currency: o.Currency, PaymentMethod: ar.PaymentMethod, Customer: ar.Customer,
		State: ledger.PurchasePending, Created: p.clk.Now().UTC(), Balance: balance}, Setting: ar.UpdatedAt}
	v := encode(rec)
	rk := p.n.k.recharging(o.ID)
	ok, _, err := p.n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(rk), "=", 0)},
		[]clientv3.Op{
			clientv3.OpPut(rk, rec.ID),
			clientv3.OpPut(p.n.k.purchase(o.ID, rec.ID), v),
			clientv3.OpPut(p.n.k.pendingPurchase(o.ID, rec.ID), v),
		})
	if err != nil || !ok {
		return ledger.Purchase{}, false, err
	}
	return rec.Purchase, true, nil
}

// errClosed: the purchase was closed already (by an earlier attempt, or a
// previous leader); nothing changed.
var errClosed = errors.New("purchase closed already")

// close closes a pending purchase as rec says (state, payment or reason,
// closed time) and queues n (if any) in the same transaction; the org's
// auto-recharge slot is freed with it. A purchase no longer pending is
// errClosed.
func (p *Purchases) close(ctx context.Context, rec purchaseRecord, n *ledger.Notification) error {
	key := p.n.k.purchase(rec.Org, rec.ID)
	pk := p.n.k.pendingPurchase(rec.Org, rec.ID)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := p.n.read(ctx, key, pk)
		if err != nil {
			return err
		}
		if kvs[pk] == nil {
			return errClosed
		}
		ops := []clientv3.Op{clientv3.OpPut(key, encode(rec)), clientv3.OpDelete(pk)}
		if !rec.OneTime() {
			ops = append(ops, clientv3.OpDelete(p.n.k.recharging(rec.Org)))
		}
		if n != nil {
			ops = append(ops, clientv3.OpPut(p.n.k.outbox(n.ID), encode(n)))
		}
		ok, _, err := p.n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(pk), "=", modRev(kvs[pk]))}, ops)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return ErrContention
}
