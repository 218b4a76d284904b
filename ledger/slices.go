package ledger

import (
	"fmt"

	"github.com/shopspring/decimal"
)

// Cluster slices in the local ledger (issue 16).
//
// In cluster mode the money of record is in etcd and each node spends from
// slices of it in its own ledger. Money comes in as a "slice" entry (a
// grant, or an extension of the node's slice, arriving) and goes back as a
// "return" entry (available money given back to the cluster). Both count
// as fundings for the balance invariant — Funded is the net of what came
// in, so Funded − Debited = Balance holds — and neither knows minimums,
// regions or auto-recharge: the cluster decided the amount.
//
// The node numbers every movement of its slice (Move, 1, 2, … per slice, as
// etcd numbers them): the ledger keeps each org's last movement (c/{org})
// in the same durable change, so a retried movement is found (Replayed) and
// a restarted node can tell which of its last movements reached etcd and
// which reached this ledger (cluster/books.go).

// Entry kinds of cluster slices.
const (
	// EntrySlice is cluster money arriving: positive.
	EntrySlice = "slice"
	// EntryReturn is available money given back to the cluster: negative.
	EntryReturn = "return"
)

// SliceMove is the last movement of cluster money into or out of an org's
// local balance: the slice's id, its movement number and the entry it made
// (Amount positive for a credit, negative for a return).
type SliceMove struct {
	Slice string `json:"slice"`
	Move  int64  `json:"move"`
	Entry Entry  `json:"entry"`
}

func keySliceMove(org string) []byte { return []byte("c/" + org) }

// CreditSlice adds amount of a slice granted to this node to the org's
// balance. Idempotent on (slice, move): a retry of the org's last movement
// or of an earlier one of the same slice returns the entry of the last one
// with Replayed set and changes nothing. Refusals: ErrInvalid (empty id,
// move < 1, amount ≤ 0), ErrUnknownOrg.
func (l *Ledger) CreditSlice(org, slice string, move int64, amount decimal.Decimal) (Entry, error) {
	return l.sliceMove(org, slice, move, amount, EntrySlice)
}

// ReturnSlice takes amount of the org's available money (never held money)
// back, to be given back to the cluster. Idempotent on (slice, move) like
// CreditSlice. Refusals: ErrInvalid, ErrUnknownOrg, ErrInsufficientCredit
// (available < amount; nothing changes).
func (l *Ledger) ReturnSlice(org, slice string, move int64, amount decimal.Decimal) (Entry, error) {
	return l.sliceMove(org, slice, move, amount, EntryReturn)
}

// LastSliceMove is the org's last slice movement; false if it never had one.
func (l *Ledger) LastSliceMove(org string) (SliceMove, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m, ok := l.sliceMoves[org]
	if !ok {
		return SliceMove{}, false
	}
	return *m, true
}

func (l *Ledger) sliceMove(org, slice string, move int64, amount decimal.Decimal, kind string) (Entry, error) {
	if slice == "" || len(slice) > MaxFundingKey || move < 1 || !amount.IsPositive() {
		return Entry{}, invalidf("%s of slice %q move %d amount %s: want an id, a move ≥ 1 and a positive amount", kind, slice, move, amount)
	}
	var en Entry
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: kind, Org: org, Key: fmt.Sprintf("%s/%d", slice, move), Amount: amount}, at, func(t *txn) error {
		st, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		if last, ok := l.sliceMoves[org]; ok && last.Slice == slice && move <= last.Move {
			en = last.Entry
			en.Replayed = true
			return nil
		}
		signed := amount
		if kind == EntryReturn {
			if st.Available().LessThan(amount) {
				return fmt.Errorf("%w: return of %s, %s available", ErrInsufficientCredit, amount, st.Available())
			}
			signed = amount.Neg()
		}
		st.Balance = st.Balance.Add(signed)
		st.Funded = st.Funded.Add(signed)
		en = Entry{Seq: t.entrySeq(), At: at, Kind: kind, Amount: signed, Balance: st.Balance, Key: fmt.Sprintf("%s/%d", slice, move)}
		m := &SliceMove{Slice: slice, Move: move, Entry: en}
		l.sliceMoves[org] = m
		t.put(keyBalances(org), st.Balances)
		t.put(keyEntry(org, en.Seq), en)
		t.put(keySliceMove(org), *m)
		return nil
	})
	return en, err
}

// loadSliceMoves reads each org's last slice movement (c/).
func (l *Ledger) loadSliceMoves() error {
	return scan(l.db, []byte("c/"), func(k []byte, m *SliceMove) error {
		l.sliceMoves[string(k[2:])] = m
		return nil
	})
}

// CheckFunding is FundAcrossRegions' validation without the funding: what
// a cluster node checks before it funds the org in etcd. It returns the
// incident to keep (empty when the regions agree). Refusals: ErrInvalid,
// ErrBelowMinimum, ErrUnknownOrg, ErrRegionMismatch.
func (l *Ledger) CheckFunding(orgID string, amount decimal.Decimal, key, incident string) (string, error) {
	if err := l.fundingArgs(amount, key, incident); err != nil {
		return "", err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.orgs[orgID]
	if !ok {
		return "", fmt.Errorf("%w: %s", ErrUnknownOrg, orgID)
	}
	return l.fundingRegion(st, amount, key, incident)
}

// fundingArgs checks a funding's arguments.
func (l *Ledger) fundingArgs(amount decimal.Decimal, key, incident string) error {
	if key == "" || len(key) > MaxFundingKey {
		return invalidf("idempotency_key: want 1 to %d characters", MaxFundingKey)
	}
	if len(incident) > 128 {
		return invalidf("incident: at most 128 characters")
	}
	if amount.LessThan(l.opts.MinFunding) {
		return fmt.Errorf("%w: %s is below the minimum funding of %s", ErrBelowMinimum, amount.StringFixed(2), l.opts.MinFunding.StringFixed(2))
	}
	return nil
}

// fundingRegion refuses a funding of an org whose region differs from its
// billing region unless an incident allows it (logged), and returns the
// incident to keep. Under l.mu.
func (l *Ledger) fundingRegion(st *orgState, amount decimal.Decimal, key, incident string) (string, error) {
	if st.Region == st.BillingRegion {
		return "", nil
	}
	if incident == "" {
		return "", fmt.Errorf("%w: org %s is in region %q but bills in %q; open a support incident to purchase Communications Credits", ErrRegionMismatch, st.ID, st.Region, st.BillingRegion)
	}
	l.log.Warn("funding allowed across regions by a support incident", "org", st.ID, "region", st.Region,
		"billing_region", st.BillingRegion, "incident", incident, "amount", amount.String(), "idempotency_key", key)
	return incident, nil
}

// NextCredit is what the next increment of a call up costs on credits,
// and its org: what a cluster node must have available for the call's next
// Step. false if the call is not up, is free, or draws no credits.
func (l *Ledger) NextCredit(callID string) (org string, price decimal.Decimal, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, up := l.calls[callID]
	if !up || c.Free || (c.Plan != "" && !c.Spill) {
		return "", decimal.Zero, false
	}
	_, price = c.creditIncrement(c.Hold.N + 1)
	return c.Org, price, true
}
