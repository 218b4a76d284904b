package ledger

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/shopspring/decimal"
)

// The admin rules, once, and applying a shared configuration.
//
// A cluster node (package cluster's Replica) takes admin changes into etcd
// and applies what etcd holds to its local Ledger. It must refuse exactly
// what the Ledger refuses, with the same errors, so the rules live here and
// both the Ledger's own admin methods and the Replica call them:
//
//   - the stateless ones (PrepareOrg, PrepareUser, ValidateTollFree,
//     ValidateTrunk, ValidateFraudGuard, Contacts.Validate,
//     PrepareAutoRecharge) check and normalise one record;
//   - the stateful ones (CheckPutUser, CheckPutTollFree, CheckPutTrunk,
//     CheckDeleteTrunk, CheckAutoRechargeFor) consult a Directory: the
//     Ledger's own maps under its lock, or the cluster's configuration read
//     at one etcd revision.
//
// Apply is the other direction: it makes the local Ledger hold a record as
// the shared configuration has it, and never refuses a record (the cluster
// decided already); only the disk can fail it (ErrUnavailable). It moves no
// money: an org's balances, its pools' used minutes, its pending purchase
// and its low-balance warning are local and left alone.

// Directory is the state the admin rules look records up in. Lookups that
// cannot answer (a cluster view whose read failed) answer "absent" and the
// caller discards the verdict: it knows its own error.
type Directory interface {
	// LookupOrg finds an org's settings (its money may be zero).
	LookupOrg(id string) (Org, bool)
	// LookupTrunk finds a trunk.
	LookupTrunk(id string) (Trunk, bool)
	// NumberUser is the "org/user" key of the user who has the number.
	NumberUser(e164 string) (string, bool)
	// LookupTollFree finds a toll-free number's assignment.
	LookupTollFree(number string) (TollFree, bool)
	// Delivers finds one toll-free number the trunk delivers, if any.
	Delivers(trunk string) (TollFree, bool)
}

// PrepareOrg checks a new org and fills in what CreateOrg fills in: the
// currency (USD) and billing region (the region) when empty, "UTC" as the
// empty timezone, CreatedAt from the ledger's clock, zero balances. It does
// not look at whether the id is taken.
func (l *Ledger) PrepareOrg(o Org) (Org, error) {
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
	if _, err := l.newOrgState(o); err != nil { // the timezone loads
		return Org{}, err
	}
	o.CreatedAt = l.opts.Now().UTC()
	o.Balances = Balances{Balance: decimal.Zero, Held: decimal.Zero, Funded: decimal.Zero, Debited: decimal.Zero}
	return o, nil
}

// PrepareUser checks a user's own fields and sorts and deduplicates its
// numbers and licenses, as PutUser stores them.
func PrepareUser(u User) (User, error) {
	if !ValidID(u.ID) {
		return User{}, invalidf("user id %q: want 1 to %d letters, digits, '.', '_' or '-'", u.ID, MaxIDLength)
	}
	if len(u.Numbers) > MaxNumbersPerUser {
		return User{}, invalidf("more than %d numbers", MaxNumbersPerUser)
	}
	if len(u.Licenses) > MaxLicensesPerUser {
		return User{}, invalidf("more than %d licenses", MaxLicensesPerUser)
	}
	u.Numbers = slices.Compact(slices.Sorted(slices.Values(u.Numbers)))
	u.Licenses = slices.Compact(slices.Sorted(slices.Values(u.Licenses)))
	return u, nil
}

// CheckPutUser refuses a (prepared) user whose org is unknown or one of
// whose numbers another user or a toll-free assignment has.
func CheckPutUser(d Directory, u User) error {
	if _, ok := d.LookupOrg(u.Org); !ok {
		return fmt.Errorf("%w: %s", ErrUnknownOrg, u.Org)
	}
	key := u.Org + "/" + u.ID
	for _, n := range u.Numbers {
		if owner, ok := d.NumberUser(n); ok && owner != key {
			return fmt.Errorf("%w: +%s belongs to %s", ErrNumberTaken, n, owner)
		}
		if tf, ok := d.LookupTollFree(n); ok {
			return fmt.Errorf("%w: +%s is a toll-free number of org %s", ErrNumberTaken, n, tf.Org)
		}
	}
	return nil
}

// ValidateTollFree checks a toll-free number's own fields.
func ValidateTollFree(tf TollFree) error {
	if tf.Number == "" || len(tf.Number) > 15 || !allDigits(tf.Number) {
		return invalidf("toll-free number %q: want E.164 digits", tf.Number)
	}
	return nil
}

// CheckPutTollFree refuses an assignment to an unknown org, of a number
// another org or a user has, or delivered by a trunk that is not the org's.
func CheckPutTollFree(d Directory, tf TollFree) error {
	if _, ok := d.LookupOrg(tf.Org); !ok {
		return fmt.Errorf("%w: %s", ErrUnknownOrg, tf.Org)
	}
	if old, ok := d.LookupTollFree(tf.Number); ok && old.Org != tf.Org {
		return fmt.Errorf("%w: +%s is a toll-free number of org %s", ErrNumberTaken, tf.Number, old.Org)
	}
	if owner, ok := d.NumberUser(tf.Number); ok {
		return fmt.Errorf("%w: +%s belongs to user %s", ErrNumberTaken, tf.Number, owner)
	}
	if tf.Trunk != "" {
		tr, ok := d.LookupTrunk(tf.Trunk)
		if !ok || tr.Org != tf.Org {
			return invalidf("trunk %q is not a trunk of org %s", tf.Trunk, tf.Org)
		}
	}
	return nil
}

// ValidateTrunk checks a trunk's id; the gateway validates the rest of it.
func ValidateTrunk(tr Trunk) error {
	if !ValidID(tr.ID) {
		return invalidf("trunk id %q: want 1 to %d letters, digits, '.', '_' or '-'", tr.ID, MaxIDLength)
	}
	return nil
}

// CheckPutTrunk refuses a trunk of an unknown org.
func CheckPutTrunk(d Directory, tr Trunk) error {
	if tr.Org != "" {
		if _, ok := d.LookupOrg(tr.Org); !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, tr.Org)
		}
	}
	return nil
}

// CheckDeleteTrunk refuses deleting a trunk that delivers a toll-free
// number (move the number first).
func CheckDeleteTrunk(d Directory, id string) error {
	if tf, ok := d.Delivers(id); ok {
		return fmt.Errorf("%w: trunk %s delivers toll-free +%s", ErrInUse, id, tf.Number)
	}
	return nil
}

// ValidateFraudGuard checks an org's fraud guard limits.
func ValidateFraudGuard(fg FraudGuard) error {
	switch {
	case fg.MaxCalls < 0 || fg.MaxCalls > MaxGuardCalls:
		return invalidf("max_calls: want 0 (no limit) to %d", MaxGuardCalls)
	case fg.MaxCallsPerUser < 0 || fg.MaxCallsPerUser > MaxGuardCalls:
		return invalidf("max_calls_per_user: want 0 (no limit) to %d", MaxGuardCalls)
	case fg.MaxChargePerCall.IsNegative() || fg.MaxCallDurationS < 0 || fg.MaxCallDurationS > 7*24*3600:
		return invalidf("max_charge_per_call must not be negative, max_call_duration_s 0 to one week")
	case fg.MaxSpendPerHour.IsNegative() || fg.MaxSpendPerHourPerUser.IsNegative():
		return invalidf("spend limits: must not be negative (0: no limit)")
	}
	return nil
}

// Validate checks where an org's notifications may go.
func (c Contacts) Validate() error { return c.validate() }

// PrepareAutoRecharge checks an auto-recharge setting on its own (with the
// ledger's minimum funding) and stamps it as SetAutoRecharge stores it: no
// suspension, UpdatedAt from the ledger's clock.
func (l *Ledger) PrepareAutoRecharge(ar AutoRecharge) (AutoRecharge, error) {
	if ar.Enabled {
		if ar.Threshold.IsNegative() {
			return AutoRecharge{}, invalidf("threshold: must not be negative")
		}
		if ar.Amount.LessThan(l.opts.MinFunding) {
			return AutoRecharge{}, fmt.Errorf("%w: recharge amount %s is below the minimum funding of %s", ErrBelowMinimum,
				ar.Amount.StringFixed(2), l.opts.MinFunding.StringFixed(2))
		}
		if !paymentMethodRE.MatchString(ar.PaymentMethod) {
			return AutoRecharge{}, invalidf("payment_method %q: want the provider's saved payment method id (pm_…)", ar.PaymentMethod)
		}
		if !customerRE.MatchString(ar.Customer) {
			return AutoRecharge{}, invalidf("customer %q: want the provider's customer id (cus_…) that owns the payment method", ar.Customer)
		}
	}
	if len(ar.Incident) > 128 {
		return AutoRecharge{}, invalidf("incident: at most 128 characters")
	}
	ar.Suspended = ""
	ar.UpdatedAt = l.opts.Now().UTC()
	return ar, nil
}

// CheckAutoRechargeFor refuses enabling auto-recharge with an amount the
// org's currency cannot charge, or for an org whose region differs from
// its billing region without a support incident.
func CheckAutoRechargeFor(o Org, ar AutoRecharge) error {
	if !ar.Enabled {
		return nil
	}
	if _, ok := MinorUnits(ar.Amount, o.Currency); !ok {
		return invalidf("amount %s: more precision than %s has", ar.Amount, o.Currency)
	}
	if o.Region != o.BillingRegion && ar.Incident == "" {
		return fmt.Errorf("%w: org %s is in region %q but bills in %q; open a support incident to purchase Communications Credits, then pass its id as incident",
			ErrRegionMismatch, o.ID, o.Region, o.BillingRegion)
	}
	return nil
}

// UserBusy is ErrInUse while a call of the user is up on this ledger:
// what DeleteUser refuses.
func (l *Ledger) UserBusy(org, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.userBusy(org, id)
}

func (l *Ledger) userBusy(org, id string) error {
	for _, c := range l.calls {
		if c.Org == org && c.User == id {
			return fmt.Errorf("%w: user %s has call %s up", ErrInUse, id, c.ID)
		}
	}
	return nil
}

// TollFreeBusy is ErrInUse while a call to the org's toll-free number is up
// on this ledger: what DeleteTollFree refuses.
func (l *Ledger) TollFreeBusy(org, number string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tollFreeBusy(org, number)
}

func (l *Ledger) tollFreeBusy(org, number string) error {
	for _, c := range l.calls {
		if c.Org == org && c.Direction == DirectionInbound && c.To == number {
			return fmt.Errorf("%w: +%s has call %s up", ErrInUse, number, c.ID)
		}
	}
	return nil
}

// memDirectory is the Ledger's own state as a Directory; its methods run
// under Ledger.mu (inside do).
type memDirectory struct{ l *Ledger }

func (d memDirectory) LookupOrg(id string) (Org, bool) {
	st, ok := d.l.orgs[id]
	if !ok {
		return Org{}, false
	}
	return st.Org, true
}

func (d memDirectory) LookupTrunk(id string) (Trunk, bool) {
	tr, ok := d.l.trunks[id]
	return tr, ok
}

func (d memDirectory) NumberUser(e164 string) (string, bool) {
	k, ok := d.l.numbers[e164]
	return k, ok
}

func (d memDirectory) LookupTollFree(number string) (TollFree, bool) {
	tf, ok := d.l.tollFree[number]
	return tf, ok
}

func (d memDirectory) Delivers(trunk string) (TollFree, bool) {
	// The lowest number, so the refusal names the same one every time.
	var found TollFree
	ok := false
	for _, tf := range d.l.tollFree {
		if tf.Trunk == trunk && (!ok || tf.Number < found.Number) {
			found, ok = tf, true
		}
	}
	return found, ok
}

// ChangeKind is what one applied Change does.
type ChangeKind string

// The changes a shared configuration is applied with.
const (
	ChangeOrg            ChangeKind = "org"              // upsert Org's settings
	ChangeUser           ChangeKind = "user"             // upsert User
	ChangeDeleteUser     ChangeKind = "delete_user"      // User.Org, User.ID
	ChangeTrunk          ChangeKind = "trunk"            // upsert Trunk
	ChangeDeleteTrunk    ChangeKind = "delete_trunk"     // Trunk.ID
	ChangeTollFree       ChangeKind = "toll_free"        // upsert TollFree
	ChangeDeleteTollFree ChangeKind = "delete_toll_free" // TollFree.Number
	ChangeDeck           ChangeKind = "deck"             // Deck; nil removes the stored deck
	ChangeKey            ChangeKind = "key"              // upsert Key (an API key: keys_shared.go)
)

// Change is one record of a shared configuration, as Apply makes the
// ledger hold it. Only the field Kind names is read.
type Change struct {
	Kind     ChangeKind
	Org      Org
	User     User
	Trunk    Trunk
	TollFree TollFree
	Deck     []byte
	Key      APIKey
}

// Apply makes the ledger hold the changes, in order, in one durable
// operation. It is idempotent (applying a record the ledger holds already
// rewrites it) and refuses nothing but a failing disk (ErrUnavailable):
// the shared configuration decided them already, so none of the admin
// rules is checked again. In particular:
//
//   - ChangeOrg creates an org the ledger does not have (zero balances) or
//     replaces an existing one's settings; its balances, pools, pending
//     purchase and LowBalanceWarned stay the ledger's own. An auto-recharge
//     setting with the UpdatedAt the ledger holds already keeps the local
//     suspension (a hard decline the payer recorded here); a newer one
//     replaces it, as SetAutoRecharge would. Applying a setting never
//     starts a purchase: the cluster's one payer decides that.
//   - ChangeUser takes the user's numbers from whichever user or toll-free
//     assignment held them here before (the shared configuration's own
//     later records say what they became); this month's pools follow the
//     licenses, as for PutUser.
//   - A delete applies even while a call of that user or to that number is
//     up on this node: the call goes on, billed to its org as before, and
//     only new calls no longer find the user or number. A trunk is deleted
//     even while it delivers toll-free numbers (those keep its id until
//     their own change comes).
//   - Deleting what the ledger does not have changes nothing.
//   - ChangeKey creates or replaces an API key (its hash, rotation and
//     revocation), never its in-memory last use; keys are never deleted.
//
// Orgs are never deleted: the ledger has no such operation.
func (l *Ledger) Apply(changes ...Change) error {
	if len(changes) == 0 {
		return nil
	}
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "apply_config"}, at, func(t *txn) error {
		for i := range changes {
			l.applyOne(t, &changes[i], at)
		}
		return nil
	})
	return err
}

// applyOne applies one change under Ledger.mu.
func (l *Ledger) applyOne(t *txn, c *Change, at time.Time) {
	switch c.Kind {
	case ChangeOrg:
		l.applyOrg(t, c.Org)
	case ChangeUser:
		u := c.User
		u.Numbers = slices.Clone(u.Numbers)
		u.Licenses = slices.Clone(u.Licenses)
		key := u.Org + "/" + u.ID
		for _, n := range u.Numbers {
			if owner, ok := l.numbers[n]; ok && owner != key {
				l.dropNumber(t, owner, n, at)
			}
			if _, ok := l.tollFree[n]; ok {
				delete(l.tollFree, n)
				t.del(keyTollFree(n))
			}
		}
		st := l.orgs[u.Org]
		var before []int
		if st != nil {
			before = slices.Clone(st.licensed)
		}
		l.setUser(&u)
		t.put(keyUser(u.Org, u.ID), u)
		if st != nil {
			l.relicense(t, st, before, at)
		}
	case ChangeDeleteUser:
		key := c.User.Org + "/" + c.User.ID
		u, ok := l.users[key]
		if !ok {
			return
		}
		st := l.orgs[u.Org]
		for _, n := range u.Numbers {
			if l.numbers[n] == key {
				delete(l.numbers, n)
			}
		}
		var before []int
		if st != nil {
			before = slices.Clone(st.licensed)
			l.countLicenses(st, u, -1)
		}
		delete(l.users, key)
		t.del(keyUser(u.Org, u.ID))
		if st != nil {
			l.relicense(t, st, before, at)
		}
	case ChangeTrunk:
		l.trunks[c.Trunk.ID] = c.Trunk
		t.put(keyTrunk(c.Trunk.ID), c.Trunk)
	case ChangeDeleteTrunk:
		if _, ok := l.trunks[c.Trunk.ID]; ok {
			delete(l.trunks, c.Trunk.ID)
			t.del(keyTrunk(c.Trunk.ID))
		}
	case ChangeTollFree:
		tf := c.TollFree
		if owner, ok := l.numbers[tf.Number]; ok {
			l.dropNumber(t, owner, tf.Number, at)
		}
		l.tollFree[tf.Number] = tf
		t.put(keyTollFree(tf.Number), tf)
	case ChangeDeleteTollFree:
		if _, ok := l.tollFree[c.TollFree.Number]; ok {
			delete(l.tollFree, c.TollFree.Number)
			t.del(keyTollFree(c.TollFree.Number))
		}
	case ChangeDeck:
		if c.Deck == nil {
			l.deck = nil
			t.del(keyDeck)
			return
		}
		l.deck = slices.Clone(c.Deck)
		t.raw(keyDeck, l.deck)
	case ChangeKey:
		l.applyKey(t, c.Key)
	default:
		// A programmer's error in the caller, never data: the kinds are
		// this file's constants.
		panic(fmt.Sprintf("ledger: apply of unknown change kind %q", c.Kind))
	}
}

// applyOrg creates the org or replaces its settings, never its money.
func (l *Ledger) applyOrg(t *txn, o Org) {
	st, ok := l.orgs[o.ID]
	if !ok {
		o.Balances = Balances{Balance: decimal.Zero, Held: decimal.Zero, Funded: decimal.Zero, Debited: decimal.Zero}
		o.LowBalanceWarned = time.Time{}
		nst, err := l.newOrgState(o)
		if err != nil {
			// A zone this host's tzdata lacks: its months fall back to
			// UTC rather than the org missing here.
			l.log.Error("applied org's timezone does not load here; its pools use UTC", "org", o.ID, "err", err)
			nst = &orgState{Org: o, loc: time.UTC, licensed: make([]int, len(l.plans))}
			nst.guard.peer = l.opts.PeerGuard
		}
		l.orgs[o.ID] = nst
		// Users applied before their org (never in order, but harmless)
		// count into it now.
		for _, u := range l.users {
			if u.Org == o.ID {
				l.countLicenses(nst, u, +1)
			}
		}
		t.put(keyOrg(o.ID), nst.Org)
		t.put(keyBalances(o.ID), nst.Balances)
		return
	}
	o.Balances = st.Balances
	o.LowBalanceWarned = st.LowBalanceWarned
	if o.AutoRecharge.UpdatedAt.Equal(st.AutoRecharge.UpdatedAt) {
		o.AutoRecharge.Suspended = st.AutoRecharge.Suspended
	}
	if o.Timezone != st.Timezone {
		loc := time.UTC
		if o.Timezone != "" {
			var err error
			if loc, err = time.LoadLocation(o.Timezone); err != nil {
				l.log.Error("applied org's timezone does not load here; its pools use UTC", "org", o.ID, "err", err)
				loc = time.UTC
			}
		}
		st.loc = loc
	}
	guarded := st.FraudGuard.countsPeers() || o.FraudGuard.countsPeers()
	st.Org = o
	t.put(keyOrg(o.ID), st.Org)
	if guarded && st.guard.peer != nil {
		// A limit set or lifted: the peers get this node's figures (or
		// their removal) now, not at its next call.
		st.guard.peer.Changed(o.ID, true)
	}
}

// dropNumber takes number n away from the user with key owner ("org/user"),
// for a change that gives it to someone else.
func (l *Ledger) dropNumber(t *txn, owner, n string, at time.Time) {
	u, ok := l.users[owner]
	if !ok {
		delete(l.numbers, n)
		return
	}
	nu := *u
	nu.Numbers = slices.DeleteFunc(slices.Clone(u.Numbers), func(x string) bool { return x == n })
	st := l.orgs[nu.Org]
	var before []int
	if st != nil {
		before = slices.Clone(st.licensed)
	}
	l.setUser(&nu)
	t.put(keyUser(nu.Org, nu.ID), nu)
	if st != nil {
		l.relicense(t, st, before, at)
	}
}

// TollFreeAll lists every toll-free assignment, sorted by number: what a
// cluster node compares with the shared configuration on a full resync.
func (l *Ledger) TollFreeAll() []TollFree {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]TollFree, 0, len(l.tollFree))
	for _, tf := range l.tollFree {
		out = append(out, tf)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out
}

// UsersAll lists every user of every org, sorted by org then id.
func (l *Ledger) UsersAll() []User {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]User, 0, len(l.users))
	for _, u := range l.users {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Org != out[j].Org {
			return out[i].Org < out[j].Org
		}
		return out[i].ID < out[j].ID
	})
	return out
}
