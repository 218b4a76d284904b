package ledger

import (
	"bytes"
	"fmt"

	"github.com/shopspring/decimal"
)

// Cluster takeover (issue 17): what a cluster node needs from its ledger
// when a peer dies mid-call and a survivor ends and settles the peer's calls.
//
//   - The survivor writes each such call's CDR into its own ledger
//     (AdoptCDR): the money moved in etcd, not here, so the CDR moves no
//     local money; it shows in EachCDR and usage like any CDR, with the
//     reason ReasonNodeFailure. CheckHistory knows such CDRs have no
//     debits in this ledger.
//   - The dead node, restarted on its data directory, must not settle those
//     calls again: Options.SettledElsewhere names them, and Open ends each
//     with the charge the survivor settled (its open increment committed or
//     released to match), without a CDR; a marker (h/{call}) takes the
//     CDR's place, so the call id stays ended (CloseCall answers
//     ErrCallEnded) and CheckHistory matches the call's debits against it.
//   - Reports to etcd carry the ledger's operation sequence number at which
//     the balance they report was read (OrgAsOf), and each takeover record
//     the sequence number of the call's charge (CallAsOf), so a survivor
//     knows which of a call's debits the report had already counted.

// Settled is what a survivor settled a call at: its final committed charge
// and pool minutes.
type Settled struct {
	Charge      decimal.Decimal `json:"charge"`
	PoolMinutes int             `json:"pool_minutes"`
}

// settledMarker is what h/{call} stores: the call's org and the charge its
// debits in this ledger add to (for CheckHistory).
type settledMarker struct {
	Org    string          `json:"org"`
	Charge decimal.Decimal `json:"charge"`
}

const settledPrefix = "h/"

func keySettled(id string) []byte { return []byte(settledPrefix + id) }

// AdoptCDR stores a CDR another node's call ended with (a survivor's
// takeover): durable when it returns, idempotent on the call id (a retry,
// or a CDR for an id this ledger has already ended, changes nothing and
// returns nil). It moves no money and needs no org state. Refusals:
// ErrInvalid (bad id or reason, no org, or a call of that id is up here).
func (l *Ledger) AdoptCDR(cdr CDR) error {
	if !ValidID(cdr.CallID) || !ValidID(cdr.Org) || cdr.DisconnectReason == "" || cdr.Charge.IsNegative() {
		return invalidf("adopt CDR %q of org %q reason %q charge %s", cdr.CallID, cdr.Org, cdr.DisconnectReason, cdr.Charge)
	}
	if _, err := timeKey(cdr.Start); err != nil {
		return fmt.Errorf("%w: adopt CDR %s: %w", ErrInvalid, cdr.CallID, err)
	}
	if l.endedOnDisk(cdr.CallID) {
		return nil
	}
	_, err := l.do(Op{Kind: "adopt", Org: cdr.Org, Call: cdr.CallID, Amount: cdr.Charge}, l.opts.Now(), func(t *txn) error {
		if _, ok := l.ended.get(cdr.CallID); ok {
			return nil
		}
		if _, up := l.calls[cdr.CallID]; up {
			return invalidf("adopt CDR %s: a call of that id is up on this node", cdr.CallID)
		}
		cdr.Start, cdr.End = cdr.Start.UTC(), cdr.End.UTC()
		if !cdr.Answer.IsZero() {
			cdr.Answer = cdr.Answer.UTC()
		}
		key := keyCDR(cdr.Org, cdr.Start, cdr.CallID)
		t.put(key, cdr)
		t.raw(keyEnded(cdr.CallID), key)
		l.ended.add(cdr.CallID, string(key))
		return nil
	})
	return err
}

// Seq is the sequence number of the last operation applied (in memory; it
// is durable once that operation returned).
func (l *Ledger) Seq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// OrgAsOf is the org and the ledger's sequence number, read at one
// instant: the balance is the one every operation up to that number left.
// Refusals: ErrUnknownOrg.
func (l *Ledger) OrgAsOf(id string) (Org, uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.orgs[id]
	if !ok {
		return Org{}, 0, fmt.Errorf("%w: %s", ErrUnknownOrg, id)
	}
	return st.Org, l.seq, nil
}

// CallsUp is how many of the org's calls are up (free calls not counted).
func (l *Ledger) CallsUp(org string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, ok := l.orgs[org]; ok {
		return st.guard.calls
	}
	return 0
}

// PoolShareAsOf is PoolShare and the ledger's sequence number, read at one
// instant.
func (l *Ledger) PoolShareAsOf(org, plan, month string) (PoolShare, uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, i, err := l.poolOf(org, plan, month)
	if err != nil {
		return PoolShare{}, 0, err
	}
	return l.share(st, i, month), l.seq, nil
}

// CallAsOf is a copy of a call up and the ledger's sequence number, read at
// one instant; false if the call is not up.
func (l *Ledger) CallAsOf(id string) (Call, uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.calls[id]
	if !ok {
		return Call{}, l.seq, false
	}
	cp := *c
	cp.Tail = append([]Run(nil), c.Tail...)
	cp.prices = nil
	return cp, l.seq, true
}

// settleElsewhere ends, at Open, a call a survivor settled: its open
// increment is committed as far as the survivor's charge says (whole or
// not at all: the survivor charged committed + held, or committed), the
// call is removed without a CDR and the marker written. Under l.mu, in
// settleOpenCalls' operation.
func (l *Ledger) settleElsewhere(t *txn, st *orgState, c *Call, s Settled) {
	if c.Hold.Open {
		pay := s.Charge.GreaterThan(c.Charge) || s.PoolMinutes > c.PoolMinutes
		l.settle(t, st, c, map[bool]Amount{true: full(c.Hold), false: {}}[pay])
	}
	c.Tail = nil
	t.put(keySettled(c.ID), settledMarker{Org: c.Org, Charge: c.Charge})
	t.raw(keyEnded(c.ID), keySettled(c.ID))
	t.del(keyCall(c.ID))
	t.del(keyCallState(c.ID))
	delete(l.calls, c.ID)
	st.countCall(c, -1)
	l.ended.add(c.ID, string(keySettled(c.ID)))
}

// errSettledElsewhere answers CloseCall of a call a survivor settled.
func errSettledElsewhere(id string) error {
	return fmt.Errorf("%w: %s was ended and settled by another cluster node", ErrCallEnded, id)
}

// isSettledKey says whether an ended call's key is a settled-elsewhere
// marker rather than a CDR.
func isSettledKey(k []byte) bool { return bytes.HasPrefix(k, []byte(settledPrefix)) }

// settledCharges are the settled-elsewhere markers of an org: call → the
// charge its debits here add to.
func (l *Ledger) settledCharges(org string) (map[string]decimal.Decimal, error) {
	out := map[string]decimal.Decimal{}
	err := scan(l.db, []byte(settledPrefix), func(k []byte, m *settledMarker) error {
		if m.Org == org {
			out[string(k[len(settledPrefix):])] = m.Charge
		}
		return nil
	})
	return out, err
}
