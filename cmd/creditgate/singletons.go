package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/notify"
	"github.com/creditgate/creditgate/payments"
)

// clusterBalanceCheck is how often the payer's and the notifier's leaders
// read the cluster's balances (auto-recharge thresholds, balance_zero).
// Not a setting of the config file, like notify's sweep interval: one
// ranged etcd read per interval, whatever the call rate.
const clusterBalanceCheck = time.Second

// clusterSweepEvery is the low-balance sweep's interval on the notifier's
// leader (the single node's notify default).
const clusterSweepEvery = time.Hour

// startNodeWorkers starts what pays purchases and sends notifications: on
// a single node the ledger's payer and sender (startWorkers); in cluster
// mode the cluster's singletons (startSingletons). It says whether a
// payment provider is configured and gives the one-time purchases the API
// serves: the ledger's, or etcd's in cluster mode.
func startNodeWorkers(ctx context.Context, wg *sync.WaitGroup, cfg configs.Config, cn *clusterNode, led *ledger.Ledger,
	reg prometheus.Registerer, log *slog.Logger) (bool, api.Purchases, error) {
	if cn == nil {
		pay, err := startWorkers(ctx, wg, cfg, led, reg, log)
		return pay, led, err
	}
	return startSingletons(ctx, wg, cfg, cn, led, reg, log)
}

// startSingletons runs, on whichever node etcd elects for each, the
// cluster's payer (when a payment provider is configured) and notifier,
// and on every node the forwarding of its own fraud-guard notifications
// to the cluster's outbox. Everything stops when ctx ends, before the
// cluster node leaves (the caller's WaitGroup).
func startSingletons(ctx context.Context, wg *sync.WaitGroup, cfg configs.Config, cn *clusterNode, led *ledger.Ledger,
	reg prometheus.Registerer, log *slog.Logger) (bool, api.Purchases, error) {
	key, err := cfg.StripeAPIKey()
	if err != nil {
		return false, nil, err
	}
	pass, err := cfg.SMTPPassword()
	if err != nil {
		return false, nil, err
	}
	n := cn.node
	purchases := cluster.NewPurchases(n, led, clock.Real{}, log.With("component", "purchases"))
	cn.books.UsePurchases(purchases)
	box := cluster.NewOutbox(n, led)
	var singletons []*cluster.Singleton

	if key != "" {
		p := cfg.Payments
		charger, err := payments.NewCharger(payments.Config{APIKey: key, BaseURL: p.StripeBaseURL, Backoff: p.RetryBackoff,
			MaxBackoff: p.MaxBackoff, MaxAttempts: p.MaxAttempts}, reg)
		if err != nil {
			return false, nil, err
		}
		payer, err := cluster.NewPayer(purchases, cn.replica, box, charger, clusterBalanceCheck, clock.Real{},
			log.With("component", "recharge"))
		if err != nil {
			return false, nil, err
		}
		s, err := n.RunSingleton("payer", clock.Real{}, log.With("component", "recharge"), payer.Run)
		if err != nil {
			return false, nil, err
		}
		singletons = append(singletons, s)
	} else {
		log.Info("auto-recharge off: no payment provider key (payments.stripe_api_key or CREDITGATE_STRIPE_API_KEY)")
	}

	m := cfg.Notify.SMTP
	sender, err := notify.NewFor(box, notify.Config{SMTP: notify.SMTP{Host: m.Host, Port: m.Port, Username: m.Username,
		Password: pass, From: m.From, TLS: m.TLS}, Backoff: cfg.Notify.RetryBackoff, MaxBackoff: cfg.Notify.MaxBackoff},
		clock.Real{}, reg, log.With("component", "notify"))
	if err != nil {
		return false, nil, err
	}
	nt, err := cluster.NewNotifier(box, led, cluster.NotifierConfig{CheckEvery: clusterBalanceCheck, SweepEvery: clusterSweepEvery,
		LowBalanceHorizon: cfg.Notify.LowBalanceHorizon, LowBalanceEvery: cfg.Notify.LowBalanceEvery}, clock.Real{},
		log.With("component", "notify"))
	if err != nil {
		return false, nil, err
	}
	if m.Host == "" {
		log.Info("notification email off: no notify.smtp.host (webhooks still go)")
	}
	s, err := n.RunSingleton("notifier", clock.Real{}, log.With("component", "notify"), func(ctx context.Context) {
		var work sync.WaitGroup
		work.Go(func() { sender.Run(ctx) })
		work.Go(func() { box.Watch(ctx) })
		work.Go(func() { nt.Run(ctx) })
		work.Wait()
	})
	if err != nil {
		for _, s := range singletons {
			s.Close()
		}
		return false, nil, err
	}
	singletons = append(singletons, s)
	reg.MustRegister(cluster.NewSingletonCollector(n, singletons...))

	wg.Go(func() { box.Forward(ctx, clock.Real{}, log.With("component", "notify")) })
	wg.Go(func() {
		<-ctx.Done()
		for _, s := range singletons {
			s.Close() // a leader hands over at once
		}
	})
	return key != "", purchases, nil
}
