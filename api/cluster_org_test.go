package api

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
)

// testNow is a settable clock for ledgers and servers: an org created
// weeks ago, CDRs on past days, then every node asked at one instant.
type testNow struct{ ns atomic.Int64 }

func (c *testNow) set(t time.Time) { c.ns.Store(t.UnixNano()) }
func (c *testNow) now() time.Time  { return time.Unix(0, c.ns.Load()).UTC() }
func (c *testNow) ledgerNow() ledger.Options {
	return ledger.Options{Registerer: prometheus.NewRegistry(), Now: c.now}
}

// clockedHarness is a real API server over a real ledger in a temp dir,
// both on clk.
func clockedHarness(t *testing.T, clk *testNow) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := clk.ledgerNow()
	opts.Registerer = reg
	l, err := ledger.Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gatewayConfig(), l, rating.SampleDeck(), clock.Real{}, reg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	srv := New(l, gw, testToken, reg, clk.now, quiet())
	return serveHarness(t, l, gw, srv)
}

// pastCall puts one ended call of alice on credits into each ledger given:
// started at start, lasting secs (billed per minute at 0.60).
func pastCall(t *testing.T, id string, start time.Time, secs int, ls ...*ledger.Ledger) {
	t.Helper()
	for _, l := range ls {
		c := ledger.Call{ID: id, Details: ledger.Details{Org: "acme", User: "alice", From: "12125550100", To: "442079460018",
			Destination: "United Kingdom", Country: "GB", Type: "geographic", Direction: "outbound",
			RatePerMinute: decimal.RequireFromString("0.60"), Currency: "USD"}, FirstIncrement: 60, NextIncrement: 60, Spill: true}
		if _, err := l.OpenCall(c, start); err != nil {
			t.Fatal(err)
		}
		if err := l.Answer(id, start.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		// One step per minute past the first: the call pays what it lasts.
		for n := 1; (n+1)*60 <= secs; n++ {
			if _, err := l.Step(id, n, start.Add(time.Duration(n*60)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.CloseCall(id, ledger.CallEnd{At: start.Add(time.Duration(secs) * time.Second), Reason: ledger.ReasonCallerHangup, SIPStatus: 200}); err != nil {
			t.Fatal(err)
		}
	}
}

// heldCall opens a call of alice and leaves it up: on credits (its first
// increment held) or on the domestic pool (one minute held).
func heldCall(t *testing.T, l *ledger.Ledger, id string, pool bool, at time.Time) {
	t.Helper()
	c := ledger.Call{ID: id, Details: ledger.Details{Org: "acme", User: "alice", From: "12125550100", To: "442079460018",
		Destination: "United Kingdom", Country: "GB", Type: "geographic", Direction: "outbound",
		RatePerMinute: decimal.RequireFromString("0.60"), Currency: "USD"}, FirstIncrement: 60, NextIncrement: 60, Spill: true}
	if pool {
		c.To, c.Destination, c.Country, c.Plan = "12125550199", "United States", "US", "domestic"
	}
	if _, err := l.OpenCall(c, at); err != nil {
		t.Fatal(err)
	}
}

type clusterOrgBody struct {
	Balance, Available, Held string
	Pools                    []struct {
		Plan                         string
		Total, Used, Held, Available int
	}
	Forecast *struct {
		Days               int
		Spend              string
		BurnPerDay         string    `json:"burn_per_day"`
		P95Day             string    `json:"p95_day"`
		SuggestedThreshold string    `json:"suggested_threshold"`
		SuggestedAmount    string    `json:"suggested_amount"`
		ComputedAt         time.Time `json:"computed_at"`
	}
	Partial     *bool
	Unavailable unavailableList
	Node        string
}

func (b clusterOrgBody) pool(plan string) (held, available int) {
	for _, p := range b.Pools {
		if p.Plan == plan {
			return p.Held, p.Available
		}
	}
	return -1, -1
}

// TestClusterOrgSumsHeldAndForecast: three real API servers over their
// own ledgers, calls up on two of them (b and c, on credits and on the
// domestic pool), each with its own past CDRs over three weeks, and a dead
// peer. Node a's GET /v1/orgs/acme: held is the three nodes' own held
// summed, each pool's held likewise, the dead peer named and the figures
// marked partial; its forecast equals the single-ledger advisor's over the
// union of the three nodes' CDRs, at the same instant. ?scope=local is the
// node's own view.
func TestClusterOrgSumsHeldAndForecast(t *testing.T) {
	clk := &testNow{}
	t0 := time.Now().UTC().Truncate(time.Second)
	clk.set(t0.Add(-21 * 24 * time.Hour))
	hs := []*harness{clockedHarness(t, clk), clockedHarness(t, clk), clockedHarness(t, clk)}
	a, b, c := hs[0], hs[1], hs[2]
	// The union: every node's CDRs in one ledger, the reference advisor.
	u, err := ledger.Open(t.TempDir(), clk.ledgerNow())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = u.Close() })
	if _, err := u.CreateOrg(ledger.Org{ID: "acme", Name: "Acme", Country: "US", Region: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := u.FundAcrossRegions("acme", decimal.NewFromInt(1000), "u", ""); err != nil {
		t.Fatal(err)
	}
	if err := u.PutUser(ledger.User{Org: "acme", ID: "alice", Numbers: []string{"12125550100"},
		Licenses: []string{"communications_credits", "domestic_calling_plan"}}); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		h.mustDo("POST", "/v1/orgs", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201)
		h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"300.00","idempotency_key":"k"}`, 201)
		h.mustDo("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["communications_credits","domestic_calling_plan"]}`, 200)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	calls := 0
	for day := 20; day >= 1; day-- {
		for _, h := range hs {
			for range rng.IntN(3) {
				calls++
				start := t0.Add(-time.Duration(day)*24*time.Hour + time.Duration(rng.IntN(20*3600))*time.Second)
				pastCall(t, fmt.Sprintf("past-%d", calls), start, 60*(1+rng.IntN(30)), h.ledger, u)
			}
		}
	}
	clk.set(t0)
	heldCall(t, b.ledger, "up-b1", false, t0)
	heldCall(t, b.ledger, "up-b2", true, t0)
	heldCall(t, c.ledger, "up-c1", false, t0)
	heldCall(t, c.ledger, "up-c2", true, t0)
	heldCall(t, c.ledger, "up-c3", true, t0)
	const timeout = 2 * time.Second
	a.srv.SetPeers("a", staticPeers{{Node: "b", URL: b.base}, {Node: "c", URL: c.base}, {Node: "dead", URL: deadPeer(t)}}, timeout)
	b.srv.SetPeers("b", staticPeers{{Node: "a", URL: a.base}, {Node: "c", URL: c.base}}, timeout)
	c.srv.SetPeers("c", staticPeers{{Node: "a", URL: a.base}, {Node: "b", URL: b.base}}, timeout)

	own := map[string]clusterOrgBody{}
	wantHeld, wantPool := decimal.Zero, 0
	for name, h := range map[string]*harness{"a": a, "b": b, "c": c} {
		var v clusterOrgBody
		must(t, json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme?scope=local", "", 200).body, &v))
		if v.Node != name || v.Partial != nil || v.Unavailable != nil {
			t.Fatalf("%s's own view: node %q partial %v unavailable %v", name, v.Node, v.Partial, v.Unavailable)
		}
		own[name] = v
		wantHeld = wantHeld.Add(decimal.RequireFromString(v.Held))
		held, _ := v.pool("domestic")
		wantPool += held
	}
	if wantPool != 3 || !wantHeld.Equal(decimal.RequireFromString("1.20")) || own["a"].Held != "0.00" {
		t.Fatalf("the nodes' own held: %s and %d pool minutes (a: %s), want 1.20 and 3 from b and c", wantHeld, wantPool, own["a"].Held)
	}

	var v clusterOrgBody
	asked := time.Now()
	must(t, json.Unmarshal(a.mustDo("GET", "/v1/orgs/acme", "", 200).body, &v))
	t.Logf("a's cluster view in %v: held %s, available %s, domestic pool %+v, unavailable %v",
		time.Since(asked).Round(time.Millisecond), v.Held, v.Available, v.Pools, v.Unavailable)
	if v.Held != money(wantHeld) || v.Balance != own["a"].Balance ||
		v.Available != money(decimal.RequireFromString(v.Balance).Sub(wantHeld)) {
		t.Fatalf("a's cluster view: balance %s held %s available %s, want held %s (Σ of the nodes')", v.Balance, v.Held, v.Available, wantHeld)
	}
	held, avail := v.pool("domestic")
	_, ownAvail := own["a"].pool("domestic")
	if held != wantPool || avail != ownAvail-wantPool {
		t.Fatalf("a's domestic pool: held %d available %d, want %d and %d", held, avail, wantPool, ownAvail-wantPool)
	}
	if v.Partial == nil || !*v.Partial || v.Unavailable.nodes() != "dead" {
		t.Fatalf("a's cluster view with a dead peer: partial %v, unavailable %+v", v.Partial, v.Unavailable)
	}

	// The forecast: the advisor over the union of the nodes' CDRs.
	f := v.Forecast
	if f == nil || !f.ComputedAt.Equal(t0) {
		t.Fatalf("a's forecast: %+v, want one computed at %s", f, t0)
	}
	in, err := u.AdviceInputs("acme", t0)
	must(t, err)
	ref := u.AdviceFrom(in, decimal.Zero)
	t.Logf("%d past calls on 3 nodes; cluster forecast %+v; union ledger's %s/day, p95 %s, threshold %s, amount %s",
		calls, *f, ref.BurnPerDay, ref.P95Day, ref.Threshold, ref.Amount)
	if f.Days != ref.Days || f.Spend != money(ref.Spend) || f.BurnPerDay != money(ref.BurnPerDay) || f.P95Day != money(ref.P95Day) ||
		f.SuggestedThreshold != money(ref.Threshold) || f.SuggestedAmount != money(ref.Amount) || ref.Spend.IsZero() {
		t.Fatalf("a's forecast %+v ≠ the union's advice %+v", *f, ref)
	}
	// Each node's own forecast is of its own CDRs only: less.
	for name, o := range own {
		if o.Forecast == nil || !decimal.RequireFromString(o.Forecast.Spend).LessThan(ref.Spend) {
			t.Fatalf("%s's own forecast %+v: want less than the cluster's spend %s", name, o.Forecast, ref.Spend)
		}
	}
	// advice_at is a node-to-node parameter: refused elsewhere.
	if r := a.do("GET", "/v1/orgs/acme?advice_at="+t0.Format(time.RFC3339), ""); r.status != 422 {
		t.Fatalf("advice_at without scope=local: %d %s", r.status, r.body)
	}
}
