// Package ledgertest drives a real ledger through the operations the
// gateway would, for the tests of the packages built on the ledger
// (recharge, notify) that need money to move.
package ledgertest

import (
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// Spend runs one answered call of org's on credits, starting at start and
// costing n × 1.00 (60.00 a minute in 1 s increments): open, answer, n−1
// increment boundaries, and the caller's hang-up at n seconds.
func Spend(t testing.TB, l *ledger.Ledger, org, id string, n int, start time.Time) {
	t.Helper()
	c := ledger.Call{ID: id, Details: ledger.Details{Org: org, User: "u1", To: "442079460018",
		RatePerMinute: decimal.NewFromInt(60), Currency: "USD"}, FirstIncrement: 1, NextIncrement: 1, Spill: true}
	if _, err := l.OpenCall(c, start); err != nil {
		t.Fatal(err)
	}
	if err := l.Answer(id, start); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < n; i++ {
		if _, err := l.Step(id, i, start.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.CloseCall(id, ledger.CallEnd{At: start.Add(time.Duration(n) * time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
}
