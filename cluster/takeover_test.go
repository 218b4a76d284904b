package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// stepLoad runs calls concurrent calls on b, each answered then stepped
// until stop closes, and returns every Step's duration and the first
// unexpected error.
func stepLoad(t testing.TB, b *Books, calls int, stop <-chan struct{}) func() ([]time.Duration, error) {
	t.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	var first error
	var wg sync.WaitGroup
	now := time.Now()
	for k := 0; k < calls; k++ {
		c := testCall("acme")
		if _, err := b.OpenCall(c, now); err != nil {
			t.Fatal(err)
		}
		if err := b.AnswerDialog(c.ID, now, json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 1; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				_, err := b.Step(c.ID, n, now.Add(time.Duration(6*n)*time.Second))
				d := time.Since(start)
				mu.Lock()
				lat = append(lat, d)
				if err != nil && first == nil {
					first = fmt.Errorf("call %s step %d: %w", c.ID, n, err)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	return func() ([]time.Duration, error) {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return lat, first
	}
}

func percentiles(d []time.Duration) string {
	if len(d) == 0 {
		return "none"
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[int(p*float64(len(s)-1))] }
	return fmt.Sprintf("n=%d p50=%s p99=%s max=%s", len(s), q(0.5), q(0.99), s[len(s)-1])
}

// TestRecordsGroupCommit: many calls stepping at once on one node: every
// step's record lands (each step returns after it), the records are
// written in batches (fewer transactions than writes), and each record in
// etcd is the call's latest state. Figures (batch sizes, step latencies)
// are logged, not asserted.
func TestRecordsGroupCommit(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	p := fastPolicy()
	p.ReportEvery = time.Hour
	p.MinSlice = dec("1000.00") // one grant: the steps do not wait for etcd's money here, only for their records
	sp, shared := startSpenders(t, ec.Client, 1, p, clock.Real{})
	createOrg(t, shared, "acme")
	if _, err := sp[0].books.FundAcrossRegions("acme", dec("5000.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	b := sp[0].books
	stop := make(chan struct{})
	wait := stepLoad(t, b, 64, stop)
	time.Sleep(2 * time.Second)
	close(stop)
	lat, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	st := b.RecordStats()
	t.Logf("64 calls stepping for 2 s: %d steps (%s); record batches %d carrying %d writes (%.1f a batch, max %d); batch write times %s",
		len(lat), percentiles(lat), st.Batches, st.Ops, float64(st.Ops)/float64(max(st.Batches, 1)), st.MaxBatch, percentiles(b.RecordLatencies()))
	if st.Batches >= st.Ops {
		t.Errorf("no batching: %d batches for %d writes", st.Batches, st.Ops)
	}
	if st.MaxBatch > maxRecordOps {
		t.Errorf("a batch of %d writes, etcd takes %d", st.MaxBatch, maxRecordOps)
	}
	// Each record in etcd is its call's latest state.
	recs, err := sp[0].node.records(context.Background(), incarnation{"n0", sp[0].node.Epoch()})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 64 {
		t.Fatalf("%d records in etcd, want 64", len(recs))
	}
	for id, r := range recs {
		c, _, up := sp[0].local.CallAsOf(id)
		if !up || r.Call.Hold.N != c.Hold.N || !r.Call.Charge.Equal(c.Charge) {
			t.Fatalf("record of %s at increment %d charge %s, the ledger has %d and %s", id, r.Call.Hold.N, r.Call.Charge, c.Hold.N, c.Charge)
		}
	}
}

// TestRecordsSurviveLeaderLoss: a 3-member etcd loses its leader while
// calls step on a node with the binary's default cluster settings (lease
// 5 s, margin 1 s, keepalive 1 s, op_timeout 2 s): the record writes retry
// through the election, no step fails, the node does not fail closed. The
// steps' latencies across the election are logged.
func TestRecordsSurviveLeaderLoss(t *testing.T) {
	ec := etcdtest.Start(t, 3)
	admin := ec.Client()
	defer admin.Close()
	p := fastPolicy()
	p.ReportEvery = time.Hour
	p.MinSlice = dec("1000.00") // one grant: the steps do not wait for etcd's money here, only for their records
	cli := ec.Client()
	defer cli.Close()
	cfg := testConfig("n0")
	cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery, cfg.OpTimeout = 5*time.Second, time.Second, time.Second, 2*time.Second
	n, err := Join(context.Background(), cli, cfg, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	local := openSpendLedger(t, t.TempDir())
	defer local.Close()
	shared := &testShared{ledgers: []*ledger.Ledger{local}}
	createOrg(t, shared, "acme")
	b, err := NewBooks(n, local, shared, p, clock.Real{}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	if _, err := b.FundAcrossRegions("acme", dec("5000.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	wait := stepLoad(t, b, 16, stop)
	time.Sleep(500 * time.Millisecond)
	var leader *etcdtest.Member
	for _, m := range ec.Members {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := admin.Status(ctx, m.ClientURL)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader == st.Header.MemberId {
			leader = m
		}
	}
	if leader == nil {
		t.Fatal("no leader")
	}
	killed := time.Now()
	ec.Kill(leader)
	time.Sleep(4 * time.Second)
	close(stop)
	lat, err := wait()
	if err != nil {
		t.Fatalf("a step failed across the election: %v", err)
	}
	if err := b.Err(); err != nil {
		t.Fatalf("the node failed closed across the election: %v", err)
	}
	st := b.RecordStats()
	t.Logf("leader %s killed at %s: %d steps (%s); record batches %d, writes %d, max batch %d; batch write times %s",
		leader.Name, killed.Format(time.StampMilli), len(lat), percentiles(lat), st.Batches, st.Ops, st.MaxBatch, percentiles(b.RecordLatencies()))
	// A call still answers after the election.
	c := testCall("acme")
	if _, err := b.OpenCall(c, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := b.AnswerDialog(c.ID, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CloseCall(c.ID, ledger.CallEnd{At: time.Now(), Reason: ledger.ReasonCallerHangup}); err != nil && !errors.Is(err, ledger.ErrCallEnded) {
		t.Fatal(err)
	}
}

// BenchmarkStepRecorded is a Step of an answered call with its takeover
// record landing in a real etcd, one call at a time (the latency a call's
// increment boundary pays), against the same Step on the local ledger
// alone.
func BenchmarkStepRecorded(b *testing.B) {
	ec := etcdtest.Start(b, 1)
	p := fastPolicy()
	p.ReportEvery = time.Hour
	sp, shared := startSpenders(b, ec.Client, 1, p, clock.Real{})
	createOrg(b, shared, "acme")
	if _, err := sp[0].books.FundAcrossRegions("acme", dec("100000.00"), "f1", ""); err != nil {
		b.Fatal(err)
	}
	// The baseline: a single node's ledger, no cluster.
	single := openSpendLedger(b, b.TempDir())
	defer single.Close()
	if _, err := single.CreateOrg(ledger.Org{ID: "acme", Name: "acme", Country: "GB", Region: "eu", BillingRegion: "eu"}); err != nil {
		b.Fatal(err)
	}
	if _, err := single.Fund("acme", dec("100000.00"), "f1"); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct {
		name  string
		books ledger.Books
	}{{"cluster", sp[0].books}, {"single", single}} {
		b.Run(mode.name, func(b *testing.B) {
			now := time.Now()
			c := testCall("acme")
			if _, err := mode.books.OpenCall(c, now); err != nil {
				b.Fatal(err)
			}
			if err := mode.books.AnswerDialog(c.ID, now, json.RawMessage(`{}`)); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for n := 1; n <= b.N; n++ {
				if _, err := mode.books.Step(c.ID, n, now.Add(time.Duration(6*n)*time.Second)); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if _, err := mode.books.CloseCall(c.ID, ledger.CallEnd{At: now, Reason: ledger.ReasonCallerHangup}); err != nil {
				b.Fatal(err)
			}
		})
	}
}
