package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/notify/notifytest"
)

// subjects counts the mails received by subject prefix.
func subjects(m *notifytest.Mail) map[string]int {
	msgs, _ := m.Received()
	out := map[string]int{}
	for _, msg := range msgs {
		s := msg.Header.Get("Subject")
		switch {
		case strings.HasPrefix(s, "Communications Credits running low"):
			out[ledger.NotifyLowBalance]++
		case strings.HasPrefix(s, "Communications Credits used up"):
			out[ledger.NotifyBalanceZero]++
		case strings.HasPrefix(s, "Fraud guard refused calls"):
			out[ledger.NotifyFraudGuard]++
		default:
			out[s]++
		}
	}
	return out
}

// TestNotificationsOnceAcrossLeaderChanges: three nodes, the notifier on
// one of them, mail over a real SMTP conversation. The cluster balance
// runs low through calls on every node: one low_balance mail; the leader
// is killed (lease revoked) and the next leader's sweeps send no second
// one. The balance reaches zero: one balance_zero (the nodes' own ledgers
// queue balance_zero whenever a slice runs out — those are not the
// cluster's and are not sent); another leader change sends no second one.
// A fraud-guard trip on a node that does not lead reaches the contacts
// once.
func TestNotificationsOnceAcrossLeaderChanges(t *testing.T) {
	m := notifytest.Start(t)
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	ns := startSNodes(t, ec, 3, sopts{mail: m, notifier: NotifierConfig{CheckEvery: 50 * time.Millisecond,
		SweepEvery: 100 * time.Millisecond, LowBalanceHorizon: 72 * time.Hour, LowBalanceEvery: time.Hour}})
	setupOrg(t, ns, "50.00", []string{"billing@acme.example"})
	leader := leaderOf(t, ns, func(s *snode) *Singleton { return s.notifierS })

	// 10.00 spent on each node: 20.00 left; each node's history says
	// 10.00 a day, so the leader's forecast is zero in two days, within
	// the 72 h horizon.
	for _, s := range ns {
		spendOn(t, s, 10)
	}
	took := eventually(t, "one low_balance mail", func() bool { return subjects(m)[ledger.NotifyLowBalance] == 1 })
	t.Logf("low_balance mailed %s after the spend (sweep every 100 ms)", took)

	// Killed once the delivery is recorded: a leader killed between the
	// SMTP server's acceptance and that record makes its successor send
	// the mail again (at least once, with the same Message-ID, as a single
	// node's crash there would).
	eventually(t, "the delivery recorded", func() bool { return len(outboxOf(t, ns[0])) == 0 })
	ctx := context.Background()
	if _, err := admin.Revoke(ctx, leader.n.Lease()); err != nil {
		t.Fatal(err)
	}
	var rest []*snode
	for _, s := range ns {
		if s != leader {
			rest = append(rest, s)
		}
	}
	second := leaderOf(t, rest, func(s *snode) *Singleton { return s.notifierS })
	time.Sleep(600 * time.Millisecond) // several sweeps of the new leader
	if got := subjects(m); got[ledger.NotifyLowBalance] != 1 || len(got) != 1 {
		t.Fatalf("after %s took over from %s: mails %v, want one low_balance", second.id, leader.id, got)
	}

	// To zero on the node that does not lead: one balance_zero. The dead
	// leader's slice is reclaimed first (nothing reaps dead nodes on its
	// own yet: cluster/doc.go).
	spender := otherThan(rest, second)
	if _, err := spender.n.Reclaim(ctx, leader.id); err != nil {
		t.Fatal(err)
	}
	spendToZero(t, spender, admin)
	eventually(t, "one balance_zero mail", func() bool { return subjects(m)[ledger.NotifyBalanceZero] == 1 })
	if a := account(t, admin); !a.Funded.Equal(a.Spent) {
		t.Fatalf("account %+v: want spent = funded", a)
	}
	eventually(t, "the delivery recorded", func() bool { return len(outboxOf(t, spender)) == 0 })
	if _, err := admin.Revoke(ctx, second.n.Lease()); err != nil {
		t.Fatal(err)
	}
	third := leaderOf(t, []*snode{spender}, func(s *snode) *Singleton { return s.notifierS })
	time.Sleep(600 * time.Millisecond)
	if got := subjects(m); got[ledger.NotifyBalanceZero] != 1 || got[ledger.NotifyLowBalance] != 1 || len(got) != 2 {
		t.Fatalf("after %s took over: mails %v", third.id, got)
	}

	// Funded again and spent to zero again: balance_zero is re-armed.
	if _, err := third.b.FundAcrossRegions("acme", dec("5.00"), "more", ""); err != nil {
		t.Fatal(err)
	}
	eventually(t, "zeroed mark dropped", func() bool {
		resp, err := admin.Get(ctx, testPrefix+"zeroed/acme")
		return err == nil && len(resp.Kvs) == 0
	})
	spendToZero(t, third, admin)
	eventually(t, "a second balance_zero mail", func() bool { return subjects(m)[ledger.NotifyBalanceZero] == 2 })

	// A fraud-guard trip, decided on the node where the call was, reaches
	// the contacts through the cluster's outbox.
	if err := third.b.FraudTripped(&ledger.Trip{Guard: "max_concurrent", Org: "acme", User: "u1", Detail: "5 calls up"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "one fraud_guard mail", func() bool { return subjects(m)[ledger.NotifyFraudGuard] == 1 })
	eventually(t, "the outbox empty", func() bool { return len(outboxOf(t, third)) == 0 })
	time.Sleep(300 * time.Millisecond)
	got := subjects(m)
	if got[ledger.NotifyFraudGuard] != 1 || got[ledger.NotifyBalanceZero] != 2 || got[ledger.NotifyLowBalance] != 1 || len(got) != 3 {
		t.Fatalf("mails %v", got)
	}
	// Every node's own outbox was emptied (forwarded or dropped).
	for _, s := range []*snode{third} {
		if left, err := s.l.Outbox(); err != nil || len(left) != 0 {
			t.Fatalf("%s's ledger outbox: %+v %v", s.id, left, err)
		}
	}
}

// TestQueuedNotificationOutlivesItsLeader: a notification queued while no
// node runs the notifier (its leader gone, the next not yet elected)
// waits in etcd and is delivered, once, by whichever node leads next.
func TestQueuedNotificationOutlivesItsLeader(t *testing.T) {
	m := notifytest.Start(t)
	ec := etcdtest.Start(t, 1)
	cfg := NotifierConfig{CheckEvery: 50 * time.Millisecond, SweepEvery: time.Hour, LowBalanceHorizon: time.Hour, LowBalanceEvery: time.Hour}
	ns := startSNodes(t, ec, 2, sopts{mail: m, notifier: cfg})
	setupOrg(t, ns, "50.00", []string{"billing@acme.example"})
	leader := leaderOf(t, ns, func(s *snode) *Singleton { return s.notifierS })
	other := otherThan(ns, leader)
	// No notifier anywhere: the leader resigns, the other stops
	// campaigning.
	for _, s := range ns {
		s.notifierS.Close()
	}
	if err := other.b.FraudTripped(&ledger.Trip{Guard: "max_concurrent", Org: "acme", User: "u1", Detail: "5 calls up"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the trip queued in etcd", func() bool { return len(outboxOf(t, leader)) == 1 })
	time.Sleep(200 * time.Millisecond)
	if got := subjects(m); len(got) != 0 {
		t.Fatalf("mails with no notifier running: %v", got)
	}
	// A notifier starts again, on the node that did not lead.
	work, err := notifierWork(other, m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if other.notifierS, err = other.n.RunSingleton("notifier", clockReal, quiet(), work); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, "the queued trip mailed", func() bool { return subjects(m)[ledger.NotifyFraudGuard] == 1 })
	t.Logf("queued with no leader; mailed %s after %s began to lead", took, other.id)
	eventually(t, "the outbox empty", func() bool { return len(outboxOf(t, other)) == 0 })
	time.Sleep(200 * time.Millisecond)
	if got := subjects(m); got[ledger.NotifyFraudGuard] != 1 || len(got) != 1 {
		t.Fatalf("mails %v", got)
	}
}
