package ledger

import (
	"fmt"
	"time"
)

type poolKey struct {
	plan  int
	month string
}

func (st *orgState) setPool(plan int, p *Pool) {
	if st.pools == nil {
		st.pools = map[poolKey]*Pool{}
	}
	st.pools[poolKey{plan, p.Month}] = p
}

func (l *Ledger) planIndex(name string) int {
	for i, p := range l.plans {
		if p.Name == name {
			return i
		}
	}
	return -1
}

// loadPools reads the minute pools (p/) from last month on, and older ones
// calls still hold minutes of; the orgs must be loaded.
func (l *Ledger) loadPools() error {
	lastMonth := l.opts.Now().UTC().AddDate(0, -1, 0).Format("2006-01")
	return scan(l.db, []byte("p/"), func(_ []byte, p *Pool) error {
		st, ok := l.orgs[p.Org]
		i := l.planIndex(p.Plan)
		if !ok || i < 0 {
			return nil // a plan no longer configured keeps its record on disk
		}
		// Months before last one stay on disk only, unless calls still
		// hold their minutes.
		if p.Month >= lastMonth || p.Held > 0 {
			st.setPool(i, p)
		}
		return nil
	})
}

// Pools returns the org's minute pools for the month that contains at (in
// the org's time zone), one per plan, including plans nobody has drawn yet.
func (l *Ledger) Pools(org string, at time.Time) ([]Pool, error) {
	out := make([]Pool, 0, len(l.plans))
	if err := l.eachPool(org, at, func(_ int, p Pool) { out = append(out, p) }); err != nil {
		return nil, err
	}
	return out, nil
}

// PoolsLeft is the minutes each of the org's pools has left in the month
// that contains at — a snapshot for rating's decision; the ledger decides
// again when it holds.
func (l *Ledger) PoolsLeft(org string, at time.Time) (map[string]int, error) {
	out := make(map[string]int, len(l.plans))
	if err := l.eachPool(org, at, func(i int, p Pool) { out[l.plans[i].Name] = p.Available() }); err != nil {
		return nil, err
	}
	return out, nil
}

// eachPool calls fn, under the lock, with each plan's pool (by the plan's
// index) for the month that contains at in the org's time zone.
func (l *Ledger) eachPool(org string, at time.Time, fn func(plan int, p Pool)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.orgs[org]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
	}
	month := at.In(st.loc).Format("2006-01")
	for i := range l.plans {
		fn(i, l.peekPool(st, i, month))
	}
	return nil
}

// peekPool is the pool of a plan and month as it is or, if no call has drawn
// it yet, as it would be created.
func (l *Ledger) peekPool(st *orgState, plan int, month string) Pool {
	if p, ok := st.pools[poolKey{plan, month}]; ok {
		return *p
	}
	if l.forgettable(month) {
		if p, ok := l.storedPool(st.ID, l.plans[plan].Name, month); ok {
			return p
		}
	}
	n := st.licensed[plan] * l.plans[plan].Minutes
	return Pool{Org: st.ID, Plan: l.plans[plan].Name, Month: month, Licensed: n, Total: n}
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
func (l *Ledger) pool(st *orgState, plan int, month string) *Pool {
	if p, ok := st.pools[poolKey{plan, month}]; ok {
		return p
	}
	p := l.peekPool(st, plan, month)
	if m, err := time.Parse("2006-01", month); err == nil {
		keep := m.AddDate(0, -1, 0).Format("2006-01")
		for k, old := range st.pools {
			if k.plan == plan && k.month < keep && old.Held == 0 {
				delete(st.pools, k)
			}
		}
	}
	st.setPool(plan, &p)
	return &p
}
