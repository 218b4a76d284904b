package ledger

import (
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// orgState is an org with what the ledger derives for it. It has no lock of
// its own: Ledger.mu guards all of it.
//
// Invariants (besides Org's, types.go):
//   - licensed[i] is the number of the org's users holding one of plan i's
//     licenses (setUser keeps it);
//   - pools holds every month from the previous one on that anything
//     touched, and older months only while calls hold their minutes (pool,
//     loadPools); older months are on disk (storedPool);
//   - purchase is the org's one pending auto-recharge purchase, the same
//     one as in Ledger.purchases, or nil;
//   - guard.calls and guard.userCalls count the org's calls up that are not
//     free (countCall), which is what the concurrent-call limits compare.
type orgState struct {
	Org
	loc      *time.Location
	licensed []int // per plan: users holding one of its licenses
	pools    map[poolKey]*Pool
	purchase *Purchase // the org's pending auto-recharge purchase

	guard         guardState           // what the fraud guard counts
	guardNotified map[string]time.Time // guard → last fraud_guard notification
}

func (l *Ledger) newOrgState(o Org) (*orgState, error) {
	loc := time.UTC
	if o.Timezone != "" {
		var err error
		if loc, err = time.LoadLocation(o.Timezone); err != nil {
			return nil, invalidf("org %s: timezone %q: %v", o.ID, o.Timezone, err)
		}
	}
	st := &orgState{Org: o, loc: loc, licensed: make([]int, len(l.plans))}
	st.guard.peer = l.opts.PeerGuard
	return st, nil
}

// loadOrgs reads the orgs and their balances (o/, b/).
func (l *Ledger) loadOrgs() error {
	if err := scan(l.db, []byte("o/"), func(_ []byte, o *Org) error {
		st, err := l.newOrgState(*o)
		if err != nil {
			return err
		}
		l.orgs[o.ID] = st
		return nil
	}); err != nil {
		return err
	}
	return scanOnto(l.db, []byte("b/"), l.orgs, func(st *orgState, b *Balances) { st.Balances = *b })
}

// loadFundKeys reads the fundings' idempotency keys (k/).
func (l *Ledger) loadFundKeys() error {
	return scan(l.db, []byte("k/"), func(k []byte, e *Entry) error {
		l.fundKeys[string(k[2:])] = *e
		return nil
	})
}

// CreateOrg adds an org with a zero balance.
func (l *Ledger) CreateOrg(o Org) (Org, error) {
	o, err := l.PrepareOrg(o) // apply.go: the rules a cluster node checks too
	if err != nil {
		return Org{}, err
	}
	st, err := l.newOrgState(o)
	if err != nil {
		return Org{}, err
	}
	_, err = l.do(Op{Kind: "create_org", Org: o.ID}, o.CreatedAt, func(t *txn) error {
		if _, ok := l.orgs[o.ID]; ok {
			return fmt.Errorf("%w: %s", ErrOrgExists, o.ID)
		}
		l.orgs[o.ID] = st
		t.put(keyOrg(o.ID), st.Org)
		t.put(keyBalances(o.ID), st.Balances)
		return nil
	})
	if err != nil {
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
	st, ok := l.orgs[id]
	if !ok {
		return Org{}, fmt.Errorf("%w: %s", ErrUnknownOrg, id)
	}
	return st.Org, nil
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
	if err := l.fundingArgs(amount, key, incident); err != nil {
		return Entry{}, err
	}
	var en Entry
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "fund", Org: orgID, Key: key, Amount: amount}, at, func(t *txn) error {
		st, ok := l.orgs[orgID]
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
			return fmt.Errorf("%w: %q funded %s at %s already; nothing changed", ErrDuplicateFunding, key, prev.Amount.StringFixed(2), prev.At.Format(time.RFC3339))
		}
		incident, err := l.fundingRegion(st, amount, key, incident)
		if err != nil {
			return err
		}
		st.Balance = st.Balance.Add(amount)
		st.Funded = st.Funded.Add(amount)
		en = Entry{Seq: t.entrySeq(), At: at, Kind: EntryFunding, Amount: amount, Balance: st.Balance, Key: key, Incident: incident}
		l.fundKeys[fk] = en
		t.put(keyBalances(orgID), st.Balances)
		t.put(keyEntry(orgID, en.Seq), en)
		t.put(keyFunding(orgID, key), en)
		return nil
	})
	return en, err
}

// SetBlockPremium sets whether the org refuses calls to premium-rate numbers.
func (l *Ledger) SetBlockPremium(org string, block bool) (Org, error) {
	return l.setOrg("org_settings", org, func(o *Org) { o.BlockPremium = block })
}

// setOrg changes an org's settings in one durable operation: set edits the
// org under the lock, and the org's record is written with the change. It
// answers the org as it is once the change is durable. Kind names the
// operation for tracing.
func (l *Ledger) setOrg(kind, org string, set func(o *Org)) (Org, error) {
	_, err := l.do(Op{Kind: kind, Org: org}, l.opts.Now().UTC(), func(t *txn) error {
		st, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		set(&st.Org)
		t.put(keyOrg(org), st.Org)
		return nil
	})
	if err != nil {
		return Org{}, err
	}
	return l.Org(org)
}
