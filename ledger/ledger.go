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
	"math"
	"regexp"
	"slices"
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
}

// Limits that keep one org or one hostile client from growing memory without
// bound. Hitting one is a clear refusal.
const (
	MaxNumbersPerUser  = 100
	MaxLicensesPerUser = 8
	MaxIDLength        = 64
	MaxFundingKey      = 128
)

// Ledger is safe for concurrent use.
//
// One mutex guards all in-memory state. Every operation under it is a few map
// lookups, decimal additions and the encoding of the records it changes; the
// slow part, the fsync, happens in the committer without the lock, so one
// lock is enough for the call rates a single gateway handles (see the ledger
// benchmarks).
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
	ended    endedCalls
	dialogs  []Dialog // left by the last run, until the SIP side forgets them

	purchases  map[string]*Purchase     // pending auto-recharge purchases
	outbox     map[string]*Notification // notifications not yet delivered
	payerWake  chan struct{}
	outboxWake chan struct{}

	// trace, when set by tests, sees every operation's outcome in the order
	// the ledger linearized them, under the lock.
	trace func(op Op)

	debits      prometheus.Counter
	commitHisto prometheus.Histogram
}

// orgState is an org with what the ledger derives for it.
type orgState struct {
	Org
	loc      *time.Location
	licensed []int // per plan: users holding one of its licenses
	pools    map[poolKey]*Pool
	purchase *Purchase // the org's pending auto-recharge purchase

	guard         guardState           // what the fraud guard counts
	guardNotified map[string]time.Time // guard → last fraud_guard notification
}

type poolKey struct {
	plan  int
	month string
}

// endedCalls remembers the ids of recently ended calls, so a retried close
// or increment of a call that has just ended is answered as such and a
// reused id is refused. Two generations bound its memory; older ids are
// found on disk (z/ records).
type endedCalls struct {
	cur, prev map[string]string // call id → CDR key
}

const endedGeneration = 1 << 16

func (e *endedCalls) add(id, cdrKey string) {
	if e.cur == nil || len(e.cur) >= endedGeneration {
		e.prev, e.cur = e.cur, make(map[string]string, 1024)
	}
	e.cur[id] = cdrKey
}

func (e *endedCalls) get(id string) (string, bool) {
	if k, ok := e.cur[id]; ok {
		return k, true
	}
	k, ok := e.prev[id]
	return k, ok
}

// Op describes one operation for tracing: what was asked and how it ended.
type Op struct {
	Kind   string
	Org    string
	Call   string
	N      int
	Key    string
	Amount decimal.Decimal
	Seq    uint64 // 0 when refused or when it was a retry of an applied one
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
		trunks: map[string]Trunk{}, tollFree: map[string]TollFree{}, calls: map[string]*Call{}, fundKeys: map[string]Entry{},
		purchases: map[string]*Purchase{}, outbox: map[string]*Notification{},
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

// load reads the live records back into memory.
func (l *Ledger) load() error {
	v, found, err := get(l.db, keySeq)
	if err != nil {
		return err
	}
	if found {
		l.seq = binary.BigEndian.Uint64(v)
	}
	if err := scan(l.db, []byte("o/"), func(_ []byte, o *Org) error {
		os, err := l.newOrgState(*o)
		if err != nil {
			return err
		}
		l.orgs[o.ID] = os
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("b/"), func(k []byte, b *Balances) error {
		if os, ok := l.orgs[string(k[2:])]; ok {
			os.Balances = *b
		}
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("u/"), func(_ []byte, u *User) error {
		l.setUser(u)
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("t/"), func(_ []byte, t *Trunk) error {
		l.trunks[t.ID] = *t
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("f/"), func(_ []byte, tf *TollFree) error {
		l.tollFree[tf.Number] = *tf
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("k/"), func(k []byte, e *Entry) error {
		l.fundKeys[string(k[2:])] = *e
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("a/"), func(_ []byte, c *Call) error {
		l.calls[c.ID] = c
		return nil
	}); err != nil {
		return err
	}
	if err := scan(l.db, []byte("s/"), func(k []byte, st *CallState) error {
		if c, ok := l.calls[string(k[2:])]; ok {
			c.CallState = *st
		}
		return nil
	}); err != nil {
		return err
	}
	for _, c := range l.calls {
		if os, ok := l.orgs[c.Org]; ok {
			os.countCall(c, +1) // settleOpenCalls ends them, and counts them out
		}
	}
	if err := l.loadDialogs(); err != nil {
		return err
	}
	if err := l.loadPurchases(); err != nil {
		return err
	}
	if err := l.loadOutbox(); err != nil {
		return err
	}
	lastMonth := l.opts.Now().UTC().AddDate(0, -1, 0).Format("2006-01")
	if err := scan(l.db, []byte("p/"), func(_ []byte, p *Pool) error {
		os, ok := l.orgs[p.Org]
		i := l.planIndex(p.Plan)
		if !ok || i < 0 {
			return nil // a plan no longer configured keeps its record on disk
		}
		// Months before last one stay on disk only, unless calls still
		// hold their minutes.
		if p.Month >= lastMonth || p.Held > 0 {
			os.setPool(i, p)
		}
		return nil
	}); err != nil {
		return err
	}
	l.deck, _, err = get(l.db, keyDeck)
	return err
}

func (l *Ledger) newOrgState(o Org) (*orgState, error) {
	loc := time.UTC
	if o.Timezone != "" {
		var err error
		if loc, err = time.LoadLocation(o.Timezone); err != nil {
			return nil, invalidf("org %s: timezone %q: %v", o.ID, o.Timezone, err)
		}
	}
	return &orgState{Org: o, loc: loc, licensed: make([]int, len(l.plans))}, nil
}

func (os *orgState) setPool(plan int, p *Pool) {
	if os.pools == nil {
		os.pools = map[poolKey]*Pool{}
	}
	os.pools[poolKey{plan, p.Month}] = p
}

func (l *Ledger) planIndex(name string) int {
	for i, p := range l.plans {
		if p.Name == name {
			return i
		}
	}
	return -1
}

// settleOpenCalls ends, on start, every call the previous process left open,
// in one durable operation however many there are. Answered calls pay the
// increment they had started (it was held, so the money is there);
// unanswered ones cost nothing.
func (l *Ledger) settleOpenCalls() error {
	var settled []CDR
	_, err := l.do(Op{Kind: "settle"}, l.opts.Now(), func(t *txn) error {
		ids := make([]string, 0, len(l.calls))
		for id := range l.calls {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			c := l.calls[id]
			settled = append(settled, l.end(t, l.orgs[c.Org], c, CallEnd{At: c.LastAt, Reason: ReasonRestart}))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("settle calls left open by the last run: %w", err)
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

// CreateOrg adds an org with a zero balance.
func (l *Ledger) CreateOrg(o Org) (Org, error) {
	if !ValidID(o.ID) {
		return Org{}, invalidf("org id %q: want 1 to %d letters, digits, '.', '_' or '-'", o.ID, MaxIDLength)
	}
	if o.Currency == "" {
		o.Currency = "USD"
	}
	if o.BillingRegion == "" {
		o.BillingRegion = o.Region
	}
	if len(o.Currency) != 3 || !isUpper(o.Currency) {
		return Org{}, invalidf("currency %q: want an ISO 4217 code like USD", o.Currency)
	}
	if len(o.Name) > 200 {
		return Org{}, invalidf("name longer than 200 characters")
	}
	if o.Timezone == "UTC" {
		o.Timezone = ""
	}
	if len(o.Timezone) > 64 {
		return Org{}, invalidf("timezone longer than 64 characters")
	}
	o.CreatedAt = l.opts.Now().UTC()
	o.Balances = Balances{Balance: decimal.Zero, Held: decimal.Zero, Funded: decimal.Zero, Debited: decimal.Zero}
	os, err := l.newOrgState(o)
	if err != nil {
		return Org{}, err
	}
	_, err = l.do(Op{Kind: "create_org", Org: o.ID}, o.CreatedAt, func(t *txn) error {
		if _, ok := l.orgs[o.ID]; ok {
			return fmt.Errorf("%w: %s", ErrOrgExists, o.ID)
		}
		l.orgs[o.ID] = os
		t.put(keyOrg(o.ID), os.Org)
		t.put(keyBalances(o.ID), os.Balances)
		return nil
	})
	if err != nil {
		return Org{}, err
	}
	return l.Org(o.ID)
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

// Org returns a copy of the org.
func (l *Ledger) Org(id string) (Org, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	os, ok := l.orgs[id]
	if !ok {
		return Org{}, fmt.Errorf("%w: %s", ErrUnknownOrg, id)
	}
	return os.Org, nil
}

// Pools returns the org's minute pools for the month that contains at (in
// the org's time zone), one per plan, including plans nobody has drawn yet.
func (l *Ledger) Pools(org string, at time.Time) ([]Pool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	os, ok := l.orgs[org]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownOrg, org)
	}
	month := at.In(os.loc).Format("2006-01")
	out := make([]Pool, 0, len(l.plans))
	for i := range l.plans {
		out = append(out, l.peekPool(os, i, month))
	}
	return out, nil
}

// peekPool is the pool of a plan and month as it is or, if no call has drawn
// it yet, as it would be created.
func (l *Ledger) peekPool(os *orgState, plan int, month string) Pool {
	if p, ok := os.pools[poolKey{plan, month}]; ok {
		return *p
	}
	if l.forgettable(month) {
		if p, ok := l.storedPool(os.ID, l.plans[plan].Name, month); ok {
			return p
		}
	}
	n := os.licensed[plan] * l.plans[plan].Minutes
	return Pool{Org: os.ID, Plan: l.plans[plan].Name, Month: month, Licensed: n, Total: n}
}

// forgettable reports whether memory may have dropped a month's pools. It
// keeps every month from the previous one on (load and pool see to that),
// so deciding a hold in the current month never reads the disk under the
// lock; two months of margin cover org time zones against UTC.
func (l *Ledger) forgettable(month string) bool {
	return month < l.opts.Now().UTC().AddDate(0, -2, 0).Format("2006-01")
}

// storedPool reads a month memory no longer keeps. Memory drops a month
// only two months after it ended and once nothing holds its minutes, so its
// record on disk is final.
func (l *Ledger) storedPool(org, plan, month string) (Pool, bool) {
	var p Pool
	found, err := getRecord(l.db, keyPool(&Pool{Org: org, Plan: plan, Month: month}), &p)
	return p, found && err == nil
}

// pool returns the pool, creating it if this is its month's first use and
// forgetting months before the previous one that nobody holds minutes of.
func (l *Ledger) pool(os *orgState, plan int, month string) *Pool {
	if p, ok := os.pools[poolKey{plan, month}]; ok {
		return p
	}
	p := l.peekPool(os, plan, month)
	if m, err := time.Parse("2006-01", month); err == nil {
		keep := m.AddDate(0, -1, 0).Format("2006-01")
		for k, old := range os.pools {
			if k.plan == plan && k.month < keep && old.Held == 0 {
				delete(os.pools, k)
			}
		}
	}
	os.setPool(plan, &p)
	return &p
}

// Fund adds a one-time funding. The idempotency key applies once per org: a
// retry with the same key and amount changes nothing and returns the entry
// the first one made (Replayed set); the same key with another amount is
// refused.
func (l *Ledger) Fund(orgID string, amount decimal.Decimal, key string) (Entry, error) {
	return l.FundAcrossRegions(orgID, amount, key, "")
}

// FundAcrossRegions is Fund that, when incident names a support incident,
// accepts a funding for an org whose region differs from its billing region
// (README, Funding: such purchases are refused until support resolves it). The
// incident is kept in the entry and logged.
func (l *Ledger) FundAcrossRegions(orgID string, amount decimal.Decimal, key, incident string) (Entry, error) {
	if key == "" || len(key) > MaxFundingKey {
		return Entry{}, invalidf("idempotency_key: want 1 to %d characters", MaxFundingKey)
	}
	if len(incident) > 128 {
		return Entry{}, invalidf("incident: at most 128 characters")
	}
	if amount.LessThan(l.opts.MinFunding) {
		return Entry{}, fmt.Errorf("%w: %s is below the minimum funding of %s", ErrBelowMinimum, amount.StringFixed(2), l.opts.MinFunding.StringFixed(2))
	}
	var en Entry
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "fund", Org: orgID, Key: key, Amount: amount}, at, func(t *txn) error {
		os, ok := l.orgs[orgID]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, orgID)
		}
		fk := orgID + "/" + key
		if prev, ok := l.fundKeys[fk]; ok {
			if prev.Kind == EntryFunding && prev.Amount.Equal(amount) {
				en = prev
				en.Replayed = true
				return nil
			}
			return fmt.Errorf("%w: %q funded %s at %s already; nothing changed", ErrDuplicateFunding, key, prev.Amount, prev.At.Format(time.RFC3339))
		}
		if os.Region != os.BillingRegion {
			if incident == "" {
				return fmt.Errorf("%w: org %s is in region %q but bills in %q; open a support incident to purchase Communications Credits", ErrRegionMismatch, os.ID, os.Region, os.BillingRegion)
			}
			l.log.Warn("funding allowed across regions by a support incident", "org", orgID, "region", os.Region,
				"billing_region", os.BillingRegion, "incident", incident, "amount", amount.String(), "idempotency_key", key)
		} else {
			incident = ""
		}
		os.Balance = os.Balance.Add(amount)
		os.Funded = os.Funded.Add(amount)
		en = Entry{Seq: t.entrySeq(), At: at, Kind: EntryFunding, Amount: amount, Balance: os.Balance, Key: key, Incident: incident}
		l.fundKeys[fk] = en
		t.put(keyBalances(orgID), os.Balances)
		t.put(keyEntry(orgID, en.Seq), en)
		t.put(keyFunding(orgID, key), en)
		return nil
	})
	return en, err
}

// PutUser creates or replaces a user. Numbers are E.164 digits without '+'.
// The org's minute pools of this month follow its licenses.
func (l *Ledger) PutUser(u User) error {
	if !ValidID(u.ID) {
		return invalidf("user id %q: want 1 to %d letters, digits, '.', '_' or '-'", u.ID, MaxIDLength)
	}
	if len(u.Numbers) > MaxNumbersPerUser {
		return invalidf("more than %d numbers", MaxNumbersPerUser)
	}
	if len(u.Licenses) > MaxLicensesPerUser {
		return invalidf("more than %d licenses", MaxLicensesPerUser)
	}
	u.Numbers = slices.Compact(slices.Sorted(slices.Values(u.Numbers)))
	u.Licenses = slices.Compact(slices.Sorted(slices.Values(u.Licenses)))
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "put_user", Org: u.Org, Key: u.ID}, at, func(t *txn) error {
		os, ok := l.orgs[u.Org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, u.Org)
		}
		key := u.Org + "/" + u.ID
		for _, n := range u.Numbers {
			if owner, ok := l.numbers[n]; ok && owner != key {
				return fmt.Errorf("%w: +%s belongs to %s", ErrNumberTaken, n, owner)
			}
			if tf, ok := l.tollFree[n]; ok {
				return fmt.Errorf("%w: +%s is a toll-free number of org %s", ErrNumberTaken, n, tf.Org)
			}
		}
		before := slices.Clone(os.licensed)
		l.setUser(&u)
		t.put(keyUser(u.Org, u.ID), u)
		month := at.In(os.loc).Format("2006-01")
		for i, n := range os.licensed {
			if n == before[i] {
				continue
			}
			p := l.pool(os, i, month)
			p.Licensed = n * l.plans[i].Minutes
			p.Total = max(p.Licensed, p.Used+p.Held)
			t.put(keyPool(p), *p)
		}
		return nil
	})
	return err
}

// setUser replaces a user in memory: its numbers and its org's license counts.
func (l *Ledger) setUser(u *User) {
	key := u.Org + "/" + u.ID
	os := l.orgs[u.Org]
	if old, ok := l.users[key]; ok {
		for _, n := range old.Numbers {
			delete(l.numbers, n)
		}
		if os != nil {
			l.countLicenses(os, old, -1)
		}
	}
	for _, n := range u.Numbers {
		l.numbers[n] = key
	}
	if os != nil {
		l.countLicenses(os, u, +1)
	}
	l.users[key] = u
}

func (l *Ledger) countLicenses(os *orgState, u *User, delta int) {
	for i, p := range l.plans {
		for _, lic := range p.Licenses {
			if slices.Contains(u.Licenses, lic) {
				os.licensed[i] += delta
				break
			}
		}
	}
}

// User returns a user of an org.
func (l *Ledger) User(org, id string) (User, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u, ok := l.users[org+"/"+id]
	if !ok {
		return User{}, false
	}
	return *u, true
}

// UserByNumber finds who owns an E.164 number.
func (l *Ledger) UserByNumber(e164 string) (User, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key, ok := l.numbers[e164]
	if !ok {
		return User{}, false
	}
	return *l.users[key], true
}

// SetBlockPremium sets whether the org refuses calls to premium-rate numbers.
func (l *Ledger) SetBlockPremium(org string, block bool) (Org, error) {
	_, err := l.do(Op{Kind: "org_settings", Org: org}, l.opts.Now().UTC(), func(t *txn) error {
		os, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		os.BlockPremium = block
		t.put(keyOrg(org), os.Org)
		return nil
	})
	if err != nil {
		return Org{}, err
	}
	return l.Org(org)
}

// PutTollFree assigns a toll-free number (E.164 digits without '+') to an
// org, or moves its delivery trunk. A number of a user, or of another org,
// is refused.
func (l *Ledger) PutTollFree(tf TollFree) error {
	if tf.Number == "" || len(tf.Number) > 15 || !allDigits(tf.Number) {
		return invalidf("toll-free number %q: want E.164 digits", tf.Number)
	}
	_, err := l.do(Op{Kind: "put_toll_free", Org: tf.Org, Key: tf.Number}, l.opts.Now().UTC(), func(t *txn) error {
		if _, ok := l.orgs[tf.Org]; !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, tf.Org)
		}
		if old, ok := l.tollFree[tf.Number]; ok && old.Org != tf.Org {
			return fmt.Errorf("%w: +%s is a toll-free number of org %s", ErrNumberTaken, tf.Number, old.Org)
		}
		if owner, ok := l.numbers[tf.Number]; ok {
			return fmt.Errorf("%w: +%s belongs to user %s", ErrNumberTaken, tf.Number, owner)
		}
		if tf.Trunk != "" {
			tr, ok := l.trunks[tf.Trunk]
			if !ok || tr.Org != tf.Org {
				return invalidf("trunk %q is not a trunk of org %s", tf.Trunk, tf.Org)
			}
		}
		l.tollFree[tf.Number] = tf
		t.put(keyTollFree(tf.Number), tf)
		return nil
	})
	return err
}

// DeleteTollFree takes a toll-free number away from its org; false if the
// org did not have it.
func (l *Ledger) DeleteTollFree(org, number string) (bool, error) {
	found := false
	_, err := l.do(Op{Kind: "delete_toll_free", Org: org, Key: number}, l.opts.Now().UTC(), func(t *txn) error {
		if tf, ok := l.tollFree[number]; !ok || tf.Org != org {
			return nil
		}
		found = true
		delete(l.tollFree, number)
		t.del(keyTollFree(number))
		return nil
	})
	return found, err
}

// TollFreeOwner finds the org a toll-free number belongs to.
func (l *Ledger) TollFreeOwner(number string) (TollFree, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	tf, ok := l.tollFree[number]
	return tf, ok
}

// TollFreeNumbers lists an org's toll-free numbers, sorted.
func (l *Ledger) TollFreeNumbers(org string) []TollFree {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []TollFree
	for _, tf := range l.tollFree {
		if tf.Org == org {
			out = append(out, tf)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out
}

// PoolsLeft is the minutes each of the org's pools has left in the month
// that contains at — a snapshot for rating's decision; the ledger decides
// again when it holds.
func (l *Ledger) PoolsLeft(org string, at time.Time) (map[string]int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	os, ok := l.orgs[org]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownOrg, org)
	}
	month := at.In(os.loc).Format("2006-01")
	out := make(map[string]int, len(l.plans))
	for i := range l.plans {
		out[l.plans[i].Name] = l.peekPool(os, i, month).Available()
	}
	return out, nil
}

// PutTrunk creates or replaces a trunk; the gateway validates its fields.
func (l *Ledger) PutTrunk(tr Trunk) error {
	if !ValidID(tr.ID) {
		return invalidf("trunk id %q: want 1 to %d letters, digits, '.', '_' or '-'", tr.ID, MaxIDLength)
	}
	_, err := l.do(Op{Kind: "put_trunk", Key: tr.ID}, l.opts.Now().UTC(), func(t *txn) error {
		if tr.Org != "" {
			if _, ok := l.orgs[tr.Org]; !ok {
				return fmt.Errorf("%w: %s", ErrUnknownOrg, tr.Org)
			}
		}
		l.trunks[tr.ID] = tr
		t.put(keyTrunk(tr.ID), tr)
		return nil
	})
	return err
}

// Trunks lists every trunk, sorted by id.
func (l *Ledger) Trunks() []Trunk {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Trunk, 0, len(l.trunks))
	for _, t := range l.trunks {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// PutDeck stores the operator's rate deck (already validated by rating).
func (l *Ledger) PutDeck(csv []byte) error {
	deck := slices.Clone(csv)
	_, err := l.do(Op{Kind: "put_deck"}, l.opts.Now().UTC(), func(t *txn) error {
		l.deck = deck
		t.raw(keyDeck, deck)
		return nil
	})
	return err
}

// Deck returns the stored rate deck, nil if none was uploaded.
func (l *Ledger) Deck() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deck
}

// OpenCalls lists calls the ledger holds money for.
func (l *Ledger) OpenCalls() []Call {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Call, 0, len(l.calls))
	for _, c := range l.calls {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// CDRs returns an org's CDRs whose start is in [from, to), oldest first;
// zero times mean unbounded. They are read from the store, so an org's
// history costs no memory while nobody asks for it.
func (l *Ledger) CDRs(org string, from, to time.Time) ([]CDR, error) {
	var out []CDR
	err := l.EachCDR(org, from, to, func(c *CDR) error {
		out = append(out, *c)
		return nil
	})
	return out, err
}

// EachCDR streams an org's CDRs in [from, to) in start order. A bound
// outside what CheckTime accepts is refused with ErrTimeRange.
func (l *Ledger) EachCDR(org string, from, to time.Time, fn func(*CDR) error) error {
	lo, hi := keyCDRs(org), upperBound(keyCDRs(org))
	if !from.IsZero() {
		k, err := boundKey(from)
		if err != nil {
			return fmt.Errorf("CDRs of %s from: %w", org, err)
		}
		lo = appendTimeKey(keyCDRs(org), k)
	}
	if !to.IsZero() {
		k, err := boundKey(to)
		if err != nil {
			return fmt.Errorf("CDRs of %s to: %w", org, err)
		}
		hi = appendTimeKey(keyCDRs(org), k)
	}
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var c CDR
		if err := decodeRecord(it.Key(), it.Value(), &c); err != nil {
			return err
		}
		if err := fn(&c); err != nil {
			return err
		}
	}
	return it.Error()
}

// Transactions returns up to limit of an org's balance movements with a
// sequence number above after, oldest first.
func (l *Ledger) Transactions(org string, after uint64, limit int) ([]Entry, error) {
	if after == math.MaxUint64 {
		// Nothing comes after the last sequence number; after+1 would wrap
		// to 0 and page from the first entry again.
		return nil, nil
	}
	lo := keyEntry(org, after+1)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: upperBound(keyEntries(org))})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Entry
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		var e Entry
		if err := decodeRecord(it.Key(), it.Value(), &e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, it.Error()
}

// Err is non-nil once the ledger has failed a durable write and refuses all
// changes until restarted (readiness checks report it).
func (l *Ledger) Err() error { return l.c.err() }
