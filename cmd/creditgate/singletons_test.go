package main

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/payments/stripetest"
)

// TestClusterWorkersWiring: two nodes wired as serve wires them in cluster
// mode (joinCluster, then startNodeWorkers): the API gets etcd's
// purchases, exactly one node leads each singleton (the metric says so),
// an org below its auto-recharge threshold is recharged once for the
// whole cluster, and stopping the workers hands the singletons over.
func TestClusterWorkersWiring(t *testing.T) {
	srv := stripetest.Start(t)
	ec := etcdtest.Start(t, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	type node struct {
		cn     *clusterNode
		led    *ledger.Ledger
		reg    *prometheus.Registry
		stop   context.CancelFunc
		wg     *sync.WaitGroup
		closed bool
	}
	var nodes []*node
	for _, id := range []string{"n1", "n2"} {
		cfg := configs.Default()
		cfg.Cluster.Etcd, cfg.Cluster.NodeID = ec.Endpoints(), id
		cfg.Payments.StripeAPIKey, cfg.Payments.StripeBaseURL = "sk_test_creditgate", srv.URL
		cfg.DataDir = t.TempDir()
		// As serve does: join (and claim earlier incarnations) before the
		// ledger opens, then start the replica and Books on it.
		cn, err := joinCluster(context.Background(), cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		led, err := ledger.Open(filepath.Join(cfg.DataDir, "ledger"), ledger.Options{MinFunding: cfg.MinFunding(), Logger: log,
			SettledElsewhere: cn.rejoin.SettledElsewhere, LastReaped: cn.rejoin.LastReaped})
		if err != nil {
			t.Fatal(err)
		}
		if err := cn.start(context.Background(), cfg, led, log); err != nil {
			t.Fatal(err)
		}
		n := &node{cn: cn, led: led, reg: prometheus.NewRegistry(), wg: &sync.WaitGroup{}}
		ctx, stop := context.WithCancel(context.Background())
		n.stop = stop
		pay, purchases, err := startNodeWorkers(ctx, n.wg, cfg, cn, led, n.reg, log)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := purchases.(*cluster.Purchases); !ok || !pay {
			t.Fatalf("%s: purchases %T, payments %v: want etcd's, on", id, purchases, pay)
		}
		nodes = append(nodes, n)
		t.Cleanup(func() {
			if !n.closed {
				n.stop()
				n.wg.Wait()
				cn.stop(log)
			}
			_ = led.Close()
		})
	}
	leaders := func(name string) (sum float64, on []int) {
		for i, n := range nodes {
			if n.closed {
				continue
			}
			mfs, err := n.reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() != "creditgate_cluster_singleton_leader" {
					continue
				}
				for _, m := range mf.GetMetric() {
					for _, lp := range m.GetLabel() {
						if lp.GetName() == "name" && lp.GetValue() == name && m.GetGauge().GetValue() == 1 {
							sum++
							on = append(on, i)
						}
					}
				}
			}
		}
		return sum, on
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("after 30s: %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, name := range []string{"payer", "notifier"} {
		waitFor("one "+name, func() bool { s, _ := leaders(name); return s == 1 })
	}

	b := nodes[1].cn.books
	if _, err := b.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.FundAcrossRegions("acme", decimal.NewFromInt(50), "initial", ""); err != nil {
		t.Fatal(err)
	}
	// 50.00 is below a threshold of 60.00 at once.
	if _, err := b.SetAutoRecharge("acme", ledger.AutoRecharge{Enabled: true, Threshold: decimal.NewFromInt(60),
		Amount: decimal.NewFromInt(100), PaymentMethod: "pm_card_visa", Customer: "cus_acme"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor("the cluster balance recharged", func() bool {
			o, err := n.cn.books.Org("acme")
			return err == nil && o.Balance.Equal(decimal.NewFromInt(150))
		})
	}
	time.Sleep(2 * clusterBalanceCheck) // further checks: 150 is above 60
	if c, total := srv.Charges(); c != 1 || total != 10000 {
		t.Fatalf("stripe: %d charges, %d cents; want one of 10000", c, total)
	}

	// The payer's node stops its workers (a drain): the other takes over.
	_, on := leaders("payer")
	n := nodes[on[0]]
	n.stop()
	n.wg.Wait()
	n.cn.stop(log)
	n.closed = true
	waitFor("the payer handed over", func() bool { s, o := leaders("payer"); return s == 1 && o[0] != on[0] })
}
