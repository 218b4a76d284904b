package gateway

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/faultfs"
)

// TestDiskFailureFailsClosed: the disk under the ledger stops taking
// writes (a full or dying disk). Calls up are ended cleanly — BYE to both
// legs at their next billing boundary, no minute on unrecorded money — new
// calls get 503, and an emergency call still connects.
func TestDiskFailureFailsClosed(t *testing.T) {
	fs := faultfs.New(vfs.Default)
	e := newEnvFS(t, testDeck, nil, clock.NewFake(epoch), fs, nil)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call before the failure: %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })

	fs.FailSyncs(true)
	e.clock.Advance(time.Second) // the boundary's debit cannot be made durable
	eventually(t, "both legs get BYE", func() bool { return e.caller.byes.Load() == 1 && e.carrier.byes.Load() == 1 })
	eventually(t, "call gone", func() bool { return len(e.gw.Calls()) == 0 })

	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 503 || res.GetHeader("Retry-After") == nil || !strings.Contains(warning(res), "ledger") {
		t.Fatalf("new call on a failed disk: %d %q, want 503 ledger unavailable with Retry-After", status, warning(res))
	}
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "911"); status != 200 {
		t.Fatalf("emergency call on a failed disk: %d", status)
	}
}

// jumpClock is a fake clock whose wall time can be moved without time
// passing, as an NTP step or an operator's date command moves it: timers
// still fire after their durations (Go's timers, like the fake's, run on
// monotonic time).
type jumpClock struct {
	*clock.Fake
	mu   sync.Mutex
	jump time.Duration
}

func (c *jumpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Fake.Now().Add(c.jump)
}

func (c *jumpClock) set(d time.Duration) {
	c.mu.Lock()
	c.jump = d
	c.mu.Unlock()
}

// TestWallClockJumpsDoNotChangeCharges: the wall clock steps an hour
// forward, then two hours back, in the middle of calls; each call is
// charged for the increments it actually ran.
func TestWallClockJumpsDoNotChangeCharges(t *testing.T) {
	for _, jump := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(jump.String(), func(t *testing.T) {
			clk := &jumpClock{Fake: clock.NewFake(epoch)}
			e := newEnvClock(t, testDeck, nil, clk)
			e.clock = clk.Fake
			e.org("acme", "US", "50.00", "12125550100", "communications_credits")
			sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
			if status != 200 {
				t.Fatalf("call: %d", status)
			}
			eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
			for i := range 10 {
				if i == 4 {
					clk.set(jump)
				}
				e.clock.Advance(time.Second)
			}
			e.clock.Advance(500 * time.Millisecond)
			bye(t, sess)
			eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
			// 10.5 s at 0.01 a second: 11 started increments, whatever
			// the wall clock did.
			if cdr := e.cdrs("acme")[0]; !cdr.Charge.Equal(d("0.11")) || cdr.BilledS != 11 {
				t.Fatalf("CDR %+v: want 0.11 for 11 increments", cdr)
			}
			must(t, e.ledger.CheckInvariants())
		})
	}
}
