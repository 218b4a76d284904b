// The cluster's payer: one node (a Singleton) starts the auto-recharges
// the cluster's balances call for and pays every pending purchase in etcd.

package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/stripe/stripe-go/v85"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/backoff"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/payments"
)

// Payer is ledger + payments.Payer for the cluster, run by the payer's
// leader only:
//
//   - every CheckEvery it reads the cluster balance (etcd's funded − spent)
//     of every org whose auto-recharge is on, not suspended and allowed in
//     its regions (the settings as the node's replica has them), and starts
//     an auto-recharge for each below its threshold — at most one pending
//     per org, whichever leader started it (recharging/<org>);
//   - it pays each pending purchase (auto-recharge or one-time, started by
//     any node) through payments.Charger, the purchase id as Stripe's
//     idempotency key: a new leader retrying a purchase its predecessor
//     charged gets the first payment replayed, never a second charge;
//   - paid: it funds the org in etcd once (Node.Fund keyed by the purchase)
//     and then closes the purchase, with recharge_succeeded queued for an
//     auto-recharge in the same transaction; a crash in between leaves the
//     purchase pending, and the next attempt replays the payment, finds the
//     funding there and closes it;
//   - declined (or failed for good): an auto-recharge's setting is
//     suspended in the shared configuration first (every node applies it;
//     see suspend), then the purchase closes failed with recharge_failed
//     (a one-time purchase: purchase_failed, nothing suspended) queued in
//     the same transaction.
//
// Transient failures are retried with the payments config's backoff, at
// most MaxAttempts per leader term (the count is the leader's memory: a
// new leader starts counting again).
type Payer struct {
	p     *Purchases
	r     *Replica
	box   *Outbox
	c     *payments.Charger
	every time.Duration
	clk   clock.Clock
	log   *slog.Logger

	retry *backoff.Schedule // purchase → when to try again

	// beforeFund, set by tests, runs between a successful payment and the
	// funding; an error stops there, as a crash would.
	beforeFund func(ledger.Purchase, *stripe.PaymentIntent) error
}

// NewPayer builds the cluster's payer: p's purchases, suspensions through
// r, notifications into box, payments through c; every is how often the
// balances are read.
func NewPayer(p *Purchases, r *Replica, box *Outbox, c *payments.Charger, every time.Duration, clk clock.Clock, log *slog.Logger) (*Payer, error) {
	if every <= 0 {
		return nil, fmt.Errorf("cluster payer: check every %s: want positive", every)
	}
	if log == nil {
		log = slog.Default()
	}
	cfg := c.Config()
	return &Payer{p: p, r: r, box: box, c: c, every: every, clk: clk, log: log,
		retry: backoff.New(clk, cfg.Backoff, cfg.MaxBackoff)}, nil
}

// Run starts and pays purchases until ctx ends: at once, every CheckEvery,
// when a purchase is started anywhere in the cluster (a watch on pending/)
// and when a retry is due.
func (py *Payer) Run(ctx context.Context) {
	wake := make(chan struct{}, 1)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		py.watchPending(wctx, wake)
	}()
	defer func() { stop(); <-done }()
	backoff.Run(ctx, py.clk, wake, func(ctx context.Context) time.Time {
		py.CheckBalances(ctx)
		next := py.PayDue(ctx)
		if check := py.clk.Now().Add(py.every); next.IsZero() || check.Before(next) {
			next = check
		}
		return next
	})
}

// watchPending signals wake whenever a purchase becomes pending.
func (py *Payer) watchPending(ctx context.Context, wake chan<- struct{}) {
	n := py.p.n
	for ctx.Err() == nil {
		for resp := range n.cli.Watch(clientv3.WithRequireLeader(ctx), n.k.pendingAll(), clientv3.WithPrefix(),
			clientv3.WithFilterDelete()) {
			if resp.Err() != nil {
				break
			}
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		sleepCtx(ctx, py.clk, n.cfg.KeepAliveEvery) // the periodic check covers the gap
	}
}

// CheckBalances starts an auto-recharge for every org whose cluster
// balance is below its threshold and that has none pending. It returns
// how many it started.
func (py *Payer) CheckBalances(ctx context.Context) int {
	local := py.p.local
	var due []ledger.Org
	for _, id := range local.OrgIDs() {
		o, err := local.Org(id)
		if err != nil {
			continue
		}
		ar := o.AutoRecharge
		if !ar.Enabled || ar.Suspended != "" || (o.Region != o.BillingRegion && ar.Incident == "") {
			continue
		}
		due = append(due, o)
	}
	started := 0
	for len(due) > 0 {
		batch := due[:min(len(due), 100)]
		due = due[len(batch):]
		ids := make([]string, len(batch))
		for i, o := range batch {
			ids[i] = o.ID
		}
		accts, err := py.p.n.ReadAccounts(ctx, ids)
		if err != nil {
			py.log.Warn("payer: cannot read the balances; next check", "err", err)
			return started
		}
		for _, o := range batch {
			a := accts[o.ID]
			bal := a.Funded.Sub(a.Spent)
			if !bal.LessThan(o.AutoRecharge.Threshold) {
				continue
			}
			pu, ok, err := py.p.startRecharge(ctx, o, bal)
			switch {
			case err != nil:
				py.log.Warn("payer: auto-recharge not started; next check", "org", o.ID, "err", err)
			case ok:
				started++
				py.log.Info("auto-recharge started", "org", o.ID, "purchase", pu.ID, "balance", bal.String(),
					"threshold", o.AutoRecharge.Threshold.String(), "amount", pu.Amount.String())
			}
		}
	}
	return started
}

// PayDue tries every pending purchase whose backoff has passed and returns
// when the earliest of the others is due (zero: none waits).
func (py *Payer) PayDue(ctx context.Context) time.Time {
	recs, _, err := py.p.listPending(ctx, py.p.n.k.pendingAll())
	if err != nil {
		py.log.Error("payer: cannot read pending purchases", "err", err)
		return py.clk.Now().Add(py.c.Config().Backoff)
	}
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Created.Before(recs[j].Created) })
	var next time.Time
	for _, rec := range recs {
		if ctx.Err() != nil {
			return time.Time{}
		}
		due, at := py.retry.Due(rec.ID)
		if due {
			at = py.payContained(ctx, rec)
		}
		if !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	return next
}

// payContained is Pay with a panic turned into a transient failure (see
// payments.Payer.payContained).
func (py *Payer) payContained(ctx context.Context, rec purchaseRecord) (next time.Time) {
	defer panics.Recover(py.log, panics.Payer, func() { _, next = py.retry.Failed(rec.ID) }, "org", rec.Org, "purchase", rec.ID)
	return py.pay(ctx, rec)
}

// pay makes one attempt at a pending purchase and settles it in etcd when
// the outcome is final; it returns when to try again, zero otherwise.
func (py *Payer) pay(ctx context.Context, rec purchaseRecord) time.Time {
	pi, result, reason := py.c.Charge(ctx, rec.Purchase)
	what := "auto-recharge"
	if rec.OneTime() {
		what = "one-time purchase"
	}
	log := py.log.With("org", rec.Org, "purchase", rec.ID, "amount", rec.Amount.String(), "currency", rec.Currency)
	switch result {
	case payments.ResultSucceeded:
		if py.beforeFund != nil {
			if err := py.beforeFund(rec.Purchase, pi); err != nil {
				return time.Time{}
			}
		}
		if err := py.succeed(ctx, rec, pi.ID); err != nil {
			log.Error(what+" paid but not yet credited; will retry", "payment", pi.ID, "err", err)
			return py.later(rec.ID)
		}
		py.retry.Forget(rec.ID)
		log.Info(what+" paid and credited", "payment", pi.ID)
	case payments.ResultDeclined, payments.ResultFailed:
		if err := py.fail(ctx, rec, reason); err != nil {
			log.Error(what+" failed but not yet recorded; will retry", "reason", reason, "err", err)
			return py.later(rec.ID)
		}
		py.retry.Forget(rec.ID)
		if rec.OneTime() {
			log.Warn("one-time purchase failed", "reason", reason)
		} else {
			log.Warn("auto-recharge failed; auto-recharge suspended on every node until its settings are put again", "reason", reason)
		}
	case payments.ResultRetry:
		at := py.later(rec.ID)
		if at.IsZero() {
			reason = "payment provider unavailable: " + reason
			if err := py.fail(ctx, rec, reason); err == nil {
				py.retry.Forget(rec.ID)
				result = payments.ResultFailed
			}
			log.Error(what+" gave up after repeated transient failures", "attempts", py.c.Config().MaxAttempts, "reason", reason)
		} else {
			log.Warn(what+" attempt failed; retrying", "reason", reason, "at", at)
		}
		py.c.Count(result)
		return at
	}
	py.c.Count(result)
	return time.Time{}
}

// later records one more failed attempt and returns when to try again, or
// zero when the attempts are used up.
func (py *Payer) later(id string) time.Time {
	failures, next := py.retry.Failed(id)
	if failures >= py.c.Config().MaxAttempts {
		return time.Time{}
	}
	return next
}

// succeed funds the org once for the paid purchase, then closes it.
func (py *Payer) succeed(ctx context.Context, rec purchaseRecord, payment string) error {
	n := py.p.n
	if err := n.Fund(ctx, rec.Org, rec.Amount, purchaseFunding(rec.ID)); err != nil {
		return err
	}
	rec.State, rec.Payment, rec.Closed = ledger.PurchaseSucceeded, payment, py.clk.Now().UTC()
	var note *ledger.Notification
	if !rec.OneTime() {
		// As the single node: a one-time purchase's buyer reads the
		// outcome in the API; an auto-recharge tells the contacts.
		o, _ := py.p.local.Org(rec.Org)
		note = &ledger.Notification{ID: "p-" + rec.ID + "-ok", Org: rec.Org, Kind: ledger.NotifyRechargeSucceeded, At: rec.Closed,
			Amount: rec.Amount, Balance: py.p.balance(ctx, rec.Org, o), Currency: rec.Currency, Purchase: rec.ID}
	}
	err := py.p.close(ctx, rec, note)
	if errors.Is(err, errClosed) {
		return nil
	}
	if err == nil && note != nil {
		py.box.signal()
	}
	return err
}

// fail suspends an auto-recharge's setting (see suspend), then closes the
// purchase failed with its notification.
func (py *Payer) fail(ctx context.Context, rec purchaseRecord, reason string) error {
	kind := ledger.NotifyPurchaseFailed
	if !rec.OneTime() {
		kind = ledger.NotifyRechargeFailed
		if err := py.suspend(rec, reason); err != nil {
			return err
		}
	}
	rec.State, rec.Reason, rec.Closed = ledger.PurchaseFailed, reason, py.clk.Now().UTC()
	o, _ := py.p.local.Org(rec.Org)
	note := &ledger.Notification{ID: "p-" + rec.ID + "-failed", Org: rec.Org, Kind: kind, At: rec.Closed, Amount: rec.Amount,
		Balance: py.p.balance(ctx, rec.Org, o), Currency: rec.Currency, Purchase: rec.ID, Reason: reason}
	err := py.p.close(ctx, rec, note)
	if errors.Is(err, errClosed) {
		return nil
	}
	if err == nil {
		py.box.signal()
	}
	return err
}

// suspend records a decline in the shared configuration, so every node's
// ledger shows the setting suspended (GET …/auto-recharge anywhere) and no
// leader starts another purchase on the dead card. The replica keeps a
// node's local suspension while the setting's UpdatedAt is unchanged
// (ledger.Apply), so a suspension that must reach every node is a new
// version of the setting: Suspended set, UpdatedAt the decline's time.
// Putting the setting again (PUT …/auto-recharge) clears it, as on a single
// node. Only the setting that started the purchase is suspended: one an
// admin put since is left alone. Idempotent: a retry finds it done.
func (py *Payer) suspend(rec purchaseRecord, reason string) error {
	at := py.clk.Now().UTC()
	_, err := py.r.setOrg("suspend auto-recharge", rec.Org, func(o *ledger.Org) error {
		ar := &o.AutoRecharge
		if !ar.UpdatedAt.Equal(rec.Setting) || ar.Suspended != "" {
			return nil // a newer setting, or suspended already: nothing to write
		}
		ar.Suspended = reason
		ar.UpdatedAt = at
		if !at.After(rec.Setting) {
			ar.UpdatedAt = rec.Setting.Add(time.Nanosecond)
		}
		return nil
	})
	return err
}
