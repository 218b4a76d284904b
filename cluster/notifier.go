// The cluster's notifications: an outbox in etcd that one node (the
// notifier Singleton) delivers with package notify's Sender, and the
// decisions the single node's ledger makes from its own balance — zero
// balance, low balance — made here from the cluster's balance.

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/backoff"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
)

// The notifications' keys, under Config.Prefix:
//
//	outbox/<id>          a notification not yet delivered on every channel
//	                     (ledger.Notification; Emailed/Posted as they go out)
//	lowwarned/<org>      when the org's last low_balance was queued
//	zeroed/<org>         present while the org's balance is at or below zero
//	                     and balance_zero has been queued for it
//
// Why etcd and not the leader's ledger: a notification queued in the
// leader's Pebble would wait there if that node died, until it came back;
// in etcd the next leader delivers it. And the node ledgers' own outboxes
// speak of their slices (a slice used up is not the org's balance at zero),
// so they are not the cluster's (see Outbox.Forward).
//
// Dedupe across leaders: lowwarned/ and zeroed/ are written in the same
// transaction as the notification they stand for, compared on what was
// read, so of two leaders (an old one's last write in flight, a new one)
// at most one queues it. Delivery is the Sender's: a notification stays in
// outbox/ until every channel took it, each channel recorded as it
// succeeds, so a leader change resends at most the one channel whose
// success was not yet recorded (as a single node's crash would), with the
// same Message-ID and Creditgate-Notification id for the receiver to drop.
func (k keys) outbox(id string) string     { return k.prefix + "outbox/" + id }
func (k keys) outboxAll() string           { return k.prefix + "outbox/" }
func (k keys) lowWarned(org string) string { return k.prefix + "lowwarned/" + org }
func (k keys) zeroed(org string) string    { return k.prefix + "zeroed/" + org }

// maxOutbox bounds one read of the outbox: the Sender delivers these, then
// reads again.
const maxOutbox = 1000

// Outbox is the cluster's outbox in etcd, as package notify's Sender reads
// it (notify.Outbox): any node may queue into it; the notifier's leader
// delivers. Its writes are fenced transactions of the node.
type Outbox struct {
	n     *Node
	local *ledger.Ledger // contacts and names: the replicated settings

	wakeOnce sync.Once
	wake     chan struct{}
}

// NewOutbox is the outbox of the cluster n belongs to; local is the node's
// ledger (for the orgs' contacts, which the Replica keeps).
func NewOutbox(n *Node, local *ledger.Ledger) *Outbox {
	return &Outbox{n: n, local: local, wake: make(chan struct{}, 1)}
}

// Outbox lists what is not yet delivered, oldest first (by the revision
// that queued it), at most maxOutbox.
func (o *Outbox) Outbox() ([]ledger.Notification, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.n.cfg.OpTimeout)
	defer cancel()
	resp, err := o.n.cli.Get(ctx, o.n.k.outboxAll(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(maxOutbox))
	if err != nil {
		return nil, err
	}
	ns := make([]ledger.Notification, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var n ledger.Notification
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return nil, fmt.Errorf("notification %s: %w", kv.Key, err)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

// OutboxWake is signalled when a notification is queued through this
// Outbox (Watch signals those other nodes queue).
func (o *Outbox) OutboxWake() <-chan struct{} { return o.wake }

func (o *Outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Watch signals OutboxWake for every notification queued in etcd, by any
// node, until ctx ends (the notifier's leader runs it).
func (o *Outbox) Watch(ctx context.Context) {
	for ctx.Err() == nil {
		for resp := range o.n.cli.Watch(clientv3.WithRequireLeader(ctx), o.n.k.outboxAll(), clientv3.WithPrefix(),
			clientv3.WithFilterDelete()) {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				if ev.IsCreate() {
					o.signal()
					break
				}
			}
		}
		// The watch broke (etcd out of reach, compaction): the Sender's
		// own retry reads the outbox again; watch again shortly.
		o.signal()
		sleepCtx(ctx, o.n.clk, o.n.cfg.KeepAliveEvery)
	}
}

// Delivered records that n went out on the channels it says; done removes
// it. A notification gone already (delivered by a previous leader) is
// not an error.
func (o *Outbox) Delivered(n ledger.Notification, done bool) error {
	ctx := context.Background()
	key := o.n.k.outbox(n.ID)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := o.n.read(ctx, key)
		if err != nil {
			return err
		}
		kv := kvs[key]
		if kv == nil {
			return nil
		}
		var cur ledger.Notification
		if err := json.Unmarshal(kv.Value, &cur); err != nil {
			return fmt.Errorf("notification %s: %w", key, err)
		}
		op := clientv3.OpDelete(key)
		if !done {
			cur.Emailed = cur.Emailed || n.Emailed
			cur.Posted = cur.Posted || n.Posted
			op = clientv3.OpPut(key, encode(cur))
		}
		ok, _, err := o.n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)},
			[]clientv3.Op{op})
		if err != nil || ok {
			return err
		}
	}
	return ErrContention
}

// Org is the org's settings (contacts, name) as this node's replica has
// them.
func (o *Outbox) Org(id string) (ledger.Org, error) { return o.local.Org(id) }

// Queue puts n in the outbox unless a notification of its id is there or
// was (n.ID must be unique for what it reports: a purchase's outcome is
// named after the purchase).
func (o *Outbox) Queue(ctx context.Context, n ledger.Notification) error {
	key := o.n.k.outbox(n.ID)
	_, _, err := o.n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		[]clientv3.Op{clientv3.OpPut(key, encode(n))})
	if err == nil {
		o.signal()
	}
	return err
}

// Forward moves this node's own ledger outbox into the cluster's, until
// ctx ends (every node runs it, not only the leader). Only fraud_guard
// notifications go on: the fraud guard is decided on the node that
// refused the call (at most one per guard per org per hour per node). The
// other kinds a node's ledger queues speak of its slice, not of the org's
// money (its slice used up is balance_zero there; no local purchase is
// ever paid in cluster mode), and are dropped here, logged at debug; the
// notifier decides those from the cluster's balance.
func (o *Outbox) Forward(ctx context.Context, clk clock.Clock, log *slog.Logger) {
	backoff.Run(ctx, clk, o.local.OutboxWake(), func(ctx context.Context) time.Time {
		ns, err := o.local.Outbox()
		if err != nil {
			log.Error("notifications: cannot read the node's outbox", "err", err)
			return clk.Now().Add(o.n.cfg.KeepAliveEvery)
		}
		for _, n := range ns {
			if ctx.Err() != nil {
				return time.Time{}
			}
			if n.Kind == ledger.NotifyFraudGuard {
				// Named after the node's incarnation and its own id:
				// unique in the cluster, and a retry after a crash
				// between the two writes below queues it once.
				fwd := n
				fwd.ID = "f-" + o.n.ID() + "-" + fmt.Sprint(o.n.Epoch()) + "-" + n.ID
				if err := o.Queue(ctx, fwd); err != nil {
					log.Warn("notifications: fraud_guard not yet in the cluster's outbox; will retry", "org", n.Org, "err", err)
					return clk.Now().Add(o.n.cfg.KeepAliveEvery)
				}
			} else {
				log.Debug("notifications: the node's own notification is not the cluster's; dropped", "org", n.Org, "kind", n.Kind)
			}
			if err := o.local.Delivered(n, true); err != nil {
				log.Error("notifications: cannot clear the node's outbox", "err", err)
				return clk.Now().Add(o.n.cfg.KeepAliveEvery)
			}
		}
		return time.Time{}
	})
}

// Advisor forecasts an org's spending (ledger.Advise).
type Advisor interface {
	Advise(org string, now time.Time) (ledger.Advice, error)
}

// NotifierConfig is what the cluster's notifier decides with.
type NotifierConfig struct {
	// CheckEvery is how often the leader reads every org's balance for
	// balance_zero (and re-arms it once funded again).
	CheckEvery time.Duration
	// SweepEvery, LowBalanceHorizon and LowBalanceEvery are the single
	// node's low-balance rule (notify.Config).
	SweepEvery        time.Duration
	LowBalanceHorizon time.Duration
	LowBalanceEvery   time.Duration
}

// Notifier decides the cluster's balance notifications; it runs on the
// notifier's leader beside the Sender of its Outbox.
type Notifier struct {
	box *Outbox
	adv Advisor
	cfg NotifierConfig
	clk clock.Clock
	log *slog.Logger
}

// NewNotifier checks cfg and builds the notifier of box. adv gives the
// burn rate of the low-balance forecast (the node's ledger: its own
// calls' history, see the report's "not done").
func NewNotifier(box *Outbox, adv Advisor, cfg NotifierConfig, clk clock.Clock, log *slog.Logger) (*Notifier, error) {
	if cfg.CheckEvery <= 0 || cfg.SweepEvery <= 0 || cfg.LowBalanceHorizon <= 0 || cfg.LowBalanceEvery <= 0 {
		return nil, fmt.Errorf("cluster notifier: check every %s, sweep every %s, horizon %s, warn every %s: want all positive",
			cfg.CheckEvery, cfg.SweepEvery, cfg.LowBalanceHorizon, cfg.LowBalanceEvery)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Notifier{box: box, adv: adv, cfg: cfg, clk: clk, log: log}, nil
}

// Run checks balances every CheckEvery and sweeps for low balances every
// SweepEvery, until ctx ends.
func (nt *Notifier) Run(ctx context.Context) {
	nextSweep := nt.clk.Now()
	backoff.Run(ctx, nt.clk, nil, func(ctx context.Context) time.Time {
		func() {
			defer panics.Recover(nt.log, panics.Notify, nil, "job", "cluster_balance_check")
			nt.Check(ctx)
		}()
		if !nt.clk.Now().Before(nextSweep) {
			func() {
				defer panics.Recover(nt.log, panics.Notify, nil, "job", "low_balance_sweep")
				nt.SweepLowBalance(ctx, nt.clk.Now())
			}()
			nextSweep = nt.clk.Now().Add(nt.cfg.SweepEvery)
		}
		if check := nt.clk.Now().Add(nt.cfg.CheckEvery); check.Before(nextSweep) {
			return check
		}
		return nextSweep
	})
}

// balances reads every org's cluster balance (funded − spent, what every
// node has reported) and whether it is marked zeroed, in pages.
func (nt *Notifier) balances(ctx context.Context) (map[string]Account, map[string]int64, error) {
	n := nt.box.n
	accts := map[string]Account{}
	prefix := n.k.accounts()
	if err := n.eachKV(ctx, prefix, false, func(kv *mvccpb.KeyValue) error {
		var a Account
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			return fmt.Errorf("account %s: %w", kv.Key, err)
		}
		accts[string(kv.Key[len(prefix):])] = a
		return nil
	}); err != nil {
		return nil, nil, err
	}
	zeroed := map[string]int64{}
	prefix = n.k.prefix + "zeroed/"
	err := n.eachKV(ctx, prefix, true, func(kv *mvccpb.KeyValue) error {
		zeroed[string(kv.Key[len(prefix):])] = kv.ModRevision
		return nil
	})
	return accts, zeroed, err
}

// Check queues balance_zero for every org whose cluster balance went from
// positive to zero or below (once, until it is funded above zero again:
// then the mark is dropped), as the single node does at the debit that
// crosses zero. It returns how many it queued.
func (nt *Notifier) Check(ctx context.Context) int {
	accts, zeroed, err := nt.balances(ctx)
	if err != nil {
		nt.log.Warn("notifier: cannot read the balances", "err", err)
		return 0
	}
	n := nt.box.n
	queued := 0
	orgs := make([]string, 0, len(accts))
	for id := range accts {
		orgs = append(orgs, id)
	}
	sort.Strings(orgs)
	for _, id := range orgs {
		a := accts[id]
		bal := a.Funded.Sub(a.Spent)
		zk := n.k.zeroed(id)
		mod, marked := zeroed[id]
		switch {
		case bal.IsPositive() && marked:
			_, _, err = n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(zk), "=", mod)},
				[]clientv3.Op{clientv3.OpDelete(zk)})
		case !bal.IsPositive() && a.Funded.IsPositive() && !marked:
			o, oerr := nt.box.local.Org(id)
			if oerr != nil {
				continue // not applied here yet: the next check
			}
			at := nt.clk.Now().UTC()
			note := ledger.Notification{ID: fmt.Sprintf("z-%s-%d", id, at.UnixNano()), Org: id, Kind: ledger.NotifyBalanceZero,
				At: at, Balance: bal, Currency: o.Currency}
			var ok bool
			ok, _, err = n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(zk), "=", 0)},
				[]clientv3.Op{clientv3.OpPut(zk, at.Format(time.RFC3339Nano)), clientv3.OpPut(n.k.outbox(note.ID), encode(note))})
			if ok {
				queued++
				nt.box.signal()
			}
		}
		if err != nil {
			nt.log.Warn("notifier: balance_zero not decided; next check", "org", id, "err", err)
			return queued
		}
	}
	return queued
}

// SweepLowBalance is notify.Sender.SweepLowBalance on the cluster's
// balance: every org whose forecast reaches zero within the horizon and
// that has no working auto-recharge is warned, at most once per
// LowBalanceEvery cluster-wide (lowwarned/<org>, written with the
// warning). It returns how many it queued.
func (nt *Notifier) SweepLowBalance(ctx context.Context, now time.Time) int {
	n := nt.box.n
	local := nt.box.local
	ids := local.OrgIDs()
	queued := 0
	for len(ids) > 0 {
		batch := ids[:min(len(ids), 100)]
		ids = ids[len(batch):]
		accts, err := n.ReadAccounts(ctx, batch)
		if err != nil {
			nt.log.Warn("notifier: low-balance sweep cannot read the balances", "err", err)
			return queued
		}
		for _, id := range batch {
			o, err := local.Org(id)
			if err != nil || (o.AutoRecharge.Enabled && o.AutoRecharge.Suspended == "") {
				continue // a purchase will come before zero
			}
			a := accts[id]
			bal := a.Funded.Sub(a.Spent)
			adv, err := nt.adv.Advise(id, now)
			if err != nil {
				nt.log.Error("low-balance check failed", "org", id, "err", err)
				continue
			}
			zero := adv.ZeroAfter(bal, now)
			if zero.IsZero() || zero.Sub(now) > nt.cfg.LowBalanceHorizon || !bal.IsPositive() {
				continue // not spending, far from zero, or at zero (balance_zero said so)
			}
			warned, err := nt.warnLow(ctx, o, bal, adv, now)
			if err != nil {
				nt.log.Error("low-balance warning not queued", "org", id, "err", err)
				continue
			}
			if warned {
				queued++
			}
		}
	}
	return queued
}

// warnLow queues the org's low_balance unless one was queued less than
// LowBalanceEvery ago, cluster-wide.
func (nt *Notifier) warnLow(ctx context.Context, o ledger.Org, bal decimal.Decimal, adv ledger.Advice, now time.Time) (bool, error) {
	n := nt.box.n
	lk := n.k.lowWarned(o.ID)
	kvs, err := n.read(ctx, lk)
	if err != nil {
		return false, err
	}
	if kv := kvs[lk]; kv != nil {
		last, err := time.Parse(time.RFC3339Nano, string(kv.Value))
		if err == nil && now.Sub(last) < nt.cfg.LowBalanceEvery && !now.Before(last) {
			return false, nil
		}
	}
	note := ledger.Notification{ID: fmt.Sprintf("l-%s-%d", o.ID, now.UnixNano()), Org: o.ID, Kind: ledger.NotifyLowBalance,
		At: now.UTC(), Balance: bal, Currency: o.Currency, ZeroAt: adv.ZeroAfter(bal, now), BurnPerDay: adv.BurnPerDay, Amount: adv.Amount}
	ok, _, err := n.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(lk), "=", modRev(kvs[lk]))},
		[]clientv3.Op{clientv3.OpPut(lk, now.UTC().Format(time.RFC3339Nano)), clientv3.OpPut(n.k.outbox(note.ID), encode(note))})
	if ok {
		nt.box.signal()
	}
	return ok, err
}

// sleepCtx waits d on clk, or until ctx ends.
func sleepCtx(ctx context.Context, clk clock.Clock, d time.Duration) {
	wake := make(chan struct{})
	t := clk.AfterFunc(d, func() { close(wake) })
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	}
}
