package ledger

import (
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// CheckInvariants verifies what must always be true of the money (written
// above Org, Pool and Call):
//
//   - every org: Available = Balance − Held ≥ 0, Held = Σ credit holds of its
//     calls up, Funded − Debited = Balance (Debited is net of refunds);
//   - every pool: 0 ≤ Used, 0 ≤ Held, Used + Held ≤ Total, Held = Σ minutes
//     its calls up hold;
//   - every call up: at most its latest increment is held, and only a call
//     still up holds anything (ended calls are gone from memory by then);
//   - every call up: its tail (liveness.go) holds only committed increments
//     that started after its last proof of life, no more than it was charged;
//   - every pending purchase: what checkPurchasesLocked (purchase.go) says;
//   - every CDR's charge is the sum of its call's debits minus its refunds,
//     and all debits minus all refunds are Debited (CheckHistory, which reads
//     the store).
//
// Tests call it after every operation; it is cheap enough for a health check.
func (l *Ledger) CheckInvariants() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.checkLocked()
}

func (l *Ledger) checkLocked() error {
	held := map[string]decimal.Decimal{}
	minutes := map[*Pool]int{}
	for _, c := range l.calls {
		var tailCredit decimal.Decimal
		tailMinutes, tailSeconds := 0, 0
		for _, r := range c.Tail {
			if r.Count < 1 || (!c.Alive.IsZero() && !r.Start.After(c.Alive)) {
				return fmt.Errorf("call %s: tail run %+v (answer %s, alive %s)", c.ID, r, c.Answer, c.Alive)
			}
			tailCredit = tailCredit.Add(r.Credit.Mul(decimal.NewFromInt(int64(r.Count))))
			tailMinutes += r.Minutes * r.Count
			tailSeconds += r.Seconds * r.Count
		}
		if tailCredit.GreaterThan(c.Charge) || tailMinutes > c.PoolMinutes || tailSeconds > c.BilledS {
			return fmt.Errorf("call %s: its tail (%s, %d min, %d s) exceeds what it was charged (%s, %d min, %d s)",
				c.ID, tailCredit, tailMinutes, tailSeconds, c.Charge, c.PoolMinutes, c.BilledS)
		}
		h := c.Hold
		if !h.Open {
			continue
		}
		st := l.orgs[c.Org]
		switch h.Source {
		case SourceCredits:
			if h.Credit.IsNegative() {
				return fmt.Errorf("call %s holds %s", c.ID, h.Credit)
			}
			held[c.Org] = held[c.Org].Add(h.Credit)
		case SourcePool:
			p, ok := st.pools[poolKey{l.planIndex(c.Plan), h.Month}]
			if !ok {
				return fmt.Errorf("call %s holds minutes of %s %s, a pool the ledger forgot", c.ID, c.Plan, h.Month)
			}
			minutes[p] += h.Minutes
		default:
			return fmt.Errorf("call %s holds increment %d from %q", c.ID, h.N, h.Source)
		}
	}
	for id, st := range l.orgs {
		o := st.Org
		if !o.Held.Equal(held[id]) {
			return fmt.Errorf("org %s: held %s but its calls hold %s", id, o.Held, held[id])
		}
		if o.Available().IsNegative() {
			return fmt.Errorf("org %s: available %s < 0 (balance %s, held %s)", id, o.Available(), o.Balance, o.Held)
		}
		if !o.Funded.Sub(o.Debited).Equal(o.Balance) {
			return fmt.Errorf("org %s: funded %s − debited %s ≠ balance %s", id, o.Funded, o.Debited, o.Balance)
		}
		for k, p := range st.pools {
			if p.Used < 0 || p.Held < 0 || p.Used+p.Held > p.Total {
				return fmt.Errorf("pool %s/%s/%s: used %d + held %d exceeds total %d", id, p.Plan, k.month, p.Used, p.Held, p.Total)
			}
			if p.Held != minutes[p] {
				return fmt.Errorf("pool %s/%s/%s: held %d but its calls hold %d", id, p.Plan, k.month, p.Held, minutes[p])
			}
		}
	}
	if err := l.checkPoolAllowancesLocked(); err != nil {
		return err
	}
	return l.checkPurchasesLocked()
}

// CheckHistory verifies the invariants that involve the stored history:
// for every org, each CDR's charge equals the sum of its call's debit
// entries, every debit belongs to a CDR or to a call still up, and the debits
// add up to the org's Debited, the fundings to its Funded. It reads every
// entry and CDR, so it is for tests and offline audits, not the hot path.
func (l *Ledger) CheckHistory() error {
	l.mu.Lock()
	orgs := make([]Org, 0, len(l.orgs))
	open := map[string]decimal.Decimal{}
	for _, st := range l.orgs {
		orgs = append(orgs, st.Org)
	}
	for _, c := range l.calls {
		open[c.ID] = c.Charge
	}
	l.mu.Unlock()
	// Reading the store while operations go on would see a moving target:
	// callers check history when the ledger is quiet.
	for _, o := range orgs {
		byCall := map[string]decimal.Decimal{}
		seen := map[string]bool{}
		var funded, debited decimal.Decimal
		var after uint64
		for {
			es, err := l.Transactions(o.ID, after, 10000)
			if err != nil {
				return err
			}
			if len(es) == 0 {
				break
			}
			for _, e := range es {
				after = e.Seq
				switch e.Kind {
				case EntryFunding, EntryRecharge, EntryPurchase, EntrySlice, EntryReturn:
					funded = funded.Add(e.Amount)
				case EntryDebit:
					id := fmt.Sprintf("%s#%d", e.CallID, e.N)
					if seen[id] {
						return fmt.Errorf("org %s: increment %s debited twice", o.ID, id)
					}
					seen[id] = true
					debited = debited.Sub(e.Amount)
					byCall[e.CallID] = byCall[e.CallID].Sub(e.Amount)
				case EntryRefund:
					if !e.Amount.IsPositive() || e.CallID == "" {
						return fmt.Errorf("org %s: refund entry %d of %s for call %q", o.ID, e.Seq, e.Amount, e.CallID)
					}
					debited = debited.Sub(e.Amount)
					byCall[e.CallID] = byCall[e.CallID].Sub(e.Amount)
				}
			}
		}
		if !funded.Equal(o.Funded) || !debited.Equal(o.Debited) {
			return fmt.Errorf("org %s: entries fund %s and debit %s, the org says %s and %s", o.ID, funded, debited, o.Funded, o.Debited)
		}
		err := l.EachCDR(o.ID, time.Time{}, time.Time{}, func(c *CDR) error {
			if _, here := byCall[c.CallID]; !here && c.DisconnectReason == ReasonNodeFailure {
				return nil // adopted from a dead node: its debits are in that node's ledger (adopt.go)
			}
			if !c.Charge.Equal(byCall[c.CallID]) {
				return fmt.Errorf("org %s: CDR %s charges %s, its debits add to %s", o.ID, c.CallID, c.Charge, byCall[c.CallID])
			}
			delete(byCall, c.CallID)
			return nil
		})
		if err != nil {
			return err
		}
		settled, err := l.settledCharges(o.ID)
		if err != nil {
			return err
		}
		for id, charge := range settled {
			if !charge.Equal(byCall[id]) {
				return fmt.Errorf("org %s: call %s settled elsewhere at %s here, its debits add to %s", o.ID, id, charge, byCall[id])
			}
			delete(byCall, id)
		}
		for id, sum := range byCall {
			if charge, up := open[id]; !up || !charge.Equal(sum) {
				return fmt.Errorf("org %s: call %s has debits of %s but no CDR (up: %v, charge %s)", o.ID, id, sum, up, charge)
			}
		}
	}
	return nil
}
