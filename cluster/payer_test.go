package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v85"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/payments/stripetest"
)

// otherThan is a node of ns that is not x.
func otherThan(ns []*snode, x *snode) *snode {
	for _, s := range ns {
		if s != x {
			return s
		}
	}
	return nil
}

// TestAutoRechargeOnceAcrossNodes: three nodes; acme's cluster balance
// falls below its threshold through calls on a node that is not the
// payer's leader: exactly one purchase, the card charged once, the org
// funded once, and nothing more while the balance stays above.
func TestAutoRechargeOnceAcrossNodes(t *testing.T) {
	srv := stripetest.Start(t)
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	ns := startSNodes(t, ec, 3, sopts{stripeURL: srv.URL})
	setupOrg(t, ns, "50.00", nil)
	leader := leaderOf(t, ns, func(s *snode) *Singleton { return s.payerS })
	spender := otherThan(ns, leader)
	setAutoRecharge(t, ns, spender, "20.00", "100.00", "pm_card_visa")
	time.Sleep(200 * time.Millisecond) // several checks above the threshold: nothing starts
	if all, _ := purchasesOf(t, admin); len(all) != 0 {
		t.Fatalf("purchases above the threshold: %+v", all)
	}

	crossed := time.Now()
	spendOn(t, spender, 35) // 50 → 15, below 20
	took := eventually(t, "the recharge funded", func() bool { return account(t, admin).Funded.Equal(dec("150")) })
	t.Logf("payer %s, spend on %s: below the threshold to funded in %s (check every 50 ms)", leader.id, spender.id, took)
	eventually(t, "the purchase closed", func() bool {
		all, pending := purchasesOf(t, admin)
		return len(all) == 1 && pending == 0 && all[0].State == ledger.PurchaseSucceeded
	})
	time.Sleep(300 * time.Millisecond) // more checks: 115 is above 20
	all, pending := purchasesOf(t, admin)
	if len(all) != 1 || pending != 0 {
		t.Fatalf("purchases %+v, %d pending: want one, closed", all, pending)
	}
	p := all[0]
	// The balance that triggered it: below 20, not below 15 (the calls
	// are reported as they go, so the payer may see any point between).
	if p.Kind != ledger.PurchaseAutoRecharge || !p.Amount.Equal(dec("100")) || p.Payment == "" ||
		!p.Balance.LessThan(dec("20")) || p.Balance.LessThan(dec("15")) {
		t.Fatalf("purchase %+v", p)
	}
	if n, total := srv.Charges(); n != 1 || total != 10000 {
		t.Fatalf("stripe charged %d payments, %d cents; want 1 of 10000", n, total)
	}
	a := account(t, admin)
	if !a.Funded.Sub(a.Spent).Equal(dec("115")) {
		t.Fatalf("account %+v: want balance 115", a)
	}
	if _, err := Check(context.Background(), admin, testPrefix, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Every node answers the purchase, and the org's cluster balance.
	for _, s := range ns {
		got, err := s.p.OrgPurchase("acme", p.ID)
		if err != nil || got.State != ledger.PurchaseSucceeded {
			t.Fatalf("%s: purchase %+v, %v", s.id, got, err)
		}
	}
	// recharge_succeeded is queued for the contacts, once.
	box := outboxOf(t, ns[0])
	if len(box) != 1 || box[0].Kind != ledger.NotifyRechargeSucceeded || box[0].Purchase != p.ID {
		t.Fatalf("outbox %+v", box)
	}
	t.Logf("spend to recharge_succeeded queued: %s", time.Since(crossed))
}

// TestPayerTakeoverMidPurchase: the leader is "killed" (its lease revoked)
// after Stripe charged the card and before the org is funded; the next
// leader finds the purchase pending in etcd, pays it again with the same
// idempotency key (Stripe replays the first payment: one charge), funds
// the org once and closes it.
func TestPayerTakeoverMidPurchase(t *testing.T) {
	srv := stripetest.Start(t)
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	var once, released sync.Once
	var crashed *snode
	var crashedMu sync.Mutex
	// The next leader's funding waits for release, so the test sees the
	// state the crash left before the takeover completes it.
	release := make(chan struct{})
	ns := startSNodes(t, ec, 3, sopts{stripeURL: srv.URL, beforeRun: func(i int, s *snode) {
		c, err := newTestCharger(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if s.payer, err = NewPayer(s.p, s.r, s.box, c, 50*time.Millisecond, clockReal, quiet()); err != nil {
			t.Fatal(err)
		}
		s.payer.beforeFund = func(ledger.Purchase, *stripe.PaymentIntent) error {
			crash := false
			once.Do(func() { crash = true })
			if !crash {
				<-release
				return nil
			}
			// A crash after the payment: nothing more of this node
			// lands (its lease is gone, every write fenced).
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := admin.Revoke(ctx, s.n.Lease()); err != nil {
				t.Error(err)
			}
			crashedMu.Lock()
			crashed = s
			crashedMu.Unlock()
			return errors.New("crashed")
		}
	}})
	// After startSNodes' cleanups are registered, so it runs before them:
	// a waiting hook must not keep its singleton from closing.
	t.Cleanup(func() { released.Do(func() { close(release) }) })
	setupOrg(t, ns, "50.00", nil)
	first := leaderOf(t, ns, func(s *snode) *Singleton { return s.payerS })
	spender := otherThan(ns, first)
	setAutoRecharge(t, ns, spender, "20.00", "100.00", "pm_card_visa")
	spendOn(t, spender, 35)

	start := time.Now()
	eventually(t, "the first leader crashed", func() bool {
		crashedMu.Lock()
		defer crashedMu.Unlock()
		return crashed != nil
	})
	if crashed != first {
		t.Fatalf("%s crashed, but %s led", crashed.id, first.id)
	}
	if n, _ := srv.Charges(); n != 1 {
		t.Fatalf("%d charges before the takeover", n)
	}
	if a := account(t, admin); !a.Funded.Equal(dec("50")) {
		t.Fatalf("funded %s before the takeover: the crashed leader funded", a.Funded)
	}
	var rest []*snode
	for _, s := range ns {
		if s != first {
			rest = append(rest, s)
		}
	}
	second := leaderOf(t, rest, func(s *snode) *Singleton { return s.payerS })
	// The new leader has paid again (Stripe replayed the payment) and
	// waits to fund: still one charge, nothing funded twice.
	eventually(t, "the new leader paid again", func() bool { return srv.Requests() >= 2 })
	if n, _ := srv.Charges(); n != 1 {
		t.Fatalf("%d charges after the new leader paid again", n)
	}
	if a := account(t, admin); !a.Funded.Equal(dec("50")) {
		t.Fatalf("funded %s while the new leader waits to fund", a.Funded)
	}
	released.Do(func() { close(release) })
	took := eventually(t, "the new leader funded the purchase", func() bool {
		all, pending := purchasesOf(t, admin)
		return len(all) == 1 && pending == 0 && all[0].State == ledger.PurchaseSucceeded
	})
	t.Logf("crash of %s: %s completed the purchase %s after the crash (requests to stripe: %d)",
		first.id, second.id, time.Since(start), srv.Requests())
	_ = took
	if first.payerS.Leading() {
		t.Fatal("the crashed node still leads")
	}
	time.Sleep(300 * time.Millisecond)
	if n, total := srv.Charges(); n != 1 || total != 10000 {
		t.Fatalf("stripe charged %d payments, %d cents; want 1 of 10000", n, total)
	}
	if srv.Requests() < 2 {
		t.Fatalf("%d requests to stripe: the new leader did not pay again", srv.Requests())
	}
	a := account(t, admin)
	if !a.Funded.Equal(dec("150")) {
		t.Fatalf("funded %s, want 150 (funded once)", a.Funded)
	}
	if _, err := Check(context.Background(), admin, testPrefix, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestDeclineSuspendsEverywhere: a declined auto-recharge suspends
// auto-recharge in the shared configuration (every node's ledger shows
// it), queues one recharge_failed, and starts no other purchase while the
// balance stays below; putting the setting again clears the suspension
// everywhere, as on a single node. A declined one-time purchase started
// on another node queues purchase_failed and suspends nothing.
func TestDeclineSuspendsEverywhere(t *testing.T) {
	srv := stripetest.Start(t)
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	ns := startSNodes(t, ec, 3, sopts{stripeURL: srv.URL})
	setupOrg(t, ns, "50.00", nil)
	leader := leaderOf(t, ns, func(s *snode) *Singleton { return s.payerS })
	spender := otherThan(ns, leader)
	ar := setAutoRecharge(t, ns, spender, "20.00", "100.00", "pm_card_chargeDeclinedExpiredCard")
	spendOn(t, spender, 35)

	for _, s := range ns {
		eventually(t, s.id+" shows auto-recharge suspended", func() bool {
			o, err := s.l.Org("acme")
			return err == nil && strings.HasPrefix(o.AutoRecharge.Suspended, "expired_card")
		})
		o, _ := s.b.Org("acme")
		if !o.AutoRecharge.Enabled || !o.AutoRecharge.Threshold.Equal(ar.Threshold) || !o.AutoRecharge.UpdatedAt.After(ar.UpdatedAt) {
			t.Fatalf("%s: setting %+v after the suspension of %+v", s.id, o.AutoRecharge, ar)
		}
	}
	time.Sleep(300 * time.Millisecond) // checks below the threshold: suspended, nothing starts
	all, pending := purchasesOf(t, admin)
	if len(all) != 1 || pending != 0 || all[0].State != ledger.PurchaseFailed || !strings.HasPrefix(all[0].Reason, "expired_card") {
		t.Fatalf("purchases %+v, %d pending: want one, failed", all, pending)
	}
	if n, _ := srv.Charges(); n != 0 {
		t.Fatalf("%d charges of a declined card", n)
	}
	box := outboxOf(t, ns[1])
	if len(box) != 1 || box[0].Kind != ledger.NotifyRechargeFailed || box[0].Purchase != all[0].ID || box[0].Reason != all[0].Reason {
		t.Fatalf("outbox %+v: want one recharge_failed", box)
	}

	// A one-time purchase on a declining card, started on another node
	// than the leader: purchase_failed, nothing suspended further.
	pu, err := spender.p.StartPurchase("acme", dec("60.00"), "buy-1", "pm_card_chargeDeclined", "", "")
	if err != nil || pu.State != ledger.PurchasePending || pu.Kind != ledger.PurchaseOneTime {
		t.Fatalf("start: %+v %v", pu, err)
	}
	again, err := ns[2].p.StartPurchase("acme", dec("60.00"), "buy-1", "pm_card_chargeDeclined", "", "")
	if err != nil || !again.Replayed || again.ID != pu.ID {
		t.Fatalf("retry on another node: %+v %v", again, err)
	}
	if _, err := ns[2].p.StartPurchase("acme", dec("61.00"), "buy-1", "pm_card_chargeDeclined", "", ""); !errors.Is(err, ledger.ErrDuplicateFunding) {
		t.Fatalf("same key, other amount: %v", err)
	}
	eventually(t, "the one-time purchase failed", func() bool {
		got, err := leader.p.OrgPurchase("acme", pu.ID)
		return err == nil && got.State == ledger.PurchaseFailed
	})
	eventually(t, "purchase_failed queued", func() bool { return len(outboxOf(t, ns[0])) == 2 })
	if box := outboxOf(t, ns[0]); box[1].Kind != ledger.NotifyPurchaseFailed || box[1].Purchase != pu.ID {
		t.Fatalf("outbox %+v", box)
	}

	// Putting the setting again (a working card) clears the suspension
	// everywhere and the balance, still below, recharges.
	setAutoRecharge(t, ns, ns[2], "20.00", "100.00", "pm_card_visa")
	for _, s := range ns {
		if o, _ := s.l.Org("acme"); o.AutoRecharge.Suspended != "" {
			t.Fatalf("%s: still suspended: %q", s.id, o.AutoRecharge.Suspended)
		}
	}
	eventually(t, "recharged with the new card", func() bool { return account(t, admin).Funded.Equal(dec("150")) })
	if n, total := srv.Charges(); n != 1 || total != 10000 {
		t.Fatalf("stripe charged %d payments, %d cents; want 1 of 10000", n, total)
	}
}
