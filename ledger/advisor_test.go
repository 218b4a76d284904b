package ledger

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func TestAdvise(t *testing.T) {
	now := t0
	l := openWith(t, t.TempDir(), Options{Now: func() time.Time { return now }})
	defer l.Close()
	newOrg(t, l, "acme", "")
	if _, err := l.Fund("acme", d("1000"), "big"); err != nil {
		t.Fatal(err)
	}
	// Nothing spent yet: no forecast, the smallest suggestions.
	a, err := l.Advise("acme", now)
	if err != nil || !a.ZeroAt.IsZero() || !a.Threshold.IsZero() || !a.Amount.Equal(d("50")) || a.Days != 1 {
		t.Fatalf("idle org: %+v, %v", a, err)
	}
	// Day k (0…9) spends k+1 at 1.00 a second, in one call.
	for k := range 10 {
		start := t0.Add(time.Duration(k)*24*time.Hour + time.Hour)
		id := fmt.Sprintf("day%d", k)
		if _, err := l.OpenCall(creditCall(id, "acme", "1"), start); err != nil {
			t.Fatal(err)
		}
		if err := l.Answer(id, start); err != nil {
			t.Fatal(err)
		}
		for n := 1; n <= k; n++ {
			if _, err := l.Step(id, n, start.Add(time.Duration(n)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.CloseCall(id, CallEnd{At: start.Add(time.Duration(k)*time.Second + 500*time.Millisecond), Reason: ReasonCallerHangup}); err != nil {
			t.Fatal(err)
		}
	}
	now = t0.Add(10 * 24 * time.Hour)
	a, err = l.Advise("acme", now)
	if err != nil {
		t.Fatal(err)
	}
	// 11 days observed (the org is 10 days old), 55.00 spent: 5.00 a day;
	// the 95th-percentile day is the 10.00 one; 945.00 left lasts 189 days.
	if a.Days != 11 || !a.Spend.Equal(d("55")) || !a.BurnPerDay.Equal(d("5")) || !a.P95Day.Equal(d("10")) {
		t.Fatalf("advice %+v", a)
	}
	if want := now.Add(189 * 24 * time.Hour); !a.ZeroAt.Equal(want) {
		t.Fatalf("zero at %v, want %v", a.ZeroAt, want)
	}
	// threshold 10 × 2 days × 1.25 = 25; amount max(50, 7 × 5 → 40) = 50.
	if !a.Threshold.Equal(d("25")) || !a.Amount.Equal(d("50")) || a.CDRsConsulted != 10 {
		t.Fatalf("suggestions %+v", a)
	}
	// 40 days on, only the last 30 count: nothing was spent in them.
	a, err = l.Advise("acme", t0.Add(45*24*time.Hour))
	if err != nil || a.Days != 30 || !a.Spend.IsZero() || !a.ZeroAt.IsZero() {
		t.Fatalf("after the window: %+v, %v", a, err)
	}
	if _, err := l.Advise("nope", now); err == nil {
		t.Fatal("advice for an unknown org")
	}
}

// TestAdviceInputsAdd: inputs of one window add day by day (the sum's
// advice is of the summed days: its p95 day is not the sum of the parts'),
// inputs of different windows are refused and the receiver is unchanged.
func TestAdviceInputsAdd(t *testing.T) {
	at := t0.Add(72 * time.Hour)
	a := AdviceInputs{At: at, Days: 3, Spend: []decimal.Decimal{d("1"), d("0"), d("9")}, CDRs: 2}
	b := AdviceInputs{At: at, Days: 3, Spend: []decimal.Decimal{d("8"), d("2"), d("0")}, CDRs: 3}
	sum, err := a.Add(b)
	if err != nil || sum.CDRs != 5 || !sum.Spend[0].Equal(d("9")) || !sum.Spend[1].Equal(d("2")) || !sum.Spend[2].Equal(d("9")) {
		t.Fatalf("sum %+v, %v", sum, err)
	}
	l := openWith(t, t.TempDir(), Options{Now: func() time.Time { return at }})
	defer l.Close()
	adv, pa, pb := l.AdviceFrom(sum, d("100")), l.AdviceFrom(a, d("100")), l.AdviceFrom(b, d("100"))
	if !adv.P95Day.Equal(d("9")) || !pa.P95Day.Add(pb.P95Day).Equal(d("17")) || !adv.Spend.Equal(d("20")) {
		t.Fatalf("p95 of the sum %s (parts %s, %s), spend %s", adv.P95Day, pa.P95Day, pb.P95Day, adv.Spend)
	}
	for _, other := range []AdviceInputs{
		{At: at.Add(time.Second), Days: 3, Spend: b.Spend},
		{At: at, Days: 2, Spend: b.Spend[:2]},
		{At: at, Days: 3, Spend: b.Spend[:2]},
	} {
		if got, err := a.Add(other); !errors.Is(err, ErrInvalid) || !got.Spend[2].Equal(d("9")) {
			t.Fatalf("adding %+v: %+v, %v", other, got, err)
		}
	}
}
