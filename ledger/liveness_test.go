package ledger

import (
	"testing"
	"time"
)

// A call billed to its last proof of life: increments 1..10 of one second
// at 0.01 each are committed, the last proof of life fell in increment 4
// (at 3.5 s), so 4 count and 5..10 plus the open 11th are given back.
func TestCloseBillsToLastProofOfLife(t *testing.T) {
	tests := []struct {
		name       string
		alive      time.Duration // the proof of life passed with every step
		billTo     time.Duration // 0: a plain hang-up
		wantCharge string
		wantBilled int
	}{
		{"hang-up pays all it used", 3500 * time.Millisecond, 0, "0.11", 11},
		{"bill to 3.5 s: the 4th increment counts", 3500 * time.Millisecond, 3500 * time.Millisecond, "0.04", 4},
		{"proof of life on a boundary counts the increment it starts", 3 * time.Second, 3 * time.Second, "0.04", 4},
		{"proof of life in the open increment pays it", 10500 * time.Millisecond, 10500 * time.Millisecond, "0.11", 11},
		{"no step after the answer: only the first", 0, 0500 * time.Millisecond, "0.01", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := open(t, t.TempDir())
			defer l.Close()
			newOrg(t, l, "o", "100")
			if _, err := l.OpenCall(creditCall("c", "o", "0.01"), at(0)); err != nil {
				t.Fatal(err)
			}
			if err := l.Answer("c", at(0)); err != nil {
				t.Fatal(err)
			}
			for n := 1; n <= 10; n++ {
				alive := at(0).Add(min(tc.alive, time.Duration(n)*time.Second))
				if _, err := l.StepAlive("c", n, at(n), Liveness{Alive: alive, Expires: alive.Add(90 * time.Second)}); err != nil {
					t.Fatal(err)
				}
				check(t, l)
			}
			end := CallEnd{At: at(10).Add(700 * time.Millisecond), Reason: ReasonSessionExpired}
			if tc.billTo > 0 {
				end.BillTo = at(0).Add(tc.billTo)
			}
			cdr, err := l.CloseCall("c", end)
			if err != nil {
				t.Fatal(err)
			}
			check(t, l)
			if !cdr.Charge.Equal(d(tc.wantCharge)) || cdr.BilledS != tc.wantBilled {
				t.Errorf("CDR charge %s billed %d s, want %s and %d s", cdr.Charge, cdr.BilledS, tc.wantCharge, tc.wantBilled)
			}
			if o := balance(t, l, "o"); !o.Balance.Equal(d("100").Sub(d(tc.wantCharge))) || !o.Held.IsZero() {
				t.Errorf("balance %s held %s, want %s and 0", o.Balance, o.Held, d("100").Sub(d(tc.wantCharge)))
			}
			refunds := 0
			for _, e := range entries(t, l, "o") {
				if e.Kind == EntryRefund {
					refunds++
				}
			}
			if want := map[bool]int{true: 1, false: 0}[tc.wantBilled < 10]; refunds != want {
				t.Errorf("%d refund entries, want %d", refunds, want)
			}
		})
	}
}

// A call whose session expired while no process was up is settled, on the
// next start, at its expiry and billed to its last proof of life — not at
// the restart.
func TestRestartSettlesExpiredSessionAtExpiry(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "o", "100")
	if _, err := l.OpenCall(creditCall("c", "o", "0.01"), at(0)); err != nil {
		t.Fatal(err)
	}
	if err := l.Answer("c", at(0)); err != nil {
		t.Fatal(err)
	}
	// The last refresh at 20 s, a 90 s session: it expires at 110 s. Metering
	// stepped to 30 s before the crash.
	for n := 1; n <= 30; n++ {
		alive := at(min(n, 20))
		if _, err := l.StepAlive("c", n, at(n), Liveness{Alive: alive, Expires: at(20).Add(90 * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	// Up again an hour later.
	l = openWith(t, dir, Options{Now: func() time.Time { return at(3600) }})
	defer l.Close()
	check(t, l)
	cs := cdrs(t, l, "o")
	if len(cs) != 1 {
		t.Fatalf("%d CDRs", len(cs))
	}
	c := cs[0]
	// Proof of life at 20 s falls in increment 21 ([20 s, 21 s)): 21 count.
	if c.DisconnectReason != ReasonSessionExpired || !c.End.Equal(at(110)) || !c.Charge.Equal(d("0.21")) || c.BilledS != 21 {
		t.Errorf("CDR %s end %s charge %s billed %d, want session_expired at %s, 0.21, 21", c.DisconnectReason, c.End, c.Charge, c.BilledS, at(110))
	}
	if o := balance(t, l, "o"); !o.Balance.Equal(d("99.79")) {
		t.Errorf("balance %s, want 99.79", o.Balance)
	}
}
