package ledger

import (
	"maps"
	"time"

	"github.com/shopspring/decimal"
)

// PeerGuard is what the fraud guard adds to its own counts in cluster mode
// (Options.PeerGuard): what the other nodes of the cluster have of the
// org's calls up and hourly spend, as they last published them. With it, a
// node compares each limit with its own figures plus its peers', so the
// limit holds for the org, not per node: a node admits at most the limit
// minus what its peers published. The peers' figures are a little late
// (package cluster says by how much); the ledger decides on what it has,
// never waiting for them. nil (single-node mode) changes nothing.
//
// The methods are called with the ledger's lock held (Changed sometimes
// without it): they must answer from memory, quickly, never block, and
// never call back into the ledger.
type PeerGuard interface {
	// PeerCalls is the calls up on the other nodes for the org and, if
	// user is not "", for that user.
	PeerCalls(org, user string) (orgCalls, userCalls int)
	// PeerSpend is the credit the other nodes held for the org (and user,
	// if not "") in the 60 minutes up to at, by the same minute buckets as
	// the ledger's own window.
	PeerSpend(org, user string, at time.Time) (orgSpend, userSpend decimal.Decimal)
	// Changed says the org's own figures changed (a call counted in or
	// out, credit held) so the hook publishes them; near says a limit is
	// within reach (half of it or more, counting the peers), so
	// it should publish at once rather than coalesce. Called only for orgs
	// with a limit set.
	Changed(org string, near bool)
}

// GuardFigures is what one node counts for an org's fraud guard: what a
// PeerGuard publishes to the other nodes. Only what a limit of the org
// needs is filled in: calls for a max_calls limit, a user's calls for a
// per-user one, and likewise the spend.
type GuardFigures struct {
	Calls     int                                  `json:"calls,omitempty"`
	UserCalls map[string]int                       `json:"user_calls,omitempty"`
	Spend     map[int64]decimal.Decimal            `json:"spend,omitempty"`      // unix minute → credit held in it
	UserSpend map[string]map[int64]decimal.Decimal `json:"user_spend,omitempty"` // user → unix minute → credit
}

// Empty reports whether there is nothing to publish.
func (f GuardFigures) Empty() bool {
	return f.Calls == 0 && len(f.UserCalls) == 0 && len(f.Spend) == 0 && len(f.UserSpend) == 0
}

// WindowSum is the credit of buckets (unix minute → amount) in the 60
// minutes up to at: the window the ledger's own spend limits look at.
func WindowSum(buckets map[int64]decimal.Decimal, at time.Time) decimal.Decimal {
	m := unixMinute(at)
	s := decimal.Zero
	for minute, a := range buckets {
		if minute > m-60 && minute <= m {
			s = s.Add(a)
		}
	}
	return s
}

// GuardFigures returns the org's own fraud-guard figures at at, for a
// PeerGuard to publish; false if the org has no limit the figures serve
// (or is unknown): then there is nothing to publish.
func (l *Ledger) GuardFigures(org string, at time.Time) (GuardFigures, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.orgs[org]
	if !ok || !st.FraudGuard.countsPeers() {
		return GuardFigures{}, false
	}
	fg, g := st.FraudGuard, &st.guard
	var f GuardFigures
	if fg.MaxCalls > 0 {
		f.Calls = g.calls
	}
	if fg.MaxCallsPerUser > 0 && len(g.userCalls) > 0 {
		f.UserCalls = maps.Clone(g.userCalls)
	}
	if fg.MaxSpendPerHour.IsPositive() {
		f.Spend = g.spend.buckets(at)
	}
	if fg.MaxSpendPerHourPerUser.IsPositive() {
		for u, w := range g.userSpend {
			if b := w.buckets(at); len(b) > 0 {
				if f.UserSpend == nil {
					f.UserSpend = map[string]map[int64]decimal.Decimal{}
				}
				f.UserSpend[u] = b
			}
		}
	}
	return f, true
}

// countsPeers says whether the guard has a limit peers' figures count in.
func (fg FraudGuard) countsPeers() bool {
	return fg.MaxCalls > 0 || fg.MaxCallsPerUser > 0 || fg.MaxSpendPerHour.IsPositive() || fg.MaxSpendPerHourPerUser.IsPositive()
}

// buckets is the window's non-empty minutes in the hour up to at (nil if
// none).
func (w *spendWindow) buckets(at time.Time) map[int64]decimal.Decimal {
	if w == nil {
		return nil
	}
	m := unixMinute(at)
	var b map[int64]decimal.Decimal
	for i := range w.minute {
		if w.minute[i] > m-60 && w.minute[i] <= m && !w.amount[i].IsZero() {
			if b == nil {
				b = map[int64]decimal.Decimal{}
			}
			b[w.minute[i]] = w.amount[i]
		}
	}
	return b
}

// near is the neighbourhood of a limit in which a PeerGuard publishes at
// once: the upper half of it, counting the peers. Below it, publications
// are coalesced; the half leaves room for what the other nodes admit
// before this node's figures reach them, which this node cannot see.
func nearCalls(n, limit int) bool { return limit > 0 && 2*n >= limit }
func nearSpend(s, limit decimal.Decimal) bool {
	return limit.IsPositive() && s.Mul(decimal.NewFromInt(2)).GreaterThanOrEqual(limit)
}
