package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// TestDirectMode: an org whose unallocated money falls below the direct
// threshold (here MinSlice: no burn measured yet) goes to direct mode; at
// its next tick the node gives back what it has available, keeping only
// what its calls hold; from then on each increment is taken from etcd for
// exactly its price (one grant per hold, nothing left over locally); a
// funding brings the org back to normal mode.
func TestDirectMode(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	clk := manualTicks{clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))}
	p := DefaultSlicePolicy() // MinSlice 1.00
	shared := &testShared{}
	sp := make([]*spender, 2)
	for i := range sp {
		sp[i] = &spender{index: i, id: fmt.Sprintf("n%d", i), dir: t.TempDir(), cli: ec.Client()}
		sp[i].local = openSpendLedger(t, sp[i].dir)
		shared.ledgers = append(shared.ledgers, sp[i].local)
	}
	for _, s := range sp {
		s.startOn(t, shared, p, clock.Real{}, clk)
	}
	t.Cleanup(func() {
		for _, s := range sp {
			s.stop(t)
			s.cli.Close()
		}
	})
	createOrg(t, shared, "acme")
	if _, err := sp[0].books.FundAcrossRegions("acme", dec("1.50"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	b := sp[0].books
	if b.Direct("acme") {
		t.Fatal("direct before any grant")
	}
	c := testCall("acme")
	now := clk.Now()
	if _, err := b.OpenCall(c, now); err != nil {
		t.Fatal(err)
	}
	// The grant took at most half of the 1.50 (0.75), leaving 0.75
	// unallocated: below MinSlice, so direct.
	a := mustCheck(t, sp[0].node).Orgs["acme"]
	if !a.Unallocated.Equal(dec("0.75")) || !b.Direct("acme") {
		t.Fatalf("after the first grant: %+v, direct %v", a, b.Direct("acme"))
	}
	b.Tick()
	lo, _ := sp[0].local.Org("acme")
	a = mustCheck(t, sp[0].node).Orgs["acme"]
	if !lo.Available().IsZero() || !lo.Held.Equal(dec("0.10")) || !a.Outstanding.Equal(dec("0.10")) || !a.Unallocated.Equal(dec("1.40")) {
		t.Fatalf("after the direct-mode tick: local %+v, etcd %+v: want only the held 0.10 kept", lo.Balances, a)
	}
	if err := b.AnswerDialog(c.ID, now, nil); err != nil {
		t.Fatal(err)
	}
	grants := b.Ops().Grants
	for n := 1; n <= 5; n++ {
		if _, err := b.Step(c.ID, n, now.Add(time.Duration(6*n)*time.Second)); err != nil {
			t.Fatal(err)
		}
		lo, _ := sp[0].local.Org("acme")
		if !lo.Available().IsZero() {
			t.Fatalf("step %d in direct mode left %s available locally", n, lo.Available())
		}
		if got := b.Ops().Grants - grants; got != int64(n) {
			t.Fatalf("step %d: %d grants in direct mode, want one per hold", n, got)
		}
		mustCheck(t, sp[0].node)
	}
	// The other node: its first fill observes the low account and it too
	// goes direct, taking exactly what its hold needs.
	c1 := testCall("acme")
	if _, err := sp[1].books.OpenCall(c1, now); err != nil {
		t.Fatal(err)
	}
	if !sp[1].books.Direct("acme") {
		t.Fatal("node 1 not in direct mode with little unallocated")
	}
	sp[1].books.Tick()
	if lo, _ := sp[1].local.Org("acme"); !lo.Available().IsZero() {
		t.Fatalf("node 1 kept %s available in direct mode", lo.Available())
	}
	// Funded again: back to normal mode on the node that funded at once,
	// on the other at its next tick (or etcd operation).
	if _, err := b.FundAcrossRegions("acme", dec("20.00"), "f2", ""); err != nil {
		t.Fatal(err)
	}
	if b.Direct("acme") {
		t.Fatal("still direct after a funding")
	}
	if _, err := sp[1].books.CloseCall(c1.ID, ledger.CallEnd{At: now, Reason: ledger.ReasonCanceled}); err != nil {
		t.Fatal(err)
	}
	// As the gateway does before each call: Org, which has the tick keep
	// the org's account fresh.
	if _, err := sp[1].books.Org("acme"); err != nil {
		t.Fatal(err)
	}
	c2 := testCall("acme")
	if _, err := sp[1].books.OpenCall(c2, now); err != nil {
		t.Fatal(err)
	}
	sp[1].books.Tick()
	if sp[1].books.Direct("acme") {
		t.Fatal("node 1 still direct after a funding")
	}
	// Its next fill takes a whole slice again.
	if err := sp[1].books.AnswerDialog(c2.ID, now, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sp[1].books.Step(c2.ID, 1, now.Add(6*time.Second)); err != nil {
		t.Fatal(err)
	}
	lo, _ = sp[1].local.Org("acme")
	if !lo.Available().Equal(dec("0.90")) {
		t.Fatalf("node 1 back in normal mode: %+v, want a 1.00 slice less the held 0.10", lo.Balances)
	}
	mustCheck(t, sp[0].node)
}
