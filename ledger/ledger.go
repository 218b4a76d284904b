// Package ledger keeps the money: orgs and their Communications Credits,
// their monthly minute pools, users and their numbers and licenses, the
// two-phase transfers (holds) calls take and the debits they turn into, and
// the CDRs of ended calls.
//
// State lives in memory for speed and is made durable in Pebble before any
// change is acknowledged: each operation's records go into a synced batch
// shared with every other operation queued at the same time (group commit).
// Open reads the live records back, then settles every call that was up when
// the process stopped (README, Durability: the started increment counts, the rest of its
// hold is released).
package ledger

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
)

// Options configure a Ledger. Zero values mean the defaults.
type Options struct {
	// MinFunding is the smallest one-time funding accepted (funding.minimum, 50.00 by default).
	MinFunding decimal.Decimal
	// Plans are the minute pools and their allotments; nil is DefaultPlans.
	Plans []Plan
	// Now is the wall clock used to stamp fundings and restart settlements.
	Now func() time.Time
	// Registerer receives the ledger's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// FS lets tests put Pebble on a fault-injecting filesystem.
	FS     vfs.FS
	Logger *slog.Logger
	// SettledElsewhere (cluster mode, issue 17) names calls this ledger
	// left up that a surviving node has already ended and settled, with
	// what it settled them at: Open ends them without a CDR (adopt.go)
	// instead of settling them as ReasonRestart.
	SettledElsewhere map[string]Settled
	// LastReaped (cluster mode, issue 17): a survivor reaped the
	// incarnation that left these calls up, settling its money in etcd
	// from its takeover records alone. An answered, non-free call left up
	// that SettledElsewhere does not name had no record land (the node
	// died while it was in flight, so its caller never got the 200): the
	// survivor returned its held increment as unspent, so Open ends it
	// too without a CDR, at its committed charge, the hold released —
	// charging it here would be money etcd never counted as spent.
	LastReaped bool
	// PeerGuard (cluster mode, issue 16): the other nodes' fraud-guard
	// figures, added to this ledger's own so the limits hold for the org
	// across the cluster (peerguard.go); nil on a single node.
	PeerGuard PeerGuard
}

// Limits that keep one org or one hostile client from growing memory without
// bound. Hitting one is a clear refusal.
const (
	MaxNumbersPerUser  = 100
	MaxLicensesPerUser = 8
	MaxIDLength        = 64
	MaxFundingKey      = 128
)

// Ledger is safe for concurrent use. It is the one implementation of Books
// (seam.go), on Pebble.
//
// One mutex, mu, guards all in-memory state: every field from mu down to
// outbox, and all of each org's orgState (balances, pools, license counts,
// fraud guard counts, its pending purchase). Every operation under it is a
// few map lookups, decimal additions and the encoding of the records it
// changes; the slow part, the fsync, happens in the committer without the
// lock, so one lock is enough for the call rates a single gateway handles
// (see the ledger benchmarks).
//
// Lock order: Ledger.mu, then committer.mu (store.go). do queues an
// operation's writes while it holds Ledger.mu, which is what keeps the
// commit queue in the order operations were applied; the committer never
// takes Ledger.mu. Under either, the ledger calls back into nothing of its
// callers' (it imports no package above it; only the logger, its metrics
// and, in tests, trace run under mu), so a caller may hold its own locks
// across a ledger call — the gateway holds a call's mutex across Step.
// The function an operation runs inside do holds Ledger.mu: it must not
// call the exported methods, which take it again.
//
// No ledger lock is held across a Pebble write or sync: do releases
// Ledger.mu before it waits for its batch; the committer writes the WAL and
// waits for each sync holding no lock (committer.mu only while it takes the
// queue); ForgetDialog deletes before it takes Ledger.mu. Two rare cases
// read the store under Ledger.mu, where memory no longer has the answer:
// a minute pool of a month more than two months back (storedPool, see
// forgettable; never the current month) and a retried close of a purchase
// already closed (closedPurchase).
//
// Invariants, besides those of Org, Pool and Call (types.go) that
// CheckInvariants asserts:
//   - memory is at or ahead of the disk (ForgetDialog aside, which deletes
//     on disk first): an operation is
//     applied in memory, then queued, then acknowledged once durable, so a
//     read under mu may see a change whose operation has not returned yet
//     (PendingPurchases and Outbox are barriers for that reason). Only
//     OpenCall with Call.Unsynced and ForgetDialog return before the disk;
//   - seq is the last number an applied operation took; the store's keySeq
//     is the last durable one;
//   - a call id is in calls while the call is up and in ended (or on disk,
//     z/) once it has a CDR, never both;
//   - once a commit has failed (c.err), every operation through do (every
//     change, and the barriers) is refused with ErrUnavailable until a
//     restart rebuilds memory from the disk.
type Ledger struct {
	opts  Options
	db    *pebble.DB
	c     *committer
	log   *slog.Logger
	plans []Plan

	mu       sync.Mutex
	seq      uint64
	orgs     map[string]*orgState
	users    map[string]*User // key org + "/" + user
	numbers  map[string]string
	trunks   map[string]Trunk
	tollFree map[string]TollFree // by number
	deck     []byte
	calls    map[string]*Call
	fundKeys map[string]Entry // org + "/" + key
	// sliceMoves is each org's last cluster slice movement (slices.go).
	sliceMoves map[string]*SliceMove
	// allow is the cluster's pool allowances (poolslices.go).
	allow poolAllowances
	// sliceOnly: the balances are a cluster node's slices (slicemode.go).
	sliceOnly bool
	ended     endedCalls
	dialogs   []Dialog // left by the last run, until the SIP side forgets them
	keys      keyState // admin API keys (keys.go)

	purchases  map[string]*Purchase     // pending purchases, auto-recharge and one-time
	outbox     map[string]*Notification // notifications not yet delivered
	payerWake  chan struct{}
	outboxWake chan struct{}

	// purchaseKeys: org + "/" + idempotency key → the one-time purchase it
	// started, pending or closed (purchase.go).
	purchaseKeys map[string]purchaseKey

	// trace, when set by tests, sees every operation's outcome in the order
	// the ledger linearized them, under the lock.
	trace func(op Op)

	debits      prometheus.Counter
	commitHisto prometheus.Histogram
}

// Op describes one operation for tracing: what was asked and how it ended.
type Op struct {
	Kind   string
	Org    string
	Call   string
	N      int
	Key    string
	Amount decimal.Decimal
	At     time.Time // when the operation says it happened
	Live   Liveness  // a step's
	BillTo time.Time // a close's
	Seq    uint64    // 0 when refused or when it was a retry of an applied one
	Result Increment
	Err    error
}

// Open opens (or creates) the ledger in dir, rebuilds its state and settles
// calls left open by a previous process.
func Open(dir string, opts Options) (*Ledger, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MinFunding.IsZero() {
		opts.MinFunding = decimal.RequireFromString("50.00")
	}
	if opts.Plans == nil {
		opts.Plans = DefaultPlans()
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	for _, p := range opts.Plans {
		if p.Name == "" || p.Minutes < 0 || len(p.Licenses) == 0 {
			return nil, fmt.Errorf("ledger plan %+v: want a name, minutes ≥ 0 and at least one license", p)
		}
	}
	db, err := openPebble(dir, opts.FS)
	if err != nil {
		return nil, fmt.Errorf("open ledger store %s: %w", dir, err)
	}
	l := &Ledger{
		opts: opts, db: db, log: opts.Logger, plans: opts.Plans,
		orgs: map[string]*orgState{}, users: map[string]*User{}, numbers: map[string]string{},
		trunks: map[string]Trunk{}, tollFree: map[string]TollFree{}, calls: map[string]*Call{}, fundKeys: map[string]Entry{}, sliceMoves: map[string]*SliceMove{},
		allow:     poolAllowances{by: map[string]int{}},
		purchases: map[string]*Purchase{}, purchaseKeys: map[string]purchaseKey{}, outbox: map[string]*Notification{},
		payerWake: make(chan struct{}, 1), outboxWake: make(chan struct{}, 1),
		debits: prometheus.NewCounter(prometheus.CounterOpts{Name: "creditgate_debits_total",
			Help: "Billing increments committed (debited) from org balances."}),
		commitHisto: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "creditgate_ledger_commit_seconds",
			Help:    "Time of one synced group commit of ledger operations to Pebble.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{l.debits, l.commitHisto} {
			if err := opts.Registerer.Register(c); err != nil {
				_ = db.Close()
				return nil, fmt.Errorf("register ledger metrics: %w", err)
			}
		}
	}
	if err := l.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("load ledger %s: %w", dir, err)
	}
	l.c = newCommitter(db, func(d time.Duration) { l.commitHisto.Observe(d.Seconds()) })
	if err := l.settleOpenCalls(); err != nil {
		l.c.close()
		_ = db.Close()
		return nil, err
	}
	return l, nil
}

// Close makes everything queued durable and closes the store.
func (l *Ledger) Close() error {
	l.c.close()
	return l.db.Close()
}

// load reads the live records back into memory, each kind of record after
// those it refers to: orgs first (everything else belongs to one), users
// after them (they count into their org's licenses), a call's state after
// the call.
func (l *Ledger) load() error {
	v, found, err := get(l.db, keySeq)
	if err != nil {
		return err
	}
	if found {
		l.seq = binary.BigEndian.Uint64(v)
	}
	for _, load := range []func() error{
		l.loadOrgs, l.loadDirectory, l.loadFundKeys, l.loadCalls,
		l.loadDialogs, l.loadPurchases, l.loadOutbox, l.loadPools, l.loadKeys, l.loadSliceMoves,
		l.loadPoolAllowances,
	} {
		if err := load(); err != nil {
			return err
		}
	}
	l.deck, _, err = get(l.db, keyDeck)
	return err
}

// settleOpenCalls ends, on start, every call the previous process left open,
// in one durable operation however many there are. Answered calls pay the
// increment they had started (it was held, so the money is there);
// unanswered ones cost nothing.
func (l *Ledger) settleOpenCalls() error {
	var settled, superseded []CDR
	var unrecorded []string
	_, err := l.do(Op{Kind: "settle"}, l.opts.Now(), func(t *txn) error {
		// The calls to supersede are those ended before this start
		// (listed before the loop below ends the others); they are
		// superseded after it, once it has released the open calls'
		// holds: a superseded close's extra charge is capped by the
		// available balance (chargeExtra), and holds about to be released
		// are not a reason to cap it.
		ended := l.endedElsewhere()
		ids := make([]string, 0, len(l.calls))
		for id := range l.calls {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			c := l.calls[id]
			if s, ok := l.opts.SettledElsewhere[id]; ok {
				l.settleElsewhere(t, l.orgs[c.Org], c, s, true)
				continue
			}
			if l.opts.LastReaped && c.Answered() && !c.Free {
				l.settleElsewhere(t, l.orgs[c.Org], c, Settled{Charge: c.Charge, PoolMinutes: c.PoolMinutes}, false)
				unrecorded = append(unrecorded, c.ID)
				continue
			}
			end := CallEnd{At: c.LastAt, Reason: ReasonRestart}
			if c.Answered() && !c.Expires.IsZero() && t.at.After(c.Expires) {
				// Its session expired while no process was up: it ended
				// then, billed to its last proof of life (liveness.go).
				alive := c.Alive
				if alive.Before(c.Answer) {
					alive = c.Answer
				}
				end = CallEnd{At: c.Expires, Reason: ReasonSessionExpired, BillTo: alive}
			}
			settled = append(settled, l.end(t, l.orgs[c.Org], c, end))
		}
		var err error
		superseded, err = l.supersedeEnded(t, ended) // adopt_pending.go
		return err
	})
	if err != nil {
		return fmt.Errorf("settle calls left open by the last run: %w", err)
	}
	for _, cdr := range superseded {
		l.log.Warn("a call this node closed before it died was reaped as live by a survivor, whose CDR is the one of record; this node's own CDR is replaced by a settled-elsewhere marker",
			"call_id", cdr.CallID, "org", cdr.Org, "local_charge", cdr.Charge.String(), "survivor_charge", l.opts.SettledElsewhere[cdr.CallID].Charge.String())
	}
	for _, id := range unrecorded {
		l.log.Warn("released a call left open whose takeover record never landed (its incarnation was reaped)", "call_id", id)
	}
	for _, cdr := range settled {
		l.log.Warn("settled call left open by the last run", "call_id", cdr.CallID, "org", cdr.Org,
			"billed_s", cdr.BilledS, "charge", cdr.Charge.String())
	}
	return nil
}

// do runs one operation: fn checks it against the current state and, only
// if it is acceptable, changes memory and records its writes. do then queues
// the writes for the next group commit and waits until they are durable. An
// operation that writes nothing (the retry of one already applied) waits for
// everything before it to be durable, so its answer is durable too.
func (l *Ledger) do(op Op, at time.Time, fn func(t *txn) error) (Op, error) {
	l.mu.Lock()
	if err := l.c.err(); err != nil {
		l.mu.Unlock()
		return op, err
	}
	t := &txn{seq: l.seq + 1, at: at}
	op.At = at
	err := fn(t)
	if err == nil && len(t.ws) > 0 {
		l.seq = max(t.seq, t.last)
		op.Seq = t.seq
	} else {
		t.seq = 0
	}
	op.Err = err
	if err == nil {
		op.Err = t.after
		op.Result = t.result
	}
	if l.trace != nil {
		l.trace(op)
	}
	if err != nil {
		l.mu.Unlock()
		return op, err
	}
	enc := newEncoding()
	done := l.c.enqueue(max(t.seq, t.last), t.ws, enc)
	l.mu.Unlock()
	// Encoding is most of an operation's CPU; done here, outside the lock,
	// callers encode in parallel while the order stays the lock's.
	enc.do(t.ws)
	if t.unsynced {
		// done is buffered: the committer's answer is dropped, and a
		// failure it reports fails every later operation (l.c.err).
		return op, t.after
	}
	if err := <-done; err != nil {
		return op, err
	}
	// Only now: a payer or sender woken earlier could act on what a crash
	// would still undo.
	if t.wakePayer {
		signal(l.payerWake)
	}
	if t.wakeOutbox {
		signal(l.outboxWake)
	}
	return op, t.after
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidID reports whether s may name an org, user, trunk or call.
func ValidID(s string) bool { return idRE.MatchString(s) }

// Err is non-nil once the ledger has failed a durable write and refuses all
// changes until restarted (readiness checks report it).
func (l *Ledger) Err() error { return l.c.err() }
