package ledger

import (
	"errors"
	"testing"
)

// AdoptCDR: a dead node's call's CDR, written by the survivor that ended
// it, is durable across a restart, idempotent on the call id, moves no
// money, shows in the org's CDRs, and leaves every invariant (the history's
// included) holding; bad CDRs are refused and change nothing.
func TestAdoptCDR(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	before := balance(t, l, "acme")
	seq := l.Seq()
	cdr := CDR{CallID: "dead-1", Details: Details{Org: "acme", User: "u1", To: "442079460018", RatePerMinute: d("1.00"), Currency: "USD"},
		Start: at(0), Answer: at(2), End: at(80), DurationS: 78, BilledS: 84, Charge: d("1.40"), DisconnectReason: ReasonNodeFailure, SIPStatus: 200}
	if err := l.AdoptCDR(cdr); err != nil {
		t.Fatal(err)
	}
	if l.Seq() <= seq {
		t.Fatalf("adopting moved the sequence from %d to %d", seq, l.Seq())
	}
	again := cdr
	again.Charge = d("9.99") // a retry never rewrites the first
	if err := l.AdoptCDR(again); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []CDR{
		{CallID: "", Details: Details{Org: "acme"}, Start: at(0), DisconnectReason: ReasonNodeFailure},
		{CallID: "x", Details: Details{Org: ""}, Start: at(0), DisconnectReason: ReasonNodeFailure},
		{CallID: "x", Details: Details{Org: "acme"}, Start: at(0)},
		{CallID: "x", Details: Details{Org: "acme"}, Start: at(0), DisconnectReason: ReasonNodeFailure, Charge: d("-1")},
	} {
		if err := l.AdoptCDR(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("adopt %+v: %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := l.OpenCall(creditCall("up-1", "acme", "0.01"), at(0)); err != nil {
		t.Fatal(err)
	}
	clash := cdr
	clash.CallID = "up-1"
	if err := l.AdoptCDR(clash); !errors.Is(err, ErrInvalid) {
		t.Errorf("adopting the CDR of a call up here: %v, want ErrInvalid", err)
	}
	if _, err := l.CloseCall("up-1", CallEnd{At: at(1), Reason: ReasonCanceled}); err != nil {
		t.Fatal(err)
	}
	check(t, l)
	if got := balance(t, l, "acme"); !same(got.Balances, before.Balances) {
		t.Fatalf("adopting moved money: %+v then %+v", before.Balances, got.Balances)
	}
	l.Close()

	l = open(t, dir)
	defer l.Close()
	cs := cdrs(t, l, "acme")
	var found *CDR
	for i := range cs {
		if cs[i].CallID == "dead-1" {
			found = &cs[i]
		}
	}
	if found == nil || !found.Charge.Equal(d("1.40")) || found.DisconnectReason != ReasonNodeFailure {
		t.Fatalf("after a restart the adopted CDR is %+v (CDRs %+v)", found, cs)
	}
	if got, err := l.CloseCall("dead-1", CallEnd{At: at(90), Reason: ReasonCallerHangup}); err != nil || !got.Charge.Equal(d("1.40")) {
		t.Fatalf("closing the adopted call answers %+v %v, want its CDR", got, err)
	}
	if _, err := l.OpenCall(creditCall("dead-1", "acme", "0.01"), at(100)); !errors.Is(err, ErrCallEnded) {
		t.Fatalf("reopening the adopted call: %v, want ErrCallEnded", err)
	}
	check(t, l)
}

// SettledElsewhere: calls a survivor ended and settled are ended at Open
// without a CDR, paying their open increment only as far as the survivor
// settled them; they stay ended (CloseCall ErrCallEnded) across restarts,
// and the other calls the last run left are settled as usual.
func TestSettledElsewhere(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	// Three answered calls on 1-second increments of 0.10: each steps
	// twice, so it committed 0.20 and holds 0.10.
	for _, id := range []string{"paid", "released", "mine"} {
		if _, err := l.OpenCall(creditCall(id, "acme", "0.10"), at(0)); err != nil {
			t.Fatal(err)
		}
		if err := l.AnswerDialog(id, at(0), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		for n := 1; n <= 2; n++ {
			if _, err := l.Step(id, n, at(n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	org, seq, err := l.OrgAsOf("acme")
	if err != nil || seq != l.Seq() || !org.Held.Equal(d("0.30")) {
		t.Fatalf("OrgAsOf: %+v %d %v", org.Balances, seq, err)
	}
	if c, cseq, up := l.CallAsOf("paid"); !up || cseq != seq || !c.Charge.Equal(d("0.20")) || !c.Hold.Open {
		t.Fatalf("CallAsOf: %+v %d %v", c, cseq, up)
	}
	l.Close()

	opts := Options{SettledElsewhere: map[string]Settled{
		"paid":     {Charge: d("0.30")}, // the survivor charged the held increment
		"released": {Charge: d("0.20")}, // it had not: the record it read was older
		"gone":     {Charge: d("5.00")}, // not up here: nothing to do
	}}
	l = openWith(t, dir, opts)
	cs := cdrs(t, l, "acme")
	if len(cs) != 1 || cs[0].CallID != "mine" || cs[0].DisconnectReason != ReasonRestart || !cs[0].Charge.Equal(d("0.30")) {
		t.Fatalf("CDRs after the restart: %+v, want only mine's restart CDR", cs)
	}
	if got := balance(t, l, "acme"); !got.Held.IsZero() || !got.Debited.Equal(d("0.80")) || !got.Balance.Equal(d("49.20")) {
		t.Fatalf("after the restart: %+v, want 0.30 + 0.20 + 0.30 debited", got.Balances)
	}
	for _, id := range []string{"paid", "released"} {
		if _, err := l.CloseCall(id, CallEnd{At: at(9), Reason: ReasonCallerHangup}); !errors.Is(err, ErrCallEnded) {
			t.Errorf("closing %s: %v, want ErrCallEnded", id, err)
		}
		if _, err := l.Step(id, 3, at(3)); !errors.Is(err, ErrCallEnded) {
			t.Errorf("stepping %s: %v, want ErrCallEnded", id, err)
		}
	}
	check(t, l)
	l.Close()
	// Another restart: still ended, nothing settled again.
	l = openWith(t, dir, opts)
	defer l.Close()
	if _, err := l.CloseCall("paid", CallEnd{At: at(9), Reason: ReasonCallerHangup}); !errors.Is(err, ErrCallEnded) {
		t.Errorf("closing after a second restart: %v, want ErrCallEnded", err)
	}
	if got := balance(t, l, "acme"); !got.Debited.Equal(d("0.80")) {
		t.Fatalf("a second restart moved money: %+v", got.Balances)
	}
	if len(cdrs(t, l, "acme")) != 1 {
		t.Fatal("a second restart wrote CDRs")
	}
	check(t, l)
}
