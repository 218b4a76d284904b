package ledger

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// BenchmarkDurableCallIncrement measures what metering costs the ledger:
// one call's open (hold) + renew (debit and hold next), each acknowledged
// only once synced, from 64 concurrent callers. Beside it, in the same run,
// raw Pebble synced single-key batches from 64 writers: the ratio is the
// ledger's overhead over the store's own group commit.
func BenchmarkDurableCallIncrement(b *testing.B) {
	b.Run("raw-pebble-synced-commit", func(b *testing.B) {
		db, err := pebble.Open(b.TempDir(), &pebble.Options{Logger: quietLogger{}})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		var n atomic.Uint64
		b.SetParallelism(32) // 2 cores × 32 = 64 writers
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				k := eventKey(n.Add(1))
				if err := db.Set(k, []byte(`{"kind":"renew","call_id":"c","amount":"0.01"}`), pebble.Sync); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
	})
	b.Run("ledger-hold+renew", func(b *testing.B) {
		l, err := Open(b.TempDir(), Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		if _, err := l.CreateOrg(Org{ID: "acme", Region: "r", BillingRegion: "r"}); err != nil {
			b.Fatal(err)
		}
		if _, err := l.Fund("acme", d("999999999"), "bench"); err != nil {
			b.Fatal(err)
		}
		var n atomic.Uint64
		b.SetParallelism(32)
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := fmt.Sprintf("c%d", n.Add(1))
				c := call(id, "acme", "0.01")
				if err := l.OpenCall(c, t0); err != nil {
					b.Error(err)
					return
				}
				if err := l.Answer(id, t0); err != nil {
					b.Error(err)
					return
				}
				if err := l.Renew(id, t0, d("0.01")); err != nil {
					b.Error(err)
					return
				}
			}
		})
		// Three durable operations per iteration.
		b.ReportMetric(3*float64(b.N)/time.Since(start).Seconds(), "commits/s")
	})
}
