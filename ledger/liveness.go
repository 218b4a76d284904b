package ledger

import (
	"slices"
	"time"

	"github.com/shopspring/decimal"
)

// Billing to the last proof of life.
//
// A call whose session expired, or one of whose legs stopped answering
// keepalives, is billed only up to its last proof of life (the answer, a
// session refresh, a keepalive answered by both legs): the increment in
// which that instant fell counts whole, as a hang-up pays its started one;
// every later increment is given back.
//
// Why reverse rather than never commit: metering cannot know, at an
// increment's end, whether proof of life will still come for it (a
// keepalive every 30 s proves 30 one-second increments at once), and holding
// many increments open would break "at most one increment is open". So
// metering goes on committing, the SIP side passes its last proof of life
// with every Step (Liveness), and the ledger keeps, in the call's state, the
// committed increments that started after it (Tail, as a few runs of alike
// increments: its length is bounded by the session interval, not the call).
// CloseCall with a BillTo gives those back — credits as a refund entry of
// their own, minutes to their pool — and releases the open increment if it
// started after BillTo. Debited stays Σ debits − Σ refunds (the net
// committed), so Funded − Debited = Balance holds throughout and a CDR's
// charge is the sum of its call's debits minus its refunds.
//
// The Liveness of the last Step also settles a call left up by a process
// that stopped: if its session had expired by the restart, it ends at
// Expires, billed to Alive, with reason ReasonSessionExpired.

// Liveness is what the SIP side knows of an answered call at a Step: Alive,
// the last instant both legs were proved up (never before the answer, and
// never moving back); Expires, when its session expires if no refresh comes
// (zero: no session timer). Zero Alive means "alive now".
type Liveness struct {
	Alive   time.Time
	Expires time.Time
}

// Run is a run of a call's committed increments alike in source, month,
// length and price: Count of them, numbered from N, the first starting at
// Start and each Seconds long.
type Run struct {
	Start   time.Time       `json:"start"`
	N       int             `json:"n"`
	Count   int             `json:"count"`
	Source  string          `json:"source"`
	Seconds int             `json:"seconds"`
	Minutes int             `json:"minutes,omitempty"`
	Month   string          `json:"month,omitempty"`
	Credit  decimal.Decimal `json:"credit,omitzero"`
}

func (r Run) step() time.Duration { return time.Duration(r.Seconds) * time.Second }

// The tail is copied on write, never changed in place: the records queued
// for the disk hold the old slice and are encoded outside the ledger's lock.

// remember adds committed increment h, which started at start, to the tail.
func (s *CallState) remember(h Increment, start time.Time) {
	s.Tail = slices.Clone(s.Tail)
	if n := len(s.Tail); n > 0 {
		r := &s.Tail[n-1]
		if r.Source == h.Source && r.Month == h.Month && r.Seconds == h.Seconds && r.Minutes == h.Minutes &&
			r.Credit.Equal(h.Credit) && r.N+r.Count == h.N && r.Start.Add(time.Duration(r.Count)*r.step()).Equal(start) {
			r.Count++
			return
		}
	}
	s.Tail = append(s.Tail, Run{Start: start, N: h.N, Count: 1, Source: h.Source, Seconds: h.Seconds,
		Minutes: h.Minutes, Month: h.Month, Credit: h.Credit})
}

// forgetUntil drops from the tail every increment that started at or before
// alive: proof of life fell in it or after it, so it counts. Within a run
// those are a prefix; runs are not assumed to be in time order.
func (s *CallState) forgetUntil(alive time.Time) {
	var kept []Run
	for _, r := range s.Tail {
		if !r.Start.After(alive) {
			k := r.Count
			if r.Seconds > 0 {
				k = min(r.Count, int(alive.Sub(r.Start)/r.step())+1)
			}
			r.Start = r.Start.Add(time.Duration(k) * r.step())
			r.N += k
			r.Count -= k
		}
		if r.Count > 0 {
			kept = append(kept, r)
		}
	}
	s.Tail = kept
}

// refundTail gives back every increment still in the call's tail: credits
// as one refund entry per run, minutes to their month's pool.
func (l *Ledger) refundTail(t *txn, st *orgState, c *Call) {
	for _, r := range c.Tail {
		switch r.Source {
		case SourcePool:
			plan := l.planIndex(c.Plan)
			if _, inMemory := st.pools[poolKey{plan, r.Month}]; !inMemory {
				// A month memory let go (or never loaded after a
				// restart): refund into its record on disk, never into
				// a blank pool that would overwrite it. A rare read under
				// the lock, on a refund only.
				if sp, ok := l.storedPool(st.ID, l.plans[plan].Name, r.Month); ok {
					st.setPool(plan, &sp)
				}
			}
			p := l.pool(st, plan, r.Month)
			p.Used -= r.Minutes * r.Count
			c.PoolMinutes -= r.Minutes * r.Count
			t.put(keyPool(p), *p)
		case SourceCredits:
			amt := r.Credit.Mul(decimal.NewFromInt(int64(r.Count)))
			if !amt.IsPositive() {
				break
			}
			st.Balance = st.Balance.Add(amt)
			st.Debited = st.Debited.Sub(amt)
			c.Charge = c.Charge.Sub(amt)
			en := Entry{Seq: t.entrySeq(), At: t.at, Kind: EntryRefund, Amount: amt, Balance: st.Balance, CallID: c.ID, N: r.N}
			t.put(keyEntry(st.ID, en.Seq), en)
			t.put(keyBalances(st.ID), st.Balances)
		}
		c.BilledS -= r.Seconds * r.Count
	}
	c.Tail = nil
}
