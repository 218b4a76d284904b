// The node's background work for its orgs: top-ups at the low-water mark
// and the report tick (reports, idle give-backs, direct-mode switches).

package cluster

import (
	"context"
	"time"

	"github.com/shopspring/decimal"
)

func (b *Books) touch(o *orgSpend) {
	now := b.clk.Now()
	b.mu.Lock()
	o.active = now
	b.mu.Unlock()
}

// maybeTopUp starts a background top-up when the org's available money
// covers less than LowWater of its burn (normal mode; one at a time).
func (b *Books) maybeTopUp(o *orgSpend) {
	lo, err := b.local.Org(o.id)
	if err != nil {
		return
	}
	b.mu.Lock()
	low := perDuration(o.burn, b.p.LowWater)
	start := !o.direct && !o.topping && o.burn.IsPositive() && lo.Available().LessThan(low) && b.ctx.Err() == nil // cancelled under mu
	if start {
		o.topping = true
		b.wg.Add(1)
	}
	b.mu.Unlock()
	if !start {
		return
	}
	go func() {
		defer b.wg.Done()
		defer func() {
			b.mu.Lock()
			o.topping = false
			b.mu.Unlock()
		}()
		o.etcd.Lock()
		defer o.etcd.Unlock()
		if b.ctx.Err() != nil || b.Err() != nil {
			return
		}
		lo, asOf, err := b.balanceAsOf(b.ctx, o)
		if err != nil {
			return
		}
		// A top-up adds a whole slice's worth: the next one comes a
		// slice's burn later (SliceBurn), not as soon as the available
		// dips under the low water again.
		b.mu.Lock()
		want := b.sliceTarget(o)
		direct := o.direct
		low := perDuration(o.burn, b.p.LowWater)
		b.mu.Unlock()
		if direct || !lo.Available().LessThan(low) {
			return
		}
		moved, err := b.resize(b.ctx, o, lo.Balance, asOf, decimal.Zero, want)
		if err != nil {
			b.log.Warn("cluster top-up failed", "org", o.id, "error", err)
			return
		}
		if moved.IsPositive() {
			b.ops.grants.Add(1)
		}
	}()
}

// tickLoop runs tick every ReportEvery on the injected clock until Close.
func (b *Books) tickLoop() {
	defer b.wg.Done()
	wake := make(chan struct{}, 1)
	for {
		t := b.clk.AfterFunc(b.p.ReportEvery, func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		})
		select {
		case <-b.ctx.Done():
			t.Stop()
			return
		case <-wake:
		}
		b.tick(b.ctx, recordWait)
	}
}

// Tick runs one report tick now (tests drive it on a fake clock the same
// way; the loop calls it every ReportEvery), waiting for every org's
// records in flight (the loop's ticks wait at most recordWait).
func (b *Books) Tick() { b.tick(b.ctx, 0) }

// tick measures each org's burn, then, for every org whose etcd lock is
// free: reports what the node spent (one transaction per 60 orgs), gives
// back an idle org's slice and a direct-mode org's available money, and
// refreshes the cluster balance of orgs read lately.
//
// wait bounds the wait for an org's takeover records in flight before
// its balance is read (0: none).
func (b *Books) tick(ctx context.Context, wait time.Duration) {
	if b.Err() != nil || ctx.Err() != nil {
		return
	}
	now := b.clk.Now()
	// A report waits for the org's records in flight (orgSpend.gate): a
	// few milliseconds, unless etcd is electing a leader. Then the first
	// org whose records do not land within wait is reported next tick,
	// and so is every later org of this tick with records in flight
	// (stuck: they are not waited for), so the tick does not stall an
	// election's length per org.
	stuck := false
	stuckCtx, stuckCancel := context.WithCancel(ctx)
	stuckCancel()
	var report []*orgSpend
	var reqs []ResizeReq
	var read []string
	flush := func() {
		if len(reqs) > 0 {
			b.report(ctx, report, reqs)
		}
		for _, o := range report {
			o.etcd.Unlock()
		}
		report, reqs = nil, nil
	}
	for _, o := range b.orgList() {
		lo, err := b.local.Org(o.id)
		if err != nil {
			continue
		}
		used := lo.Debited.Add(lo.Held)
		b.mu.Lock()
		switch span := now.Sub(o.usedAt); {
		case o.usedAt.IsZero():
			o.used, o.usedAt = used, now
		case span >= b.p.ReportEvery/2:
			// Measured over at least half a tick, so an early tick (a
			// test's, or one right after a slow one) does not read a
			// few milliseconds' spend as a huge burn.
			rate := used.Sub(o.used).Div(decimal.NewFromFloat(span.Seconds()))
			if rate.IsNegative() {
				rate = decimal.Zero
			}
			// Smoothed with a 15 s time constant: calls step every few
			// seconds, so one tick's spend is lumpy; a burst still raises
			// the burn within seconds, a stop lets it decay.
			alpha := decimal.NewFromFloat(min(1, span.Seconds()/burnSmoothing.Seconds()))
			o.burn = o.burn.Add(rate.Sub(o.burn).Mul(alpha)).Round(6)
			o.used, o.usedAt = used, now
		}
		watched := !o.lastSeen.IsZero() && now.Sub(o.lastSeen) < 10*b.p.ReportEvery
		b.mu.Unlock()
		// The tick never waits behind a hold or a fill: a busy org is
		// reported by the operation that holds its lock, or next tick.
		if !o.etcd.TryLock() {
			continue
		}
		// The slice and the balance are read under the org's etcd lock:
		// no fill or give-back moves them meanwhile.
		b.mu.Lock()
		s, direct, idle := o.slice, o.direct, now.Sub(o.active) >= b.p.IdleAfter
		pending := o.back.IsPositive() || o.unsure
		b.mu.Unlock()
		// A step's or close's record still in flight (an etcd leader
		// election) holds up this org's report, not the tick: the org is
		// reported next tick.
		var asOf uint64
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if wait > 0 {
			wctx, cancel = context.WithTimeout(ctx, wait)
		}
		if stuck {
			wctx = stuckCtx
		}
		lo, asOf, err = b.balanceAsOf(wctx, o)
		cancel()
		if err != nil {
			stuck = stuck || wctx.Err() != nil
			o.etcd.Unlock()
			continue
		}
		switch {
		case pending:
			// A give-back to complete or an unsure slice: on its own.
			if err := b.settlePending(ctx, o, lo.Balance, asOf); err != nil {
				b.log.Warn("cluster give-back failed", "org", o.id, "error", err)
			}
			o.etcd.Unlock()
		case (direct || idle && lo.Held.IsZero()) && lo.Available().IsPositive():
			if err := b.giveBack(ctx, o, false); err != nil {
				b.log.Warn("cluster give-back failed", "org", o.id, "error", err)
			}
			o.etcd.Unlock()
		case s != nil && !s.Unspent().Equal(lo.Balance):
			report = append(report, o)
			reqs = append(reqs, ResizeReq{Org: o.id, Slice: s, Have: lo.Balance, AsOf: asOf, Keep: b.keep(o), Min: decimal.Zero, Max: decimal.Zero})
			if len(reqs) == maxResizeOrgs {
				flush()
			}
		default:
			o.etcd.Unlock()
			if watched {
				read = append(read, o.id)
			}
		}
	}
	flush()
	b.tickPools(ctx, now)
	for len(read) > 0 {
		chunk := read[:min(len(read), maxResizeOrgs)]
		read = read[len(chunk):]
		accts, err := b.n.ReadAccounts(ctx, chunk)
		b.ops.reads.Add(1)
		if err != nil {
			b.fail(err)
			return
		}
		for _, id := range chunk {
			o := b.org(id)
			b.mu.Lock()
			o.acct, o.known = accts[id], true
			b.mu.Unlock()
			b.decideMode(o)
		}
	}
}

// report sends one batch of reports. Its orgs' etcd locks are held.
func (b *Books) report(ctx context.Context, orgs []*orgSpend, reqs []ResizeReq) {
	res, err := b.n.ResizeMany(ctx, reqs)
	b.ops.reports.Add(1)
	if err != nil {
		b.log.Warn("cluster report failed", "orgs", len(reqs), "error", err)
		for _, o := range orgs {
			b.etcdErr(o, err) // unsure if it may have landed; fenced fails
		}
		return
	}
	for i, r := range res {
		if r.Err != nil {
			b.log.Warn("cluster report refused", "org", orgs[i].id, "error", r.Err)
			b.etcdErr(orgs[i], r.Err)
			continue
		}
		b.observe(orgs[i], r.Account, r.Slice)
		b.landed(orgs[i], reqs[i].AsOf)
	}
}
