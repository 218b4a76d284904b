package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// prefillState is the call's reservation as the books have it: whether
// there is one, and whether its ask returned (with its error).
func prefillState(b *Books, org, callID string) (reserved, done bool, err error) {
	o := b.org(org)
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := o.prefills[callID]
	if !ok {
		return false, false, nil
	}
	return true, p.done, p.err
}

// waitPrefilled waits until the call's ask returned.
func waitPrefilled(t *testing.T, b *Books, org, callID string) error {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		reserved, done, err := prefillState(b, org, callID)
		if !reserved {
			t.Fatalf("call %s: no reservation", callID)
		}
		if done {
			return err
		}
	}
	t.Fatalf("call %s: the ask did not return", callID)
	return nil
}

// dearCall is testCall at 2.00 a minute: 0.20 an increment of 6 s.
func dearCall() ledger.Call {
	c := testCall("acme")
	c.RatePerMinute = decimal.NewFromInt(2)
	return c
}

// startDirectPair starts two spenders on one etcd, their Books on a fake
// clock whose ticks only the test runs, with org acme funded with amount.
func startDirectPair(t *testing.T, amount string) (*etcdtest.Cluster, []*spender, clock.Clock) {
	t.Helper()
	ec := etcdtest.Start(t, 1)
	clk := manualTicks{clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))}
	p := DefaultSlicePolicy() // MinSlice 1.00: an org with less is in direct mode
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
	if _, err := sp[0].books.FundAcrossRegions("acme", dec(amount), "f1", ""); err != nil {
		t.Fatal(err)
	}
	return ec, sp, clk
}

// moneyOfRecord checks etcd's account of acme after every slice went back:
// spent is what the CDRs charged and unallocated + spent = funded.
func moneyOfRecord(t *testing.T, sp []*spender, funded string) {
	t.Helper()
	charged := decimal.Zero
	for _, s := range sp {
		cdrs, err := s.local.CDRs("acme", time.Time{}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cdrs {
			charged = charged.Add(c.Charge)
		}
	}
	for _, s := range sp {
		if err := s.books.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.books = nil
	}
	a := mustCheck(t, sp[0].node).Orgs["acme"]
	if !a.Funded.Equal(dec(funded)) || !a.Spent.Equal(charged) || !a.Unallocated.Add(a.Spent).Equal(a.Funded) || !a.Outstanding.IsZero() {
		t.Fatalf("acme in etcd: %+v; want funded %s, spent %s (the CDRs), unallocated + spent = funded, nothing outstanding", a, funded, charged)
	}
	t.Logf("acme in etcd: funded %s, spent %s, unallocated %s", a.Funded, a.Spent, a.Unallocated)
}

// TestPrefillLastCent (issue 17): an org funded for exactly 5 increments
// (1.00 at 0.20), a call on each of two nodes, in direct mode. Before each
// boundary both nodes ask for their call's next increment (Prefill) at the
// same time, then step. Exactly 5 increments are sold across the nodes:
// the asks only move money into a node's slice (each one exactly a price,
// in direct mode), so the ask that finds nothing left makes its step
// refuse with ErrInsufficientCredit (the org has no more), without etcd.
// A call that ends after its ask and before its boundary costs nothing
// more, and the money it was brought goes back to unallocated at the
// node's next tick. The money of record adds up to the cent.
func TestPrefillLastCent(t *testing.T) {
	_, sp, clk := startDirectPair(t, "1.00")
	now := clk.Now()
	calls := make([]ledger.Call, 2)
	for i, s := range sp {
		calls[i] = dearCall()
		if _, err := s.books.OpenCall(calls[i], now); err != nil {
			t.Fatal(err)
		}
		if err := s.books.AnswerDialog(calls[i].ID, now, nil); err != nil {
			t.Fatal(err)
		}
		s.books.Tick() // direct mode: what is not held goes back
	}
	if !sp[0].books.Direct("acme") || !sp[1].books.Direct("acme") {
		t.Fatal("acme not in direct mode with 1.00 funded")
	}
	// A third call on node 0 asks for its next increment and hangs up
	// before its boundary.
	quit := dearCall()
	if _, err := sp[0].books.OpenCall(quit, now); err != nil {
		t.Fatal(err)
	}
	if err := sp[0].books.AnswerDialog(quit.ID, now, nil); err != nil {
		t.Fatal(err)
	}
	sold := 3 // three first increments
	sp[0].books.Prefill(quit.ID, 1)
	if err := waitPrefilled(t, sp[0].books, "acme", quit.ID); err != nil {
		t.Fatalf("the ask of the call that hangs up: %v", err)
	}
	cdr, err := sp[0].books.CloseCall(quit.ID, ledger.CallEnd{At: now.Add(5 * time.Second), Reason: ledger.ReasonCallerHangup, SIPStatus: 200})
	if err != nil {
		t.Fatal(err)
	}
	if !cdr.Charge.Equal(dec("0.20")) {
		t.Fatalf("a call that hung up inside its first increment, after asking for its second: charged %s, want 0.20", cdr.Charge)
	}
	if reserved, _, _ := prefillState(sp[0].books, "acme", quit.ID); reserved {
		t.Fatal("the closed call's reservation is still there")
	}
	lo, _ := sp[0].local.Org("acme")
	if !lo.Available().Equal(dec("0.20")) {
		t.Fatalf("node 0 has %s available after the ask of a call that hung up, want its 0.20", lo.Available())
	}
	sp[0].books.Tick()
	if lo, _ := sp[0].local.Org("acme"); !lo.Available().IsZero() {
		t.Fatalf("node 0 kept %s available after its direct-mode tick", lo.Available())
	}
	if a := mustCheck(t, sp[0].node).Orgs["acme"]; !a.Unallocated.Equal(dec("0.40")) {
		t.Fatalf("acme in etcd after the hang-up's money went back: %+v, want 0.40 unallocated", a)
	}

	// Both calls now race for the last 2 increments, increment by increment.
	refused := map[int]int{}
	for n := 1; n <= 3; n++ {
		for i, s := range sp {
			if _, done := refused[i]; !done {
				s.books.Prefill(calls[i].ID, n)
			}
		}
		for i, s := range sp {
			if _, done := refused[i]; done {
				continue
			}
			aerr := waitPrefilled(t, s.books, "acme", calls[i].ID)
			grants := s.books.Ops().Grants
			_, landed, err := s.books.StepPending(calls[i].ID, n, now.Add(time.Duration(6*n)*time.Second), ledger.Liveness{})
			if got := s.books.Ops().Grants - grants; got != 0 {
				t.Fatalf("node %d, step %d: %d grants at the step, want none (its money was asked for ahead)", i, n, got)
			}
			switch {
			case err == nil:
				sold++
				if aerr != nil {
					t.Fatalf("node %d, step %d: held although its ask failed: %v", i, n, aerr)
				}
				if landed != nil {
					if err := <-landed; err != nil {
						t.Fatal(err)
					}
				}
			case errors.Is(err, ledger.ErrInsufficientCredit):
				if !errors.Is(aerr, ErrInsufficientCredit) {
					t.Fatalf("node %d, step %d: refused for credit, its ask said %v", i, n, aerr)
				}
				refused[i] = n
				if _, err := s.books.CloseCall(calls[i].ID, ledger.CallEnd{At: now.Add(time.Duration(6*n) * time.Second), Reason: ledger.ReasonCreditExhausted, SIPStatus: 200}); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("node %d, step %d: %v", i, n, err)
			}
			if lo, _ := s.local.Org("acme"); !lo.Available().IsZero() {
				t.Fatalf("node %d, step %d: %s left available in direct mode", i, n, lo.Available())
			}
		}
	}
	if sold != 5 || len(refused) != 2 {
		t.Fatalf("%d increments sold (want the 5 funded), %d calls refused (want both): %v", sold, len(refused), refused)
	}
	t.Logf("5 increments funded, %d sold; the calls' steps refused at %v", sold, refused)
	moneyOfRecord(t, sp, "1.00")
}

// TestPrefillEtcdSilent (issue 17): the org in direct mode, its one etcd
// member paused (SIGSTOP) when the call asks for its next increment: the
// step at the boundary does not wait for the ask, and is refused with
// ErrUnavailable (the node cannot tell whether the org has money; the
// gateway ends the call failed, at its paid time). The time the step took
// is logged. Once etcd is back, the money adds up to the cent.
func TestPrefillEtcdSilent(t *testing.T) {
	ec, sp, clk := startDirectPair(t, "1.00")
	b := sp[0].books
	now := clk.Now()
	c := dearCall()
	if _, err := b.OpenCall(c, now); err != nil {
		t.Fatal(err)
	}
	if err := b.AnswerDialog(c.ID, now, nil); err != nil {
		t.Fatal(err)
	}
	b.Tick()
	if !b.Direct("acme") {
		t.Fatal("acme not in direct mode with 1.00 funded")
	}
	m, err := ec.Leader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ec.Pause(m)
	paused := true
	defer func() {
		if paused {
			ec.Continue(m)
		}
	}()
	b.Prefill(c.ID, 1)
	time.Sleep(50 * time.Millisecond) // the ask is on its way to the paused member
	if _, done, _ := prefillState(b, "acme", c.ID); done {
		t.Fatal("the ask returned with etcd paused")
	}
	o := b.org("acme")
	b.mu.Lock()
	ask := o.prefills[c.ID]
	b.mu.Unlock()
	start := time.Now()
	_, landed, err := b.StepPending(c.ID, 1, now.Add(6*time.Second), ledger.Liveness{})
	took := time.Since(start)
	b.mu.Lock()
	askDone := ask.done
	b.mu.Unlock()
	if askDone {
		t.Fatal("the step returned after its ask did, with etcd paused: it waited for etcd")
	}
	if !errors.Is(err, ledger.ErrUnavailable) || errors.Is(err, ledger.ErrInsufficientCredit) || landed != nil {
		t.Fatalf("step with its ask pending: %v (landed %v), want ErrUnavailable", err, landed != nil)
	}
	t.Logf("step with its ask pending on a paused etcd: refused in %v: %v", took.Round(time.Microsecond), err)
	if _, err := b.CloseCall(c.ID, ledger.CallEnd{At: now.Add(6 * time.Second), Reason: ledger.ReasonFailed, SIPStatus: 200}); err != nil {
		t.Fatal(err)
	}
	ec.Continue(m)
	paused = false
	cdrs, err := sp[0].local.CDRs("acme", time.Time{}, time.Time{})
	if err != nil || len(cdrs) != 1 || !cdrs[0].Charge.Equal(dec("0.20")) {
		t.Fatalf("CDRs %+v (%v): want one, charged its one increment 0.20", cdrs, err)
	}
	moneyOfRecord(t, sp, "1.00")
}
