package gateway

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// TestConcurrentCallsShareCreditExactly: 20 calls of one org at once share
// 50.00 at 1.00 a second. They all end when the money is gone, the balance
// is exactly 0.00, the CDRs add up to exactly 50.00, and no call ran past
// what it paid for.
func TestConcurrentCallsShareCreditExactly(t *testing.T) {
	e := newEnv(t, deckHeader+"33,FR,France,geographic,60.00,,1,1\n")
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")

	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, status, _, err := e.caller.tryDial(e.gw.Addr(), "+12125550100", "+33142278186")
			if err != nil {
				errs <- err
			} else if status != 200 {
				errs <- &statusError{status}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a call was not connected: %v", err)
	}
	eventually(t, "all calls answered", func() bool { return e.answeredCalls() == n })
	if o, _ := e.ledger.Org("acme"); !o.Held.Equal(decimal.NewFromInt(n)) {
		t.Fatalf("held %s with %d calls up, want one increment each", o.Held, n)
	}
	for i := 0; i < 10 && len(e.gw.Calls()) > 0; i++ {
		e.clock.Advance(time.Second)
		must(t, e.ledger.CheckInvariants())
		if o, _ := e.ledger.Org("acme"); o.Available().IsNegative() || o.Balance.IsNegative() {
			t.Fatalf("overspent: %+v", o)
		}
	}
	if len(e.gw.Calls()) != 0 {
		t.Fatalf("%d calls still up after the money ran out", len(e.gw.Calls()))
	}
	eventually(t, "every caller leg gets BYE", func() bool { return e.caller.byes.Load() == n })
	eventually(t, "every carrier leg gets BYE", func() bool { return e.carrier.byes.Load() == n })

	cdrs := e.cdrs("acme")
	if len(cdrs) != n {
		t.Fatalf("%d CDRs, want %d", len(cdrs), n)
	}
	var sum decimal.Decimal
	for _, c := range cdrs {
		sum = sum.Add(c.Charge)
		if c.DisconnectReason != ledger.ReasonCreditExhausted {
			t.Errorf("call %s ended by %s", c.CallID, c.DisconnectReason)
		}
		// Paid = charge at 1.00 a second; the call may not have run longer.
		ran := c.End.Sub(c.Answer)
		if paid := time.Duration(c.Charge.IntPart()) * time.Second; ran > paid || !c.Charge.Equal(decimal.NewFromInt(int64(c.BilledS))) {
			t.Errorf("call %s ran %v but paid for %v (billed %d s, charge %s)", c.CallID, ran, paid, c.BilledS, c.Charge)
		}
	}
	if b := e.balance("acme"); !b.IsZero() || !sum.Equal(decimal.NewFromInt(50)) {
		t.Fatalf("balance %s, CDRs add up to %s; want 0 and exactly 50", b, sum)
	}
}

type statusError struct{ status int }

func (e *statusError) Error() string { return fmt.Sprintf("refused with %d", e.status) }
