package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// conserved checks the money of record against the nodes' ledgers: what
// is unallocated in etcd plus what every node's ledger received net is the
// funding (no money made or lost between etcd and the nodes), etcd's
// invariant holds, and spent never exceeds funded.
func conserved(t testing.TB, sp []*spender, org string, funded decimal.Decimal) OrgTotals {
	t.Helper()
	st := mustCheck(t, sp[0].node)
	a := st.Orgs[org]
	sum := a.Unallocated
	for _, s := range sp {
		lo, err := s.local.Org(org)
		if err != nil {
			t.Fatal(err)
		}
		sum = sum.Add(lo.Funded)
		if err := s.local.CheckInvariants(); err != nil {
			t.Fatal(err)
		}
	}
	if !sum.Equal(funded) || !a.Funded.Equal(funded) {
		t.Fatalf("unallocated %s + the nodes' net slices = %s, funded %s (etcd %+v)", a.Unallocated, sum, funded, a)
	}
	return a
}

// debited is what the nodes' ledgers charged the org, net of refunds.
func debited(t testing.TB, sp []*spender, org string) decimal.Decimal {
	t.Helper()
	sum := decimal.Zero
	for _, s := range sp {
		lo, err := s.local.Org(org)
		if err != nil {
			t.Fatal(err)
		}
		sum = sum.Add(lo.Debited)
	}
	return sum
}

// spend runs one answered call of n increments on b (0.10 each) and
// closes it, billing to alive when set.
func spend(t testing.TB, b *Books, n int, start time.Time, billTo time.Time) {
	t.Helper()
	c := testCall("acme")
	if _, err := b.OpenCall(c, start); err != nil {
		t.Fatal(err)
	}
	if err := b.AnswerDialog(c.ID, start, nil); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < n; i++ {
		if _, err := b.Step(c.ID, i, start.Add(time.Duration(6*i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.CloseCall(c.ID, ledger.CallEnd{At: start.Add(time.Duration(6*n) * time.Second), Reason: ledger.ReasonCallerHangup, BillTo: billTo}); err != nil {
		t.Fatal(err)
	}
}

// TestRestartSettles: a node that crashes with spend it never reported,
// with a refund after its last report, and with a grant etcd made that its
// ledger never credited, is settled when it starts again: its old slice is
// reclaimed, its unreported spend charged, its leftover taken back locally,
// the uncredited grant not charged — etcd's spent ends equal to what the
// ledgers debited, and no money is made or lost.
func TestRestartSettles(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	p := fastPolicy()
	p.ReportEvery = time.Hour // reports only where the test ticks
	sp, shared := startSpenders(t, ec.Client, 2, p, clock.Real{})
	createOrg(t, shared, "acme")
	funded := dec("20.00")
	if _, err := sp[1].books.FundAcrossRegions("acme", funded, "f1", ""); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for round, crash := range []func(s *spender){
		// Unreported spend.
		func(s *spender) { spend(t, s.books, 4, now, time.Time{}) },
		// A refund after the report: the call billed to its answer gives
		// back all its increments but the first, after they were reported.
		func(s *spender) {
			c := testCall("acme")
			if _, err := s.books.OpenCall(c, now); err != nil {
				t.Fatal(err)
			}
			if err := s.books.AnswerDialog(c.ID, now, nil); err != nil {
				t.Fatal(err)
			}
			for i := 1; i < 5; i++ {
				if _, err := s.books.StepAlive(c.ID, i, now.Add(time.Duration(6*i)*time.Second), ledger.Liveness{Alive: now}); err != nil {
					t.Fatal(err)
				}
			}
			s.books.Tick()
			if _, err := s.books.CloseCall(c.ID, ledger.CallEnd{At: now.Add(30 * time.Second), Reason: ledger.ReasonLegLost, BillTo: now}); err != nil {
				t.Fatal(err)
			}
		},
		// A grant etcd made and the ledger never credited (a crash between
		// the two writes).
		func(s *spender) {
			spend(t, s.books, 2, now, time.Time{})
			o := s.books.org("acme")
			lo, _ := s.local.Org("acme")
			if _, err := s.node.Resize(context.Background(), ResizeReq{Org: "acme", Slice: o.slice, Have: lo.Balance, Min: dec("0.30"), Max: dec("0.30")}); err != nil {
				t.Fatal(err)
			}
		},
		// A return the ledger made and etcd never heard of (a crash
		// between the local ReturnSlice and its Resize): the returned
		// money is etcd's unspent but not the ledger's leftover, and is
		// not spend.
		func(s *spender) {
			spend(t, s.books, 2, now, time.Time{})
			o := s.books.org("acme")
			last, _ := s.local.LastSliceMove("acme")
			if _, err := s.local.ReturnSlice("acme", o.slice.ID, last.Move+1, dec("0.20")); err != nil {
				t.Fatal(err)
			}
		},
	} {
		s := sp[0]
		spend(t, s.books, 3, now, time.Time{})
		spend(t, sp[1].books, 2, now, time.Time{})
		s.books.Tick()
		crash(s)
		before := mustCheck(t, sp[1].node).Orgs["acme"]
		s.crash(t)
		s.start(t, shared, p, clock.Real{})
		a := conserved(t, sp, "acme", funded)
		sp[1].books.Tick()
		a = conserved(t, sp, "acme", funded)
		lo, _ := s.local.Org("acme")
		if !lo.Balance.IsZero() {
			t.Fatalf("round %d: the restarted node kept %s of its old slice", round, lo.Balance)
		}
		if d := debited(t, sp, "acme"); !a.Spent.Equal(d) {
			t.Fatalf("round %d: etcd spent %s, the ledgers debited %s (before the restart etcd had %+v)", round, a.Spent, d, before)
		}
		t.Logf("round %d: etcd before restart %+v, after %+v", round, before, a)
		// It sells again after the restart.
		spend(t, s.books, 2, now, time.Time{})
		s.books.Tick()
	}
	// A clean stop gives everything back; the restart has nothing to settle.
	for _, s := range sp {
		s.stop(t)
		s.local = openSpendLedger(t, s.dir)
	}
	for _, s := range sp {
		s.start(t, shared, p, clock.Real{})
	}
	a := conserved(t, sp, "acme", funded)
	if !a.Outstanding.IsZero() || a.Slices != 0 {
		t.Fatalf("after a clean stop: %+v", a)
	}
	if d := debited(t, sp, "acme"); !a.Spent.Equal(d) {
		t.Fatalf("after a clean stop: etcd spent %s, the ledgers debited %s", a.Spent, d)
	}
	if c := sp[0].books.Ops().Charges; c != 0 {
		t.Fatalf("a clean restart charged %d times", c)
	}
}
