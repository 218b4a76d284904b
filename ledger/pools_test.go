package ledger

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // America/New_York on hosts without zoneinfo
)

// smallPlans keep pools small enough to run out in a test.
func smallPlans() []Plan {
	p := DefaultPlans()
	p[0].Minutes, p[1].Minutes, p[2].Minutes = 3, 2, 1
	return p
}

func poolCall(id, org, perMinute string, spill bool) Call {
	return Call{ID: id, Details: Details{Org: org, User: "u1", To: "12125550199", RatePerMinute: d(perMinute), Currency: "USD"},
		FirstIncrement: 60, NextIncrement: 6, Plan: PlanDomestic, Spill: spill}
}

func pool(t *testing.T, l *Ledger, org, plan string, when time.Time) Pool {
	t.Helper()
	ps, err := l.Pools(org, when)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Plan == plan {
			return p
		}
	}
	t.Fatalf("no %s pool", plan)
	return Pool{}
}

func TestPoolFollowsLicenses(t *testing.T) {
	l := openWith(t, t.TempDir(), Options{Plans: smallPlans()})
	defer l.Close()
	newOrg(t, l, "acme", "")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.PutUser(User{Org: "acme", ID: "a", Licenses: []string{"domestic_calling_plan"}}))
	must(l.PutUser(User{Org: "acme", ID: "b", Licenses: []string{"international_calling_plan", "audio_conferencing"}}))
	must(l.PutUser(User{Org: "acme", ID: "c", Licenses: []string{"communications_credits"}}))
	// domestic: a and b (the international plan includes domestic) × 3.
	if p := pool(t, l, "acme", PlanDomestic, t0); p.Total != 6 || p.Licensed != 6 {
		t.Fatalf("domestic pool %+v, want 6", p)
	}
	if p := pool(t, l, "acme", PlanInternational, t0); p.Total != 2 {
		t.Fatalf("international pool %+v, want 2", p)
	}
	if p := pool(t, l, "acme", PlanConferencing, t0); p.Total != 1 {
		t.Fatalf("conferencing pool %+v, want 1", p)
	}
	// Use 4 minutes, then take a's license away: 3 licensed, but the 4
	// minutes spent stay accounted for and no new minute is granted.
	if _, err := l.OpenCall(poolCall("c1", "acme", "0.60", false), t0); err != nil {
		t.Fatal(err)
	}
	_ = l.Answer("c1", t0)
	for n := 1; n < 4; n++ {
		if _, err := l.Step("c1", n, at(60*n)); err != nil {
			t.Fatal(err)
		}
	}
	must(l.PutUser(User{Org: "acme", ID: "a"}))
	check(t, l)
	if p := pool(t, l, "acme", PlanDomestic, t0); p.Licensed != 3 || p.Total != 4 || p.Used != 3 || p.Held != 1 {
		t.Fatalf("pool after a license removal %+v, want licensed 3, total 4 (3 used + 1 held)", p)
	}
	if _, err := l.Step("c1", 4, at(240)); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("step beyond the pool without credits license: %v", err)
	}
	cdr, _ := l.CloseCall("c1", CallEnd{At: at(240), Reason: ReasonCreditExhausted})
	if cdr.Pool != PlanDomestic || cdr.PoolMinutes != 4 || !cdr.Charge.IsZero() || cdr.BilledS != 240 {
		t.Fatalf("CDR %+v", cdr)
	}
	check(t, l)
}

// TestPoolSpillsToCreditsMidCall: the pool pays whole minutes; the increment
// where it runs out is the first one on credits, at the rate's next
// increment and without the connection fee.
func TestPoolSpillsToCreditsMidCall(t *testing.T) {
	l := openWith(t, t.TempDir(), Options{Plans: smallPlans()})
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	_ = l.PutUser(User{Org: "acme", ID: "a", Licenses: []string{"domestic_calling_plan", "communications_credits"}})
	c := poolCall("c1", "acme", "0.60", true)
	c.ConnectionFee = d("0.50")
	inc, err := l.OpenCall(c, t0)
	if err != nil || inc.Source != SourcePool || inc.Seconds != 60 || inc.Minutes != 1 {
		t.Fatalf("first increment %+v, %v: want a pool minute", inc, err)
	}
	_ = l.Answer("c1", t0)
	var sources []string
	elapsed := 60
	for n := 1; n < 6; n++ {
		inc, err := l.Step("c1", n, at(elapsed))
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, fmt.Sprintf("%s/%ds/%s", inc.Source, inc.Seconds, inc.Credit))
		elapsed += inc.Seconds
		check(t, l)
	}
	want := "[pool/60s/0 pool/60s/0 credits/6s/0.06 credits/6s/0.06 credits/6s/0.06]"
	if got := fmt.Sprint(sources); got != want {
		t.Fatalf("increments 2..6: %s, want %s", got, want)
	}
	cdr, _ := l.CloseCall("c1", CallEnd{At: at(elapsed - 1), Reason: ReasonCallerHangup})
	check(t, l)
	if cdr.PoolMinutes != 3 || !cdr.Charge.Equal(d("0.18")) || cdr.BilledS != 198 || cdr.Pool != PlanDomestic {
		t.Fatalf("CDR %+v: want 3 pool minutes, 0.18 on credits, 198 s billed", cdr)
	}
	if p := pool(t, l, "acme", PlanDomestic, t0); p.Used != 3 || p.Held != 0 || p.Available() != 0 {
		t.Fatalf("pool %+v", p)
	}
	// A new call with the pool gone starts on credits: first increment and
	// connection fee.
	inc, err = l.OpenCall(c2(c), t0)
	if err != nil || inc.Source != SourceCredits || inc.Seconds != 60 || !inc.Credit.Equal(d("1.10")) {
		t.Fatalf("call after the pool ran out: %+v, %v", inc, err)
	}
	noCredits := poolCall("c3", "acme", "0.60", false)
	if _, err := l.OpenCall(noCredits, t0); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("plan-only call on an empty pool: %v", err)
	}
}

func c2(c Call) Call { c.ID = "c2"; return c }

// TestNewMonthFreshPool: a new calendar month (in the org's time zone)
// starts a fresh pool and keeps the old month's record.
func TestNewMonthFreshPool(t *testing.T) {
	dir := t.TempDir()
	l := openWith(t, dir, Options{Plans: smallPlans()})
	if _, err := l.CreateOrg(Org{ID: "acme", Country: "US", Region: "us", BillingRegion: "us", Timezone: "America/New_York"}); err != nil {
		t.Fatal(err)
	}
	_ = l.PutUser(User{Org: "acme", ID: "a", Licenses: []string{"domestic_calling_plan"}})
	// 2026-11-30 23:58 New York is already December in UTC: the minutes
	// must still come from November's pool.
	ny, _ := time.LoadLocation("America/New_York")
	late := time.Date(2026, 11, 30, 23, 58, 0, 0, ny)
	if _, err := l.OpenCall(poolCall("c1", "acme", "0.60", false), late); err != nil {
		t.Fatal(err)
	}
	_ = l.Answer("c1", late)
	// Minute 2 starts 23:59 (November), minute 3 at 00:00 (December).
	if inc, _ := l.Step("c1", 1, late.Add(time.Minute)); inc.Month != "2026-11" {
		t.Fatalf("minute 2 from %s", inc.Month)
	}
	if inc, _ := l.Step("c1", 2, late.Add(2*time.Minute)); inc.Month != "2026-12" {
		t.Fatalf("minute 3 from %s", inc.Month)
	}
	check(t, l)
	_, _ = l.CloseCall("c1", CallEnd{At: late.Add(150 * time.Second), Reason: ReasonCallerHangup})
	check(t, l)
	if p := pool(t, l, "acme", PlanDomestic, late); p.Month != "2026-11" || p.Used != 2 {
		t.Fatalf("November pool %+v, want 2 used", p)
	}
	if p := pool(t, l, "acme", PlanDomestic, late.Add(time.Hour)); p.Month != "2026-12" || p.Used != 1 || p.Total != 3 {
		t.Fatalf("December pool %+v, want 1 of 3 used", p)
	}
	_ = l.Close()
	l = openWith(t, dir, Options{Plans: smallPlans(), Now: func() time.Time { return late.Add(time.Hour) }})
	defer l.Close()
	if p := pool(t, l, "acme", PlanDomestic, late.Add(time.Hour)); p.Used != 1 {
		t.Fatalf("December pool after restart %+v", p)
	}
	if p := pool(t, l, "acme", PlanDomestic, late); p.Used != 2 {
		t.Fatalf("November pool after restart %+v", p)
	}
}

// TestConcurrentCallsShareAPool: calls racing for the last minutes of a pool
// never take more than it has.
func TestConcurrentCallsShareAPool(t *testing.T) {
	plans := DefaultPlans()
	plans[0].Minutes = 25
	l := openWith(t, t.TempDir(), Options{Plans: plans})
	defer l.Close()
	newOrg(t, l, "acme", "")
	_ = l.PutUser(User{Org: "acme", ID: "a", Licenses: []string{"domestic_calling_plan"}})
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			id := fmt.Sprintf("c%d", i)
			if _, err := l.OpenCall(poolCall(id, "acme", "0.60", false), t0); err != nil {
				if !errors.Is(err, ErrPoolExhausted) {
					t.Error(err)
				}
				return
			}
			_ = l.Answer(id, t0)
			n := 1
			for ; ; n++ {
				if _, err := l.Step(id, n, at(60*n)); err != nil {
					if !errors.Is(err, ErrPoolExhausted) {
						t.Error(err)
					}
					break
				}
				if err := l.CheckInvariants(); err != nil {
					t.Error(err)
					return
				}
			}
			_, _ = l.CloseCall(id, CallEnd{At: at(60 * n), Reason: ReasonCreditExhausted})
		})
	}
	wg.Wait()
	check(t, l)
	total := 0
	for _, c := range cdrs(t, l, "acme") {
		total += c.PoolMinutes
	}
	if p := pool(t, l, "acme", PlanDomestic, t0); total != 25 || p.Used != 25 || p.Held != 0 {
		t.Fatalf("CDRs used %d minutes, pool %+v; want exactly 25", total, p)
	}
}
