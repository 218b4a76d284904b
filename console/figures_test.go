package console

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/loadtest"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

// Figures, measured and logged, never asserted (README, Web console):
// page weight, the cost of one in-process API call, and the time to first
// render of the org page with 10,000 CDRs and of the live page with 1,000
// calls up.
//
//	go test -run TestPageWeight -v ./console/
//	go test -run '^$' -bench . -benchtime 20x ./console/

// TestPageWeight logs each main page's HTML and the assets it loads, and
// checks that every page renders and loads only embedded assets.
func TestPageWeight(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	b := h.browser()
	login := b.get("/console/login")
	b.login(operatorToken)
	assets := 0
	for _, a := range []string{"/console/assets/console.css", "/console/assets/htmx.min.js"} {
		p := b.get(a)
		if p.status != 200 || p.header.Get("Cache-Control") == "" {
			t.Fatalf("%s: %d", a, p.status)
		}
		assets += len(p.body)
	}
	if assets != AssetBytes() {
		t.Fatalf("assets served %d bytes, embedded %d", assets, AssetBytes())
	}
	pages := map[string]int{"login": len(login.body)}
	for _, path := range []string{"/console/org/acme", "/console/org/acme/users", "/console/org/acme/usage", "/console/org/acme/calls",
		"/console/op/orgs", "/console/op/live", "/console/op/deck"} {
		p := b.get(path)
		if p.status != 200 {
			t.Fatalf("%s: %d\n%s", path, p.status, p.body)
		}
		// Only our own assets: no CDN, nothing from elsewhere.
		for _, src := range []string{`src="http`, `href="http`, `src="//`, `href="//`} {
			if strings.Contains(p.body, src) {
				t.Fatalf("%s loads something from elsewhere (%s)", path, src)
			}
		}
		pages[path] = len(p.body)
	}
	for p, n := range pages {
		t.Logf("page weight %-26s HTML %6d B + assets %6d B = %6d B (assets cached after the first page)", p, n, assets, n+assets)
	}
}

// BenchmarkAPICall is one in-process API call as the console makes it
// (a fasthttp.RequestCtx built per call) next to the same request over
// loopback HTTP, the baseline.
func BenchmarkAPICall(b *testing.B) {
	h := newHarnessTB(b)
	h.setupAcme()
	b.Run("in-process", func(b *testing.B) {
		b.ReportAllocs()
		s := &session{secret: operatorToken}
		for b.Loop() {
			if r := h.console.call(s, "GET", "/v1/orgs/acme/users", "", nil); r.status() != 200 {
				b.Fatal(r.status())
			}
		}
	})
	b.Run("loopback-http", func(b *testing.B) {
		b.ReportAllocs()
		var c fasthttp.Client
		for b.Loop() {
			req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI(h.base + "/v1/orgs/acme/users")
			req.Header.Set("Authorization", "Bearer "+operatorToken)
			if err := c.Do(req, res); err != nil || res.StatusCode() != 200 {
				b.Fatal(err, res.StatusCode())
			}
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(res)
		}
	})
}

// timeGet is the time to the whole page over HTTP.
func timeGet(tb testing.TB, c *http.Client, url string) (time.Duration, int) {
	d, body := timeGetBody(tb, c, url)
	return d, len(body)
}

func timeGetBody(tb testing.TB, c *http.Client, url string) (time.Duration, string) {
	tb.Helper()
	start := time.Now()
	res, err := c.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	d := time.Since(start)
	if res.StatusCode != 200 {
		tb.Fatalf("%s: %d", url, res.StatusCode)
	}
	return d, string(body)
}

// BenchmarkOrgPage10kCDRs renders the org overview of an org with 10,000
// CDRs in the advisor's window. The first render reads them all for the
// funding advisor (then cached by the API for 5 minutes); it is reported
// as first_ms, the loop times the renders after it (cached advice).
func BenchmarkOrgPage10kCDRs(b *testing.B) {
	h := newHarnessTB(b)
	h.setupAcme()
	h.api("POST", "/v1/orgs/acme/credits", `{"amount":"100000.00","idempotency_key":"h-big"}`, 201)
	const n = 10_000
	// In the advisor's window: an org a day old is advised on its one
	// day (ledger.Advise), so the 10,000 calls fit in the last 23 hours.
	start := time.Now().UTC().Add(-23 * time.Hour)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for w := 0; w < 50; w++ {
		wg.Go(func() {
			for i := w; i < n; i += 50 {
				at := start.Add(time.Duration(i) * 8 * time.Second)
				id := fmt.Sprintf("cdr-%05d", i)
				c := ledger.Call{ID: id, Details: ledger.Details{Org: "acme", User: "alice", From: "12125550100", To: "442079460018",
					Destination: "United Kingdom", Country: "GB", Type: "geographic", Direction: "outbound",
					RatePerMinute: decimal.RequireFromString("0.02"), Currency: "USD"}, FirstIncrement: 60, NextIncrement: 60, Spill: true}
				_, err := h.ledger.OpenCall(c, at)
				if err == nil {
					err = h.ledger.Answer(id, at.Add(time.Second))
				}
				if err == nil {
					_, err = h.ledger.CloseCall(id, ledger.CallEnd{At: at.Add(40 * time.Second), Reason: ledger.ReasonCallerHangup, SIPStatus: 200})
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	br := h.browser()
	br.login(operatorToken)
	// The advice the API cached when acme was set up knew no CDRs: move
	// its clock past the cache, so the first render reads all 10,000.
	h.apiSkew.Store(int64(6 * time.Minute))
	first, page := timeGetBody(b, br.client, h.base+"/console/org/acme")
	size := len(page)
	// The forecast on that page is the advisor's over the 10,000 CDRs.
	if !strings.Contains(page, "spending 200.00 USD a day") {
		b.Fatalf("the forecast does not reflect the CDRs:\n%s", page)
	}
	usage, usageSize := timeGet(b, br.client, h.base+"/console/org/acme/usage")
	b.Logf("org page, %d CDRs: first render %.1f ms (%d B); usage page (totals of all, first %d rows) %.1f ms (%d B)",
		n, ms(first), size, maxUsageRows, ms(usage), usageSize)
	b.ReportMetric(ms(first), "first_ms")
	b.ResetTimer()
	for b.Loop() {
		timeGet(b, br.client, h.base+"/console/org/acme")
	}
}

// BenchmarkLivePage1000Calls renders the operator's live page while 1,000
// real SIP calls (the load tool, over loopback) are up.
func BenchmarkLivePage1000Calls(b *testing.B) {
	h := newHarnessTB(b)
	h.setupAcme()
	h.api("POST", "/v1/orgs/acme/credits", `{"amount":"100000.00","idempotency_key":"h-big"}`, 201)
	h.api("PUT", "/v1/trunks/pbx", `{"kind":"customer","org":"acme","addresses":["127.0.0.1"]}`, 200)
	carrier := freeUDPPort(b)
	h.api("PUT", "/v1/trunks/carrier", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, carrier), 200)
	const calls = 1000
	hold := 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		rep, err := loadtest.Run(ctx, loadtest.Config{Target: h.gw.Addr(), Carrier: fmt.Sprintf("127.0.0.1:%d", carrier),
			Rate: 200, Calls: calls, Hold: hold, Dialled: "+442079460018", From: []string{"+12125550100"},
			SetupTimeout: 20 * time.Second, HangupTimeout: 20 * time.Second}, nil)
		if err == nil && rep.Answered != calls {
			err = fmt.Errorf("%d of %d answered:\n%s", rep.Answered, calls, rep.String())
		}
		done <- err
	}()
	deadline := time.Now().Add(hold - 5*time.Second)
	for len(h.gw.Calls()) < calls {
		if time.Now().After(deadline) {
			b.Fatalf("%d calls up, want %d", len(h.gw.Calls()), calls)
		}
		time.Sleep(50 * time.Millisecond)
	}
	br := h.browser()
	br.login(operatorToken)
	first, size := timeGet(b, br.client, h.base+"/console/op/live")
	orgFirst, orgSize := timeGet(b, br.client, h.base+"/console/org/acme/calls")
	b.Logf("live page, %d calls up: first render %.1f ms (%d B); org's live calls %.1f ms (%d B)", calls, ms(first), size, ms(orgFirst), orgSize)
	b.ReportMetric(ms(first), "first_ms")
	b.ResetTimer()
	for b.Loop() {
		timeGet(b, br.client, h.base+"/console/op/live")
	}
	b.StopTimer()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
