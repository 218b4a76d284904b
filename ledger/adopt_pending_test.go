package ledger

import (
	"errors"
	"reflect"
	"testing"
)

// Pending adoptions: CDRs adopted under a tag are listed pending, durable
// across a restart; a confirmed tag keeps its CDRs and is no longer pending;
// a dropped tag's CDRs are gone (the call ids unknown here again: a later
// adoption under another tag works), nothing else touched, no money moved;
// a call already ended here is neither re-adopted nor marked; bad tags and
// CDRs are refused and change nothing.
func TestPendingAdoptions(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	before := balance(t, l, "acme")
	cdr := func(id, charge string) CDR {
		return CDR{CallID: id, Details: Details{Org: "acme", User: "u1", To: "442079460018", RatePerMinute: d("1.00"), Currency: "USD"},
			Start: at(0), Answer: at(2), End: at(80), DurationS: 78, BilledS: 84, Charge: d(charge), DisconnectReason: ReasonNodeFailure, SIPStatus: 200}
	}
	if err := l.AdoptCDR(cdr("old", "0.30")); err != nil { // adopted before, confirmed
		t.Fatal(err)
	}
	if err := l.AdoptCDRsFor("n0/4@7", []CDR{cdr("a", "1.40"), cdr("b", "0.20"), cdr("old", "9.99")}); err != nil {
		t.Fatal(err)
	}
	if err := l.AdoptCDRsFor("n0/5@7", []CDR{cdr("c", "0.70")}); err != nil {
		t.Fatal(err)
	}
	if err := l.AdoptCDRsFor("n0/4@7", []CDR{cdr("a", "5.00")}); err != nil { // a retry
		t.Fatal(err)
	}
	for _, bad := range []struct {
		tag  string
		cdrs []CDR
	}{
		{"", []CDR{cdr("x", "1")}}, {"n0//4@7", []CDR{cdr("x", "1")}}, {"n0/4@7/", []CDR{cdr("x", "1")}},
		{"n0/4@7", []CDR{cdr("x", "1"), {CallID: "y", Details: Details{Org: "acme"}, Start: at(0)}}},
	} {
		if err := l.AdoptCDRsFor(bad.tag, bad.cdrs); !errors.Is(err, ErrInvalid) {
			t.Errorf("adopt %q %+v: %v, want ErrInvalid", bad.tag, bad.cdrs, err)
		}
	}
	want := map[string][]string{"n0/4@7": {"a", "b"}, "n0/5@7": {"c"}}
	l.Close()
	l = open(t, dir)
	if got, err := l.PendingAdoptions(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("pending after a restart: %v %v, want %v", got, err, want)
	}
	charges := func() map[string]string {
		out := map[string]string{}
		for _, c := range cdrs(t, l, "acme") {
			out[c.CallID] = c.Charge.String()
		}
		return out
	}
	if got := charges(); !reflect.DeepEqual(got, map[string]string{"old": "0.3", "a": "1.4", "b": "0.2", "c": "0.7"}) {
		t.Fatalf("CDRs: %v", got)
	}
	if err := l.ConfirmAdoptions("n0/5@7"); err != nil {
		t.Fatal(err)
	}
	if err := l.DropAdoptions("n0/4@7"); err != nil {
		t.Fatal(err)
	}
	if err := l.DropAdoptions("n0/4@7"); err != nil { // idempotent
		t.Fatal(err)
	}
	if got := charges(); !reflect.DeepEqual(got, map[string]string{"old": "0.3", "c": "0.7"}) {
		t.Fatalf("CDRs after dropping n0/4@7 and confirming n0/5@7: %v", got)
	}
	if got, err := l.PendingAdoptions(); err != nil || len(got) != 0 {
		t.Fatalf("pending after resolving: %v %v", got, err)
	}
	// The dropped ids are free for the adoption of record, here.
	if err := l.AdoptCDRsFor("n0/4@9", []CDR{cdr("a", "1.40")}); err != nil {
		t.Fatal(err)
	}
	if got := charges(); got["a"] != "1.4" || got["b"] != "" {
		t.Fatalf("CDRs after adopting a again: %v", got)
	}
	if got := balance(t, l, "acme"); !same(got.Balances, before.Balances) {
		t.Fatalf("adoptions moved money: %+v then %+v", before.Balances, got.Balances)
	}
	check(t, l)
	l.Close()
	l = open(t, dir)
	defer l.Close()
	if got := charges(); !reflect.DeepEqual(got, map[string]string{"old": "0.3", "c": "0.7", "a": "1.4"}) {
		t.Fatalf("CDRs after a restart: %v", got)
	}
	if got, err := l.PendingAdoptions(); err != nil || !reflect.DeepEqual(got, map[string][]string{"n0/4@9": {"a"}}) {
		t.Fatalf("pending after a restart: %v %v", got, err)
	}
	check(t, l)
}

// A call this ledger closed and that a survivor settled (it reaped the call
// as live: the closed record never reached etcd) is named in
// SettledElsewhere at the restart: its own CDR is replaced by the
// settled-elsewhere marker, what the survivor settled beyond its own
// charge (its refund) debited again, at the charge its debits then add to
// (CheckHistory holds), so it has no CDR here; CloseCall answers ErrCallEnded; the other
// CDRs stay.
func TestSettledElsewhereSupersedesCDR(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	for _, id := range []string{"closed", "kept"} {
		if _, err := l.OpenCall(creditCall(id, "acme", "0.10"), at(0)); err != nil {
			t.Fatal(err)
		}
		if err := l.AnswerDialog(id, at(0), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		for n := 1; n <= 3; n++ {
			if _, err := l.Step(id, n, at(n)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.CloseCall(id, CallEnd{At: at(4), Reason: ReasonCallerHangup, BillTo: at(1)}); err != nil {
			t.Fatal(err)
		}
	}
	before := balance(t, l, "acme")
	l.Close()
	l = openWith(t, dir, Options{SettledElsewhere: map[string]Settled{"closed": {Charge: d("0.40")}}})
	defer l.Close()
	got := map[string]bool{}
	for _, c := range cdrs(t, l, "acme") {
		got[c.CallID] = true
	}
	if got["closed"] || !got["kept"] {
		t.Fatalf("CDRs after the restart: %v", got)
	}
	if _, err := l.CloseCall("closed", CallEnd{At: at(9), Reason: ReasonCallerHangup}); !errors.Is(err, ErrCallEnded) {
		t.Fatalf("closing the superseded call: %v", err)
	}
	// The survivor settled it at 0.40; this ledger's close charged 0.30
	// (refunded to its answer): the 0.10 etcd counts spent is debited again.
	got2 := balance(t, l, "acme")
	if !got2.Balance.Equal(before.Balance.Sub(d("0.10"))) || !got2.Debited.Equal(before.Debited.Add(d("0.10"))) {
		t.Fatalf("the restart moved %+v to %+v, want 0.10 more debited", before.Balances, got2.Balances)
	}
	check(t, l)
}
