package ledger

import (
	"fmt"

	"github.com/shopspring/decimal"
)

// Moving a single node's money into a cluster (issue 16, "creditgate
// cluster seed", cluster/seed.go).
//
// A single node's org balance is the org's money; a cluster node's is its
// slice of the money of record in etcd. When a single node's data directory
// becomes a cluster's first node, each org's balance leaves the ledger by
// one "return" entry whose key is SeedSlice/1 — money given to the
// cluster, where it becomes an etcd funding of exactly that amount — and
// the org's last slice movement becomes (SeedSlice, 1), so the cluster's
// restart settlement (cluster/books_restart.go) sees a ledger whose money
// came from, and went back to, the cluster.
//
// The ledger side comes first and the etcd funding second, both
// idempotent on the same id: a crash between them leaves the money in
// neither place for a moment (never in both), and the seed's rerun reads
// the amount back from this entry (SeedMove) and funds etcd with it.

// SeedSlice is the slice id of the entry that moved an org's single-node
// balance into the cluster.
const SeedSlice = "cluster-seed"

// MoveToCluster zeroes the org's balance with a "return" entry keyed
// SeedSlice/1 and answers it. Idempotent: once moved, it answers the entry
// it made (Replayed) and changes nothing. An org with a zero balance and no
// earlier move makes no entry (a zero Entry, nil). Refusals (nothing
// changes): ErrUnknownOrg; ErrInvalid when the org holds money for a call
// (a call up or not settled), has a purchase pending, has a negative
// balance, or already had cluster slice movements other than the seed's
// (its balance is a cluster node's slice, not its own money).
func (l *Ledger) MoveToCluster(org string) (Entry, error) {
	var en Entry
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: EntryReturn, Org: org, Key: SeedSlice + "/1"}, at, func(t *txn) error {
		st, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		if last, ok := l.sliceMoves[org]; ok {
			if last.Slice == SeedSlice && last.Move == 1 {
				en = last.Entry
				en.Replayed = true
				return nil
			}
			return invalidf("org %s: its balance came from a cluster (slice %s move %d), it is not a single node's to move", org, last.Slice, last.Move)
		}
		switch {
		case !st.Held.IsZero():
			return invalidf("org %s holds %s for calls: end and settle them before moving its money", org, st.Held)
		case st.purchase != nil:
			return invalidf("org %s has purchase %s pending: let it complete or fail before moving its money", org, st.purchase.ID)
		case st.Balance.IsNegative():
			return invalidf("org %s: negative balance %s", org, st.Balance)
		case st.Balance.IsZero():
			return nil
		}
		signed := st.Balance.Neg()
		st.Balance = decimal.Zero
		st.Funded = st.Funded.Add(signed)
		en = Entry{Seq: t.entrySeq(), At: at, Kind: EntryReturn, Amount: signed, Balance: st.Balance, Key: SeedSlice + "/1"}
		m := &SliceMove{Slice: SeedSlice, Move: 1, Entry: en}
		l.sliceMoves[org] = m
		t.put(keyBalances(org), st.Balances)
		t.put(keyEntry(org, en.Seq), en)
		t.put(keySliceMove(org), *m)
		return nil
	})
	return en, err
}

// SeedMove is the amount MoveToCluster took out of the org (positive), if
// it did: what the cluster must be funded with.
func (l *Ledger) SeedMove(org string) (decimal.Decimal, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m, ok := l.sliceMoves[org]
	if !ok || m.Slice != SeedSlice || m.Move != 1 {
		return decimal.Decimal{}, false
	}
	return m.Entry.Amount.Neg(), true
}

// ClusterBound reports whether any org's money ever moved between this
// ledger and a cluster (a slice, a return, the seed's move): its balances
// are then a cluster node's, not a single node's of record.
func (l *Ledger) ClusterBound() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sliceMoves) > 0
}
