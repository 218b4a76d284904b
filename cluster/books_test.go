package cluster

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// fastPolicy reports every 20 ms so a test sees direct mode, give-backs
// and idle returns within its run.
func fastPolicy() SlicePolicy {
	p := DefaultSlicePolicy()
	p.MinSlice = dec("0.50")
	p.ReportEvery = 20 * time.Millisecond
	p.IdleAfter = 200 * time.Millisecond
	return p
}

func createOrg(t testing.TB, shared *testShared, id string) {
	t.Helper()
	if _, err := shared.CreateOrg(ledger.Org{ID: id, Name: id, Country: "GB", Region: "eu", BillingRegion: "eu"}); err != nil {
		t.Fatal(err)
	}
}

// TestLastCentAcrossNodes: 3 nodes, one org funded for exactly K
// increments, many concurrent callers on every node doing OpenCall / Step
// loops (far more attempts than K): exactly K increments are sold
// cluster-wide, etcd's spent is the funding, the balance ends at 0.00, and
// Check holds at every sample a concurrent sampler takes.
func TestLastCentAcrossNodes(t *testing.T) {
	const K, callers = 40, 8 // callers per node
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	sp, shared := startSpenders(t, ec.Client, 3, fastPolicy(), clock.Real{})
	for _, s := range sp {
		s.books.log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	createOrg(t, shared, "acme")
	price := dec("0.10")
	funded := price.Mul(decimal.NewFromInt(K))
	if _, err := sp[0].books.FundAcrossRegions("acme", funded, "f1", ""); err != nil {
		t.Fatal(err)
	}

	var sold, attempts, samples atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := Check(context.Background(), admin, testPrefix, 5*time.Second); err != nil {
				t.Errorf("sample %d: %v", samples.Load(), err)
				return
			}
			samples.Add(1)
		}
	}()

	deadline := time.Now().Add(60 * time.Second)
	var wg sync.WaitGroup
	for _, s := range sp {
		for c := 0; c < callers; c++ {
			wg.Add(1)
			go func(b *Books) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(c), 7))
				// Far more attempts than K: go on after the last increment
				// sold, every attempt then refused.
				for (sold.Load() < K || attempts.Load() < 10*K) && time.Now().Before(deadline) {
					call := testCall("acme")
					attempts.Add(1)
					now := time.Now()
					if _, err := b.OpenCall(call, now); err != nil {
						if !isRefusal(err) {
							t.Errorf("open: %v", err)
							return
						}
						time.Sleep(time.Millisecond)
						continue
					}
					sold.Add(1)
					if err := b.AnswerDialog(call.ID, now, nil); err != nil {
						t.Errorf("answer: %v", err)
						return
					}
					for n := 1; n < 1+r.IntN(6); n++ {
						attempts.Add(1)
						if _, err := b.Step(call.ID, n, now.Add(time.Duration(6*n)*time.Second)); err != nil {
							if !isRefusal(err) {
								t.Errorf("step: %v", err)
							}
							break
						}
						sold.Add(1)
					}
					if _, err := b.CloseCall(call.ID, ledger.CallEnd{At: time.Now(), Reason: ledger.ReasonCallerHangup}); err != nil {
						t.Errorf("close: %v", err)
						return
					}
				}
			}(s.books)
		}
	}
	wg.Wait()
	// Let every node report what it sold (a tick skips an org whose
	// top-up is in flight: tick until etcd has it all, boundedly), then
	// read the cluster's balance (Org registers the org for the tick's
	// refresh).
	for round := 0; round < 100; round++ {
		for _, s := range sp {
			s.books.Tick()
		}
		if a := mustCheck(t, sp[0].node).Orgs["acme"]; a.Outstanding.IsZero() && a.Unallocated.IsZero() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range sp {
		s.books.Org("acme")
		s.books.Tick()
	}
	close(stop)
	sampler.Wait()

	if got := sold.Load(); got != K {
		st, _ := Check(context.Background(), admin, testPrefix, 5*time.Second)
		for _, s := range sp {
			lo, _ := s.local.Org("acme")
			o := s.books.org("acme")
			berr := s.books.Err()
			s.books.mu.Lock()
			t.Logf("%s: local %+v, slice %+v, direct %v, back %s, unsure %v, err %v", s.id, lo.Balances, o.slice, o.direct, o.back, o.unsure, berr)
			s.books.mu.Unlock()
		}
		t.Fatalf("sold %d increments cluster-wide, funded for exactly %d; etcd %+v", got, K, st.Orgs["acme"])
	}
	st := mustCheck(t, sp[0].node)
	a := st.Orgs["acme"]
	if !a.Spent.Equal(funded) || !a.Unallocated.IsZero() || !a.Outstanding.IsZero() {
		t.Fatalf("etcd after: %+v, want spent %s, nothing unallocated or outstanding", a, funded)
	}
	var charged decimal.Decimal
	for _, s := range sp {
		o, err := s.books.Org("acme")
		if err != nil {
			t.Fatal(err)
		}
		if !o.Balance.IsZero() {
			t.Errorf("%s: cluster balance %s, want 0.00", s.id, o.Balance)
		}
		lo, _ := s.local.Org("acme")
		charged = charged.Add(lo.Debited)
		if err := s.local.CheckInvariants(); err != nil {
			t.Error(err)
		}
		if err := s.local.CheckHistory(); err != nil {
			t.Error(err)
		}
		t.Logf("%s: sold %s locally, etcd ops %+v, direct %v", s.id, lo.Debited, s.books.Ops(), s.books.Direct("acme"))
	}
	if !charged.Equal(funded) {
		t.Fatalf("the nodes' ledgers debited %s, funded %s", charged, funded)
	}
	t.Logf("K=%d sold with %d attempts; Check held at %d samples", K, attempts.Load(), samples.Load())
}

// TestFencedBooks: once the node's lease is revoked, its Books makes no
// hold (every OpenCall and Step refused, Err non-nil) and writes nothing
// to etcd.
func TestFencedBooks(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	sp, shared := startSpenders(t, ec.Client, 1, fastPolicy(), clock.Real{})
	s := sp[0]
	createOrg(t, shared, "acme")
	if _, err := s.books.FundAcrossRegions("acme", dec("10.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	up := testCall("acme")
	now := time.Now()
	if _, err := s.books.OpenCall(up, now); err != nil {
		t.Fatal(err)
	}
	if err := s.books.AnswerDialog(up.ID, now, nil); err != nil {
		t.Fatal(err)
	}
	s.books.Tick()
	if _, err := admin.Revoke(context.Background(), s.node.Lease()); err != nil {
		t.Fatal(err)
	}
	// The node learns at its next keepalive (or next etcd operation).
	for end := time.Now().Add(5 * time.Second); !errors.Is(s.node.Sellable(), ErrFenced); {
		if time.Now().After(end) {
			t.Fatal("node never noticed its revoked lease")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before, err := admin.Get(context.Background(), "none")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := s.books.OpenCall(testCall("acme"), time.Now()); !errors.Is(err, ledger.ErrUnavailable) || !errors.Is(err, ErrFenced) {
			t.Fatalf("open after fencing: %v, want ErrUnavailable wrapping ErrFenced", err)
		}
	}
	if _, err := s.books.Step(up.ID, 1, now.Add(6*time.Second)); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("step after fencing: %v, want ErrUnavailable", err)
	}
	if err := s.books.Err(); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("Err after fencing: %v", err)
	}
	s.books.Tick()
	// The answered call is a survivor's to end and settle now (reap.go):
	// this node writes no CDR of its own.
	if _, err := s.books.CloseCall(up.ID, ledger.CallEnd{At: time.Now(), Reason: ledger.ReasonFailed}); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("close after fencing: %v, want ErrUnavailable", err)
	}
	if cdrs := cdrsOf(t, s.local, "acme"); len(cdrs) != 0 {
		t.Fatalf("the fenced node wrote CDRs: %+v", cdrs)
	}
	if err := s.books.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.books = nil
	after, err := admin.Get(context.Background(), "none")
	if err != nil {
		t.Fatal(err)
	}
	if after.Header.Revision != before.Header.Revision {
		t.Fatalf("etcd moved from revision %d to %d after fencing: the fenced node wrote", before.Header.Revision, after.Header.Revision)
	}
	lo, _ := s.local.Org("acme")
	if !lo.Debited.IsZero() || !lo.Held.Equal(dec("0.10")) {
		t.Fatalf("local after fencing: %+v: the call's first increment stays held (its restart or a survivor settles it)", lo.Balances)
	}
}

// TestNoHoldPastDeadline: on a fake clock, once the node's local lease
// deadline has passed (no keepalive acknowledged), OpenCall and Step are
// refused before anything is held, and the books are not failed: the node
// may sell again once a keepalive lands.
func TestNoHoldPastDeadline(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	clk := clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	p := fastPolicy()
	p.ReportEvery = time.Hour // the test ticks by hand
	sp, shared := startSpenders(t, ec.Client, 1, p, clk)
	s := sp[0]
	s.node.stopKeepAlive() // no acknowledgement moves the deadline from here
	createOrg(t, shared, "acme")
	if _, err := s.books.FundAcrossRegions("acme", dec("10.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	up := testCall("acme")
	if _, err := s.books.OpenCall(up, clk.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.books.AnswerDialog(up.ID, clk.Now(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.books.Step(up.ID, 1, clk.Now()); err != nil {
		t.Fatal(err)
	}
	lo0, _ := s.local.Org("acme")
	clk.Advance(s.node.Deadline().Sub(clk.Now())) // exactly at the deadline
	if _, err := s.books.OpenCall(testCall("acme"), clk.Now()); !errors.Is(err, ledger.ErrUnavailable) || !errors.Is(err, ErrLeaseDeadline) {
		t.Fatalf("open at the deadline: %v", err)
	}
	if _, err := s.books.Step(up.ID, 2, clk.Now()); !errors.Is(err, ledger.ErrUnavailable) || !errors.Is(err, ErrLeaseDeadline) {
		t.Fatalf("step at the deadline: %v", err)
	}
	lo1, _ := s.local.Org("acme")
	if !lo1.Balances.Held.Equal(lo0.Held) || !lo1.Debited.Equal(lo0.Debited) {
		t.Fatalf("money moved past the deadline: %+v then %+v", lo0.Balances, lo1.Balances)
	}
	if err := s.books.Err(); err != nil {
		t.Fatalf("a passed deadline failed the books: %v", err)
	}
	cdr, err := s.books.CloseCall(up.ID, ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonFailed})
	if err != nil || !cdr.Charge.Equal(dec("0.20")) {
		t.Fatalf("close: %+v %v: the call pays the two increments it held", cdr, err)
	}
}

// testWriter sends a logger's lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
