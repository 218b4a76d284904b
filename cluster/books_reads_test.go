package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// TestBooksPoolsAnswerTheCluster: 3 nodes on a real etcd share a 25-minute
// pool; calls up on two of them have used minutes and hold one each.
// Before any report, a node's Pools counts its own unreported minutes on
// top of etcd's; after one report tick every node's Pools shows the same
// total and used (the minutes every node used), and its own held only,
// and OrgNow reads the balance etcd has now.
func TestBooksPoolsAnswerTheCluster(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	sp, shared := startPoolSpenders(t, ec.Client, 3, fastPolicy(), clock.Real{})
	createOrg(t, shared, "acme")
	licenseUsers(t, shared, "acme")
	if _, err := sp[0].books.FundAcrossRegions("acme", dec("100.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC()
	// Node 0: two calls, each one minute used and one held. Node 1: one
	// call, two minutes used and one held. Node 2: none.
	for i, steps := range []int{1, 1, 2} {
		b := sp[min(i/2, 1)].books
		c := poolCall("acme", "u4", false)
		if _, err := b.OpenCall(c, at); err != nil {
			t.Fatal(err)
		}
		if err := b.AnswerDialog(c.ID, at, nil); err != nil {
			t.Fatal(err)
		}
		for n := 1; n <= steps; n++ {
			if _, err := b.Step(c.ID, n, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	domestic := func(ps []ledger.Pool) ledger.Pool {
		for _, p := range ps {
			if p.Plan == ledger.PlanDomestic {
				return p
			}
		}
		t.Fatalf("no domestic pool in %+v", ps)
		return ledger.Pool{}
	}
	localUsed := 0
	for _, s := range sp {
		p, err := s.local.Pools("acme", at)
		if err != nil {
			t.Fatal(err)
		}
		localUsed += domestic(p).Used
	}
	if localUsed != 4 {
		t.Fatalf("the ledgers used %d minutes, want 4", localUsed)
	}
	// Before any report: node 0 counts its own 2 minutes on top of
	// etcd's (none reported yet, or some, if a grant's report landed).
	ps, err := sp[0].books.Pools("acme", at)
	if err != nil {
		t.Fatal(err)
	}
	if p := domestic(ps); p.Used < 2 || p.Used > 4 || p.Held != 2 {
		t.Fatalf("node 0's pool before a tick: %+v", p)
	}
	// A tick skips a pool whose etcd lock a background grant holds: tick
	// until both reports landed (etcd's used is every ledger's).
	for ticks := 0; ; ticks++ {
		for _, s := range sp {
			s.books.Tick()
		}
		r, err := ec.Client().Get(context.Background(), sp[0].node.k.poolAccount("acme", ledger.PlanDomestic, at.Format("2006-01")))
		if err != nil {
			t.Fatal(err)
		}
		a, _, err := decodePool(r.Kvs[0], nil)
		if err != nil {
			t.Fatal(err)
		}
		if a.Used == localUsed {
			break
		}
		if ticks > 100 {
			t.Fatalf("etcd's pool after %d ticks: %+v, want used %d", ticks, a, localUsed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i, s := range sp {
		ps, err := s.books.Pools("acme", at)
		if err != nil {
			t.Fatal(err)
		}
		p := domestic(ps)
		wantHeld := []int{2, 1, 0}[i]
		t.Logf("node %d after a tick: total %d used %d held %d available %d", i, p.Total, p.Used, p.Held, p.Available())
		if p.Total != 25 || p.Used != 4 || p.Held != wantHeld {
			t.Fatalf("node %d's pool after a report: %+v, want total 25, used 4 (every node's), held %d (its own)", i, p, wantHeld)
		}
	}
	// The balance: funded through node 0; node 2 has read nothing since.
	o, err := sp[2].books.OrgNow("acme")
	if err != nil {
		t.Fatal(err)
	}
	if !o.Balance.Equal(dec("100.00")) || !o.Held.IsZero() {
		t.Fatalf("node 2's OrgNow: balance %s held %s, want 100.00 (nothing on credits) and 0", o.Balance, o.Held)
	}
}
