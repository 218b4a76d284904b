package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/notify"
	"github.com/creditgate/creditgate/notify/notifytest"
	"github.com/creditgate/creditgate/payments"
)

// snode is a cluster node as cmd/creditgate runs it in cluster mode: its
// membership, its Pebble ledger kept by a real Replica, its Books, and the
// payer and notifier singletons (each running only where it leads).
type snode struct {
	id    string
	cli   *clientv3.Client
	n     *Node
	l     *ledger.Ledger
	r     *Replica
	b     *Books
	p     *Purchases
	box   *Outbox
	payer *Payer

	payerS, notifierS *Singleton
	stopFwd           context.CancelFunc
	fwdDone           chan struct{}
}

// sopts is what startSNodes runs on each node.
type sopts struct {
	stripeURL string                // the payer runs when set
	mail      *notifytest.Mail      // the notifier runs when set
	notifier  NotifierConfig        // with mail
	beforeRun func(i int, s *snode) // before the singletons start
}

var clockReal = clock.Real{}

// newTestCharger is a Stripe charger of the stripetest server at url,
// retrying fast.
func newTestCharger(url string) (*payments.Charger, error) {
	return payments.NewCharger(payments.Config{APIKey: "sk_test_creditgate", BaseURL: url,
		Backoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond, MaxAttempts: 8}, nil)
}

// singletonConfig is a 4 s lease: a takeover is forced by revoking it, and
// a shorter one can lapse on a loaded machine.
func singletonConfig(node string) Config {
	cfg := testConfig(node)
	cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery = 4*time.Second, time.Second, 300*time.Millisecond
	return cfg
}

// startSNodes starts k nodes on ec's etcd; everything stops when the test
// ends (singletons, then Books, replica, node, ledger).
func startSNodes(t *testing.T, ec *etcdtest.Cluster, k int, o sopts) []*snode {
	t.Helper()
	ns := make([]*snode, k)
	for i := range ns {
		s := &snode{id: fmt.Sprintf("n%d", i), cli: ec.Client()}
		ns[i] = s
		n, err := Join(context.Background(), s.cli, singletonConfig(s.id), clock.Real{})
		if err != nil {
			t.Fatal(err)
		}
		s.n = n
		s.l, err = ledger.Open(filepath.Join(t.TempDir(), "ledger"), ledger.Options{MinFunding: dec("1.00"), Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		if s.r, err = NewReplica(context.Background(), n, s.l, quiet()); err != nil {
			t.Fatal(err)
		}
		if s.b, err = NewBooks(n, s.l, s.r, fastPolicy(), clock.Real{}, quiet()); err != nil {
			t.Fatal(err)
		}
		s.p = NewPurchases(n, s.l, clock.Real{}, quiet())
		s.box = NewOutbox(n, s.l)
		t.Cleanup(func() { s.stop(t) })
	}
	for i, s := range ns {
		if o.beforeRun != nil {
			o.beforeRun(i, s)
		}
		if o.stripeURL != "" {
			var err error
			if s.payer == nil {
				c, err := newTestCharger(o.stripeURL)
				if err != nil {
					t.Fatal(err)
				}
				if s.payer, err = NewPayer(s.p, s.r, s.box, c, 50*time.Millisecond, clock.Real{}, quiet()); err != nil {
					t.Fatal(err)
				}
			}
			if s.payerS, err = s.n.RunSingleton("payer", clock.Real{}, quiet(), s.payer.Run); err != nil {
				t.Fatal(err)
			}
		}
		if o.mail != nil {
			work, err := notifierWork(s, o.mail, o.notifier)
			if err != nil {
				t.Fatal(err)
			}
			if s.notifierS, err = s.n.RunSingleton("notifier", clock.Real{}, quiet(), work); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.stopFwd, s.fwdDone = cancel, make(chan struct{})
		go func() { defer close(s.fwdDone); s.box.Forward(ctx, clock.Real{}, quiet()) }()
	}
	return ns
}

// notifierWork is the notifier singleton's work as cmd/creditgate runs it:
// the Sender of the cluster's outbox, the watch that wakes it, and the
// balance decisions, all stopped together.
func notifierWork(s *snode, m *notifytest.Mail, cfg NotifierConfig) (func(context.Context), error) {
	sender, err := notify.NewFor(s.box, notify.Config{SMTP: notify.SMTP{Host: m.Host, Port: m.Port, Username: notifytest.Username,
		Password: notifytest.Password, From: "billing@operator.example", TLS: "none"}, Backoff: 50 * time.Millisecond,
		MaxBackoff: 400 * time.Millisecond, Timeout: 5 * time.Second}, clock.Real{}, nil, quiet())
	if err != nil {
		return nil, err
	}
	nt, err := NewNotifier(s.box, s.l, cfg, clock.Real{}, quiet())
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Go(func() { sender.Run(ctx) })
		wg.Go(func() { s.box.Watch(ctx) })
		wg.Go(func() { nt.Run(ctx) })
		wg.Wait()
	}, nil
}

// stop closes the node's parts; twice is harmless.
func (s *snode) stop(t *testing.T) {
	for _, sg := range []*Singleton{s.payerS, s.notifierS} {
		if sg != nil {
			sg.Close()
		}
	}
	s.payerS, s.notifierS = nil, nil
	if s.stopFwd != nil {
		s.stopFwd()
		<-s.fwdDone
		s.stopFwd = nil
	}
	if s.b != nil {
		_ = s.b.Close(context.Background())
		s.b = nil
	}
	if s.r != nil {
		_ = s.r.Close()
		s.r = nil
	}
	if s.n != nil {
		_ = s.n.Close(context.Background())
		s.n = nil
	}
	if s.l != nil {
		_ = s.l.Close()
		s.l = nil
	}
	if s.cli != nil {
		_ = s.cli.Close()
		s.cli = nil
	}
}

// eventually polls cond every 10 ms for up to 30 s.
func eventually(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("after 30s: %s", what)
	return 0
}

// leaderOf is the node whose singleton (payer or notifier) leads.
func leaderOf(t *testing.T, ns []*snode, which func(*snode) *Singleton) *snode {
	t.Helper()
	var l *snode
	eventually(t, "one leader", func() bool {
		l = nil
		count := 0
		for _, s := range ns {
			if sg := which(s); sg != nil && sg.Leading() {
				l = s
				count++
			}
		}
		return count == 1
	})
	return l
}

// setupOrg creates acme through node 0 (the shared configuration), waits
// for every node to have it, and funds it with funded.
func setupOrg(t *testing.T, ns []*snode, funded string, contacts []string) {
	t.Helper()
	if _, err := ns[0].b.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	if len(contacts) > 0 {
		if _, err := ns[0].b.SetContacts("acme", ledger.Contacts{Emails: contacts}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range ns {
		eventually(t, s.id+" has acme", func() bool {
			o, err := s.l.Org("acme")
			return err == nil && len(o.Contacts.Emails) == len(contacts)
		})
	}
	if _, err := ns[0].b.FundAcrossRegions("acme", dec(funded), "initial", ""); err != nil {
		t.Fatal(err)
	}
}

// setAutoRecharge puts acme's auto-recharge through node s and waits for
// every node to apply it.
func setAutoRecharge(t *testing.T, ns []*snode, s *snode, threshold, amount, pm string) ledger.AutoRecharge {
	t.Helper()
	ar, err := s.b.SetAutoRecharge("acme", ledger.AutoRecharge{Enabled: true, Threshold: dec(threshold), Amount: dec(amount),
		PaymentMethod: pm, Customer: "cus_acme"})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ns {
		eventually(t, x.id+" applied the auto-recharge", func() bool {
			o, err := x.l.Org("acme")
			return err == nil && o.AutoRecharge.UpdatedAt.Equal(ar.UpdatedAt)
		})
	}
	return ar
}

// spendOn spends n × 1.00 of acme's on node s, in answered calls of one
// 1.00 increment (ended by now: the advisor counts ended calls only),
// each reported to etcd. A refused call (a slice top-up racing another
// node's, see Books) is tried again shortly, at most 50 times in a row.
func spendOn(t *testing.T, s *snode, n int) {
	t.Helper()
	for done, refused := 0, 0; done < n; {
		start := time.Now().Add(-time.Second)
		c := ledger.Call{ID: uuid.NewString(), Details: ledger.Details{Org: "acme", User: "u1", To: "442079460018",
			RatePerMinute: decimal.NewFromInt(60), Currency: "USD"}, FirstIncrement: 1, NextIncrement: 1, Spill: true, Fresh: true}
		if _, err := s.b.OpenCall(c, start); err != nil {
			if !isRefusal(err) || refused >= 50 {
				t.Fatalf("%s: call %d of %d: %v", s.id, done+1, n, err)
			}
			refused++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		refused = 0
		if err := s.b.AnswerDialog(c.ID, start, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.b.CloseCall(c.ID, ledger.CallEnd{At: start.Add(time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
			t.Fatal(err)
		}
		done++
	}
	s.b.Tick()
}

// spendToZero spends acme's cluster balance to 0.00 on node s in calls
// of one 1.00 increment; a refused one is tried again shortly (pieces of
// the last money left on other nodes come back to unallocated after a
// refusal, see Books).
func spendToZero(t *testing.T, s *snode, cli *clientv3.Client) {
	t.Helper()
	for range 1000 {
		a := account(t, cli)
		if !a.Funded.Sub(a.Spent).IsPositive() {
			return
		}
		start := time.Now().Add(-time.Second)
		c := ledger.Call{ID: uuid.NewString(), Details: ledger.Details{Org: "acme", User: "u1", To: "442079460018",
			RatePerMinute: decimal.NewFromInt(60), Currency: "USD"}, FirstIncrement: 1, NextIncrement: 1, Spill: true, Fresh: true}
		if _, err := s.b.OpenCall(c, start); err != nil {
			if !isRefusal(err) {
				t.Fatal(err)
			}
			s.b.Tick()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err := s.b.AnswerDialog(c.ID, start, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.b.CloseCall(c.ID, ledger.CallEnd{At: start.Add(time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
			t.Fatal(err)
		}
		s.b.Tick()
	}
	t.Fatalf("acme not spent to zero: %+v", account(t, cli))
}

// account is acme's account in etcd.
func account(t *testing.T, cli *clientv3.Client) Account {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, testPrefix+"accounts/acme")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("account: %v %d", err, len(resp.Kvs))
	}
	var a Account
	if err := json.Unmarshal(resp.Kvs[0].Value, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

// purchasesOf lists acme's purchases in etcd, and the pending index.
func purchasesOf(t *testing.T, cli *clientv3.Client) (all []purchaseRecord, pending int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, testPrefix+"purchases/acme/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		var r purchaseRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	p, err := cli.Get(ctx, testPrefix+"pending/acme/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return all, int(p.Count)
}

// outboxOf lists the cluster's outbox.
func outboxOf(t *testing.T, s *snode) []ledger.Notification {
	t.Helper()
	ns, err := s.box.Outbox()
	if err != nil {
		t.Fatal(err)
	}
	return ns
}
