package ledger

import (
	"fmt"
	"maps"
	"time"

	"github.com/shopspring/decimal"
)

// PeerGuard is what the fraud guard adds to its own counts in cluster mode
// (Options.PeerGuard): what the other nodes of the cluster have of the
// org's calls up and hourly spend, as they last published them. With a
// plain PeerGuard a node compares each limit with its own figures plus
// its peers', which are a little late, so a burst on several nodes can
// pass a limit; with a GuardReserver (package cluster's Guard) the limits
// are exact: the node admits only within its claim (below). nil
// (single-node mode) changes nothing.
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
	return st.usage(at), true
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

// GuardReserver is a PeerGuard that makes the limits exact across the
// cluster (package cluster's Guard): this node's published figures are a
// claim that the cluster's claims together keep within every limit, and
// the node admits only what its claim covers. Raising the claim is one
// etcd transaction serialized with every other node's (Reserve); lowering
// it (a call ended, spend left the hour) is the coalesced publication.
//
// The ledger calls Reserve without its lock held, before the operation
// that counts the call or the credit (reserveGuard): the lock order is the
// Guard's per-org write lock, then the ledger's lock (GuardUpdate), then
// the Guard's own mutex; Reserve and the publisher never call the ledger
// from under the ledger's lock.
//
// Invariant (per org, per limit): this node's claim in the ledger ≤ its
// key in etcd (a raise lands in etcd first, a lowering is made here
// first), and the node's own figures plus its pending reservations ≤ its
// claim before anything is admitted; so the cluster's figures are within
// the sum of the keys, which Reserve keeps within the limit.
type GuardReserver interface {
	PeerGuard
	// Reserve makes this node's claim for the org cover its figures plus
	// its pending reservations (GuardUpdate gives both), raising it in
	// etcd if it does not. It returns nil once the claim covers them (or
	// cannot be raised because the cluster is at a limit: then the
	// ledger's check refuses with the figures), or an ErrUnavailable
	// when etcd did not answer in time: the admission is refused, the
	// fraud guard fails closed.
	Reserve(org string, at time.Time) error
}

// GuardUpdate runs fn under the ledger's lock with the org's limits, this
// node's own figures (usage), its reservations under way (pending) and its
// claim, and makes fn's answer the claim. false when the org has no limit
// the figures serve (the claim is then cleared). For a GuardReserver only:
// it holds its write lock for the org across the call.
func (l *Ledger) GuardUpdate(org string, at time.Time, fn func(fg FraudGuard, usage, pending, claim GuardFigures) GuardFigures) (GuardFigures, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.orgs[org]
	if !ok || !st.FraudGuard.countsPeers() {
		if ok {
			st.guard.claim = GuardFigures{}
		}
		return GuardFigures{}, false
	}
	st.guard.claim = fn(st.FraudGuard, st.usage(at), st.guard.pending.only(st.FraudGuard), st.guard.claim.Clone())
	return st.guard.claim.Clone(), true
}

// usage is the org's own figures at at (GuardFigures's answer).
func (st *orgState) usage(at time.Time) GuardFigures {
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
	return f
}

// only is a copy of f with the figures of fg's limits alone.
func (f GuardFigures) only(fg FraudGuard) GuardFigures {
	c := f.Clone()
	if fg.MaxCalls <= 0 {
		c.Calls = 0
	}
	if fg.MaxCallsPerUser <= 0 {
		c.UserCalls = nil
	}
	if !fg.MaxSpendPerHour.IsPositive() {
		c.Spend = nil
	}
	if !fg.MaxSpendPerHourPerUser.IsPositive() {
		c.UserSpend = nil
	}
	return c
}

// Clone is a deep copy.
func (f GuardFigures) Clone() GuardFigures {
	c := GuardFigures{Calls: f.Calls, UserCalls: maps.Clone(f.UserCalls), Spend: maps.Clone(f.Spend)}
	if f.UserSpend != nil {
		c.UserSpend = make(map[string]map[int64]decimal.Decimal, len(f.UserSpend))
		for u, b := range f.UserSpend {
			c.UserSpend[u] = maps.Clone(b)
		}
	}
	return c
}

// reservation is what one admission or step adds to pending until its
// operation is done (release).
type reservation struct {
	org, user string
	calls     int
	minute    int64
	credit    decimal.Decimal
}

// exact reports whether the org's limits are exact across the cluster
// (its PeerGuard is a GuardReserver) for the org's limits.
func (g *guardState) exact() (GuardReserver, bool) {
	r, ok := g.peer.(GuardReserver)
	return r, ok
}

// reserveGuard is the cluster-exact fraud guard's step before the
// operation that admits a call (calls 1) or holds credit (credit): it
// counts them as pending and, unless this node's claim covers them
// already, has the GuardReserver raise the claim through etcd, without
// the ledger's lock held. release takes them out of pending once the
// operation is done (admitted: they are in the own figures by then, so
// the figures never dip below what is up). A call of an org without a
// limit, or without a GuardReserver, costs nothing here.
func (l *Ledger) reserveGuard(org, user string, calls int, credit decimal.Decimal, at time.Time) (release func(), err error) {
	nothing := func() {}
	if credit.IsNegative() {
		credit = decimal.Zero
	}
	l.mu.Lock()
	st, ok := l.orgs[org]
	if !ok {
		l.mu.Unlock()
		return nothing, nil
	}
	r, exact := st.guard.exact()
	fg := st.FraudGuard
	callLimits := fg.MaxCalls > 0 || fg.MaxCallsPerUser > 0
	spendLimits := fg.MaxSpendPerHour.IsPositive() || fg.MaxSpendPerHourPerUser.IsPositive()
	if !exact || !(callLimits && calls > 0 || spendLimits && credit.IsPositive()) {
		l.mu.Unlock()
		return nothing, nil
	}
	res := reservation{org: org, user: user, minute: unixMinute(at)}
	if callLimits {
		res.calls = calls
	}
	if spendLimits {
		res.credit = credit
	}
	st.guard.pending.add(res, +1)
	covered := st.covered(user, res.minute, at)
	l.mu.Unlock()
	release = func() {
		l.mu.Lock()
		if st, ok := l.orgs[org]; ok {
			st.guard.pending.add(res, -1)
		}
		l.mu.Unlock()
		// A refusal leaves the claim above the figures: the publisher
		// lowers it (coalesced).
		r.Changed(org, false)
	}
	if covered {
		return release, nil
	}
	if err := r.Reserve(org, at); err != nil {
		release()
		return nothing, err
	}
	return release, nil
}

// add adds (sign +1) or removes (-1) a reservation.
func (f *GuardFigures) add(r reservation, sign int) {
	if r.calls > 0 {
		f.Calls += sign * r.calls
		if f.UserCalls == nil {
			f.UserCalls = map[string]int{}
		}
		if n := f.UserCalls[r.user] + sign*r.calls; n > 0 {
			f.UserCalls[r.user] = n
		} else {
			delete(f.UserCalls, r.user)
		}
	}
	if r.credit.IsPositive() {
		d := r.credit
		if sign < 0 {
			d = d.Neg()
		}
		f.Spend = addBucket(f.Spend, r.minute, d)
		if f.UserSpend == nil {
			f.UserSpend = map[string]map[int64]decimal.Decimal{}
		}
		if b := addBucket(f.UserSpend[r.user], r.minute, d); len(b) > 0 {
			f.UserSpend[r.user] = b
		} else {
			delete(f.UserSpend, r.user)
		}
	}
}

func addBucket(b map[int64]decimal.Decimal, m int64, d decimal.Decimal) map[int64]decimal.Decimal {
	if b == nil {
		b = map[int64]decimal.Decimal{}
	}
	if s := b[m].Add(d); s.IsPositive() {
		b[m] = s
	} else {
		delete(b, m)
	}
	return b
}

// covered reports whether the claim covers the org's own figures plus
// pending, for each limit set: calls up (org, user), and the credit of
// minute m (org, user). A bucket is compared alone, not the hour's sum, so
// the claim's headroom in a past minute is never spent in a later one
// (the cluster's sum was checked with the claim's buckets as they are).
func (st *orgState) covered(user string, m int64, at time.Time) bool {
	fg, g := st.FraudGuard, &st.guard
	if fg.MaxCalls > 0 && g.calls+g.pending.Calls > g.claim.Calls {
		return false
	}
	if fg.MaxCallsPerUser > 0 && g.userCalls[user]+g.pending.UserCalls[user] > g.claim.UserCalls[user] {
		return false
	}
	if fg.MaxSpendPerHour.IsPositive() && g.spend.at(m).Add(g.pending.Spend[m]).GreaterThan(g.claim.Spend[m]) {
		return false
	}
	if fg.MaxSpendPerHourPerUser.IsPositive() {
		var w *spendWindow
		if g.userSpend != nil {
			w = g.userSpend[user]
		}
		if w.at(m).Add(g.pending.UserSpend[user][m]).GreaterThan(g.claim.UserSpend[user][m]) {
			return false
		}
	}
	return true
}

// at is what the window holds in unix minute m.
func (w *spendWindow) at(m int64) decimal.Decimal {
	if w == nil {
		return decimal.Zero
	}
	i := m % 60
	if i < 0 {
		i += 60
	}
	if w.minute[i] != m {
		return decimal.Zero
	}
	return w.amount[i]
}

// reserveStep is reserveGuard for increment n of a call up: its credit,
// if it may draw credits (a pool minute is reserved as credit all the
// same: the ledger decides which it is under its lock, and an unused
// reservation only lowers later). Nothing for a call not up (the
// operation says why) or free.
func (l *Ledger) reserveStep(callID string, n int, at time.Time) (func(), error) {
	l.mu.Lock()
	c, up := l.calls[callID]
	if !up || c.Free || (c.Plan != "" && !c.Spill) || n != c.Hold.N+1 {
		l.mu.Unlock()
		return func() {}, nil
	}
	_, credit := c.creditIncrement(n)
	org, user := c.Org, c.User
	l.mu.Unlock()
	release, err := l.reserveGuard(org, user, 0, credit, at)
	if err != nil {
		return nil, fmt.Errorf("call %s increment %d: %w", callID, n, err)
	}
	return release, nil
}
