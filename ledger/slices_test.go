package ledger

import (
	"errors"
	"testing"
)

// Cluster slices: credited and returned idempotently on (slice, move),
// durable across a restart, never taking held money back, and counted in
// the balance invariant (Funded − Debited = Balance) and the history.
func TestSliceMoves(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "")
	if _, ok := l.LastSliceMove("acme"); ok {
		t.Fatal("a new org has a slice movement")
	}
	en, err := l.CreditSlice("acme", "s1", 1, d("2.00"))
	if err != nil || en.Kind != EntrySlice || !en.Amount.Equal(d("2.00")) || !en.Balance.Equal(d("2.00")) || en.Replayed {
		t.Fatalf("credit: %+v %v", en, err)
	}
	again, err := l.CreditSlice("acme", "s1", 1, d("2.00"))
	if err != nil || !again.Replayed || again.Seq != en.Seq {
		t.Fatalf("retried credit: %+v %v, want the first entry replayed", again, err)
	}
	check(t, l)
	if got := balance(t, l, "acme"); !got.Balance.Equal(d("2.00")) || !got.Funded.Equal(d("2.00")) {
		t.Fatalf("after credit: %+v", got.Balances)
	}
	// Hold 1.50 of it: only 0.50 is available to return.
	c := creditCall("c1", "acme", "0.25") // 0.25 a second in 6 s increments: 1.50 held
	c.FirstIncrement, c.NextIncrement = 6, 6
	if _, err := l.OpenCall(c, at(0)); err != nil {
		t.Fatal(err)
	}
	held := balance(t, l, "acme").Held
	avail := d("2.00").Sub(held)
	if _, err := l.ReturnSlice("acme", "s1", 2, avail.Add(d("0.01"))); !errors.Is(err, ErrInsufficientCredit) {
		t.Fatalf("return of more than available: %v", err)
	}
	check(t, l)
	ret, err := l.ReturnSlice("acme", "s1", 2, avail)
	if err != nil || ret.Kind != EntryReturn || !ret.Amount.Equal(avail.Neg()) {
		t.Fatalf("return: %+v %v", ret, err)
	}
	if r2, err := l.ReturnSlice("acme", "s1", 2, avail); err != nil || !r2.Replayed {
		t.Fatalf("retried return: %+v %v", r2, err)
	}
	if _, err := l.CreditSlice("acme", "s1", 1, d("2.00")); err != nil {
		t.Fatalf("a retry of an earlier move of the slice: %v", err)
	}
	check(t, l)
	for _, bad := range []struct {
		slice  string
		move   int64
		amount string
	}{{"", 1, "1"}, {"s2", 0, "1"}, {"s2", 1, "0"}, {"s2", 1, "-1"}} {
		if _, err := l.CreditSlice("acme", bad.slice, bad.move, d(bad.amount)); !errors.Is(err, ErrInvalid) {
			t.Errorf("credit %+v: %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := l.CreditSlice("nope", "s2", 1, d("1")); !errors.Is(err, ErrUnknownOrg) {
		t.Fatalf("unknown org: %v", err)
	}
	if _, err := l.CloseCall("c1", CallEnd{At: at(3), Reason: ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	check(t, l)
	want := balance(t, l, "acme")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, dir)
	defer l.Close()
	got := balance(t, l, "acme")
	if !got.Balance.Equal(want.Balance) || !got.Funded.Equal(want.Funded) {
		t.Fatalf("after restart %+v, before %+v", got.Balances, want.Balances)
	}
	last, ok := l.LastSliceMove("acme")
	if !ok || last.Slice != "s1" || last.Move != 2 || !last.Entry.Amount.Equal(avail.Neg()) {
		t.Fatalf("last move after restart: %+v %v", last, ok)
	}
	if r3, err := l.ReturnSlice("acme", "s1", 2, avail); err != nil || !r3.Replayed {
		t.Fatalf("retry after restart: %+v %v", r3, err)
	}
	check(t, l)
}

func TestCheckFundingIsFundingsValidation(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "")
	if _, err := l.CreateOrg(Org{ID: "away", Name: "away", Country: "US", Region: "us", BillingRegion: "eu"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		org, amount, key, incident string
		want                       error
	}{
		{"acme", "50.00", "", "", ErrInvalid},
		{"acme", "49.99", "k", "", ErrBelowMinimum},
		{"nope", "50.00", "k", "", ErrUnknownOrg},
		{"away", "50.00", "k", "", ErrRegionMismatch},
	} {
		if _, err := l.CheckFunding(c.org, d(c.amount), c.key, c.incident); !errors.Is(err, c.want) {
			t.Errorf("%+v: %v", c, err)
		}
		// The ledger's own funding refuses the same.
		if _, err := l.FundAcrossRegions(c.org, d(c.amount), c.key, c.incident); !errors.Is(err, c.want) {
			t.Errorf("fund %+v: %v", c, err)
		}
	}
	if inc, err := l.CheckFunding("away", d("50.00"), "k", "INC-1"); err != nil || inc != "INC-1" {
		t.Fatalf("across regions with an incident: %q %v", inc, err)
	}
	if inc, err := l.CheckFunding("acme", d("50.00"), "k", "INC-1"); err != nil || inc != "" {
		t.Fatalf("same region: incident %q kept, %v", inc, err)
	}
	if got := balance(t, l, "acme"); !got.Funded.IsZero() {
		t.Fatalf("CheckFunding funded: %+v", got.Balances)
	}
}
