package ledger

import (
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// The fraud guard limits what stolen credentials can spend before anyone
// notices (international revenue share fraud: many calls at once to
// expensive ranges, around the clock). Per org, set through the admin API:
//
//   - calls up at once, for the org and for each of its users;
//   - money per hour, for the org and for each user: credit held in the
//     last 60 minutes (holds, not debits, so a burst of calls is counted as
//     it starts; a hang-up's unused part still counts, which errs on the
//     side of stopping);
//   - whether high-risk destinations may be called (the gateway decides
//     which those are).
//
// The limits are enforced in the ledger, under its lock, where the money is
// decided: a new call over a limit is refused, and a call up whose next
// increment would cross a spend limit ends at the end of what it paid.
// Emergency calls are never limited. The spend windows live in memory: a
// restart starts them empty.
//
// In cluster mode (Options.PeerGuard, peerguard.go) the limits hold for
// the org across the cluster: with a GuardReserver, exactly — an
// admission or a credit hold is first reserved (reserveGuard, before the
// ledger's lock: it may wait for etcd), then admitted under the lock only
// if this node's claim covers it; every change of an org with a limit is
// signalled to the hook for it to publish this node's figures.

// ErrFraudGuard is a refusal by the fraud guard; errors.As finds a *Trip.
var ErrFraudGuard = errors.New("fraud guard")

// Guards, the label values of creditgate_fraud_guard_trips_total.
const (
	GuardMaxCalls            = "max_calls"
	GuardMaxCallsPerUser     = "max_calls_per_user"
	GuardSpendPerHour        = "spend_per_hour"
	GuardSpendPerHourPerUser = "spend_per_hour_per_user"
	GuardHighRisk            = "high_risk_destination"
	GuardMaxChargePerCall    = "max_charge_per_call" // the first increment alone costs more than the cap
)

// Guards lists every guard.
var Guards = []string{GuardMaxCalls, GuardMaxCallsPerUser, GuardSpendPerHour, GuardSpendPerHourPerUser, GuardHighRisk,
	GuardMaxChargePerCall}

// Trip is one refusal by a guard.
type Trip struct {
	Guard  string
	Org    string
	User   string
	Detail string
}

func (t *Trip) Error() string { return fmt.Sprintf("%s: %s: %s", ErrFraudGuard, t.Guard, t.Detail) }
func (t *Trip) Unwrap() error { return ErrFraudGuard }

// FraudGuard is an org's limits; zero means no limit.
type FraudGuard struct {
	MaxCalls               int             `json:"max_calls"`
	MaxCallsPerUser        int             `json:"max_calls_per_user"`
	MaxSpendPerHour        decimal.Decimal `json:"max_spend_per_hour"`
	MaxSpendPerHourPerUser decimal.Decimal `json:"max_spend_per_hour_per_user"`
	AllowHighRisk          bool            `json:"allow_high_risk"`
	// MaxChargePerCall ends a call before the increment that would take
	// its charge past it ("0": no limit); MaxCallDurationS ends it at that
	// length (0: the trunk's or the config's limit).
	MaxChargePerCall decimal.Decimal `json:"max_charge_per_call,omitzero"`
	MaxCallDurationS int             `json:"max_call_duration_s,omitempty"`
}

// MaxGuardCalls bounds the concurrent-call limits.
const MaxGuardCalls = 1_000_000

// SetFraudGuard replaces the org's fraud guard.
func (l *Ledger) SetFraudGuard(org string, fg FraudGuard) (Org, error) {
	if err := ValidateFraudGuard(fg); err != nil { // apply.go
		return Org{}, err
	}
	o, err := l.setOrg("fraud_guard", org, func(o *Org) { o.FraudGuard = fg })
	if err == nil && l.opts.PeerGuard != nil {
		// The peers get this node's figures (or their removal) now, not
		// at its next call (a replica's change does the same in applyOrg).
		l.opts.PeerGuard.Changed(org, true)
	}
	return o, err
}

// spendWindow is credit held per minute over the last hour.
type spendWindow struct {
	minute [60]int64 // unix minute each slot holds
	amount [60]decimal.Decimal
}

func (w *spendWindow) add(at time.Time, d decimal.Decimal) {
	m := unixMinute(at)
	i := m % 60
	if i < 0 {
		i += 60
	}
	if w.minute[i] != m {
		w.minute[i], w.amount[i] = m, decimal.Zero
	}
	w.amount[i] = w.amount[i].Add(d)
}

// sum is what was held in the 60 minutes up to at.
func (w *spendWindow) sum(at time.Time) decimal.Decimal {
	if w == nil {
		return decimal.Zero
	}
	m := unixMinute(at)
	s := decimal.Zero
	for i := range w.minute {
		if w.minute[i] > m-60 && w.minute[i] <= m && !w.amount[i].IsZero() {
			s = s.Add(w.amount[i])
		}
	}
	return s
}

// guardState is what the fraud guard counts for an org.
type guardState struct {
	calls     int
	userCalls map[string]int
	spend     *spendWindow // only while the org has a spend limit
	userSpend map[string]*spendWindow
	records   int
	// peer is Options.PeerGuard (nil on a single node): the other nodes'
	// figures, added to these.
	peer PeerGuard
	// With a GuardReserver (exact across the cluster, peerguard.go): claim
	// is what etcd holds of this node's figures for the org, which the
	// own figures plus pending (reservations whose operation is under way)
	// stay within; the checks compare with it instead of the peers'.
	claim, pending GuardFigures
}

// peerCalls and peerSpend are what the other nodes published (zero
// without a PeerGuard).
func (g *guardState) peerCalls(org, user string) (int, int) {
	if g.peer == nil {
		return 0, 0
	}
	return g.peer.PeerCalls(org, user)
}

func (g *guardState) peerSpend(org, user string, at time.Time) (decimal.Decimal, decimal.Decimal) {
	if g.peer == nil {
		return decimal.Zero, decimal.Zero
	}
	return g.peer.PeerSpend(org, user, at)
}

// elsewhere is what a trip's detail adds for the figures of other nodes.
func elsewhere(some bool, s string) string {
	if !some {
		return ""
	}
	return " (" + s + " of them on other nodes)"
}

// admitCall checks the concurrent-call limits for a new call of c's user,
// counting the calls up on other nodes too (cluster mode).
func (st *orgState) admitCall(c *Call) error {
	fg := st.FraudGuard
	if fg.MaxCalls <= 0 && fg.MaxCallsPerUser <= 0 {
		return nil
	}
	peerOrg, peerUser := st.guard.peerCalls(st.ID, c.User)
	if _, exact := st.guard.exact(); exact {
		// The call is in pending (reserveGuard): admitted if the claim
		// covers it. The detail counts the other nodes' claims.
		g := &st.guard
		if n := g.calls + g.pending.Calls; fg.MaxCalls > 0 && n > g.claim.Calls {
			return &Trip{Guard: GuardMaxCalls, Org: st.ID, User: c.User, Detail: fmt.Sprintf("%d calls up or reserved%s, the limit is %d",
				g.calls+peerOrg, elsewhere(peerOrg != 0, fmt.Sprint(peerOrg)), fg.MaxCalls)}
		}
		if n := g.userCalls[c.User] + g.pending.UserCalls[c.User]; fg.MaxCallsPerUser > 0 && n > g.claim.UserCalls[c.User] {
			return &Trip{Guard: GuardMaxCallsPerUser, Org: st.ID, User: c.User, Detail: fmt.Sprintf("user %s has %d calls up or reserved%s, the limit is %d",
				c.User, g.userCalls[c.User]+peerUser, elsewhere(peerUser != 0, fmt.Sprint(peerUser)), fg.MaxCallsPerUser)}
		}
		return nil
	}
	if n := st.guard.calls + peerOrg; fg.MaxCalls > 0 && n >= fg.MaxCalls {
		return &Trip{Guard: GuardMaxCalls, Org: st.ID, User: c.User, Detail: fmt.Sprintf("%d calls up%s, the limit is %d", n,
			elsewhere(peerOrg != 0, fmt.Sprint(peerOrg)), fg.MaxCalls)}
	}
	if n := st.guard.userCalls[c.User] + peerUser; fg.MaxCallsPerUser > 0 && n >= fg.MaxCallsPerUser {
		return &Trip{Guard: GuardMaxCallsPerUser, Org: st.ID, User: c.User, Detail: fmt.Sprintf("user %s has %d calls up%s, the limit is %d",
			c.User, n, elsewhere(peerUser != 0, fmt.Sprint(peerUser)), fg.MaxCallsPerUser)}
	}
	return nil
}

// countCall adds (+1) or removes (-1) a call from the concurrent counts.
func (st *orgState) countCall(c *Call, delta int) {
	if c.Free {
		return
	}
	st.guard.calls += delta
	if st.guard.userCalls == nil {
		st.guard.userCalls = map[string]int{}
	}
	if n := st.guard.userCalls[c.User] + delta; n > 0 {
		st.guard.userCalls[c.User] = n
	} else {
		delete(st.guard.userCalls, c.User)
	}
	if fg := st.FraudGuard; st.guard.peer != nil && (fg.MaxCalls > 0 || fg.MaxCallsPerUser > 0) {
		peerOrg, peerUser := st.guard.peer.PeerCalls(st.ID, c.User)
		st.guard.peer.Changed(st.ID, nearCalls(st.guard.calls+peerOrg, fg.MaxCalls) ||
			nearCalls(st.guard.userCalls[c.User]+peerUser, fg.MaxCallsPerUser))
	}
}

// checkSpend says whether holding credit for c at at keeps the org and the
// user within their hourly spend, counting what other nodes held too.
func (st *orgState) checkSpend(c *Call, credit decimal.Decimal, at time.Time) error {
	fg := st.FraudGuard
	if !fg.MaxSpendPerHour.IsPositive() && !fg.MaxSpendPerHourPerUser.IsPositive() {
		return nil
	}
	peerOrg, peerUser := st.guard.peerSpend(st.ID, c.User, at)
	if _, exact := st.guard.exact(); exact {
		// The credit is in pending (reserveGuard): held if the claim's
		// bucket for the minute covers it.
		g, m := &st.guard, unixMinute(at)
		if fg.MaxSpendPerHour.IsPositive() && g.spend.at(m).Add(g.pending.Spend[m]).GreaterThan(g.claim.Spend[m]) {
			s := g.spend.sum(at).Add(peerOrg)
			return &Trip{Guard: GuardSpendPerHour, Org: st.ID, User: c.User,
				Detail: fmt.Sprintf("%s spent or reserved in the last hour%s, the limit is %s", s.StringFixed(2),
					elsewhere(!peerOrg.IsZero(), peerOrg.StringFixed(2)), fg.MaxSpendPerHour.StringFixed(2))}
		}
		var w *spendWindow
		if g.userSpend != nil {
			w = g.userSpend[c.User]
		}
		if fg.MaxSpendPerHourPerUser.IsPositive() && w.at(m).Add(g.pending.UserSpend[c.User][m]).GreaterThan(g.claim.UserSpend[c.User][m]) {
			s := w.sum(at).Add(peerUser)
			return &Trip{Guard: GuardSpendPerHourPerUser, Org: st.ID, User: c.User,
				Detail: fmt.Sprintf("user %s spent or reserved %s in the last hour%s, the limit is %s", c.User, s.StringFixed(2),
					elsewhere(!peerUser.IsZero(), peerUser.StringFixed(2)), fg.MaxSpendPerHourPerUser.StringFixed(2))}
		}
		return nil
	}
	if fg.MaxSpendPerHour.IsPositive() {
		if s := st.guard.spend.sum(at).Add(peerOrg); s.Add(credit).GreaterThan(fg.MaxSpendPerHour) {
			return &Trip{Guard: GuardSpendPerHour, Org: st.ID, User: c.User,
				Detail: fmt.Sprintf("%s spent in the last hour%s, the limit is %s", s.StringFixed(2),
					elsewhere(!peerOrg.IsZero(), peerOrg.StringFixed(2)), fg.MaxSpendPerHour.StringFixed(2))}
		}
	}
	if fg.MaxSpendPerHourPerUser.IsPositive() {
		if s := st.guard.userSpend[c.User].sum(at).Add(peerUser); s.Add(credit).GreaterThan(fg.MaxSpendPerHourPerUser) {
			return &Trip{Guard: GuardSpendPerHourPerUser, Org: st.ID, User: c.User,
				Detail: fmt.Sprintf("user %s spent %s in the last hour%s, the limit is %s", c.User, s.StringFixed(2),
					elsewhere(!peerUser.IsZero(), peerUser.StringFixed(2)), fg.MaxSpendPerHourPerUser.StringFixed(2))}
		}
	}
	return nil
}

// recordSpend counts a credit hold in the windows of an org with a spend
// limit (an org without one pays nothing for the guard; a limit set later
// counts from then).
func (st *orgState) recordSpend(c *Call, credit decimal.Decimal, at time.Time) {
	if !st.FraudGuard.MaxSpendPerHour.IsPositive() && !st.FraudGuard.MaxSpendPerHourPerUser.IsPositive() {
		st.guard.spend, st.guard.userSpend = nil, nil
		return
	}
	if st.guard.spend == nil {
		st.guard.spend = &spendWindow{}
	}
	st.guard.spend.add(at, credit)
	if st.guard.userSpend == nil {
		st.guard.userSpend = map[string]*spendWindow{}
	}
	w := st.guard.userSpend[c.User]
	if w == nil {
		w = &spendWindow{}
		st.guard.userSpend[c.User] = w
	}
	w.add(at, credit)
	if st.guard.peer != nil {
		fg := st.FraudGuard
		peerOrg, peerUser := st.guard.peer.PeerSpend(st.ID, c.User, at)
		st.guard.peer.Changed(st.ID, nearSpend(st.guard.spend.sum(at).Add(peerOrg), fg.MaxSpendPerHour) ||
			nearSpend(w.sum(at).Add(peerUser), fg.MaxSpendPerHourPerUser))
	}
	// Users who stopped spending an hour ago are forgotten now and then,
	// so the map stays about the size of the users spending now.
	if st.guard.records++; st.guard.records%4096 == 0 {
		for u, uw := range st.guard.userSpend {
			if uw.sum(at).IsZero() {
				delete(st.guard.userSpend, u)
			}
		}
	}
}

// FraudTripped queues a fraud_guard notification for a trip, at most one
// per org and guard an hour, so a flood of refused calls tells the
// operator once, not a thousand times.
func (l *Ledger) FraudTripped(tr *Trip, at time.Time) error {
	// Most trips of a flood are within the hour: answer those without a
	// durable operation, which would wait for the disk.
	l.mu.Lock()
	st, ok := l.orgs[tr.Org]
	recent := ok && st.guardNotified != nil && !st.guardNotified[tr.Guard].IsZero() &&
		at.Sub(st.guardNotified[tr.Guard]) < time.Hour && !at.Before(st.guardNotified[tr.Guard])
	l.mu.Unlock()
	if !ok || recent {
		return nil
	}
	_, err := l.do(Op{Kind: "fraud_tripped", Org: tr.Org}, at, func(t *txn) error {
		st, ok := l.orgs[tr.Org]
		if !ok {
			return nil
		}
		if st.guardNotified == nil {
			st.guardNotified = map[string]time.Time{}
		}
		if last, ok := st.guardNotified[tr.Guard]; ok && at.Sub(last) < time.Hour && !at.Before(last) {
			return nil
		}
		st.guardNotified[tr.Guard] = at
		l.notify(t, Notification{Org: tr.Org, Kind: NotifyFraudGuard, Balance: st.Balance, Currency: st.Currency,
			Reason: tr.Guard + ": " + tr.Detail})
		return nil
	})
	return err
}
