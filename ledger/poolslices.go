package ledger

import (
	"fmt"
	"time"
)

// Cluster pool allowances (issue 16).
//
// In cluster mode an org's monthly minute pool is the cluster's: etcd holds
// its total and each node a slice of it (cluster/pools.go). A node's ledger
// still keeps the pool's Used and Held as a single node does, but may only
// hold minutes its slice granted it: with LimitPools on, every pool also has
// an Allowance (0 until set), the minutes this node may have used or held in
// all, and a hold needs
//
//	Used + Held + 1 ≤ Allowance   (besides Used + Held + 1 ≤ Total)
//
// The allowance is an absolute number, not a movement: the cluster sets it
// to what etcd granted after a grant landed there, and lowers it before it
// gives minutes back to etcd, so the allowance is never above what etcd
// granted this node and a retry or a restart simply sets it again.
//
// Invariant (under l.mu, with LimitPools on): for every pool with an
// allowance record, Used + Held ≤ Allowance is kept by SetPoolAllowance
// (it never lowers below Used + Held) and by next (it never holds past it);
// a refund (liveness.go) only lowers Used.

// poolAllowances is the ledger's pool allowances, guarded by Ledger.mu.
type poolAllowances struct {
	on bool
	by map[string]int // org/plan/month → allowance
}

// PoolShare is one pool as a cluster node's ledger has it: the licensed
// minutes it counts (the cluster's total follows them), the allowance the
// cluster granted this node, and this node's used and held minutes.
type PoolShare struct {
	Org       string `json:"org"`
	Plan      string `json:"plan"`
	Month     string `json:"month"`
	Licensed  int    `json:"licensed_minutes"`
	Allowance int    `json:"allowance_minutes"`
	Used      int    `json:"used_minutes"`
	Held      int    `json:"held_minutes"`
}

// Available is how many more minutes the allowance lets this node hold.
func (s PoolShare) Available() int { return s.Allowance - s.Used - s.Held }

// poolAllowanceRecord is what w/{org}/{plan}/{month} stores.
type poolAllowanceRecord struct {
	Allowance int `json:"allowance_minutes"`
}

func poolID(org, plan, month string) string { return org + "/" + plan + "/" + month }

func keyPoolAllowance(org, plan, month string) []byte {
	return []byte("w/" + poolID(org, plan, month))
}

// LimitPools turns the allowances on: from now every pool hold also needs
// the pool's allowance (0 until SetPoolAllowance). A cluster node calls it
// before it serves calls; a single node never does.
func (l *Ledger) LimitPools() {
	l.mu.Lock()
	l.allow.on = true
	l.mu.Unlock()
}

// poolAvailable is how many minutes a hold may take of pool p (plan i):
// what the pool has left and, with allowances on, what the allowance has
// left. Under l.mu.
func (l *Ledger) poolAvailable(st *orgState, plan int, p Pool) int {
	a := p.Available()
	if l.allow.on {
		a = min(a, l.allow.by[poolID(st.ID, l.plans[plan].Name, p.Month)]-p.Used-p.Held)
	}
	return a
}

// PoolMonth is the month ("2006-01") of the org's pools at an instant: the
// month that contains it in the org's time zone. Refusals: ErrUnknownOrg.
func (l *Ledger) PoolMonth(org string, at time.Time) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.orgs[org]
	if !ok {
		return "", fmt.Errorf("%w: %s", ErrUnknownOrg, org)
	}
	return at.In(st.loc).Format("2006-01"), nil
}

// CallPool is the org and plan whose pool a call up draws its increments
// from first; false if the call is not up, is free, or has no plan.
func (l *Ledger) CallPool(callID string) (org, plan string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, up := l.calls[callID]
	if !up || c.Free || c.Plan == "" {
		return "", "", false
	}
	return c.Org, c.Plan, true
}

// PoolShare is the pool of a plan and month as this ledger has it.
// Refusals: ErrUnknownOrg, ErrInvalid (unknown plan).
func (l *Ledger) PoolShare(org, plan, month string) (PoolShare, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, i, err := l.poolOf(org, plan, month)
	if err != nil {
		return PoolShare{}, err
	}
	return l.share(st, i, month), nil
}

// PoolShares are the pools with an allowance record (in no particular
// order): what a restarted cluster node settles.
func (l *Ledger) PoolShares() []PoolShare {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]PoolShare, 0, len(l.allow.by))
	for id := range l.allow.by {
		org, plan, month := splitPoolID(id)
		st, i, err := l.poolOf(org, plan, month)
		if err != nil {
			continue // the org or plan is gone; its record stays on disk
		}
		out = append(out, l.share(st, i, month))
	}
	return out
}

// splitPoolID splits org/plan/month; org ids hold no '/', months neither,
// so a plan name may.
func splitPoolID(id string) (org, plan, month string) {
	for i := 0; i < len(id); i++ {
		if id[i] == '/' {
			org, id = id[:i], id[i+1:]
			break
		}
	}
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == '/' {
			return org, id[:i], id[i+1:]
		}
	}
	return org, id, ""
}

// SetPoolAllowance sets how many minutes of the pool this node may have
// used or held in all (see LimitPools). Durable when it returns; setting
// the value it has changes nothing. Refusals: ErrInvalid (a negative
// allowance, a bad month, an unknown plan, or an allowance below the pool's
// Used + Held: nothing changes), ErrUnknownOrg.
func (l *Ledger) SetPoolAllowance(org, plan, month string, allowance int) (PoolShare, error) {
	if allowance < 0 {
		return PoolShare{}, invalidf("pool allowance %d: want ≥ 0", allowance)
	}
	if _, err := time.Parse("2006-01", month); err != nil {
		return PoolShare{}, invalidf("pool month %q: want YYYY-MM", month)
	}
	var out PoolShare
	_, err := l.do(Op{Kind: "pool_allowance", Org: org, Key: poolID(org, plan, month)}, l.opts.Now().UTC(), func(t *txn) error {
		st, i, err := l.poolOf(org, plan, month)
		if err != nil {
			return err
		}
		cur := l.share(st, i, month)
		if allowance < cur.Used+cur.Held {
			return invalidf("pool %s allowance %d is below its used %d + held %d minutes", poolID(org, plan, month), allowance, cur.Used, cur.Held)
		}
		id := poolID(org, plan, month)
		if old, ok := l.allow.by[id]; !ok || old != allowance {
			l.allow.by[id] = allowance
			t.put(keyPoolAllowance(org, plan, month), poolAllowanceRecord{Allowance: allowance})
		}
		cur.Allowance = allowance
		out = cur
		return nil
	})
	return out, err
}

// poolOf finds an org and a plan's index. Under l.mu.
func (l *Ledger) poolOf(org, plan, month string) (*orgState, int, error) {
	st, ok := l.orgs[org]
	if !ok {
		return nil, 0, fmt.Errorf("%w: %s", ErrUnknownOrg, org)
	}
	i := l.planIndex(plan)
	if i < 0 {
		return nil, 0, invalidf("unknown plan %q", plan)
	}
	return st, i, nil
}

// share is a pool's PoolShare. Under l.mu.
func (l *Ledger) share(st *orgState, plan int, month string) PoolShare {
	p := l.peekPool(st, plan, month)
	return PoolShare{Org: st.ID, Plan: p.Plan, Month: month, Licensed: p.Licensed,
		Allowance: l.allow.by[poolID(st.ID, p.Plan, month)], Used: p.Used, Held: p.Held}
}

// loadPoolAllowances reads the allowances (w/) of months the ledger still
// keeps in memory (from two months back, as forgettable does): older
// months' pools are final and no hold draws on them again.
func (l *Ledger) loadPoolAllowances() error {
	oldest := l.opts.Now().UTC().AddDate(0, -2, 0).Format("2006-01")
	return scan(l.db, []byte("w/"), func(k []byte, r *poolAllowanceRecord) error {
		id := string(k[2:])
		if _, _, month := splitPoolID(id); month >= oldest {
			l.allow.by[id] = r.Allowance
		}
		return nil
	})
}

// checkPoolAllowancesLocked verifies, with LimitPools on, Used + Held ≤
// Allowance for every pool in memory that has an allowance. Under l.mu.
func (l *Ledger) checkPoolAllowancesLocked() error {
	if !l.allow.on {
		return nil
	}
	for id, a := range l.allow.by {
		org, plan, month := splitPoolID(id)
		st, i, err := l.poolOf(org, plan, month)
		if err != nil {
			continue
		}
		if p, ok := st.pools[poolKey{i, month}]; ok && p.Used+p.Held > a {
			return fmt.Errorf("pool %s: used %d + held %d exceeds its allowance %d", id, p.Used, p.Held, a)
		}
	}
	return nil
}
