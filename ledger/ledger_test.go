package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

var t0 = time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

func open(t testing.TB, dir string) *Ledger {
	t.Helper()
	return openWith(t, dir, Options{})
}

func openWith(t testing.TB, dir string, opts Options) *Ledger {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return t0 }
	}
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// check asserts every invariant, including those over the stored history.
func check(t testing.TB, l *Ledger) {
	t.Helper()
	if err := l.CheckInvariants(); err != nil {
		t.Fatalf("invariant broken: %v", err)
	}
	if err := l.CheckHistory(); err != nil {
		t.Fatalf("history invariant broken: %v", err)
	}
}

func newOrg(t testing.TB, l *Ledger, id, fund string) {
	t.Helper()
	if _, err := l.CreateOrg(Org{ID: id, Name: id, Country: "US", Region: "us", BillingRegion: "us"}); err != nil {
		t.Fatalf("CreateOrg: %v", err)
	}
	if fund != "" {
		if _, err := l.Fund(id, d(fund), "initial-"+id); err != nil {
			t.Fatalf("Fund: %v", err)
		}
	}
	check(t, l)
}

// creditCall is a call on credits in 1-second increments that each cost
// perSecond.
func creditCall(id, org, perSecond string) Call {
	return Call{ID: id, Details: Details{Org: org, User: "u1", To: "442079460018",
		RatePerMinute: d(perSecond).Mul(decimal.NewFromInt(60)), Currency: "USD"},
		FirstIncrement: 1, NextIncrement: 1, Spill: true}
}

// same compares records by their stored form: decimals that are equal in
// value may differ in representation.
func same(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

func balance(t testing.TB, l *Ledger, org string) Org {
	t.Helper()
	o, err := l.Org(org)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func entries(t testing.TB, l *Ledger, org string) []Entry {
	t.Helper()
	es, err := l.Transactions(org, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func cdrs(t testing.TB, l *Ledger, org string) []CDR {
	t.Helper()
	cs, err := l.CDRs(org, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func TestCallLifecycle(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")

	inc, err := l.OpenCall(creditCall("c1", "acme", "0.01"), t0)
	if err != nil || inc.N != 1 || inc.Source != SourceCredits || !inc.Credit.Equal(d("0.01")) || inc.Seconds != 1 {
		t.Fatalf("OpenCall = %+v, %v", inc, err)
	}
	check(t, l)
	if o := balance(t, l, "acme"); !o.Held.Equal(d("0.01")) || !o.Available().Equal(d("49.99")) {
		t.Fatalf("after open: %+v", o)
	}
	if err := l.Answer("c1", t0); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 10; n++ {
		inc, err := l.Step("c1", n, at(n))
		if err != nil || inc.N != n+1 {
			t.Fatalf("Step %d = %+v, %v", n, inc, err)
		}
		check(t, l)
	}
	// Hang-up in the 11th second: the started increment counts whole.
	cdr, err := l.CloseCall("c1", CallEnd{At: t0.Add(10500 * time.Millisecond), Reason: ReasonCallerHangup, SIPStatus: 200})
	if err != nil {
		t.Fatal(err)
	}
	check(t, l)
	if !cdr.Charge.Equal(d("0.11")) || cdr.BilledS != 11 || cdr.DurationS != 11 || cdr.Pool != "" {
		t.Fatalf("CDR %+v: want charge 0.11, billed 11 s", cdr)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("49.89")) || !o.Held.IsZero() {
		t.Fatalf("after close: %+v", o)
	}
	es := entries(t, l, "acme")
	if len(es) != 12 || es[0].Kind != EntryFunding || es[11].N != 11 || !es[11].Balance.Equal(d("49.89")) {
		t.Fatalf("transactions %+v: want the funding and 11 debits", es)
	}
}

func TestUnansweredCallCostsNothing(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.OpenCall(creditCall("c1", "acme", "1.00"), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Step("c1", 1, at(1)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("step before answer: %v", err)
	}
	if err := l.Commit("c1", 1, at(1)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("commit before answer: %v", err)
	}
	cdr, err := l.CloseCall("c1", CallEnd{At: at(3), Reason: ReasonCanceled, SIPStatus: 487})
	if err != nil {
		t.Fatal(err)
	}
	check(t, l)
	if !cdr.Charge.IsZero() || cdr.BilledS != 0 || !cdr.Answer.IsZero() {
		t.Fatalf("unanswered CDR %+v", cdr)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("50")) || !o.Held.IsZero() {
		t.Fatalf("org %+v", o)
	}
}

func TestRunsOutExactly(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.OpenCall(creditCall("c1", "acme", "10.00"), t0); err != nil {
		t.Fatal(err)
	}
	_ = l.Answer("c1", t0)
	n := 1
	for ; ; n++ {
		_, err := l.Step("c1", n, at(n))
		if errors.Is(err, ErrInsufficientCredit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if n != 5 {
		t.Fatalf("ran out at step %d, want 5 (50.00 pays 5 increments of 10.00)", n)
	}
	// The step that could not hold still debited the fifth increment.
	o := balance(t, l, "acme")
	if !o.Balance.IsZero() || !o.Held.IsZero() {
		t.Fatalf("org %+v, want balance 0, nothing held", o)
	}
	// Retrying the refused step debits nothing twice.
	if _, err := l.Step("c1", 5, at(5)); !errors.Is(err, ErrInsufficientCredit) {
		t.Fatalf("retried step: %v", err)
	}
	cdr, _ := l.CloseCall("c1", CallEnd{At: at(5), Reason: ReasonCreditExhausted})
	check(t, l)
	if !cdr.Charge.Equal(d("50")) || cdr.BilledS != 5 {
		t.Fatalf("CDR %+v", cdr)
	}
	if _, err := l.OpenCall(creditCall("c2", "acme", "0.000001"), t0); !errors.Is(err, ErrInsufficientCredit) {
		t.Fatalf("dial-out at zero: %v", err)
	}
	if inc, err := l.OpenCall(Call{ID: "sos", Details: Details{Org: "acme"}, Free: true}, t0); err != nil || inc.Source != SourceFree {
		t.Fatalf("emergency call at zero balance: %+v, %v", inc, err)
	}
	if _, err := l.Step("sos", 1, at(1)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("emergency call metered: %v", err)
	}
	check(t, l)
}

// TestRetriesApplyOnce retries every operation with the same idempotent id
// and checks each applied exactly once, also across a restart.
func TestRetriesApplyOnce(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	c := creditCall("c1", "acme", "1.00")
	a, err := l.OpenCall(c, t0)
	b, err2 := l.OpenCall(c, t0)
	if err != nil || err2 != nil || a != b {
		t.Fatalf("OpenCall twice: %+v %v / %+v %v", a, err, b, err2)
	}
	if o := balance(t, l, "acme"); !o.Held.Equal(d("1")) {
		t.Fatalf("held %s after a retried open, want 1", o.Held)
	}
	other := c
	other.To = "33142270000"
	if _, err := l.OpenCall(other, t0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("second call with the same id: %v", err)
	}
	_ = l.Answer("c1", t0)
	_ = l.Answer("c1", at(1))
	for range 3 {
		if inc, err := l.Step("c1", 1, at(1)); err != nil || inc.N != 2 {
			t.Fatalf("Step(1) = %+v, %v", inc, err)
		}
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("49")) || !o.Held.Equal(d("1")) {
		t.Fatalf("after retried steps: %+v", o)
	}
	for range 2 {
		if err := l.Commit("c1", 2, at(2)); err != nil {
			t.Fatal(err)
		}
		if err := l.Release("c1", 2, at(2)); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if inc, err := l.Hold("c1", 3, at(2)); err != nil || inc.N != 3 {
			t.Fatalf("Hold(3) = %+v, %v", inc, err)
		}
	}
	if inc, err := l.Hold("c1", 2, at(2)); err != nil || inc.N != 2 || inc.Open {
		t.Fatalf("Hold(2) retried after commit = %+v, %v", inc, err)
	}
	if _, err := l.Hold("c1", 5, at(2)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Hold skipping an increment: %v", err)
	}
	first, err := l.CloseCall("c1", CallEnd{At: at(3), Reason: ReasonCallerHangup, SIPStatus: 200})
	if err != nil {
		t.Fatal(err)
	}
	again, err := l.CloseCall("c1", CallEnd{At: at(9), Reason: ReasonAdmin})
	if err != nil || !same(again, first) {
		t.Fatalf("retried close = %+v, %v; want %+v", again, err, first)
	}
	if !first.Charge.Equal(d("3")) {
		t.Fatalf("charge %s, want 3", first.Charge)
	}
	if _, err := l.Step("c1", 3, at(3)); !errors.Is(err, ErrCallEnded) {
		t.Fatalf("step of an ended call: %v", err)
	}
	if _, err := l.Fund("acme", d("60"), "initial-acme"); !errors.Is(err, ErrDuplicateFunding) {
		t.Fatalf("repeated funding key: %v", err)
	}
	check(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir)
	defer l.Close()
	if again, err := l.CloseCall("c1", CallEnd{At: at(9), Reason: ReasonAdmin}); err != nil || !same(again, first) {
		t.Fatalf("close retried after restart = %+v, %v", again, err)
	}
	if _, err := l.OpenCall(c, at(10)); !errors.Is(err, ErrCallEnded) {
		t.Fatalf("reopening an ended call after restart: %v", err)
	}
	if _, err := l.Fund("acme", d("60"), "initial-acme"); !errors.Is(err, ErrDuplicateFunding) {
		t.Fatalf("funding key forgotten across restart: %v", err)
	}
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("47")) {
		t.Fatalf("balance %s, want 47", o.Balance)
	}
	check(t, l)
}

func TestCommitPartReleasesTheRest(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	c := creditCall("c1", "acme", "1.00")
	c.FirstIncrement, c.NextIncrement = 60, 60 // 60.00 a minute: more than the balance
	c.RatePerMinute = d("30")
	if _, err := l.OpenCall(c, t0); err != nil {
		t.Fatal(err)
	}
	_ = l.Answer("c1", t0)
	over := Amount{Credit: d("30.000001"), Seconds: 60}
	if err := l.CommitPart("c1", 1, at(20), over); !errors.Is(err, ErrInvalid) {
		t.Fatalf("commit beyond the hold: %v", err)
	}
	if err := l.CommitPart("c1", 1, at(20), Amount{Credit: d("-1")}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative commit: %v", err)
	}
	if err := l.CommitPart("c1", 1, at(20), Amount{Credit: d("10"), Seconds: 20}); err != nil {
		t.Fatal(err)
	}
	check(t, l)
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("40")) || !o.Held.IsZero() {
		t.Fatalf("after part commit: %+v", o)
	}
	if inc, err := l.Hold("c1", 2, at(20)); err != nil || !inc.Credit.Equal(d("30")) {
		t.Fatalf("Hold(2) = %+v, %v", inc, err)
	}
	if err := l.Release("c1", 2, at(25)); err != nil {
		t.Fatal(err)
	}
	cdr, _ := l.CloseCall("c1", CallEnd{At: at(25), Reason: ReasonCallerHangup})
	check(t, l)
	if !cdr.Charge.Equal(d("10")) || cdr.BilledS != 20 {
		t.Fatalf("CDR %+v", cdr)
	}
}

func TestRefusalsChangeNothing(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.CreateOrg(Org{ID: "split", Region: "eu", BillingRegion: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.OpenCall(creditCall("up", "acme", "1.00"), t0); err != nil {
		t.Fatal(err)
	}
	before := len(entries(t, l, "acme"))
	noPlan := creditCall("np", "acme", "1")
	noPlan.Spill = false
	badPlan := creditCall("bp", "acme", "1")
	badPlan.Plan = "platinum"
	badInc := creditCall("bi", "acme", "1")
	badInc.FirstIncrement = 0
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"duplicate org", func() error { _, err := l.CreateOrg(Org{ID: "acme"}); return err }, ErrOrgExists},
		{"bad org id", func() error { _, err := l.CreateOrg(Org{ID: "a/b"}); return err }, ErrInvalid},
		{"bad currency", func() error { _, err := l.CreateOrg(Org{ID: "x", Currency: "usd"}); return err }, ErrInvalid},
		{"bad timezone", func() error { _, err := l.CreateOrg(Org{ID: "x", Timezone: "Mars/Olympus"}); return err }, ErrInvalid},
		{"below minimum", func() error { _, err := l.Fund("acme", d("49.99"), "k1"); return err }, ErrBelowMinimum},
		{"negative", func() error { _, err := l.Fund("acme", d("-50"), "k2"); return err }, ErrBelowMinimum},
		{"repeated key", func() error { _, err := l.Fund("acme", d("60"), "initial-acme"); return err }, ErrDuplicateFunding},
		{"missing key", func() error { _, err := l.Fund("acme", d("60"), ""); return err }, ErrInvalid},
		{"unknown org", func() error { _, err := l.Fund("nope", d("60"), "k3"); return err }, ErrUnknownOrg},
		{"region mismatch", func() error { _, err := l.Fund("split", d("60"), "k4"); return err }, ErrRegionMismatch},
		{"hold beyond balance", func() error { _, err := l.OpenCall(creditCall("big", "acme", "49.01"), t0); return err }, ErrInsufficientCredit},
		{"call of unknown org", func() error { _, err := l.OpenCall(creditCall("x", "nope", "1"), t0); return err }, ErrUnknownOrg},
		{"call with bad id", func() error { _, err := l.OpenCall(creditCall("a b", "acme", "1"), t0); return err }, ErrInvalid},
		{"call without plan or credits", func() error { _, err := l.OpenCall(noPlan, t0); return err }, ErrInvalid},
		{"call with unknown plan", func() error { _, err := l.OpenCall(badPlan, t0); return err }, ErrInvalid},
		{"call with zero increment", func() error { _, err := l.OpenCall(badInc, t0); return err }, ErrInvalid},
		{"step unknown call", func() error { _, err := l.Step("ghost", 1, t0); return err }, ErrUnknownCall},
		{"commit never-held increment", func() error { return l.Commit("up", 2, t0) }, ErrInvalid},
		{"release never-held increment", func() error { return l.Release("up", 7, t0) }, ErrInvalid},
		{"hold while one is open", func() error { _, err := l.Hold("up", 2, t0); return err }, ErrInvalid},
		{"user of unknown org", func() error { return l.PutUser(User{Org: "nope", ID: "u"}) }, ErrUnknownOrg},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			check(t, l)
			o := balance(t, l, "acme")
			if !o.Balance.Equal(d("50")) || !o.Held.Equal(d("1")) || len(entries(t, l, "acme")) != before {
				t.Fatalf("refusal changed the org: %+v", o)
			}
		})
	}
	if err := l.PutUser(User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}}); err != nil {
		t.Fatal(err)
	}
	if err := l.PutUser(User{Org: "acme", ID: "bob", Numbers: []string{"12125550100"}}); !errors.Is(err, ErrNumberTaken) {
		t.Fatalf("second owner of a number: %v", err)
	}
	if u, ok := l.UserByNumber("12125550100"); !ok || u.ID != "alice" {
		t.Fatalf("number owner changed to %+v", u)
	}
}

func TestSurvivesRestartAndSettlesOpenCalls(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	_ = l.PutUser(User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"}, Licenses: []string{"communications_credits"}})
	_ = l.PutTrunk(Trunk{ID: "pbx", Kind: "customer", Org: "acme", Addresses: []string{"127.0.0.1/32"}})
	_ = l.PutDeck([]byte("prefix,country,destination,type,rate_per_minute\n1,US,US,geographic,0.01\n"))
	// A finished call, an answered call left up, and one still ringing.
	_, _ = l.OpenCall(creditCall("done", "acme", "1.00"), t0)
	_ = l.Answer("done", t0)
	_, _ = l.Step("done", 1, at(1))
	_, _ = l.CloseCall("done", CallEnd{At: t0.Add(1500 * time.Millisecond), Reason: ReasonCallerHangup, SIPStatus: 200})
	_, _ = l.OpenCall(creditCall("up", "acme", "1.00"), t0)
	_ = l.Answer("up", t0)
	_, _ = l.Step("up", 1, at(1))
	_, _ = l.OpenCall(creditCall("up2", "acme", "1.00"), t0)
	_ = l.Answer("up2", t0)
	_, _ = l.OpenCall(creditCall("ringing", "acme", "1.00"), t0)
	check(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir)
	defer l.Close()
	check(t, l)
	// done: 2.00; up: one committed + the started one = 2.00; up2: its
	// started first increment, 1.00; ringing: 0. All settled in one
	// operation, each with its own debit entry (CheckHistory).
	if o := balance(t, l, "acme"); !o.Balance.Equal(d("45")) || !o.Held.IsZero() {
		t.Fatalf("after restart org %+v, want balance 45 and nothing held", o)
	}
	if len(l.OpenCalls()) != 0 {
		t.Fatalf("calls still open after restart: %+v", l.OpenCalls())
	}
	cs := cdrs(t, l, "acme")
	if len(cs) != 4 {
		t.Fatalf("%d CDRs, want 4", len(cs))
	}
	byID := map[string]CDR{}
	for _, c := range cs {
		byID[c.CallID] = c
	}
	if c := byID["up"]; c.DisconnectReason != ReasonRestart || !c.Charge.Equal(d("2")) || c.BilledS != 2 {
		t.Fatalf("settled call CDR %+v", c)
	}
	if c := byID["ringing"]; c.DisconnectReason != ReasonRestart || !c.Charge.IsZero() {
		t.Fatalf("ringing call CDR %+v", c)
	}
	if u, ok := l.UserByNumber("12125550100"); !ok || u.ID != "alice" {
		t.Fatalf("user lost: %+v", u)
	}
	if len(l.Trunks()) != 1 || len(l.Deck()) == 0 {
		t.Fatalf("trunk or deck lost")
	}
}

func TestCDRsByDateRange(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	for i := range 3 {
		id := fmt.Sprintf("c%d", i)
		start := t0.Add(time.Duration(i) * 24 * time.Hour)
		_, _ = l.OpenCall(creditCall(id, "acme", "0.01"), start)
		_, _ = l.CloseCall(id, CallEnd{At: start.Add(time.Second), Reason: ReasonCanceled})
	}
	got, err := l.CDRs("acme", t0.Add(24*time.Hour), t0.Add(48*time.Hour))
	if err != nil || len(got) != 1 || got[0].CallID != "c1" {
		t.Fatalf("CDRs of day 2 = %+v, %v", got, err)
	}
	if got, _ := l.CDRs("acme", t0.Add(time.Hour), time.Time{}); len(got) != 2 {
		t.Fatalf("CDRs from t0+1h: %d, want 2", len(got))
	}
	if es, _ := l.Transactions("acme", 0, 1); len(es) != 1 {
		t.Fatalf("limit ignored: %d entries", len(es))
	}
}

// TestConcurrentCallsNeverOverspend runs many calls of one org at once, each
// stepping until the money is gone: the balance must end at exactly zero and
// the CDRs must add up to the funding.
func TestConcurrentCallsNeverOverspend(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Go(func() {
			id := fmt.Sprintf("c%d", i)
			if _, err := l.OpenCall(creditCall(id, "acme", "0.25"), t0); err != nil {
				t.Errorf("open %s: %v", id, err)
				return
			}
			_ = l.Answer(id, t0)
			for n := 1; ; n++ {
				_, err := l.Step(id, n, at(n))
				if errors.Is(err, ErrInsufficientCredit) {
					break
				}
				if err != nil {
					t.Errorf("step: %v", err)
					return
				}
				if err := l.CheckInvariants(); err != nil {
					t.Errorf("invariant: %v", err)
					return
				}
			}
			if _, err := l.CloseCall(id, CallEnd{At: t0.Add(time.Minute), Reason: ReasonCreditExhausted}); err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
	wg.Wait()
	check(t, l)
	var sum decimal.Decimal
	for _, c := range cdrs(t, l, "acme") {
		sum = sum.Add(c.Charge)
	}
	if o := balance(t, l, "acme"); !o.Balance.IsZero() || !sum.Equal(d("50")) {
		t.Fatalf("balance %s, CDRs sum %s; want 0 and 50", o.Balance, sum)
	}
}

// TestTollFreeAndSettingsSurviveRestart: toll-free numbers and the premium
// block are acknowledged only once durable, and ownership stays exclusive
// between orgs and users.
func TestTollFreeAndSettingsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "")
	newOrg(t, l, "other", "")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.PutTrunk(Trunk{ID: "acme-pbx", Kind: "customer", Org: "acme", URI: "sip:10.0.0.1"}))
	must(l.PutTrunk(Trunk{ID: "other-pbx", Kind: "customer", Org: "other", URI: "sip:10.0.0.2"}))
	must(l.PutTollFree(TollFree{Number: "18005550100", Org: "acme", Trunk: "acme-pbx"}))
	must(l.PutTollFree(TollFree{Number: "18005550101", Org: "acme"}))
	if _, err := l.SetBlockPremium("acme", true); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"another org's number": l.PutTollFree(TollFree{Number: "18005550100", Org: "other"}),
		"a user's number":      l.PutUser(User{Org: "other", ID: "bob", Numbers: []string{"18005550101"}}),
		"another org's trunk":  l.PutTollFree(TollFree{Number: "18005550102", Org: "acme", Trunk: "other-pbx"}),
		"not digits":           l.PutTollFree(TollFree{Number: "+18005550102", Org: "acme"}),
		"unknown org":          l.PutTollFree(TollFree{Number: "18005550102", Org: "nope"}),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if found, err := l.DeleteTollFree("other", "18005550100"); found || err != nil {
		t.Fatalf("another org deleted acme's number: %v %v", found, err)
	}
	must(l.PutUser(User{Org: "other", ID: "carol", Numbers: []string{"12125550100"}}))
	if err := l.PutTollFree(TollFree{Number: "12125550100", Org: "acme"}); !errors.Is(err, ErrNumberTaken) {
		t.Fatalf("a user's number made toll-free: %v", err)
	}
	if found, err := l.DeleteTollFree("acme", "18005550101"); !found || err != nil {
		t.Fatalf("delete: %v %v", found, err)
	}
	must(l.Close())

	l = open(t, dir)
	defer l.Close()
	tf, ok := l.TollFreeOwner("18005550100")
	if !ok || tf.Org != "acme" || tf.Trunk != "acme-pbx" {
		t.Fatalf("after restart: %+v %v", tf, ok)
	}
	if _, ok := l.TollFreeOwner("18005550101"); ok {
		t.Fatal("a deleted toll-free number came back after restart")
	}
	if got := l.TollFreeNumbers("acme"); len(got) != 1 {
		t.Fatalf("acme's toll-free numbers %+v", got)
	}
	if o := balance(t, l, "acme"); !o.BlockPremium {
		t.Fatal("premium block lost on restart")
	}
	if o := balance(t, l, "other"); o.BlockPremium {
		t.Fatal("premium block leaked to another org")
	}
}
