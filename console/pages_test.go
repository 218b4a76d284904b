package console

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// endedCalls puts n answered, ended calls of 30 s at 0.12/min (60 s
// increments: 0.12 each) in acme's ledger, an hour ago.
func (h *harness) endedCalls(n int) {
	h.t.Helper()
	start := time.Now().UTC().Truncate(time.Second).Add(-time.Hour)
	for i := 0; i < n; i++ {
		id := "call-" + itoa(i)
		c := ledger.Call{ID: id, Details: ledger.Details{Org: "acme", User: "alice", From: "12125550100", To: "442079460018",
			Destination: "United Kingdom", Country: "GB", Type: "geographic", Direction: "outbound",
			RatePerMinute: decimal.RequireFromString("0.12"), Currency: "USD"}, FirstIncrement: 60, NextIncrement: 60, Spill: true}
		if _, err := h.ledger.OpenCall(c, start); err != nil {
			h.t.Fatal(err)
		}
		if err := h.ledger.Answer(id, start.Add(2*time.Second)); err != nil {
			h.t.Fatal(err)
		}
		if _, err := h.ledger.CloseCall(id, ledger.CallEnd{At: start.Add(32 * time.Second), Reason: ledger.ReasonCallerHangup, SIPStatus: 200}); err != nil {
			h.t.Fatal(err)
		}
		start = start.Add(time.Minute)
	}
}

func TestUsagePageAndDownloads(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	h.endedCalls(3)
	b := h.browser()
	b.login(operatorToken)

	p := b.get("/console/org/acme/usage")
	if p.status != 200 || !strings.Contains(p.body, "3 calls, 180 s billed, 0.36 USD charged.") {
		t.Fatalf("usage page %d:\n%s", p.status, p.body)
	}
	// acme's times are New York's.
	if !strings.Contains(p.body, "Answered (America/New_York)") || !(strings.Contains(p.body, " EST</td>") || strings.Contains(p.body, " EDT</td>")) {
		t.Fatalf("times not in the org's zone:\n%s", p.body)
	}

	// The downloads are the API's exports, byte for byte, through the session.
	for _, format := range []string{"csv", "xlsx"} {
		got := b.get("/console/org/acme/usage." + format)
		want := h.api("GET", "/v1/orgs/acme/usage?format="+format, "", 200)
		if got.status != 200 || !strings.Contains(got.header.Get("Content-Disposition"), "pstn-usage-acme."+format) {
			t.Fatalf("%s download: %d %v", format, got.status, got.header)
		}
		if format == "csv" && got.body != string(want) {
			t.Fatalf("CSV through the console differs from the API's:\n%q\n%q", got.body, want)
		}
		if format == "xlsx" && (len(got.body) < 1000 || !strings.HasPrefix(got.body, "PK")) {
			t.Fatalf("XLSX through the console: %d bytes", len(got.body))
		}
	}

	// The date filter, and a bad date refused before the API is asked.
	tomorrow := time.Now().UTC().AddDate(0, 0, 1).Format(time.DateOnly)
	if p := b.get("/console/org/acme/usage?from=" + tomorrow); p.status != 200 || !strings.Contains(p.body, "0 calls, 0 s billed") {
		t.Fatalf("from tomorrow: %d\n%s", p.status, p.body)
	}
	if p := b.get("/console/org/acme/usage?from=yesterday"); p.status != 422 || !strings.Contains(p.body, "want a date") {
		t.Fatalf("bad date: %d\n%s", p.status, p.body)
	}
	// Without a session there is no download.
	res, err := http.Get(h.base + "/console/org/acme/usage.csv")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if strings.Contains(string(body), "call-0") {
		t.Fatalf("a download without a session: %d\n%s", res.StatusCode, body)
	}
}

func TestDeckUploadShowsEveryBadLine(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	b := h.browser()
	csrf := b.login(operatorToken)
	bad := "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n" +
		"44,GB,United Kingdom,geographic,0.02,60,60\n" +
		"33,FR,France,geographic,not-a-rate,60,60\n" +
		"49,DE,Germany,geographic,0.03,sixty,60\n"
	before := h.state()
	res := b.post("/console/op/deck", url.Values{"csrf": {csrf}, "deck": {bad}}, h.base)
	if res.status != 303 {
		t.Fatalf("deck: %d", res.status)
	}
	shown := b.get(res.location)
	for _, want := range []string{"line 3:", "line 4:"} {
		if !strings.Contains(shown.body, want) {
			t.Fatalf("the page does not name %q:\n%s", want, shown.body)
		}
	}
	if h.state() != before {
		t.Fatal("a refused deck changed something")
	}
	good := "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n44,GB,United Kingdom,geographic,0.025,60,60\n"
	res = b.post("/console/op/deck", url.Values{"csrf": {csrf}, "deck": {good}}, h.base)
	if shown := b.get(res.location); !strings.Contains(shown.body, "Rate deck replaced: 1 rows.") {
		t.Fatalf("good deck:\n%s", shown.body)
	}
	if r := h.api("GET", "/v1/rates?number=%2B442079460018", "", 200); !strings.Contains(string(r), `"rate_per_minute":"0.025"`) {
		t.Fatalf("deck not replaced: %s", r)
	}
}

func TestBurnChart(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	zero := now.Add(10*24*time.Hour + time.Hour)
	o := org{Available: "100.00", Currency: "EUR", Forecast: &forecast{BurnPerDay: "10.00", ZeroAt: &zero}}
	svg := string(burnChart(o, now, time.UTC))
	for _, want := range []string{`role="img"`, "reaches zero on Sun 13 Dec 2026", `class="zero"`, "day 0: 100.00 EUR", "day 5: 50.00 EUR", "day 10: 0.00 EUR", "day 30: 0.00 EUR"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	o.Forecast = &forecast{BurnPerDay: "0.00"}
	if svg := string(burnChart(o, now, time.UTC)); strings.Contains(svg, `class="zero"`) || !strings.Contains(svg, "does not reach zero") {
		t.Errorf("nothing spent, yet a zero day:\n%s", svg)
	}
	o.Forecast = nil
	if svg := string(burnChart(o, now, time.UTC)); strings.Contains(svg, "<svg") {
		t.Errorf("no forecast, yet a chart")
	}
}

func TestCallsPerSecond(t *testing.T) {
	var r rateSampler
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		after   time.Duration
		allowed int64
		want    string
	}{
		{0, 100, ""},                          // one sample: no rate yet
		{500 * time.Millisecond, 200, ""},     // under a second: wait
		{2 * time.Second, 110, "5.0"},         // 10 calls in 2 s
		{2500 * time.Millisecond, 500, "5.0"}, // under a second since: the last rate
		{4 * time.Second, 125, "7.5"},         // 15 in 2 s
		{5 * time.Second, 10, "7.5"},          // the counter went back (a restart): start again
	} {
		if got := r.observe(t0.Add(tc.after), tc.allowed); got != tc.want {
			t.Fatalf("at +%s with %d: %q, want %q", tc.after, tc.allowed, got, tc.want)
		}
	}
}

// FuzzMatch: no path makes the form or page router panic, and a "*"
// segment never carries a slash or a query into an API path.
func FuzzMatch(f *testing.F) {
	for _, s := range []string{"/org/acme/purchase", "/org/a%2Fb/users/x/license", "/calls/%3Fx/hangup", "//", "/org//purchase", "/op/deck"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		for _, fm := range forms {
			args, ok := match(fm.pattern, path)
			if !ok {
				continue
			}
			for _, a := range args {
				if a == "" || strings.ContainsAny(a, "/?#") {
					t.Fatalf("%s matched %q with arg %q", fm.pattern, path, a)
				}
			}
		}
	})
}
