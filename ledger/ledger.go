// Package ledger keeps the money: orgs and their Communications Credits,
// users and their numbers and licenses, holds taken by calls and the debits
// they turn into, and the CDRs of ended calls.
//
// State lives in memory for speed and is made durable in Pebble before any
// change is acknowledged: each change is an event in an ordered log, written
// in a synced batch shared with every other change queued at the same time
// (group commit). Open replays the log, then settles every call that was up
// when the process stopped (SPEC §3: the started increment counts, the rest
// of its hold is released).
package ledger

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	// MinFunding is the smallest one-time funding accepted (SPEC: 50.00).
	MinFunding decimal.Decimal
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
)

// Ledger is safe for concurrent use.
//
// One mutex guards all in-memory state. Every operation under it is a few map
// lookups and decimal additions; the slow part, the fsync, happens in the
// committer without the lock, so one lock is enough for the call rates a
// single gateway handles (see the ledger benchmark).
type Ledger struct {
	opts Options
	db   *pebble.DB
	c    *committer
	log  *slog.Logger

	mu       sync.Mutex
	seq      uint64
	orgs     map[string]*Org
	users    map[string]*User // key org + "/" + user
	numbers  map[string]string
	trunks   map[string]Trunk
	deck     []byte
	calls    map[string]*Call
	fundKeys map[string]string // org/key → "amount"
	cdrs     map[string][]CDR
	entries  map[string][]Entry

	debits      prometheus.Counter
	commitHisto prometheus.Histogram
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
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	db, err := openPebble(dir, opts.FS)
	if err != nil {
		return nil, fmt.Errorf("open ledger store %s: %w", dir, err)
	}
	l := &Ledger{
		opts: opts, db: db, log: opts.Logger,
		orgs: map[string]*Org{}, users: map[string]*User{}, numbers: map[string]string{},
		trunks: map[string]Trunk{}, calls: map[string]*Call{}, fundKeys: map[string]string{},
		cdrs: map[string][]CDR{}, entries: map[string][]Entry{},
		debits: prometheus.NewCounter(prometheus.CounterOpts{Name: "creditgate_debits_total",
			Help: "Billing increments committed (debited) from org balances."}),
		commitHisto: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "creditgate_ledger_commit_seconds",
			Help:    "Time of one synced group commit of ledger events to Pebble.",
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
	if err := l.replay(); err != nil {
		_ = db.Close()
		return nil, err
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

func (l *Ledger) replay() error {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: eventPrefix, UpperBound: []byte("e0")})
	if err != nil {
		return fmt.Errorf("replay ledger: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var e event
		dec := json.NewDecoder(bytes.NewReader(it.Value()))
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("replay ledger event %x: %w", it.Key(), err)
		}
		if e.Seq != l.seq+1 {
			return fmt.Errorf("replay ledger: event %d follows %d: the log has a gap", e.Seq, l.seq)
		}
		if err := l.apply(&e); err != nil {
			return fmt.Errorf("replay ledger event %d (%s): %w", e.Seq, e.Kind, err)
		}
		l.seq = e.Seq
	}
	return it.Error()
}

// settleOpenCalls ends, on start, every call the previous process left open.
// Answered calls pay the increment they had started (it was held, so the
// money is there); unanswered ones cost nothing.
func (l *Ledger) settleOpenCalls() error {
	l.mu.Lock()
	ids := make([]string, 0, len(l.calls))
	for id := range l.calls {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		l.mu.Lock()
		at := l.calls[id].LastAt
		l.mu.Unlock()
		cdr, err := l.CloseCall(id, CallEnd{At: at, Reason: ReasonRestart})
		if err != nil {
			return fmt.Errorf("settle call %s left open by the last run: %w", id, err)
		}
		l.log.Warn("settled call left open by the last run", "call_id", id, "org", cdr.Org, "charge", cdr.Charge.String())
	}
	return nil
}

// commit applies e in memory and queues it for the next group commit, then
// waits until it is durable. A refused event changes nothing.
func (l *Ledger) commit(e *event) error {
	l.mu.Lock()
	if err := l.c.err(); err != nil {
		l.mu.Unlock()
		return err
	}
	e.Seq = l.seq + 1
	if err := l.apply(e); err != nil {
		l.mu.Unlock()
		return err
	}
	l.seq = e.Seq
	done := l.c.enqueue(eventKey(e.Seq), encodeEvent(e))
	l.mu.Unlock()
	return <-done
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidID reports whether s may name an org, user, trunk or call.
func ValidID(s string) bool { return idRE.MatchString(s) }

// apply checks e against the current state and, only if it is acceptable,
// changes the state. It is the single place where state changes, used both
// live and on replay.
func (l *Ledger) apply(e *event) error {
	switch e.Kind {
	case evOrg:
		o := *e.Org
		if _, ok := l.orgs[o.ID]; ok {
			return fmt.Errorf("%w: %s", ErrOrgExists, o.ID)
		}
		o.Balance, o.Held, o.Funded, o.Debited = decimal.Zero, decimal.Zero, decimal.Zero, decimal.Zero
		l.orgs[o.ID] = &o
	case evUser:
		u := *e.User
		if _, ok := l.orgs[u.Org]; !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, u.Org)
		}
		key := u.Org + "/" + u.ID
		for _, n := range u.Numbers {
			if owner, ok := l.numbers[n]; ok && owner != key {
				return fmt.Errorf("%w: +%s belongs to %s", ErrNumberTaken, n, owner)
			}
		}
		if old, ok := l.users[key]; ok {
			for _, n := range old.Numbers {
				delete(l.numbers, n)
			}
		}
		for _, n := range u.Numbers {
			l.numbers[n] = key
		}
		l.users[key] = &u
	case evTrunk:
		if e.Trunk.Org != "" {
			if _, ok := l.orgs[e.Trunk.Org]; !ok {
				return fmt.Errorf("%w: %s", ErrUnknownOrg, e.Trunk.Org)
			}
		}
		l.trunks[e.Trunk.ID] = *e.Trunk
	case evDeck:
		l.deck = e.Deck
	case evFund:
		o, ok := l.orgs[e.OrgID]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, e.OrgID)
		}
		fk := e.OrgID + "/" + e.Key
		if prev, ok := l.fundKeys[fk]; ok {
			return fmt.Errorf("%w: %q funded %s already; nothing changed", ErrDuplicateFunding, e.Key, prev)
		}
		if !e.Amount.IsPositive() {
			return invalidf("funding amount %s is not positive", e.Amount)
		}
		o.Balance = o.Balance.Add(e.Amount)
		o.Funded = o.Funded.Add(e.Amount)
		l.fundKeys[fk] = e.Amount.String()
		l.addEntry(o, Entry{Seq: e.Seq, At: e.At, Kind: EntryFunding, Amount: e.Amount, Key: e.Key})
	case evOpen:
		c := *e.Call
		o, ok := l.orgs[c.Org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, c.Org)
		}
		if _, dup := l.calls[c.ID]; dup {
			return invalidf("call %s is already open", c.ID)
		}
		if c.Hold.IsNegative() {
			return invalidf("negative hold %s", c.Hold)
		}
		if o.Available().LessThan(c.Hold) {
			return ErrInsufficientCredit
		}
		o.Held = o.Held.Add(c.Hold)
		c.Charge = decimal.Zero
		c.Increments = 0
		if c.Hold.IsPositive() {
			c.Increments = 1
		}
		c.LastAt = e.At
		l.calls[c.ID] = &c
	case evAnswer:
		c, ok := l.calls[e.CallID]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownCall, e.CallID)
		}
		if c.Answered() {
			return invalidf("call %s already answered", e.CallID)
		}
		c.Answer = e.At
		c.LastAt = e.At
	case evRenew:
		// Commit the held increment, then hold the next one (Amount) if the
		// org can pay it. The commit happens either way: the increment was
		// used. A zero Amount records "could not hold the next one".
		c, ok := l.calls[e.CallID]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownCall, e.CallID)
		}
		if !c.Answered() {
			return invalidf("call %s renewed before answer", e.CallID)
		}
		o := l.orgs[c.Org]
		if e.Amount.IsNegative() {
			return invalidf("negative hold %s", e.Amount)
		}
		// Committing moves the hold from held to spent, which leaves
		// available unchanged, so the next hold must fit in available.
		if e.Amount.GreaterThan(o.Available()) {
			return ErrInsufficientCredit
		}
		l.commitHold(o, c, e)
		if e.Amount.IsPositive() {
			o.Held = o.Held.Add(e.Amount)
			c.Hold = e.Amount
			c.Increments++
		}
		c.LastAt = e.At
	case evClose:
		c, ok := l.calls[e.CallID]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownCall, e.CallID)
		}
		o := l.orgs[c.Org]
		if c.Answered() {
			l.commitHold(o, c, e)
		} else {
			o.Held = o.Held.Sub(c.Hold)
			c.Hold = decimal.Zero
			c.Increments = 0
		}
		cdr := *e.End
		cdr.Charge = c.Charge
		cdr.BilledS = c.BilledSeconds()
		l.cdrs[c.Org] = append(l.cdrs[c.Org], cdr)
		delete(l.calls, c.ID)
	default:
		return fmt.Errorf("unknown event kind %q", e.Kind)
	}
	return nil
}

// commitHold turns a call's hold into a debit of the same amount.
func (l *Ledger) commitHold(o *Org, c *Call, e *event) {
	if !c.Hold.IsPositive() {
		return
	}
	o.Held = o.Held.Sub(c.Hold)
	o.Balance = o.Balance.Sub(c.Hold)
	o.Debited = o.Debited.Add(c.Hold)
	c.Charge = c.Charge.Add(c.Hold)
	l.addEntry(o, Entry{Seq: e.Seq, At: e.At, Kind: EntryDebit, Amount: c.Hold.Neg(), CallID: c.ID})
	c.Hold = decimal.Zero
	l.debits.Inc()
}

func (l *Ledger) addEntry(o *Org, en Entry) {
	en.Balance = o.Balance
	l.entries[o.ID] = append(l.entries[o.ID], en)
}

// CreateOrg adds an org with a zero balance.
func (l *Ledger) CreateOrg(o Org) (Org, error) {
	if !ValidID(o.ID) {
		return Org{}, invalidf("org id %q: want 1 to %d letters, digits, '.', '_' or '-'", o.ID, MaxIDLength)
	}
	if o.Currency == "" {
		o.Currency = "USD"
	}
	if len(o.Currency) != 3 || !isUpper(o.Currency) {
		return Org{}, invalidf("currency %q: want an ISO 4217 code like USD", o.Currency)
	}
	if len(o.Name) > 200 {
		return Org{}, invalidf("name longer than 200 characters")
	}
	o.CreatedAt = l.opts.Now().UTC()
	if err := l.commit(&event{Kind: evOrg, At: o.CreatedAt, Org: &o}); err != nil {
		return Org{}, err
	}
	return l.Org(o.ID)
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
	o, ok := l.orgs[id]
	if !ok {
		return Org{}, fmt.Errorf("%w: %s", ErrUnknownOrg, id)
	}
	return *o, nil
}

// Fund adds a one-time funding. The idempotency key applies once per org:
// a repeated key is refused and changes nothing.
func (l *Ledger) Fund(orgID string, amount decimal.Decimal, key string) (Entry, error) {
	if key == "" || len(key) > 128 {
		return Entry{}, invalidf("idempotency_key: want 1 to 128 characters")
	}
	if amount.LessThan(l.opts.MinFunding) {
		return Entry{}, fmt.Errorf("%w: %s is below the minimum funding of %s", ErrBelowMinimum, amount.StringFixed(2), l.opts.MinFunding.StringFixed(2))
	}
	o, err := l.Org(orgID)
	if err != nil {
		return Entry{}, err
	}
	if o.Region != o.BillingRegion {
		return Entry{}, fmt.Errorf("%w: org %s is in region %q but bills in %q; open a support incident to purchase Communications Credits", ErrRegionMismatch, o.ID, o.Region, o.BillingRegion)
	}
	e := &event{Kind: evFund, At: l.opts.Now().UTC(), OrgID: orgID, Amount: amount, Key: key}
	if err := l.commit(e); err != nil {
		return Entry{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	es := l.entries[orgID]
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].Seq == e.Seq {
			return es[i], nil
		}
	}
	return Entry{}, fmt.Errorf("funding %d not found after commit", e.Seq)
}

// PutUser creates or replaces a user. Numbers are E.164 digits without '+'.
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
	return l.commit(&event{Kind: evUser, At: l.opts.Now().UTC(), User: &u})
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

// PutTrunk creates or replaces a trunk; the gateway validates its fields.
func (l *Ledger) PutTrunk(t Trunk) error {
	if !ValidID(t.ID) {
		return invalidf("trunk id %q: want 1 to %d letters, digits, '.', '_' or '-'", t.ID, MaxIDLength)
	}
	return l.commit(&event{Kind: evTrunk, At: l.opts.Now().UTC(), Trunk: &t})
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
	return l.commit(&event{Kind: evDeck, At: l.opts.Now().UTC(), Deck: slices.Clone(csv)})
}

// Deck returns the stored rate deck, nil if none was uploaded.
func (l *Ledger) Deck() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deck
}

// OpenCall records a call being authorized and holds its first charge
// (connection fee + first increment). Free calls (emergency) hold zero and
// never fail for lack of credit.
func (l *Ledger) OpenCall(c Call, at time.Time) error {
	if c.ID == "" {
		return invalidf("call without id")
	}
	c.Start = at
	return l.commit(&event{Kind: evOpen, At: at, Call: &c})
}

// Answer marks the call answered: from here its hold will be charged.
func (l *Ledger) Answer(callID string, at time.Time) error {
	return l.commit(&event{Kind: evAnswer, At: at, CallID: callID})
}

// Renew debits the increment the call has held and holds the next one
// (next). If the org cannot pay next, the debit still happens and
// ErrInsufficientCredit says the call must end now.
func (l *Ledger) Renew(callID string, at time.Time, next decimal.Decimal) error {
	err := l.commit(&event{Kind: evRenew, At: at, CallID: callID, Amount: next})
	if errors.Is(err, ErrInsufficientCredit) {
		if err2 := l.commit(&event{Kind: evRenew, At: at, CallID: callID}); err2 != nil {
			return err2
		}
		return ErrInsufficientCredit
	}
	return err
}

// CloseCall ends the call: an answered call pays its held increment (the
// started one), an unanswered one releases its hold. It returns the CDR.
func (l *Ledger) CloseCall(callID string, end CallEnd) (CDR, error) {
	l.mu.Lock()
	c, ok := l.calls[callID]
	if !ok {
		l.mu.Unlock()
		return CDR{}, fmt.Errorf("%w: %s", ErrUnknownCall, callID)
	}
	cdr := CDR{CallID: c.ID, Details: c.Details, Start: c.Start.UTC(), End: end.At.UTC(),
		DisconnectReason: end.Reason, SIPStatus: end.SIPStatus}
	if c.Answered() {
		cdr.Answer = c.Answer.UTC()
		if d := end.At.Sub(c.Answer); d > 0 {
			cdr.DurationS = int((d + time.Second - 1) / time.Second)
		}
	}
	l.mu.Unlock()
	if err := l.commit(&event{Kind: evClose, At: end.At, CallID: callID, End: &cdr}); err != nil {
		return CDR{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	list := l.cdrs[cdr.Org]
	return list[len(list)-1], nil
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

// CDRs returns an org's CDRs whose start is in [from, to); zero times mean
// unbounded.
func (l *Ledger) CDRs(org string, from, to time.Time) []CDR {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []CDR
	for _, c := range l.cdrs[org] {
		if (!from.IsZero() && c.Start.Before(from)) || (!to.IsZero() && !c.Start.Before(to)) {
			continue
		}
		out = append(out, c)
	}
	return out
}

// Transactions returns an org's balance movements, oldest first.
func (l *Ledger) Transactions(org string) []Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.entries[org])
}

// CheckInvariants verifies what must always be true of the money. Tests call
// it after every operation; it is cheap enough to call from a health check.
func (l *Ledger) CheckInvariants() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	held := map[string]decimal.Decimal{}
	charged := map[string]decimal.Decimal{}
	for _, c := range l.calls {
		if c.Hold.IsNegative() {
			return fmt.Errorf("call %s holds %s", c.ID, c.Hold)
		}
		held[c.Org] = held[c.Org].Add(c.Hold)
		charged[c.Org] = charged[c.Org].Add(c.Charge)
	}
	for id, o := range l.orgs {
		if !o.Held.Equal(held[id]) {
			return fmt.Errorf("org %s: held %s but its calls hold %s", id, o.Held, held[id])
		}
		if o.Available().IsNegative() {
			return fmt.Errorf("org %s: available %s < 0 (balance %s, held %s)", id, o.Available(), o.Balance, o.Held)
		}
		if !o.Funded.Sub(o.Debited).Equal(o.Balance) {
			return fmt.Errorf("org %s: funded %s − debited %s ≠ balance %s", id, o.Funded, o.Debited, o.Balance)
		}
		var cdrSum, debitSum decimal.Decimal
		for _, c := range l.cdrs[id] {
			cdrSum = cdrSum.Add(c.Charge)
		}
		for _, e := range l.entries[id] {
			if e.Kind == EntryDebit {
				debitSum = debitSum.Sub(e.Amount)
			}
		}
		if !cdrSum.Add(charged[id]).Equal(debitSum) || !debitSum.Equal(o.Debited) {
			return fmt.Errorf("org %s: CDR charges %s + open calls %s ≠ debits %s (debited %s)", id, cdrSum, charged[id], debitSum, o.Debited)
		}
	}
	return nil
}

// Err is non-nil once the ledger has failed a durable write and refuses all
// changes until restarted (readiness checks report it).
func (l *Ledger) Err() error { return l.c.err() }
