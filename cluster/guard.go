// The fraud guard across the cluster (issue 16): an org's limits on calls
// up and hourly spend hold for the org, not per node.

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// The fraud guard's keys, under Config.Prefix:
//
//	guard/<org>/<node>       the node's figures for the org (ledger.GuardFigures,
//	                         JSON), on the node's lease: they vanish with it
//	guardtrips/<org>/<guard> when the org's last fraud_guard notification for
//	                         that guard was queued (RFC 3339), cluster-wide
func (k keys) guard(org, node string) string { return k.prefix + "guard/" + org + "/" + node }
func (k keys) guards() string                { return k.prefix + "guard/" }
func (k keys) guardTrip(org, guard string) string {
	return k.prefix + "guardtrips/" + org + "/" + guard
}

// GuardEvery is how often at most a node publishes its fraud-guard figures
// while they change, away from a limit's neighbourhood; within it (half a
// limit or more, counting the peers) it publishes as soon as the
// previous publication returned.
const GuardEvery = 100 * time.Millisecond

// maxGuardOps bounds one publication's transaction (etcd takes 128
// operations per transaction by default; the fence is one more).
const maxGuardOps = 120

// GuardSource is where a Guard reads the node's own figures and keeps its
// claims: the node's *ledger.Ledger (ledger.Ledger.GuardUpdate).
type GuardSource interface {
	GuardUpdate(org string, at time.Time, fn func(fg ledger.FraudGuard, usage, pending, claim ledger.GuardFigures) ledger.GuardFigures) (ledger.GuardFigures, bool)
}

// Guard is a node's ledger.PeerGuard and ledger.GuardReserver: it keeps
// this node's claims for the fraud guard's limits in etcd (raised by
// Reserve, guard_exact.go; lowered by the publisher) and the other nodes'
// from a watch, so the limits hold exactly for the org across the cluster.
//
// What it bounds: the ledger admits a call (or holds credit) only within
// its claim, and a claim is raised only in a transaction serialized with
// every other node's on guard/<org>/'s revision that keeps the claims' sum
// within the limit; a publication only lowers a claim (never below the
// node's own figures: calls up before a limit was set are counted as
// they are). So at every etcd revision the org's calls up and hourly
// credit across the cluster are within the limit, bursts included. The
// price: below half a limit a raise takes headroom and setup stays local
// until it is used; from half on every admission is an etcd read and
// transaction (Reserve), and when etcd cannot answer within OpTimeout the
// admission is refused (fail closed: the limit is a fraud ceiling). The
// peers' figures from the watch serve the trip's detail and the headroom
// a publication keeps; they decide nothing.
//
// A dead node's claims are on its lease: etcd deletes them when the lease
// expires (or is revoked), and the watch drops them. The spend window is
// per unix minute on each node's clock, so nodes whose clocks differ by
// seconds count a bucket a few seconds early or late at the hour's edge.
//
// Locks, in order: an org's write lock (orgLock: held by Reserve from its
// read to the ledger's claim update, and by the publisher from the
// claim's update to its commit), then the ledger's lock (GuardUpdate),
// then Guard.mu. The ledger calls PeerCalls, PeerSpend and Changed with
// its own lock held (ledger's mu, then Guard.mu), and calls Reserve
// without it; the Guard never calls the ledger holding Guard.mu.
// Guard.mu guards dirty, urgent, peers, trips, orgMu, ops, published and
// lastPub.
type Guard struct {
	clk clock.Clock
	log *slog.Logger

	mu     sync.Mutex
	dirty  map[string]bool        // guarded by mu: orgs whose own figures changed since published
	urgent bool                   // guarded by mu: one of them is near a limit
	peers  map[string]*peerOrg    // guarded by mu: org → the other nodes' figures
	trips  map[string]time.Time   // guarded by mu: org/guard → last fraud_guard queued, as seen
	orgMu  map[string]*sync.Mutex // guarded by mu: org → its write lock (orgLock, guard_exact.go)
	ops    GuardOps               // guarded by mu: what Reserve did

	// published and lastPub are guarded by mu: orgs with a key of this
	// node in etcd, and what was last written there (encoded): a
	// publication that would write the same is skipped, so a node
	// answering a peer's change (applyLocked) settles instead of ping-ponging.
	published map[string]bool
	lastPub   map[string]string

	wake, wakeNow chan struct{} // cap 1: a change, a change near a limit

	// Set by Start (under mu, for Reserve's sake), read-only after.
	n   *Node
	src GuardSource
	ctx context.Context // Reserve's: done at Close

	cancel context.CancelFunc
	wg     sync.WaitGroup // the publisher and the watcher
}

// peerOrg is the other nodes' figures for one org, and their sums (kept
// on every change, so the ledger's checks add one figure, not one per node).
type peerOrg struct {
	nodes     map[string]ledger.GuardFigures
	calls     int
	userCalls map[string]int
	spend     map[int64]decimal.Decimal
	userSpend map[string]map[int64]decimal.Decimal
}

// NewGuard makes a Guard that counts nothing yet: give it to the node's
// ledger (ledger.Options.PeerGuard), then Start it with the node and the
// ledger once both are open. Changes before Start are published by it.
func NewGuard(clk clock.Clock, log *slog.Logger) *Guard {
	return &Guard{clk: clk, log: log, dirty: map[string]bool{}, peers: map[string]*peerOrg{}, trips: map[string]time.Time{}, orgMu: map[string]*sync.Mutex{}, lastPub: map[string]string{},
		wake: make(chan struct{}, 1), wakeNow: make(chan struct{}, 1), published: map[string]bool{}}
}

var _ ledger.PeerGuard = (*Guard)(nil)

// Start publishes the node's figures (read from src) and watches its
// peers' until Close.
func (g *Guard) Start(n *Node, src GuardSource) {
	ctx, cancel := context.WithCancel(context.Background())
	g.mu.Lock() // Reserve may be called from any goroutine, even before Start
	g.n, g.src, g.ctx, g.cancel = n, src, ctx, cancel
	g.mu.Unlock()
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		g.publishLoop(ctx)
	}()
	go func() {
		defer g.wg.Done()
		g.watchLoop(ctx)
	}()
	g.signal(false) // whatever changed before Start
}

// Close stops publishing and watching and waits for both. The node's keys
// stay until its lease ends (Node.Close revokes it).
func (g *Guard) Close() {
	if g.cancel != nil {
		g.cancel()
	}
	g.wg.Wait()
}

// PeerCalls implements ledger.PeerGuard.
func (g *Guard) PeerCalls(org, user string) (int, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.peers[org]
	if p == nil {
		return 0, 0
	}
	return p.calls, p.userCalls[user]
}

// PeerSpend implements ledger.PeerGuard.
func (g *Guard) PeerSpend(org, user string, at time.Time) (decimal.Decimal, decimal.Decimal) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.peers[org]
	if p == nil {
		return decimal.Zero, decimal.Zero
	}
	u := decimal.Zero
	if user != "" && p.userSpend[user] != nil {
		u = ledger.WindowSum(p.userSpend[user], at)
	}
	return ledger.WindowSum(p.spend, at), u
}

// Changed implements ledger.PeerGuard: it only marks the org; the
// publisher reads its figures later, without the ledger's lock held.
func (g *Guard) Changed(org string, near bool) {
	g.mu.Lock()
	g.dirty[org] = true
	g.urgent = g.urgent || near
	g.mu.Unlock()
	g.signal(near)
}

func (g *Guard) signal(near bool) {
	select {
	case g.wake <- struct{}{}:
	default:
	}
	if near {
		select {
		case g.wakeNow <- struct{}{}:
		default:
		}
	}
}

// publishLoop publishes the marked orgs: at once when one is near a
// limit, else at most every GuardEvery; and every minute it marks every
// org it has a key for, so spend that left the hour leaves the key (or
// the key goes) even if nothing else changes.
func (g *Guard) publishLoop(ctx context.Context) {
	var last time.Time
	minute := g.clk.Now()
	for {
		// While it has keys, a timer wakes it for the minute's re-marking.
		var t clock.Timer
		g.mu.Lock()
		some := len(g.published) > 0
		g.mu.Unlock()
		if some {
			t = g.clk.AfterFunc(max(time.Minute-g.clk.Since(minute), 0), func() { g.signal(false) })
		}
		select {
		case <-ctx.Done():
		case <-g.wake:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		if wait := GuardEvery - g.clk.Since(last); wait > 0 {
			g.mu.Lock()
			urgent := g.urgent
			g.mu.Unlock()
			if !urgent {
				g.sleep(ctx, wait)
			}
		}
		if g.clk.Since(minute) >= time.Minute {
			minute = g.clk.Now()
			g.mu.Lock()
			for org := range g.published {
				g.dirty[org] = true
			}
			g.mu.Unlock()
		}
		last = g.clk.Now()
		if err := g.publish(ctx); err != nil {
			if errors.Is(err, ErrFenced) {
				g.log.Error("fraud guard: fenced; this node's figures go with its lease", "err", err)
				return
			}
			if ctx.Err() != nil {
				return
			}
			g.log.Warn("fraud guard: figures not published; will retry", "err", err)
			sleepCtx(ctx, g.clk, g.n.cfg.KeepAliveEvery)
			g.signal(false)
		}
	}
}

// sleep waits d, or less if a change near a limit comes.
func (g *Guard) sleep(ctx context.Context, d time.Duration) {
	wake := make(chan struct{})
	t := g.clk.AfterFunc(d, func() { close(wake) })
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	case <-g.wakeNow:
	}
}

// publish writes the marked orgs' claims (Guard.lowered) in fenced
// transactions of at most maxGuardOps keys; an org whose claim is empty
// (or that has no limit any more) has its key deleted. Each org's write
// lock is held from its claim's update in the ledger to the commit, so a
// raise (Reserve) never interleaves. On failure the orgs are marked again.
func (g *Guard) publish(ctx context.Context) error {
	g.mu.Lock()
	orgs := make([]string, 0, len(g.dirty))
	for org := range g.dirty {
		orgs = append(orgs, org)
	}
	g.dirty, g.urgent = map[string]bool{}, false
	g.mu.Unlock()
	select { // the wake for what was just taken
	case <-g.wakeNow:
	default:
	}
	sort.Strings(orgs)
	now := g.clk.Now()
	var ops []clientv3.Op
	var batch []string
	var locked []*sync.Mutex
	flush := func() error {
		defer func() {
			for _, m := range locked {
				m.Unlock()
			}
			locked = locked[:0]
		}()
		if len(ops) == 0 {
			return nil
		}
		_, _, err := g.n.commit(ctx, nil, ops)
		if err != nil {
			// Unsure whether it landed: publish them again, and count
			// their keys as there, so a deletion is not skipped.
			g.mu.Lock()
			for _, org := range batch {
				g.dirty[org] = true
				g.published[org] = true
				delete(g.lastPub, org) // unknown: written again
			}
			g.mu.Unlock()
		}
		ops, batch = ops[:0], batch[:0]
		return err
	}
	for i, org := range orgs {
		key := g.n.k.guard(org, g.n.ID())
		m := g.orgLock(org)
		m.Lock()
		locked = append(locked, m)
		f, ok := g.src.GuardUpdate(org, now, func(fg ledger.FraudGuard, usage, pending, claim ledger.GuardFigures) ledger.GuardFigures {
			return g.lowered(org, fg, usage, pending, claim, now)
		})
		g.mu.Lock()
		had := g.published[org]
		put := ok && !f.Empty()
		v := ""
		if put {
			v = encode(f)
		}
		switch {
		case put && had && g.lastPub[org] == v:
			put, had = false, false // as it is in etcd already
		case put:
			ops = append(ops, clientv3.OpPut(key, v, clientv3.WithLease(g.n.Lease())))
			g.published[org], g.lastPub[org] = true, v
		case had:
			ops = append(ops, clientv3.OpDelete(key))
			delete(g.published, org)
			delete(g.lastPub, org)
		}
		g.mu.Unlock()
		if !put && !had {
			continue
		}
		batch = append(batch, org)
		if len(ops) == maxGuardOps {
			if err := flush(); err != nil {
				g.remark(orgs[i+1:])
				return err
			}
		}
	}
	return flush()
}

func (g *Guard) remark(orgs []string) {
	g.mu.Lock()
	for _, org := range orgs {
		g.dirty[org] = true
	}
	g.mu.Unlock()
}

// watchLoop keeps peers: one read of guard/ at a revision, then a watch
// from the next one; a broken watch (etcd out of reach, compaction) reads
// again. Until it has read again the peers' figures stay as they were,
// which errs towards refusing.
func (g *Guard) watchLoop(ctx context.Context) {
	prefix := g.n.k.guards()
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, g.n.cfg.OpTimeout)
		resp, err := g.n.cli.Get(rctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				g.log.Warn("fraud guard: cannot read the peers' figures; will retry", "err", err)
			}
			sleepCtx(ctx, g.clk, g.n.cfg.KeepAliveEvery)
			continue
		}
		g.mu.Lock()
		g.peers = map[string]*peerOrg{}
		for _, kv := range resp.Kvs {
			g.applyLocked(kv, false)
		}
		g.mu.Unlock()
		for wr := range g.n.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(),
			clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			g.mu.Lock()
			again := false
			for _, ev := range wr.Events {
				again = g.applyLocked(ev.Kv, ev.Type == mvccpb.DELETE) || again
			}
			g.mu.Unlock()
			if again {
				g.signal(false)
			}
		}
		sleepCtx(ctx, g.clk, GuardEvery)
	}
}

// applyLocked takes one key's figures (or its deletion) into peers and
// sums the org again. Guard.mu is held. true when this node has a claim
// for the org: it is marked for publication, so headroom the peers' new
// claims leave no room for is given back (Guard.lowered) rather than
// stranded while this node's own figures do not change.
func (g *Guard) applyLocked(kv *mvccpb.KeyValue, deleted bool) (again bool) {
	org, node, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), g.n.k.guards()), "/")
	if !ok || node == g.n.ID() {
		return false // this node's own: the ledger has them first-hand
	}
	if g.published[org] {
		g.dirty[org], again = true, true
	}
	p := g.peers[org]
	if p == nil {
		p = &peerOrg{nodes: map[string]ledger.GuardFigures{}}
		g.peers[org] = p
	}
	if deleted {
		delete(p.nodes, node)
	} else {
		var f ledger.GuardFigures
		if err := json.Unmarshal(kv.Value, &f); err != nil {
			// Not ours to repair; counting nothing for it would let the
			// org past its limit, so it is logged loudly.
			g.log.Error("fraud guard: a peer's figures do not decode; not counted", "key", string(kv.Key), "err", err)
			delete(p.nodes, node)
		} else {
			p.nodes[node] = f
		}
	}
	if len(p.nodes) == 0 {
		delete(g.peers, org)
		return again
	}
	p.calls, p.userCalls, p.spend, p.userSpend = 0, map[string]int{}, map[int64]decimal.Decimal{}, map[string]map[int64]decimal.Decimal{}
	for _, f := range p.nodes {
		p.calls += f.Calls
		for u, c := range f.UserCalls {
			p.userCalls[u] += c
		}
		addBuckets(p.spend, f.Spend)
		for u, b := range f.UserSpend {
			if p.userSpend[u] == nil {
				p.userSpend[u] = map[int64]decimal.Decimal{}
			}
			addBuckets(p.userSpend[u], b)
		}
	}
	return again
}

func addBuckets(into, from map[int64]decimal.Decimal) {
	for m, a := range from {
		into[m] = into[m].Add(a)
	}
}

// Tripped queues a fraud_guard notification for a trip in the cluster's
// outbox, at most one per org and guard an hour across the cluster: the
// guardtrips/<org>/<guard> mark is written in the transaction that queues
// it, compared on what was read, so of nodes tripping at once exactly one
// queues it. Trips within the hour of a mark this node saw are answered
// from memory, without an etcd request. org is the org as the node's
// Books answer it (its cluster balance goes in the notification).
func (g *Guard) Tripped(ctx context.Context, tr *ledger.Trip, at time.Time, org ledger.Org) error {
	// Within the hour either way: the mark may come from a node whose
	// clock is a little ahead, or from a trip a little earlier that
	// landed later.
	recent := func(last time.Time) bool { return at.Sub(last) < time.Hour && last.Sub(at) < time.Hour }
	id := tr.Org + "/" + tr.Guard
	g.mu.Lock()
	last, seen := g.trips[id]
	g.mu.Unlock()
	if seen && recent(last) {
		return nil
	}
	key := g.n.k.guardTrip(tr.Org, tr.Guard)
	n := ledger.Notification{ID: fmt.Sprintf("g-%s-%s-%d", tr.Org, tr.Guard, at.UnixNano()), Org: tr.Org,
		Kind: ledger.NotifyFraudGuard, At: at.UTC(), Balance: org.Balance, Currency: org.Currency, Reason: tr.Guard + ": " + tr.Detail}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := g.n.read(ctx, key)
		if err != nil {
			return fmt.Errorf("%w: fraud_guard notification: %w", ledger.ErrUnavailable, err)
		}
		cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		if kv := kvs[key]; kv != nil {
			if t, err := time.Parse(time.RFC3339Nano, string(kv.Value)); err == nil && recent(t) {
				g.mu.Lock()
				g.trips[id] = t
				g.mu.Unlock()
				return nil
			}
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
		}
		ok, _, err := g.n.commit(ctx, []clientv3.Cmp{cmp, clientv3.Compare(clientv3.CreateRevision(g.n.k.outbox(n.ID)), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(key, at.UTC().Format(time.RFC3339Nano)), clientv3.OpPut(g.n.k.outbox(n.ID), encode(n))})
		if err != nil {
			return fmt.Errorf("%w: fraud_guard notification: %w", ledger.ErrUnavailable, err)
		}
		if ok {
			g.mu.Lock()
			g.trips[id] = at
			g.mu.Unlock()
			return nil
		}
		// Another node marked it (or this one's earlier try landed): read again.
	}
	return fmt.Errorf("%w: fraud_guard notification: %w", ledger.ErrUnavailable, ErrContention)
}

// UseGuard makes the Books queue fraud_guard notifications through g, once
// per cluster (Guard.Tripped), instead of through the node's own ledger.
func (b *Books) UseGuard(g *Guard) { b.guard.Store(g) }
