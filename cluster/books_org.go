// What Books answers from etcd rather than the local ledger: the cluster's
// balance of an org, and fundings.

package cluster

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/ledger"
)

// cluster returns the org with its money as the cluster has it. An org
// whose account this node never read is read now (read) or, for Money,
// answered with the node's own view until the next tick has read it.
func (b *Books) cluster(lo ledger.Org, read bool) ledger.Org {
	o := b.org(lo.ID)
	b.mu.Lock()
	known, a, s := o.known, o.acct, o.slice
	o.lastSeen = b.clk.Now()
	b.mu.Unlock()
	if !known && !read {
		return lo
	}
	if !known {
		accts, err := b.n.ReadAccounts(b.ctx, []string{lo.ID})
		b.ops.reads.Add(1)
		if err == nil {
			a = accts[lo.ID]
			b.mu.Lock()
			o.acct, o.known = a, true
			s = o.slice
			b.mu.Unlock()
		}
	}
	unspent := decimal.Zero
	if s != nil {
		unspent = s.Unspent()
	}
	// Not yet reported by this node: what its slice still shows minus
	// what it still has.
	unreported := unspent.Sub(lo.Balance)
	bal := a.Funded.Sub(a.Spent).Sub(unreported)
	lo.Balances = ledger.Balances{Balance: bal, Held: lo.Held, Funded: a.Funded, Debited: a.Funded.Sub(bal)}
	return lo
}

// Org returns the org with the cluster's balance: etcd's funded − spent as
// this node last read it (at most about a report interval old for orgs it
// reads often), less what this node spent and has not reported; Held is
// this node's (the admin API sums every node's, api/cluster_org.go), and
// Available is Balance − this node's Held. The other settings are the node's replica.
func (b *Books) Org(id string) (ledger.Org, error) {
	lo, err := b.local.Org(id)
	if err != nil {
		return lo, err
	}
	return b.cluster(lo, true), nil
}

// Money is every org's money as Org gives it (without waiting for etcd:
// an org this node has not read yet shows the node's own balance until the
// next tick has read it).
func (b *Books) Money() []ledger.OrgMoney {
	ms := b.local.Money()
	for i := range ms {
		lo, err := b.local.Org(ms[i].Org)
		if err != nil {
			continue
		}
		c := b.cluster(lo, false)
		ms[i].Balance, ms[i].Held, ms[i].Available = c.Balance, c.Held, c.Available()
	}
	return ms
}

// FundAcrossRegions checks the funding as the ledger does, then funds the
// org in etcd, once per key. The entry is not in the node's transaction
// list (the money of record is etcd's): Seq is 0 and Balance the cluster
// balance after it.
func (b *Books) FundAcrossRegions(org string, amount decimal.Decimal, key, incident string) (ledger.Entry, error) {
	incident, err := b.local.CheckFunding(org, amount, key, incident)
	if err != nil {
		return ledger.Entry{}, err
	}
	if err := b.Err(); err != nil {
		return ledger.Entry{}, err
	}
	replayed, err := b.n.fund(b.ctx, org, amount, fundingKey(key), key, incident)
	b.ops.charges.Add(1)
	switch {
	case errors.Is(err, ErrIdempotencyConflict):
		return ledger.Entry{}, fmt.Errorf("%w: %q funded another amount already; nothing changed", ledger.ErrDuplicateFunding, key)
	case err != nil:
		return ledger.Entry{}, b.fail(err)
	}
	o := b.org(org)
	accts, err := b.n.ReadAccounts(b.ctx, []string{org})
	b.ops.reads.Add(1)
	if err == nil {
		b.mu.Lock()
		o.acct, o.known = accts[org], true
		b.mu.Unlock()
		b.decideMode(o)
	}
	c, _ := b.Org(org)
	return ledger.Entry{At: b.clk.Now().UTC(), Kind: ledger.EntryFunding, Amount: amount, Balance: c.Balance,
		Key: key, Incident: incident, Replayed: replayed}, nil
}

// fundingKey maps an API idempotency key (up to 128 characters, any) to an
// etcd key segment: '/' and NUL are escaped.
func fundingKey(key string) string {
	out := make([]byte, 0, len(key))
	for i := 0; i < len(key); i++ {
		switch c := key[i]; c {
		case '/', 0, '%':
			out = append(out, fmt.Sprintf("%%%02X", c)...)
		default:
			out = append(out, c)
		}
	}
	if len(out) > 128 {
		return fmt.Sprintf("sha-%x", sha256.Sum256([]byte(key)))
	}
	return string(out)
}

// The rest answers from the local ledger, and the admin changes go to the
// shared configuration.
