package ledger

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// callers is how many goroutines drive the store at once in the
// throughput benchmarks: a busy gateway's concurrent metering timers.
const callers = 64

// phase runs fn from callers goroutines for d and returns how many times it
// completed and how long that took.
func phase(b *testing.B, d time.Duration, fn func(g int, i int) error) (int64, time.Duration) {
	var n atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	start := time.Now()
	for g := range callers {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				if err := fn(g, i); err != nil {
					b.Error(err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return n.Load(), time.Since(start)
}

// BenchmarkDurableHoldCommit measures what metering costs the ledger, each
// operation acknowledged only once synced, from 64 concurrent callers, next
// to raw Pebble synced batch commits from 64 writers measured in the same
// run. Each round runs the three phases back to back, so a noisy neighbour
// hits all of them alike:
//
//   - raw: one synced Pebble batch of one ~300-byte record per operation;
//   - step: metering's boundary — commit increment n and hold n+1, one
//     durable operation (a hold+commit pair);
//   - hold-then-commit: the same pair as two durable operations.
//
// The ratios are pairs per second over raw commits per second.
func BenchmarkDurableHoldCommit(b *testing.B) {
	db, err := pebble.Open(b.TempDir(), &pebble.Options{Logger: quietLogger{}})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	l := benchLedger(b)
	defer l.Close()
	record := []byte(strings.Repeat("x", 300))
	var seq atomic.Uint64
	calls := make([]string, callers)
	for g := range callers {
		calls[g] = fmt.Sprintf("bench-%d", g)
		if _, err := l.OpenCall(creditCall(calls[g], "acme", "0.01"), t0); err != nil {
			b.Fatal(err)
		}
		if err := l.Answer(calls[g], t0); err != nil {
			b.Fatal(err)
		}
	}
	latest := make([]int, callers)
	for g := range latest {
		latest[g] = 1
	}
	const round = 300 * time.Millisecond
	var raw, step, split int64
	var rawT, stepT, splitT time.Duration
	b.ResetTimer()
	for range b.N {
		n, d := phase(b, round, func(int, int) error {
			return db.Set(eventKey(seq.Add(1)), record, pebble.Sync)
		})
		raw, rawT = raw+n, rawT+d
		n, d = phase(b, round, func(g, _ int) error {
			inc, err := l.Step(calls[g], latest[g], t0)
			latest[g] = inc.N
			return err
		})
		step, stepT = step+n, stepT+d
		n, d = phase(b, round, func(g, _ int) error {
			if err := l.Commit(calls[g], latest[g], t0); err != nil {
				return err
			}
			inc, err := l.Hold(calls[g], latest[g]+1, t0)
			latest[g] = inc.N
			return err
		})
		split, splitT = split+n, splitT+d
	}
	b.StopTimer()
	rawRate := float64(raw) / rawT.Seconds()
	b.ReportMetric(rawRate, "raw-commits/s")
	b.ReportMetric(float64(step)/stepT.Seconds(), "step-pairs/s")
	b.ReportMetric(float64(split)/splitT.Seconds(), "hold+commit-pairs/s")
	b.ReportMetric(float64(step)/stepT.Seconds()/rawRate, "step/raw")
	b.ReportMetric(float64(split)/splitT.Seconds()/rawRate, "hold+commit/raw")
	if err := l.CheckInvariants(); err != nil {
		b.Fatal(err)
	}
}

func eventKey(n uint64) []byte { return []byte("e/" + strconv.FormatUint(n, 16)) }

func benchLedger(b *testing.B) *Ledger {
	b.Helper()
	l := open(b, b.TempDir())
	newOrg(b, l, "acme", "")
	if _, err := l.Fund("acme", d("999999999"), "bench"); err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkHoldLatency offers holds (a call's first increment, as at call
// setup) at a fixed 1,000 a second, open loop: each latency is measured from
// when the hold was due, not when it was sent, so a stall counts against
// every hold it delayed.
func BenchmarkHoldLatency(b *testing.B) {
	l := benchLedger(b)
	defer l.Close()
	const rate = 1000
	const per = time.Second / rate
	var lat []time.Duration
	var mu sync.Mutex
	b.ResetTimer()
	for it := range b.N {
		var wg sync.WaitGroup
		start := time.Now()
		for i := range rate { // one second of offered load per iteration
			due := start.Add(time.Duration(i) * per)
			time.Sleep(time.Until(due))
			wg.Go(func() {
				_, err := l.OpenCall(creditCall(fmt.Sprintf("lat-%d-%d", it, i), "acme", "0.01"), t0)
				d := time.Since(due)
				if err != nil {
					b.Error(err)
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			})
		}
		wg.Wait()
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
	b.ReportMetric(float64(len(lat)), "holds")
}

// footprint fills a ledger with orgs (each with a user and a funding) and
// answered calls each holding an increment, and measures the Go heap each
// adds, after a GC, plus the process's resident memory at the end.
func footprint(tb testing.TB, orgs, calls int) (perOrg, perCall float64, rssMiB float64) {
	l := open(tb, tb.TempDir())
	defer l.Close()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	run := func(n int, fn func(i int) error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					if err := fn(i); err != nil {
						tb.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	base := heap()
	run(orgs, func(i int) error {
		id := fmt.Sprintf("org-%06d", i)
		if _, err := l.CreateOrg(Org{ID: id, Name: "Org " + id, Country: "US", Region: "us", BillingRegion: "us"}); err != nil {
			return err
		}
		if err := l.PutUser(User{Org: id, ID: "u1", Numbers: []string{fmt.Sprintf("1212%07d", i)},
			Licenses: []string{"domestic_calling_plan", "communications_credits"}}); err != nil {
			return err
		}
		_, err := l.Fund(id, d("100"), "initial")
		return err
	})
	withOrgs := heap()
	run(calls, func(i int) error {
		id := fmt.Sprintf("call-%08d-0000-0000-0000-000000000000", i) // UUID-sized, like the gateway's
		c := creditCall(id, fmt.Sprintf("org-%06d", i%orgs), "0.01")
		if _, err := l.OpenCall(c, t0); err != nil {
			return err
		}
		if err := l.Answer(id, t0); err != nil {
			return err
		}
		_, err := l.Step(id, 1, t0)
		return err
	})
	withCalls := heap()
	if len(l.OpenCalls()) != calls {
		tb.Fatalf("%d calls up, want %d", len(l.OpenCalls()), calls)
	}
	return float64(withOrgs-base) / float64(orgs), float64(withCalls-withOrgs) / float64(calls), rssMiBNow()
}

func rssMiBNow() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkFootprint: 100,000 orgs and 50,000 calls up at once.
func BenchmarkFootprint(b *testing.B) {
	for range b.N {
		perOrg, perCall, rss := footprint(b, 100_000, 50_000)
		b.ReportMetric(perOrg, "heap-B/org")
		b.ReportMetric(perCall, "heap-B/call")
		b.ReportMetric((perOrg*100_000+perCall*50_000)/(1<<20), "heap-MiB-100k-orgs-50k-calls")
		b.ReportMetric(rss, "rss-MiB")
	}
}

// TestFootprintBounded keeps the per-object cost that makes 100,000 orgs
// and 50,000 calls fit in well under 1 GiB: at these rates they take under
// 400 MiB of heap. Heap bytes are counted, not timed, so this is stable.
func TestFootprintBounded(t *testing.T) {
	perOrg, perCall, _ := footprint(t, 5_000, 2_500)
	t.Logf("heap per org %.0f B, per call up %.0f B", perOrg, perCall)
	orgLimit, callLimit := 2500*raceHeapFactor, 3000*raceHeapFactor
	if perOrg > orgLimit || perCall > callLimit {
		t.Fatalf("heap per org %.0f B (limit %.0f), per call %.0f B (limit %.0f)", perOrg, orgLimit, perCall, callLimit)
	}
}
