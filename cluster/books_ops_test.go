package cluster

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// manualTicks is a fake clock whose timers never fire: the Books' report
// loop stays idle and the test runs each tick itself, once per simulated
// second, so every operation is counted once.
type manualTicks struct{ *clock.Fake }

type neverTimer struct{}

func (neverTimer) Stop() bool { return true }

func (manualTicks) AfterFunc(time.Duration, func()) clock.Timer { return neverTimer{} }

// TestOpsPerCall logs (does not assert: the figures are for the issue's
// capacity table) the etcd operations per call at steady state, with 1 and
// 100 active orgs on 3 nodes: each org starts a call every 6 s, on the
// nodes in turn, and each call runs 5 increments of 6 s at 1.00 a minute
// (so about 5 calls up per org), under the default slice policy (report
// every second). The first simulated minute is warm-up; the next three are
// counted. Run: go test -run TestOpsPerCall -v ./cluster/
func TestOpsPerCall(t *testing.T) {
	counts := []int{1, 100}
	// CLUSTER_OPS_ORGS=1000,10000 measures other org counts by hand (each
	// takes minutes: every org is created, funded and called).
	if v := os.Getenv("CLUSTER_OPS_ORGS"); v != "" {
		counts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				t.Fatalf("CLUSTER_OPS_ORGS=%q: want whole numbers like 1000,10000", v)
			}
			counts = append(counts, n)
		}
	}
	for _, orgs := range counts {
		t.Run(fmt.Sprintf("orgs=%d", orgs), func(t *testing.T) { opsPerCall(t, orgs) })
	}
}

func opsPerCall(t *testing.T, orgs int) {
	const warmup, measured, incs = 60, 180, 5
	ec := etcdtest.Start(t, 1)
	clk := manualTicks{clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))}
	p := DefaultSlicePolicy()
	shared := &testShared{}
	sp := make([]*spender, 3)
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
	ids := make([]string, orgs)
	for k := range ids {
		ids[k] = fmt.Sprintf("org%03d", k)
		createOrg(t, shared, ids[k])
		if _, err := sp[k%3].books.FundAcrossRegions(ids[k], dec("1000.00"), "f", ""); err != nil {
			t.Fatal(err)
		}
	}
	type up struct {
		id    string
		node  int
		n     int
		start int
	}
	active := make([][]*up, orgs)
	started := make([]int, orgs)
	var before [3]OpCounts
	var recBefore [3]RecordStats
	callsBefore := 0
	wall := time.Now()
	for sec := 0; sec < warmup+measured; sec++ {
		if sec == warmup {
			for i, s := range sp {
				before[i] = s.books.Ops()
				recBefore[i] = s.books.RecordStats()
			}
			for _, n := range started {
				callsBefore += n
			}
		}
		now := clk.Now()
		var wg sync.WaitGroup
		for k := range ids {
			wg.Add(1)
			go func(k int) {
				defer wg.Done()
				org := ids[k]
				kept := active[k][:0]
				for _, c := range active[k] {
					if (sec-c.start)%6 != 0 {
						kept = append(kept, c)
						continue
					}
					b := sp[c.node].books
					if c.n == incs {
						if _, err := b.CloseCall(c.id, ledger.CallEnd{At: now, Reason: ledger.ReasonCallerHangup}); err != nil {
							t.Error(err)
						}
						continue
					}
					if _, err := b.Step(c.id, c.n, now); err != nil {
						t.Errorf("step %s: %v", org, err)
						continue
					}
					c.n++
					kept = append(kept, c)
				}
				active[k] = kept
				if sec%6 == k%6 {
					node := started[k] % 3
					c := testCall(org)
					b := sp[node].books
					if _, err := b.OpenCall(c, now); err != nil {
						t.Errorf("open %s: %v", org, err)
						return
					}
					if err := b.AnswerDialog(c.ID, now, nil); err != nil {
						t.Error(err)
						return
					}
					started[k]++
					active[k] = append(active[k], &up{id: c.ID, node: node, n: 1, start: sec})
				}
			}(k)
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		clk.Advance(time.Second)
		for _, s := range sp {
			s.books.Tick()
		}
	}
	calls := -callsBefore
	for _, n := range started {
		calls += n
	}
	var d OpCounts
	for i, s := range sp {
		o := s.books.Ops()
		d.Grants += o.Grants - before[i].Grants
		d.Returns += o.Returns - before[i].Returns
		d.Reports += o.Reports - before[i].Reports
		d.Reads += o.Reads - before[i].Reads
		d.Charges += o.Charges - before[i].Charges
	}
	writes := d.Grants + d.Returns + d.Reports + d.Charges
	// The takeover records (issue 17): one put per answer, step and close
	// of each call, group-committed into transactions.
	var recTxns, recPuts int64
	for i, s := range sp {
		r := s.books.RecordStats()
		recTxns += r.Batches - recBefore[i].Batches
		recPuts += r.Ops - recBefore[i].Ops
	}
	if recPuts == 0 {
		t.Fatal("no takeover record was written for answered calls")
	}
	per := func(n int64) string { return fmt.Sprintf("%.4f", float64(n)/float64(calls)) }
	t.Logf("%d orgs, 3 nodes, %d calls (%.1f calls/s) over %d simulated s (%s wall): per call grants %s, returns %s, report txns %s, reads %s, charges %s; etcd writes per call %s, per simulated second %.1f",
		orgs, calls, float64(calls)/measured, measured, time.Since(wall).Round(time.Millisecond),
		per(d.Grants), per(d.Returns), per(d.Reports), per(d.Reads), per(d.Charges), per(writes), float64(writes)/measured)
	t.Logf("%d orgs: takeover records per call: %s transactions, %s keys written (each call: answer, %d steps, close); per simulated second %.1f transactions, %.1f keys",
		orgs, per(recTxns), per(recPuts), incs-1, float64(recTxns)/measured, float64(recPuts)/measured)
	mustCheck(t, sp[0].node)
}
