// The fraud guard made exact across the cluster (issue 16): this node's
// figures in etcd are a claim, raised only in a transaction serialized with
// every other node's, and the node's ledger admits only what its claim
// covers.

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

var _ ledger.GuardReserver = (*Guard)(nil)

// headroomShare is the part of the room left under a limit that a raise
// takes beyond what it needs (and a publication keeps) while the cluster
// is far from the limit: a quarter, so a node admits its next calls from
// its claim without etcd, and the other nodes keep three quarters.
const headroomShare = 4

// headroom is what a claim may hold beyond its node's figures when the
// cluster's figures (the other nodes' claims plus this node's figures)
// are used of limit: a share of the room while used is under half the
// limit, none from half on. So in a limit's upper half every admission is
// a transaction of its own, serialized with every other node's, and a
// settled cluster holds no headroom there: a node refuses a call only if
// the cluster's calls (or the hour's credit, plus the call's) would pass
// the limit. (Below half, headroom spread over the nodes may leave no
// single node room for one increment dearer than half the spend limit; a
// call that dear is refused there too.)
func headroom(used, limit int) int {
	if 2*used >= limit {
		return 0
	}
	return (limit - used) / headroomShare
}

func spendHeadroom(used, limit decimal.Decimal) decimal.Decimal {
	if used.Mul(decimal.NewFromInt(2)).GreaterThanOrEqual(limit) {
		return decimal.Zero
	}
	return limit.Sub(used).Div(decimal.NewFromInt(headroomShare)).Truncate(4)
}

// orgLock is the org's write lock: it serializes this node's raises of
// the org's claim (Reserve) with its publications (publish), so the claim
// the ledger holds is always at most what etcd has. Taken before the
// ledger's lock, never under it.
func (g *Guard) orgLock(org string) *sync.Mutex {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := g.orgMu[org]
	if m == nil {
		m = &sync.Mutex{}
		g.orgMu[org] = m
	}
	return m
}

// GuardOps counts what the exact guard cost in etcd: raises committed,
// raises that lost a race and read again, and admissions refused because
// the cluster was at a limit (no raise possible).
type GuardOps struct {
	Raises, Conflicts, Full int64
}

// Ops is what this node's Reserve has done so far.
func (g *Guard) Ops() GuardOps {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ops
}

// Reserve implements ledger.GuardReserver: it makes this node's claim for
// the org cover its own figures plus its pending reservations, raising it
// in etcd if it does not. The raise reads guard/<org>/ (every node's
// claim), and commits this node's new claim in a transaction fenced on the
// node's epoch and compared on the prefix: no key under it modified (or
// created) since the read. A lost race reads again. Each limit is raised
// only if the cluster's claims stay within it; a limit that does not fit
// keeps this node's claim, and the ledger's check refuses with the
// figures. etcd not answering within OpTimeout (a leader election) is an
// ErrUnavailable: the admission is refused — the guard is a fraud
// ceiling, so it fails closed rather than admit past what it can prove.
func (g *Guard) Reserve(org string, at time.Time) error {
	g.mu.Lock()
	started := g.n != nil
	g.mu.Unlock()
	if !started {
		return fmt.Errorf("%w: fraud guard: not started", ledger.ErrUnavailable)
	}
	mu := g.orgLock(org)
	mu.Lock()
	defer mu.Unlock()
	ctx, cancel := context.WithTimeout(g.ctx, g.n.cfg.OpTimeout)
	defer cancel()
	prefix := g.n.k.guards() + org + "/"
	key := g.n.k.guard(org, g.n.ID())
	for attempt := 0; attempt < maxAttempts; attempt++ {
		var fg ledger.FraudGuard
		var want, claim ledger.GuardFigures
		if _, ok := g.src.GuardUpdate(org, at, func(f ledger.FraudGuard, usage, pending, c ledger.GuardFigures) ledger.GuardFigures {
			fg, want, claim = f, sumFigures(usage, pending), c
			return c
		}); !ok {
			return nil // no limit (any more): nothing to reserve
		}
		if covers(claim, want) {
			return nil // a raise by another admission of this node covered it
		}
		resp, err := g.n.cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			return fmt.Errorf("%w: fraud guard: reading the cluster's figures: %w", ledger.ErrUnavailable, err)
		}
		var others ledger.GuardFigures
		for _, kv := range resp.Kvs {
			if string(kv.Key) == key {
				continue
			}
			var f ledger.GuardFigures
			if err := json.Unmarshal(kv.Value, &f); err != nil {
				// Uncountable: the cluster's total is unknown, so no raise.
				return fmt.Errorf("%w: fraud guard: %s does not decode: %w", ledger.ErrUnavailable, kv.Key, err)
			}
			others = sumFigures(others, f)
		}
		next := raise(fg, claim, want, others, at)
		if sameFigures(next, claim) {
			g.mu.Lock()
			g.ops.Full++
			g.mu.Unlock()
			return nil // the cluster is at a limit: the ledger refuses
		}
		ok, _, err := g.n.commit(ctx,
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(prefix), "<", resp.Header.Revision+1).WithPrefix()},
			[]clientv3.Op{clientv3.OpPut(key, encode(next), clientv3.WithLease(g.n.Lease()))})
		if err != nil {
			return fmt.Errorf("%w: fraud guard: raising this node's claim: %w", ledger.ErrUnavailable, err)
		}
		if !ok {
			g.mu.Lock()
			g.ops.Conflicts++
			g.mu.Unlock()
			continue
		}
		g.src.GuardUpdate(org, at, func(_ ledger.FraudGuard, _, _, _ ledger.GuardFigures) ledger.GuardFigures { return next })
		g.mu.Lock()
		g.ops.Raises++
		g.published[org], g.lastPub[org] = true, encode(next)
		g.mu.Unlock()
		return nil
	}
	return fmt.Errorf("%w: fraud guard: %w", ledger.ErrUnavailable, ErrContention)
}

// raise is claim raised to cover want, with headroom, for each limit whose
// cluster total (others plus this node's new claim) stays within it; a
// limit that would be passed keeps claim's figures.
func raise(fg ledger.FraudGuard, claim, want, others ledger.GuardFigures, at time.Time) ledger.GuardFigures {
	next := claim.Clone()
	if fg.MaxCalls > 0 && want.Calls > claim.Calls {
		if room := fg.MaxCalls - others.Calls - want.Calls; room >= 0 {
			next.Calls = want.Calls + headroom(others.Calls+want.Calls, fg.MaxCalls)
		}
	}
	if fg.MaxCallsPerUser > 0 {
		for u, n := range want.UserCalls {
			if n <= claim.UserCalls[u] {
				continue
			}
			if room := fg.MaxCallsPerUser - others.UserCalls[u] - n; room >= 0 {
				if next.UserCalls == nil {
					next.UserCalls = map[string]int{}
				}
				next.UserCalls[u] = n + headroom(others.UserCalls[u]+n, fg.MaxCallsPerUser)
			}
		}
	}
	if fg.MaxSpendPerHour.IsPositive() {
		next.Spend = raiseSpend(fg.MaxSpendPerHour, claim.Spend, want.Spend, others.Spend, at)
	}
	if fg.MaxSpendPerHourPerUser.IsPositive() {
		for u, w := range want.UserSpend {
			b := raiseSpend(fg.MaxSpendPerHourPerUser, claim.UserSpend[u], w, others.UserSpend[u], at)
			if len(b) > 0 {
				if next.UserSpend == nil {
					next.UserSpend = map[string]map[int64]decimal.Decimal{}
				}
				next.UserSpend[u] = b
			}
		}
	}
	return next
}

// raiseSpend is raise for one spend window: every bucket of want above
// claim raised to want, and a share of the room left added to the
// current minute's, if the hour's sums (others' plus this) stay within
// limit; else claim. Buckets that left the hour go.
func raiseSpend(limit decimal.Decimal, claim, want, others map[int64]decimal.Decimal, at time.Time) map[int64]decimal.Decimal {
	if !bucketsCover(claim, want) {
		next := map[int64]decimal.Decimal{}
		for m, a := range claim {
			next[m] = a
		}
		for m, a := range want {
			if a.GreaterThan(next[m]) {
				next[m] = a
			}
		}
		next = inWindow(next, at)
		used := ledger.WindowSum(others, at).Add(ledger.WindowSum(next, at))
		if used.GreaterThan(limit) {
			return claim
		}
		if h := spendHeadroom(used, limit); h.IsPositive() {
			m := at.Unix() / 60
			next[m] = next[m].Add(h)
		}
		return next
	}
	return claim
}

// lowered is what a publication makes of the claim: never below usage
// (the calls are up, the credit held, whatever the claim says), never above
// the claim otherwise (a raise is Reserve's alone), and within that the
// own figures plus pending plus a share of the room the other nodes'
// claims (as the watch has them) leave. Buckets other than at's minute
// keep no headroom; buckets that left the hour go. Called under the
// ledger's lock (GuardUpdate); takes Guard.mu.
func (g *Guard) lowered(org string, fg ledger.FraudGuard, usage, pending, claim ledger.GuardFigures, at time.Time) ledger.GuardFigures {
	mine := sumFigures(usage, pending)
	var next ledger.GuardFigures
	m := at.Unix() / 60
	g.mu.Lock() // for p: the watch updates it in place
	defer g.mu.Unlock()
	p := g.peers[org]
	if p == nil {
		p = &peerOrg{}
	}
	if fg.MaxCalls > 0 {
		h := headroom(p.calls+mine.Calls, fg.MaxCalls)
		next.Calls = max(usage.Calls, min(claim.Calls, mine.Calls+h))
	}
	if fg.MaxCallsPerUser > 0 {
		for _, u := range userKeys(usage.UserCalls, pending.UserCalls, claim.UserCalls) {
			h := headroom(p.userCalls[u]+mine.UserCalls[u], fg.MaxCallsPerUser)
			if n := max(usage.UserCalls[u], min(claim.UserCalls[u], mine.UserCalls[u]+h)); n > 0 {
				if next.UserCalls == nil {
					next.UserCalls = map[string]int{}
				}
				next.UserCalls[u] = n
			}
		}
	}
	lowerSpend := func(limit decimal.Decimal, peers, usage, mine, claim map[int64]decimal.Decimal) map[int64]decimal.Decimal {
		h := spendHeadroom(ledger.WindowSum(peers, at).Add(ledger.WindowSum(mine, at)), limit)
		var out map[int64]decimal.Decimal
		for _, b := range []map[int64]decimal.Decimal{usage, mine, claim} {
			for k := range b {
				if out == nil {
					out = map[int64]decimal.Decimal{}
				}
				x := mine[k]
				if k == m {
					x = x.Add(h)
				}
				out[k] = decimal.Max(usage[k], decimal.Min(claim[k], x))
			}
		}
		out = inWindow(out, at)
		for k, a := range out {
			if !a.IsPositive() {
				delete(out, k)
			}
		}
		if len(out) == 0 {
			return nil
		}
		return out
	}
	if fg.MaxSpendPerHour.IsPositive() {
		next.Spend = lowerSpend(fg.MaxSpendPerHour, p.spend, usage.Spend, mine.Spend, claim.Spend)
	}
	if fg.MaxSpendPerHourPerUser.IsPositive() {
		for _, u := range userKeys(usage.UserSpend, pending.UserSpend, claim.UserSpend) {
			if b := lowerSpend(fg.MaxSpendPerHourPerUser, p.userSpend[u], usage.UserSpend[u], mine.UserSpend[u], claim.UserSpend[u]); len(b) > 0 {
				if next.UserSpend == nil {
					next.UserSpend = map[string]map[int64]decimal.Decimal{}
				}
				next.UserSpend[u] = b
			}
		}
	}
	return next
}

func userKeys[V any](ms ...map[string]V) []string {
	seen := map[string]bool{}
	var us []string
	for _, m := range ms {
		for u := range m {
			if !seen[u] {
				seen[u] = true
				us = append(us, u)
			}
		}
	}
	sort.Strings(us)
	return us
}

// inWindow drops the buckets that left the hour up to at.
func inWindow(b map[int64]decimal.Decimal, at time.Time) map[int64]decimal.Decimal {
	m := at.Unix() / 60
	for k := range b {
		if k <= m-60 || k > m {
			delete(b, k)
		}
	}
	return b
}

// sumFigures is a + b, figure by figure (new maps).
func sumFigures(a, b ledger.GuardFigures) ledger.GuardFigures {
	s := a.Clone()
	s.Calls += b.Calls
	for u, n := range b.UserCalls {
		if s.UserCalls == nil {
			s.UserCalls = map[string]int{}
		}
		s.UserCalls[u] += n
	}
	if len(b.Spend) > 0 {
		if s.Spend == nil {
			s.Spend = map[int64]decimal.Decimal{}
		}
		addBuckets(s.Spend, b.Spend)
	}
	for u, w := range b.UserSpend {
		if s.UserSpend == nil {
			s.UserSpend = map[string]map[int64]decimal.Decimal{}
		}
		if s.UserSpend[u] == nil {
			s.UserSpend[u] = map[int64]decimal.Decimal{}
		}
		addBuckets(s.UserSpend[u], w)
	}
	return s
}

// covers reports whether claim is at least want, figure by figure.
func covers(claim, want ledger.GuardFigures) bool {
	if want.Calls > claim.Calls {
		return false
	}
	for u, n := range want.UserCalls {
		if n > claim.UserCalls[u] {
			return false
		}
	}
	if !bucketsCover(claim.Spend, want.Spend) {
		return false
	}
	for u, w := range want.UserSpend {
		if !bucketsCover(claim.UserSpend[u], w) {
			return false
		}
	}
	return true
}

func bucketsCover(claim, want map[int64]decimal.Decimal) bool {
	for m, a := range want {
		if a.GreaterThan(claim[m]) {
			return false
		}
	}
	return true
}

func sameFigures(a, b ledger.GuardFigures) bool { return encode(a) == encode(b) }
