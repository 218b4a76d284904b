package gateway

import (
	"errors"
	"sync"
	"testing"

	"github.com/creditgate/creditgate/ledger"
)

// TestConcurrentEndCallOneWins: requests to end the same call at once (two
// operators' DELETE /v1/calls/{id}) end it once; exactly one succeeds and
// the others get ledger.ErrUnknownCall (404), where before every one that found
// the call before the first had settled it answered success.
func TestConcurrentEndCallOneWins(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	id := e.gw.Calls()[0].ID

	const n = 8
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = e.gw.EndCall(id)
		}()
	}
	close(start)
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ledger.ErrUnknownCall):
			t.Fatalf("EndCall: %v, want nil or ledger.ErrUnknownCall", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent EndCalls succeeded, want exactly 1", ok, n)
	}
	if err := e.gw.EndCall(id); !errors.Is(err, ledger.ErrUnknownCall) {
		t.Fatalf("EndCall of an ended call: %v", err)
	}
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	must(t, e.ledger.CheckInvariants())
}
