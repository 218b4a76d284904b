package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// Books is ledger.Books for one node of a cluster: each node spends from
// its own Pebble ledger (local), fed by slices of the org's money of record
// in etcd.
//
//   - A hold that does not fit locally first asks etcd synchronously for
//     what it needs (in normal mode a whole slice's worth, in direct mode
//     exactly the shortfall), then is decided again locally; a hold that
//     brings the org's available below its low-water mark starts a
//     background top-up. All of an org's etcd operations on this node are
//     serialized (orgSpend.etcd): one grant in flight per org per node.
//   - Every ReportEvery, one transaction per 60 orgs reports what the node
//     spent (the slice's unspent is set to the local balance: held money
//     counts as unspent until it is committed; a refund after a report
//     makes the balance exceed the slice and moves the difference back
//     from spent), gives back idle orgs' slices and, in direct mode,
//     whatever the node has available.
//   - Direct mode: when an org's unallocated money covers less than
//     DirectBelow of the node's burn, the node gives back its available
//     money and holds each increment on money taken from etcd for exactly
//     that increment, with the org's etcd lock held across the local hold,
//     so no money waits in one node while another node's caller is
//     refused: the last increments are sold exactly, cluster-wide.
//   - Before every hold, Node.Sellable: past the local lease deadline the
//     hold is refused (ErrUnavailable); once fenced, Err is non-nil and
//     every change is refused.
//
// Lock order: poolSpend.etcd (pools_books.go), then orgSpend.etcd, then
// Books.mu. Books.mu is never held across an etcd request or a ledger call;
// orgSpend.etcd and poolSpend.etcd are held across both (the ledger never
// calls back). The report tick takes org and pool locks with TryLock only,
// so it never waits behind a hold.
type Books struct {
	n      *Node
	local  *ledger.Ledger
	shared SharedConfig
	p      SlicePolicy
	clk    clock.Clock
	log    *slog.Logger

	mu     sync.Mutex
	orgs   map[string]*orgSpend  // guarded by mu
	pools  map[string]*poolSpend // guarded by mu; by org/plan/month (pools_books.go)
	failed error                 // guarded by mu; set once fenced or the local ledger failed

	ops opCounters

	// guard queues fraud_guard notifications once per cluster (UseGuard,
	// guard.go), nil until set.
	guard atomic.Pointer[Guard]

	// purchases answers PendingPurchaseOf (UsePurchases), nil until set.
	purchases atomic.Pointer[Purchases]
	rec       *recorder // takeover records (takeover.go)
	// recLatency: record batches' write times (figures only).
	recLatency latencies
	reap       reapState       // the reaper (reap.go)
	ctx        context.Context // cancelled by Close: background work stops
	cancel     context.CancelFunc
	// wg: the tick loop, the top-ups, the record committer, the records
	// landing behind a refused step or a close, the reaper's loops and
	// its reaps' last steps.
	wg sync.WaitGroup
}

type opCounters struct{ grants, returns, reports, reads, charges atomic.Int64 }

// orgSpend is one org's spending on this node.
//
// Invariant (between etcd operations, i.e. whenever etcd is not held):
// slice is this node's slice of the org as etcd has it (nil: none), and the
// local ledger's balance of the org is slice.Unspent() minus what the node
// spent since its last report plus what it was refunded since: the
// difference is exactly what the next report moves to spent.
type orgSpend struct {
	id string
	// etcd serializes the org's etcd operations on this node, and the
	// local slice movements each one implies (one grant in flight).
	etcd sync.Mutex

	// Guarded by Books.mu:
	slice    *Slice
	acct     Account // as last read or written by this node
	known    bool    // acct was read at least once
	direct   bool
	burn     decimal.Decimal // money per second, smoothed over report ticks
	used     decimal.Decimal // local Debited + Held at the last tick
	usedAt   time.Time
	active   time.Time // last hold, step or close of the org on this node
	topping  bool      // a background top-up is in flight
	lastSeen time.Time // last Org/Money read of the cluster balance
	// back is money returned in the local ledger (movement backMove of
	// slice) that etcd has not taken back yet: its give-back failed. It
	// is still in the slice's unspent in etcd, so every report counts it
	// as had, and the next etcd operation of the org completes it first.
	back     decimal.Decimal
	backMove int64
	// unsure: an etcd operation failed without saying whether it landed
	// (a timeout, a lost connection); the next one first reads the slice
	// back and adopts what etcd has (reconcile).
	unsure bool
	// asOf is the local ledger sequence number of the last balance a
	// landed write set the slice to (takeover.go).
	asOf uint64

	// gate orders the org's local charge changes against the balance
	// reads that reports send (takeover.go, landGate). Invariant: a step
	// or close enters it before its local change and leaves once its
	// takeover record has landed in etcd (or failed: the books then failed
	// closed); balanceAsOf reads the balance and the ledger's sequence
	// number, then waits until every change that entered before the read
	// has left, before anything is sent. So every charge change at or
	// before a reported AsOf is in a landed record. A waiting read never
	// stops a change from entering: a report waiting out an etcd leader
	// election holds up no call's step or close. Lock order: its mutex is
	// a leaf (never held across anything).
	gate landGate
}

var _ ledger.Books = (*Books)(nil)

// maxShare caps a grant at half of what is unallocated (unless a hold
// needs more): a node with a burst of calls cannot take all of an org's
// money into its slice and push the other nodes into direct mode.
var maxShare = decimal.RequireFromString("0.5")

// burnSmoothing is the time constant of the burn's moving average.
const burnSmoothing = 15 * time.Second

// maxHoldAttempts bounds the local-hold / etcd-fill rounds of one hold: a
// concurrent hold on this node may take what a fill brought. Each round
// moves money from etcd's unallocated to this node, so in a burst the
// rounds end with the hold made or etcd saying the org has no more (a true
// refusal); the bound only keeps a hold from spinning. 4 was too few: in
// 30-call bursts on 3 nodes some holds were refused "not enough credit"
// while the org had money (cluster/guard_test.go counted them).
const maxHoldAttempts = 16

// NewBooks starts spending for node n from its local ledger (opened, so
// calls the last run left up are settled already). It first settles what
// the node's last incarnation left in etcd (see settleRestart) — after a
// crash that waits until etcd has expired the old lease, up to about
// LeaseTTL — then starts the report tick. Admin changes go to shared.
// Close stops it; the node is the caller's to close after that.
func NewBooks(n *Node, local *ledger.Ledger, shared SharedConfig, p SlicePolicy, clk clock.Clock, log *slog.Logger) (*Books, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Books{n: n, local: local, shared: shared, p: p, clk: clk, log: log, orgs: map[string]*orgSpend{}, pools: map[string]*poolSpend{}, ctx: ctx, cancel: cancel,
		rec: newRecorder()}
	b.reap.ctx, b.reap.cancel = context.WithCancel(ctx)
	// The ledger holds pool minutes only as far as etcd granted them
	// (pools_books.go), from before the first call; and it starts no
	// auto-recharge purchase from a slice's balance (the cluster's payer
	// decides from etcd, payer.go).
	local.LimitPools()
	local.SliceOnly()
	if err := b.settleRestart(ctx); err != nil {
		cancel()
		return nil, err
	}
	if err := b.settlePools(ctx); err != nil {
		cancel()
		return nil, err
	}
	if err := b.finishRejoin(ctx); err != nil {
		cancel()
		return nil, err
	}
	b.wg.Add(2)
	go b.tickLoop()
	go b.commitLoop()
	return b, nil
}

// Ops are the etcd operations made so far.
func (b *Books) Ops() OpCounts {
	return OpCounts{Grants: b.ops.grants.Load(), Returns: b.ops.returns.Load(), Reports: b.ops.reports.Load(),
		Reads: b.ops.reads.Load(), Charges: b.ops.charges.Load()}
}

// Close stops the tick and the top-ups, then gives every slice's money
// back: available money to unallocated, money still held (calls up: the
// gateway ends them first) to spent, and deletes the slices; and every
// pool's unused minutes (pools_books.go). The node
// itself is the caller's to close afterwards.
func (b *Books) Close(ctx context.Context) error {
	// Cancelled under mu: maybeTopUp adds to wg only under mu and before
	// the cancel, so Wait never races an Add.
	b.mu.Lock()
	b.cancel()
	b.mu.Unlock()
	b.wg.Wait()
	if b.Err() != nil {
		return nil // fenced or failed: nothing may be written; the survivors reclaim
	}
	var errs []error
	for _, o := range b.orgList() {
		o.etcd.Lock()
		if err := b.giveBack(ctx, o, true); err != nil {
			errs = append(errs, err)
		}
		o.etcd.Unlock()
	}
	if err := b.closePools(ctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		// Every slice went back with the calls' money in it: the takeover
		// records have nothing left to settle.
		if err := b.dropAllRecords(ctx); err != nil {
			errs = append(errs, fmt.Errorf("delete takeover records: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (b *Books) orgList() []*orgSpend {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*orgSpend, 0, len(b.orgs))
	for _, o := range b.orgs {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

func (b *Books) org(id string) *orgSpend {
	b.mu.Lock()
	defer b.mu.Unlock()
	o, ok := b.orgs[id]
	if !ok {
		o = &orgSpend{id: id, burn: decimal.Zero, used: decimal.Zero}
		b.orgs[id] = o
	}
	return o
}

// Err is non-nil (wrapping ledger.ErrUnavailable) once the node is fenced
// or the local ledger failed.
func (b *Books) Err() error {
	b.mu.Lock()
	f := b.failed
	b.mu.Unlock()
	if f != nil {
		return f
	}
	return b.local.Err()
}

// fail records an etcd error: a fenced node fails closed for good.
func (b *Books) fail(err error) error {
	if errors.Is(err, ErrFenced) {
		b.mu.Lock()
		if b.failed == nil {
			b.failed = fmt.Errorf("%w: %w", ledger.ErrUnavailable, err)
		}
		b.mu.Unlock()
	}
	if errors.Is(err, ledger.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ledger.ErrUnavailable, err)
}

// sellable refuses a hold: once failed, past the local lease deadline, or
// fenced.
func (b *Books) sellable() error {
	if err := b.Err(); err != nil {
		return err
	}
	if err := b.n.Sellable(); err != nil {
		if errors.Is(err, ErrFenced) {
			return b.fail(err)
		}
		return fmt.Errorf("%w: %w", ledger.ErrUnavailable, err)
	}
	return nil
}

// OpenCall holds the call's first increment on this node's money, asking
// etcd for what it lacks first (see Books); a call with a plan first gets
// a minute of the cluster's pool into this node's allowance, if there is
// one (pools_books.go). Free calls hold nothing and are never refused for
// the cluster's sake.
func (b *Books) OpenCall(c ledger.Call, at time.Time) (ledger.Increment, error) {
	if c.Free {
		return b.local.OpenCall(c, at)
	}
	if err := b.sellable(); err != nil {
		return ledger.Increment{}, fmt.Errorf("open call %s: %w", c.ID, err)
	}
	if !ledger.ValidID(c.Org) {
		return b.local.OpenCall(c, at) // the ledger names what is wrong
	}
	if c.Plan != "" {
		done, err := b.preparePool(c.Org, c.Plan, at)
		if err != nil {
			return ledger.Increment{}, fmt.Errorf("open call %s: %w", c.ID, err)
		}
		defer done()
	}
	o := b.org(c.Org)
	b.touch(o)
	need := func() decimal.Decimal {
		r := rating.Rate{PerMinute: c.RatePerMinute, ConnectionFee: c.ConnectionFee,
			FirstIncrement: time.Duration(c.FirstIncrement) * time.Second, NextIncrement: time.Duration(c.NextIncrement) * time.Second}
		return r.FirstCharge()
	}
	var inc ledger.Increment
	err := b.hold(o, need, func() error {
		var err error
		inc, err = b.local.OpenCall(c, at)
		return err
	})
	return inc, err
}

// Step is StepAlive, alive now.
func (b *Books) Step(callID string, n int, at time.Time) (ledger.Increment, error) {
	return b.StepAlive(callID, n, at, ledger.Liveness{})
}

// StepAlive commits increment n and holds n+1 on this node's money, asking
// etcd for what it lacks first, and returns once the call's takeover
// record has landed (StepPending, waited for). Past the local lease
// deadline, or fenced, it refuses before anything changes (an
// ErrUnavailable the gateway ends the call on: CloseCall then pays
// increment n, which was held).
func (b *Books) StepAlive(callID string, n int, at time.Time, live ledger.Liveness) (ledger.Increment, error) {
	inc, landed, err := b.StepPending(callID, n, at, live)
	if err != nil || landed == nil {
		return inc, err
	}
	if err := <-landed; err != nil {
		return ledger.Increment{}, err
	}
	return inc, nil
}

// StepPending is StepAlive without the wait for the takeover record: it
// returns once the step is decided and committed in the local ledger
// (durable on this node's disk), with landed, which yields exactly once:
// nil when the call's record covering the increment returned is in etcd,
// or the error that failed the books closed (a record that could not
// land within commitRetrying's deadline). landed is nil when there is
// nothing to wait for (a refusal, a call without a record). The gateway
// waits for it without holding its call's lock (gateway/call.go), so a
// hang-up or the next increment's end during an etcd leader election is
// not held up by it.
//
// Until landed yields, etcd's record of the call says less than the
// local ledger: should the node die meanwhile, a survivor ends the call at
// once (its recorded paid-through time is past) and bills what the landed
// record says, never what was not recorded (the slice's unreported spend
// cannot include this step either: reports wait for it, orgSpend.gate).
// A step's money decision is made here and stays exact; it needs etcd
// itself only when the node's slice cannot pay (a grant, or direct mode),
// and then waits for etcd before it returns.
func (b *Books) StepPending(callID string, n int, at time.Time, live ledger.Liveness) (ledger.Increment, <-chan error, error) {
	if err := b.sellable(); err != nil {
		return ledger.Increment{}, nil, fmt.Errorf("step call %s: %w", callID, err)
	}
	if org, plan, ok := b.local.CallPool(callID); ok {
		done, err := b.preparePool(org, plan, at)
		if err != nil {
			return ledger.Increment{}, nil, fmt.Errorf("step call %s: %w", callID, err)
		}
		defer done()
	}
	org, _, credits := b.local.NextCredit(callID)
	if !credits {
		c, _, up := b.local.CallAsOf(callID)
		if !up {
			inc, err := b.local.StepAlive(callID, n, at, live) // the ledger says why
			return inc, nil, err
		}
		return b.stepRecorded(b.org(c.Org), callID, n, at, live)
	}
	o := b.org(org)
	b.touch(o)
	need := func() decimal.Decimal {
		_, price, _ := b.local.NextCredit(callID)
		return price
	}
	var inc ledger.Increment
	var landed <-chan error
	err := b.hold(o, need, func() error {
		var err error
		inc, landed, err = b.stepRecorded(o, callID, n, at, live)
		return err
	})
	if err != nil {
		return inc, nil, err
	}
	return inc, landed, nil
}

// keep says whether the org's slice stays in etcd at zero unspent: while
// the node has calls of the org up (a refund may follow).
func (b *Books) keep(o *orgSpend) bool { return b.local.CallsUp(o.id) > 0 }

// hold runs try (a local hold) and, while it is refused for want of
// credit, fills the org from etcd and tries again. In direct mode the
// org's etcd lock is held across fill and hold, so the money taken for this
// hold is this hold's.
func (b *Books) hold(o *orgSpend, need func() decimal.Decimal, try func() error) error {
	var err error
	for attempt := 0; attempt < maxHoldAttempts; attempt++ {
		b.mu.Lock()
		direct := o.direct
		b.mu.Unlock()
		if direct {
			o.etcd.Lock()
		}
		err = try()
		if !errors.Is(err, ledger.ErrInsufficientCredit) {
			if direct {
				o.etcd.Unlock()
			}
			if err == nil {
				b.maybeTopUp(o)
			}
			return err
		}
		if !direct {
			o.etcd.Lock()
		}
		ferr := b.fill(o, need())
		if ferr == nil && direct {
			err = try()
		}
		o.etcd.Unlock()
		if ferr != nil {
			if errors.Is(ferr, ErrInsufficientCredit) {
				return err // the ledger's refusal: the org has no more
			}
			return ferr
		}
		if direct {
			if err == nil {
				return nil
			}
			if !errors.Is(err, ledger.ErrInsufficientCredit) {
				return err
			}
		}
		if serr := b.sellable(); serr != nil {
			return serr
		}
	}
	return err
}

// decideMode switches the org to direct mode when its unallocated money
// covers less than DirectBelow of the node's burn (or is less than
// MinSlice), and back once it covers twice that.
func (b *Books) decideMode(o *orgSpend) {
	b.mu.Lock()
	t := b.directBelow(o)
	un := o.acct.Unallocated
	switch {
	case !o.direct && un.LessThan(t):
		o.direct = true
	case o.direct && un.GreaterThanOrEqual(t.Add(t)):
		o.direct = false
	}
	b.mu.Unlock()
}

func (b *Books) setDirect(o *orgSpend, direct bool) {
	b.mu.Lock()
	o.direct = direct
	b.mu.Unlock()
}

// Direct reports whether the org is in direct mode on this node.
func (b *Books) Direct(org string) bool {
	o := b.org(org)
	b.mu.Lock()
	defer b.mu.Unlock()
	return o.direct
}

// directBelow and sliceTarget are the policy applied to the org's burn.
// Under b.mu.
func (b *Books) directBelow(o *orgSpend) decimal.Decimal {
	return decimal.Max(b.p.MinSlice, perDuration(o.burn, b.p.DirectBelow))
}

func (b *Books) sliceTarget(o *orgSpend) decimal.Decimal {
	return decimal.Max(b.p.MinSlice, perDuration(o.burn, b.p.SliceBurn)).Round(2)
}

func perDuration(perSecond decimal.Decimal, d time.Duration) decimal.Decimal {
	return perSecond.Mul(decimal.NewFromFloat(d.Seconds()))
}
