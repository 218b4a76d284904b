package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// poolPlans are the default plans with the domestic pool at 5 minutes a
// license, so five licensed users make a 25-minute pool.
func poolPlans() []ledger.Plan {
	ps := ledger.DefaultPlans()
	for i := range ps {
		if ps[i].Name == ledger.PlanDomestic {
			ps[i].Minutes = 5
		}
	}
	return ps
}

// startPoolSpenders is startSpenders with ledgers on poolPlans.
func startPoolSpenders(t testing.TB, newClient func() *clientv3.Client, n int, p SlicePolicy, clk clock.Clock) ([]*spender, *testShared) {
	t.Helper()
	return startSpendersOn(t, openPoolLedger, newClient, n, p, clk)
}

func openPoolLedger(t testing.TB, dir string) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(dir, ledger.Options{MinFunding: dec("1.00"), Logger: quiet(), Plans: poolPlans()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// poolCall is a domestic call with a plan: its pool first, then (spill)
// credits at 1.00 a minute in 6 s increments.
func poolCall(org, user string, spill bool) ledger.Call {
	return ledger.Call{ID: uuid.NewString(), Details: ledger.Details{Org: org, User: user, To: "12125550199",
		RatePerMinute: decimal.NewFromInt(1), Currency: "USD"}, FirstIncrement: 60, NextIncrement: 6,
		Plan: ledger.PlanDomestic, Spill: spill, Fresh: true}
}

// licenseUsers gives org five users with the domestic plan's license (a
// 25-minute pool on poolPlans), users u1–u3 with the credits license too.
func licenseUsers(t testing.TB, shared *testShared, org string) {
	t.Helper()
	for i := 1; i <= 5; i++ {
		lic := []string{"domestic_calling_plan"}
		if i <= 3 {
			lic = append(lic, "communications_credits")
		}
		if err := shared.PutUser(ledger.User{Org: org, ID: fmt.Sprintf("u%d", i), Licenses: lic}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPoolAcrossNodes: 3 nodes, an org with a 25-minute pool and credits;
// 10 concurrent calls spread over the nodes, each stepping minute by
// minute. Exactly 25 pool minutes are used cluster-wide (Σ of the CDRs'
// pool minutes, and etcd's pool account); the calls that may spill go on
// credits, the others end with ErrPoolExhausted; Check holds at every
// sample a concurrent sampler takes.
func TestPoolAcrossNodes(t *testing.T) {
	const total, calls = 25, 10
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	sp, shared := startPoolSpenders(t, ec.Client, 3, fastPolicy(), clock.Real{})
	for _, s := range sp {
		s.books.log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	createOrg(t, shared, "acme")
	licenseUsers(t, shared, "acme")
	if _, err := sp[0].books.FundAcrossRegions("acme", dec("100.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	// Every increment is stamped within one month, whatever today is.
	now := time.Now().UTC()
	base := time.Date(now.Year(), now.Month(), 10, 9, 0, 0, 0, time.UTC)
	month := base.Format("2006-01")

	localUsed := func() int {
		n := 0
		for _, s := range sp {
			sh, err := s.local.PoolShare("acme", ledger.PlanDomestic, month)
			if err != nil {
				t.Error(err)
			}
			n += sh.Used
		}
		return n
	}

	var samples atomic.Int64
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

	type result struct {
		cdr       ledger.CDR
		spill     bool
		onCredits int
		endErr    error
	}
	results := make([]result, calls)
	deadline := time.Now().Add(60 * time.Second)
	var wg sync.WaitGroup
	for i := 0; i < calls; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			b := sp[i%len(sp)].books
			spill := i < 7 // users u1–u3 have the credits license
			user := "u4"
			if spill {
				user = fmt.Sprintf("u%d", 1+i%3)
			}
			r := &results[i]
			r.spill = spill
			c := poolCall("acme", user, spill)
			at := base
			if _, err := b.OpenCall(c, at); err != nil {
				// A call without the credits license that starts after
				// the pool is used up is refused at once.
				if spill || !errors.Is(err, ledger.ErrPoolExhausted) {
					t.Errorf("open call %d: %v", i, err)
				}
				r.endErr = err
				return
			}
			if err := b.AnswerDialog(c.ID, at, nil); err != nil {
				t.Errorf("answer %d: %v", i, err)
				return
			}
			// Minute by minute while the pool lasts; a spilled call goes
			// on until the cluster has used the whole pool and it has
			// made a few credit increments itself.
			for n := 1; time.Now().Before(deadline); n++ {
				at = at.Add(time.Minute)
				inc, err := b.Step(c.ID, n, at)
				if err != nil {
					r.endErr = err
					break
				}
				if inc.Source == ledger.SourceCredits {
					r.onCredits++
				}
				if r.onCredits >= 3 && localUsed() == total {
					break
				}
				time.Sleep(time.Millisecond)
			}
			cdr, err := b.CloseCall(c.ID, ledger.CallEnd{At: at, Reason: ledger.ReasonCallerHangup})
			if err != nil {
				t.Errorf("close %d: %v", i, err)
				return
			}
			r.cdr = cdr
		}(i)
	}
	wg.Wait()
	for _, s := range sp {
		s.books.Tick()
	}
	close(stop)
	sampler.Wait()

	used := 0
	for i, r := range results {
		used += r.cdr.PoolMinutes
		switch {
		case r.spill && r.endErr != nil:
			t.Errorf("call %d (credits licensed) ended: %v", i, r.endErr)
		case r.spill && r.onCredits < 3:
			t.Errorf("call %d (credits licensed) made %d credit increments", i, r.onCredits)
		case !r.spill && !errors.Is(r.endErr, ledger.ErrPoolExhausted):
			t.Errorf("call %d (no credits license) ended with %v, want ErrPoolExhausted", i, r.endErr)
		case !r.spill && r.cdr.Charge.IsPositive():
			t.Errorf("call %d (no credits license) was charged %s", i, r.cdr.Charge)
		}
		t.Logf("call %d on %s: spill %v, %d pool minutes, charge %s, %d credit increments, end %v",
			i, sp[i%len(sp)].id, r.spill, r.cdr.PoolMinutes, r.cdr.Charge, r.onCredits, r.endErr)
	}
	if used != total {
		t.Errorf("Σ CDRs' pool minutes = %d, want %d", used, total)
	}
	st, err := Check(context.Background(), admin, testPrefix, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pt := st.Pools["acme/"+ledger.PlanDomestic+"/"+month]
	if pt.Total != total || pt.Used != total || pt.Unallocated != 0 || pt.Outstanding != 0 {
		t.Errorf("etcd pool account %+v, want total = used = %d, nothing unallocated or outstanding", pt, total)
	}
	var ops OpCounts
	for _, s := range sp {
		o := s.books.Ops()
		ops.Grants += o.Grants
		ops.Returns += o.Returns
		ops.Reports += o.Reports
	}
	t.Logf("pool %d minutes on 3 nodes: used %d; Check held at %d samples; etcd ops (credits and pools) grants %d, returns %d, reports %d",
		total, used, samples.Load(), ops.Grants, ops.Returns, ops.Reports)
}

// TestPoolAdoptsUsedBeforeJoin: a ledger that used pool minutes as a
// single node (a Seed mid-month) joins: its first pool move brings those
// minutes into etcd as used, so the cluster's pool has the rest left, and
// Check holds.
func TestPoolAdoptsUsedBeforeJoin(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	s := &spender{id: "n0", dir: t.TempDir(), cli: ec.Client()}
	defer s.cli.Close()
	s.local = openPoolLedger(t, s.dir)
	shared := &testShared{ledgers: []*ledger.Ledger{s.local}}
	createOrg(t, shared, "acme")
	licenseUsers(t, shared, "acme")
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	month := at.Format("2006-01")
	c := poolCall("acme", "u4", false)
	if _, err := s.local.OpenCall(c, at); err != nil {
		t.Fatal(err)
	}
	if err := s.local.Answer(c.ID, at); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		if _, err := s.local.Step(c.ID, n, at.Add(time.Duration(n)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.local.CloseCall(c.ID, ledger.CallEnd{At: at.Add(150 * time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	s.start(t, shared, fastPolicy(), clock.Real{})
	defer s.stop(t)

	c = poolCall("acme", "u4", false)
	inc, err := s.books.OpenCall(c, at.Add(time.Hour))
	if err != nil || inc.Source != ledger.SourcePool {
		t.Fatalf("open after joining: %+v, %v; want a pool minute", inc, err)
	}
	s.books.Tick()
	st := mustCheck(t, s.node)
	pt := st.Pools["acme/"+ledger.PlanDomestic+"/"+month]
	sh, err := s.local.PoolShare("acme", ledger.PlanDomestic, month)
	if err != nil {
		t.Fatal(err)
	}
	if pt.Total != 25 || pt.Used != 3 || sh.Used != 3 || sh.Held != 1 || pt.Unallocated+sh.Allowance != 25 {
		t.Fatalf("etcd pool %+v, ledger share %+v: want 25 in all, 3 used before joining, 1 held", pt, sh)
	}
}

// TestPoolForgetsOldMonths: once idle and given back, a pool of the month
// before last leaves the node's map; this month's stays (given back).
func TestPoolForgetsOldMonths(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	clk := clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	p := DefaultSlicePolicy()
	p.ReportEvery = time.Hour // ticks are the test's
	s := &spender{id: "n0", dir: t.TempDir(), cli: ec.Client()}
	defer s.cli.Close()
	s.local = openPoolLedger(t, s.dir)
	shared := &testShared{ledgers: []*ledger.Ledger{s.local}}
	s.startOn(t, shared, p, clock.Real{}, clk)
	defer s.stop(t)
	createOrg(t, shared, "acme")
	licenseUsers(t, shared, "acme")
	for _, at := range []time.Time{time.Date(2026, 10, 20, 9, 0, 0, 0, time.UTC), clk.Now()} {
		c := poolCall("acme", "u4", false)
		if _, err := s.books.OpenCall(c, at); err != nil {
			t.Fatal(err)
		}
		if err := s.books.AnswerDialog(c.ID, at, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.books.CloseCall(c.ID, ledger.CallEnd{At: at.Add(30 * time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
			t.Fatal(err)
		}
	}
	s.books.Tick()
	if n := len(s.books.poolList()); n != 2 {
		t.Fatalf("%d pools tracked before idle, want 2", n)
	}
	clk.Advance(p.IdleAfter)
	s.books.Tick()
	ps := s.books.poolList()
	if len(ps) != 1 || ps[0].month != "2026-12" {
		t.Fatalf("pools tracked after idle: %d, want this month's only", len(ps))
	}
	st := mustCheck(t, s.node)
	for _, month := range []string{"2026-10", "2026-12"} {
		pt := st.Pools["acme/"+ledger.PlanDomestic+"/"+month]
		if pt.Used != 1 || pt.Outstanding != 0 || pt.Unallocated != 24 {
			t.Errorf("pool %s after idle: %+v, want 1 used, the rest unallocated", month, pt)
		}
	}
}
