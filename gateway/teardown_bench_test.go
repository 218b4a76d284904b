package gateway

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
)

// BenchmarkTeardownLateness measures, on the real clock, how long after the
// end of the last paid increment the carrier receives the gateway's BYE:
// 20 calls at once, each with credit for exactly one 1-second increment
// (50.00 at 3000.00 a minute). The fake-clock tests prove the BYE is
// scheduled at exactly the paid end; this is what a real timer, the ledger
// refusing the next hold and the BYE transaction add on top. Reported as
// p50/p99/max milliseconds; target 50 ms (README, teardown precision) (cnxcc: up to one 1 s check
// period).
func BenchmarkTeardownLateness(b *testing.B) {
	const calls = 20
	e := newEnvClock(b, deckHeader+"33,FR,France,geographic,3000.00,,1,1\n", nil, clock.Real{})
	e.org("acme", "US", "", "12125550100", "communications_credits")
	var late []time.Duration
	seen := map[string]bool{}
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		_, err := e.ledger.Fund("acme", d("1000.00"), fmt.Sprintf("round-%d", i)) // 20 × 50.00
		must(b, err)
		b.StartTimer()
		var wg sync.WaitGroup
		for n := 0; n < calls; n++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, status, _, err := e.caller.tryDial(e.gw.Addr(), "+12125550100", "+33142278186"); err != nil || status != 200 {
					b.Errorf("call %d: %d %v", n, status, err)
				}
			}()
		}
		wg.Wait()
		eventually(b, "every call ended", func() bool { return len(e.cdrs("acme")) == calls*(i+1) })
		for _, cdr := range e.cdrs("acme") {
			if seen[cdr.CallID] {
				continue
			}
			seen[cdr.CallID] = true
			if cdr.BilledS != 1 || cdr.DisconnectReason != "credit_exhausted" {
				b.Fatalf("CDR %+v: want one paid second, ended for credit", cdr)
			}
			eventually(b, "carrier BYE", func() bool { _, ok := e.carrier.byeAt.Load(cdr.CallID); return ok })
			v, _ := e.carrier.byeAt.Load(cdr.CallID)
			late = append(late, v.(time.Time).Sub(cdr.Answer.Add(time.Second)))
		}
	}
	slices.Sort(late)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(late[len(late)/2]), "p50-late-ms")
	b.ReportMetric(ms(late[len(late)*99/100]), "p99-late-ms")
	b.ReportMetric(ms(late[len(late)-1]), "max-late-ms")
	b.ReportMetric(ms(late[0]), "min-late-ms")
}
