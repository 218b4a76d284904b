package e2e_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/creditgate/creditgate/loadtest"
	"github.com/creditgate/creditgate/payments/stripetest"
	"github.com/shopspring/decimal"
	"github.com/xuri/excelize/v2"
)

// The web console in a real browser, against the built binary: Debian's
// Chromium, headless, driven over the DevTools protocol (chromedp). The
// binary, not an in-process gateway, so the console is tested as shipped:
// its wiring in cmd/creditgate, its config, its embedded assets.

// requireChromium is the browser, or a failure under CI (.ci/run installs
// it) and a skip elsewhere.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; .ci/run installs it (apt-get install -y chromium)")
	}
	t.Skip("chromium not installed (apt-get install -y chromium); CI fails instead of skipping")
	return ""
}

// browser starts a headless Chromium with its own profile in a temp dir,
// talking to nothing but loopback, and returns a tab's context.
func browser(t *testing.T, path string) context.Context {
	t.Helper()
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true))
	ctx, cancelTab := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	// The first run starts the browser, on a context without a timeout
	// (one would stop the browser); each wait below is bounded instead.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// run runs browser actions or fails the test.
func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// value runs one browser action that reads something, or fails the test.
func value[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// waitJS waits for a JavaScript expression to be true on the page; it
// bounds the wait, it times nothing. Errors while a page is replaced are
// retried.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := chromedp.Run(tctx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			html, _ := chromedp.Run(tctx, chromedp.OuterHTML(chromedp.CSS("main")))
			cancel()
			t.Fatalf("%s: %s still not true (%v); page:\n%s", what, expr, err, html)
		}
	}
}

// screenshot writes docs/console/<name>.png when CONSOLE_SCREENSHOTS=1,
// so CI does not dirty the tree.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if os.Getenv("CONSOLE_SCREENSHOTS") != "1" {
		return
	}
	png := value(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	dir := filepath.Join("..", "docs", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// fetch gets a URL from inside the page, with the page's session cookie,
// and returns its status and body.
func fetch(t *testing.T, ctx context.Context, url string) (int, []byte) {
	t.Helper()
	type answer struct {
		Status int    `json:"status"`
		Body   string `json:"body"`
	}
	expr := fmt.Sprintf(`(async () => {
		const r = await fetch(%q, {credentials: "same-origin"});
		const b = new Uint8Array(await r.arrayBuffer());
		let s = ""; for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
		return {status: r.status, body: btoa(s)};
	})()`, url)
	out := value(t, ctx, "fetch "+url, chromedp.Evaluate[answer](expr, chromedp.EvalAwaitPromise))
	b, err := base64.StdEncoding.DecodeString(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return out.Status, b
}

// signIn opens the login page and signs in with key.
func signIn(t *testing.T, ctx context.Context, base, key string, shot string) {
	t.Helper()
	run(t, ctx, "open login", chromedp.Navigate(base+"/console/login"), chromedp.WaitVisible(chromedp.ID("key")))
	if shot != "" {
		screenshot(t, ctx, shot)
	}
	run(t, ctx, "sign in", chromedp.SendKeys(chromedp.ID("key"), key), chromedp.Submit(chromedp.ID("key")),
		chromedp.WaitVisible(chromedp.CSS("main h1")))
	waitJS(t, ctx, "signed in", `!!document.querySelector("form.logout")`)
}

func signOut(t *testing.T, ctx context.Context) {
	t.Helper()
	run(t, ctx, "sign out", chromedp.Click(chromedp.CSS("form.logout button")))
	waitJS(t, ctx, "signed out", `location.pathname === "/console/login"`)
}

// orgKey creates a key of role for org through the API (scoped keys) and
// returns its id and secret.
func (g *gateway) orgKey(name, role, org string) (id, secret string) {
	g.t.Helper()
	var k struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	g.api("POST", "/v1/keys", "", fmt.Sprintf(`{"name":%q,"role":%q,"org":%q}`, name, role, org), 201, &k)
	if k.ID == "" || k.Secret == "" {
		g.t.Fatalf("key %s: %+v", name, k)
	}
	return k.ID, k.Secret
}

// auditEntry is an entry of GET /v1/audit.
type auditEntry struct {
	KeyID  string `json:"key_id"`
	Role   string `json:"role"`
	Org    string `json:"org"`
	Kind   string `json:"kind"`
	Action string `json:"action"`
	Target string `json:"target"`
	Via    string `json:"via"`
}

func TestConsoleInChromium(t *testing.T) {
	chromium := requireChromium(t)
	stripe := stripetest.Start(t)
	bin := buildBinary(t)
	conf := configFile(t, fmt.Sprintf("payments:\n  stripe_api_key: sk_test_console\n  stripe_base_url: %s\n  retry_backoff: 100ms\n  max_backoff: 1s\n", stripe.URL))
	g := startGateway(t, bin, t.TempDir(), conf...)
	// 30.00 a minute, so that the few seconds of the calls below are a
	// burn the forecast chart shows reaching zero within its 30 days.
	g.setupAcme("127.0.0.1", "30.00")
	carrierPort := freePort(t)
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, carrierPort), 200, nil)
	g.api("PUT", "/v1/orgs/acme/users/bob", "", `{"numbers":["+12125550101"],"licenses":[]}`, 200, nil)
	// carol's plan gives acme this month's domestic and international
	// pools; her call below draws on the international one.
	g.api("PUT", "/v1/orgs/acme/users/carol", "", `{"numbers":["+12125550102"],"licenses":["international_calling_plan"]}`, 200, nil)
	g.api("POST", "/v1/orgs", "", `{"id":"globex","name":"Globex","country":"US","region":"us"}`, 201, nil)
	g.api("POST", "/v1/orgs/globex/credits", "", `{"amount":"75.00","idempotency_key":"g-1"}`, 201, nil)
	acmeKeyID, acmeKey := g.orgKey("acme admin", "org_admin", "acme")
	globexKeyID, globexKey := g.orgKey("globex admin", "org_admin", "globex")
	target, carrier := fmt.Sprintf("127.0.0.1:%d", g.sipPort), fmt.Sprintf("127.0.0.1:%d", carrierPort)

	// Some history first, so the overview has something to show: an
	// 8-second call of alice's on credits (the burn the forecast reads)
	// and one of carol's on her plan's international pool.
	early, cancelEarly := context.WithTimeout(context.Background(), 60*time.Second)
	rep, err := loadtest.Run(early, loadtest.Config{Target: target, Carrier: carrier, Rate: 2, Calls: 2, Hold: 8 * time.Second,
		Dialled: "+33142278186", From: []string{"+12125550100", "+12125550102"}, SetupTimeout: 10 * time.Second}, nil)
	cancelEarly()
	if err != nil || rep.Answered != 2 {
		t.Fatalf("the first calls: %v\n%s", err, rep.String())
	}
	g.cdrs(2)
	// A restart: the keys are the ledger's and outlive it; the API's
	// five-minute cache of funding advice (taken when acme was created)
	// does not, so the overview's forecast reads the calls above.
	g.stop()
	g = startGatewayOn(t, bin, g.dataDir, g.sipPort, conf...)
	base := "http://" + g.httpAddr

	ctx := browser(t, chromium)

	// Acme's admin signs in and lands on the org's overview.
	signIn(t, ctx, base, acmeKey, "login")
	var org struct {
		Balance      string
		Available    string
		AutoRecharge struct {
			Enabled   bool
			Threshold string
			Amount    string
		} `json:"auto_recharge"`
		Forecast struct {
			BurnPerDay string `json:"burn_per_day"`
		}
	}
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	startBalance := decimal.RequireFromString(org.Balance)
	if startBalance.GreaterThanOrEqual(decimal.RequireFromString("50.00")) || org.Forecast.BurnPerDay == "0.00" {
		t.Fatalf("acme after the first calls: balance %s, burn %s a day: want some spent", org.Balance, org.Forecast.BurnPerDay)
	}
	text := value(t, ctx, "overview", chromedp.Text(chromedp.ID("available")))
	if text != org.Available+" USD" {
		t.Fatalf("available %q, want %s USD", text, org.Available)
	}
	waitJS(t, ctx, "forecast chart", `!!document.querySelector("svg.chart title")`)
	screenshot(t, ctx, "org-overview")

	// Buy credits: the minimum is shown before submitting; the purchase is
	// paid through stripe-mock and its page refreshes itself until done.
	text = value(t, ctx, "rules", chromedp.Text(chromedp.CSS("#buy + ul.rules")))
	if !strings.Contains(text, "50.00 USD") {
		t.Fatalf("purchase rules %q: the minimum is not shown", text)
	}
	run(t, ctx, "buy", chromedp.SetValue(chromedp.ID("amount"), "60.00"), chromedp.SetValue(chromedp.ID("pm"), "pm_card_visa"),
		chromedp.SetValue(chromedp.ID("cust"), "cus_console"),
		chromedp.Submit(chromedp.ID("amount")))
	waitJS(t, ctx, "purchase paid", `(document.querySelector("#purchase-state")||{}).textContent === "succeeded"`)
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	if want := startBalance.Add(decimal.RequireFromString("60.00")); !decimal.RequireFromString(org.Balance).Equal(want) {
		t.Fatalf("balance after buying 60.00: %s, want %s", org.Balance, want.StringFixed(2))
	}

	// Auto-recharge, from the form the advisor pre-filled.
	run(t, ctx, "auto-recharge", chromedp.Navigate(base+"/console/org/acme"), chromedp.WaitVisible(chromedp.ID("ar-on")),
		chromedp.Click(chromedp.ID("ar-on")), chromedp.SetValue(chromedp.ID("ar-threshold"), "20.00"),
		chromedp.SetValue(chromedp.ID("ar-amount"), "60.00"), chromedp.SetValue(chromedp.ID("ar-pm"), "pm_card_visa"),
		chromedp.SetValue(chromedp.ID("ar-cust"), "cus_console"),
		chromedp.Submit(chromedp.ID("ar-on")))
	waitJS(t, ctx, "saved", `(document.querySelector(".flash")||{}).textContent === "Auto-recharge saved."`)
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	if !org.AutoRecharge.Enabled || org.AutoRecharge.Threshold != "20.00" || org.AutoRecharge.Amount != "60.00" {
		t.Fatalf("auto-recharge %+v", org.AutoRecharge)
	}

	// The credits license to bob.
	run(t, ctx, "license", chromedp.Navigate(base+"/console/org/acme/users"), chromedp.WaitVisible(chromedp.ID("user-bob")),
		chromedp.SetValue(chromedp.ID("lic-bob"), "communications_credits"), chromedp.Click(chromedp.CSS(`#user-bob button[value="assign"]`)))
	waitJS(t, ctx, "assigned", `(document.querySelector("#user-bob .licenses")||{}).textContent === "communications_credits"`)
	var users struct {
		Users []struct {
			ID       string
			Licenses []string
		}
	}
	g.api("GET", "/v1/orgs/acme/users", "", "", 200, &users)
	for _, u := range users.Users {
		if u.ID == "bob" && strings.Join(u.Licenses, ",") != "communications_credits" {
			t.Fatalf("bob's licenses %v", u.Licenses)
		}
	}

	// A real SIP call while the live calls page is open; hung up from it.
	run(t, ctx, "live calls", chromedp.Navigate(base+"/console/org/acme/calls"), chromedp.WaitVisible(chromedp.ID("calls")))
	callCtx, cancelCall := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancelCall()
	type result struct {
		rep loadtest.Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := loadtest.Run(callCtx, loadtest.Config{Target: target,
			Carrier: carrier, Rate: 1, Calls: 1, Hold: 60 * time.Second,
			Dialled: "+33142278186", From: []string{"+12125550100"}, SetupTimeout: 10 * time.Second}, nil)
		done <- result{rep, err}
	}()
	waitJS(t, ctx, "the call shows up (htmx refresh)", `document.querySelectorAll("#calls tr[data-call]").length === 1`)
	screenshot(t, ctx, "live-calls")
	run(t, ctx, "hang up", chromedp.Click(chromedp.CSS("#calls tr[data-call] button")))
	waitJS(t, ctx, "the call is gone", `document.querySelectorAll("#calls tr[data-call]").length === 0`)
	// The page was not reloaded (htmx), and says what was done.
	waitJS(t, ctx, "hang-up told", `/^Call .+ ended\.$/.test((document.querySelector("#messages .flash")||{}).textContent||"")`)
	res := <-done
	if res.err != nil || res.rep.Answered != 1 || res.rep.EndedByGateway != 1 {
		t.Fatalf("load tool: %v\n%s", res.err, res.rep.String())
	}
	cdrs := g.cdrs(3)
	admin := 0
	for _, c := range cdrs {
		if c["disconnect_reason"] == "admin" {
			admin++
		}
	}
	if len(cdrs) != 3 || admin != 1 {
		t.Fatalf("CDRs %v: want three, one ended admin", cdrs)
	}

	// The usage report: the XLSX's rows are the CSV's.
	run(t, ctx, "usage", chromedp.Navigate(base+"/console/org/acme/usage"), chromedp.WaitVisible(chromedp.ID("dl-xlsx")))
	csvHref := value(t, ctx, "CSV link", chromedp.AttributeValue(chromedp.ID("dl-csv"), "href")).Value
	xlsxHref := value(t, ctx, "XLSX link", chromedp.AttributeValue(chromedp.ID("dl-xlsx"), "href")).Value
	st, csvBody := fetch(t, ctx, csvHref)
	if st != 200 {
		t.Fatalf("CSV download: %d %s", st, csvBody)
	}
	st, xlsxBody := fetch(t, ctx, xlsxHref)
	if st != 200 {
		t.Fatalf("XLSX download: %d %s", st, xlsxBody)
	}
	compareCSVAndXLSX(t, csvBody, xlsxBody, 3)

	// Globex's admin sees none of it.
	signOut(t, ctx)
	signIn(t, ctx, base, globexKey, "")
	text = value(t, ctx, "globex overview", chromedp.Text(chromedp.ID("available")))
	if text != "75.00 USD" {
		t.Fatalf("globex available %q", text)
	}
	for _, p := range []string{"/console/org/acme", "/console/org/acme/users", "/console/org/acme/usage", "/console/org/acme/usage.csv", "/console/org/acme/calls"} {
		st, body := fetch(t, ctx, base+p)
		// The API answers an org key 404 for another org's objects.
		if st != 404 || bytes.Contains(body, []byte("alice")) || bytes.Contains(body, []byte(org.Balance)) {
			t.Fatalf("globex's admin got %s: %d, want 404\n%s", p, st, body)
		}
	}
	st, body := fetch(t, ctx, base+"/console/org/globex/usage.csv")
	if recs, _ := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(body, []byte("\ufeff")))).ReadAll(); st != 200 || len(recs) != 1 {
		t.Fatalf("globex's usage: %d, %d rows, want the header only", st, len(recs))
	}
	run(t, ctx, "globex calls", chromedp.Navigate(base+"/console/org/globex/calls"), chromedp.WaitVisible(chromedp.ID("calls")))
	waitJS(t, ctx, "no calls", `document.querySelectorAll("#calls tr[data-call]").length === 0`)

	// Globex's key revoked while its live calls page refreshes itself:
	// the next refresh (htmx) takes the browser to the login page, which
	// says why.
	g.api("DELETE", "/v1/keys/"+globexKeyID, "", "", 204, nil)
	waitJS(t, ctx, "signed out by the revocation", `location.pathname === "/console/login" &&
		/no longer accepts your key/.test((document.querySelector("main .error")||{}).textContent||"")`)

	// The operator: orgs near zero first, and the audit trail of all this.
	signIn(t, ctx, base, token, "")
	waitJS(t, ctx, "orgs", `location.pathname === "/console/op/orgs" && document.querySelectorAll("main tbody tr").length === 2`)
	first := value(t, ctx, "first org", chromedp.Text(chromedp.CSS("main tbody tr td a")))
	if first != "globex" {
		t.Fatalf("first org %q: want globex (75.00 available, acme has %s)", first, org.Balance)
	}
	screenshot(t, ctx, "operator-orgs")

	// What acme's admin did in the console is journaled by the API as
	// that key's, via console: the purchase, auto-recharge, the license,
	// the call hung up; and nothing else of that key's.
	var journal struct{ Entries []auditEntry }
	g.api("GET", "/v1/audit?key="+acmeKeyID, "", "", 200, &journal)
	want := map[string]bool{"POST /v1/orgs/{org}/purchases": true, "PUT /v1/orgs/{org}/auto-recharge": true,
		"PUT /v1/orgs/{org}/users/{user}": true, "DELETE /v1/calls/{id}": true}
	for _, e := range journal.Entries {
		if !want[e.Action] || e.Via != "console" || e.Role != "org_admin" || e.Org != "acme" {
			t.Fatalf("acme admin's entry %+v: want one of %v, role org_admin, org acme, via console", e, want)
		}
		delete(want, e.Action)
	}
	if len(want) != 0 {
		t.Fatalf("no audit entries of acme admin's %v; entries: %+v", want, journal.Entries)
	}
	// The operator's audit page shows them with the key id and via.
	run(t, ctx, "audit", chromedp.Navigate(base+"/console/op/audit?org=acme"), chromedp.WaitVisible(chromedp.CSS("main table")))
	rows := value(t, ctx, "audit rows", chromedp.Evaluate[[][]string](
		`[...document.querySelectorAll("main tbody tr")].map(tr => [...tr.cells].map(td => td.textContent))`))
	console := map[string]bool{}
	for _, r := range rows {
		// #, when, key, via, role, org, kind, action, target
		if len(r) == 9 && r[2] == acmeKeyID {
			if r[3] != "console" {
				t.Fatalf("audit row %v: want via console", r)
			}
			console[r[7]] = true
		}
	}
	if len(console) != 4 {
		t.Fatalf("the audit page shows acme admin's changes %v, want 4 actions; rows %v", console, rows)
	}
	screenshot(t, ctx, "audit")
}

// compareCSVAndXLSX checks the two exports hold the same n rows: the
// same calls, users, numbers, billed seconds, charges and reasons.
func compareCSVAndXLSX(t *testing.T, csvBody, xlsxBody []byte, n int) {
	t.Helper()
	recs, err := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(csvBody, []byte("\ufeff")))).ReadAll()
	if err != nil || len(recs) != n+1 {
		t.Fatalf("CSV: %d rows, %v; want %d", len(recs)-1, err, n)
	}
	f, err := excelize.OpenReader(bytes.NewReader(xlsxBody))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := f.GetRows("PSTN usage", excelize.Options{RawCellValue: true})
	if err != nil || len(rows) != len(recs) {
		t.Fatalf("XLSX: %d rows, %v; CSV has %d", len(rows), err, len(recs))
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	if strings.Join(rows[0], ",") != strings.Join(recs[0], ",") {
		t.Fatalf("headers differ:\nxlsx %v\ncsv  %v", rows[0], recs[0])
	}
	for i := 1; i < len(recs); i++ {
		for _, name := range []string{"call_id", "org", "user", "from", "to", "billed_s", "duration_s", "currency", "disconnect_reason"} {
			if x, c := cellAt(rows[i], col[name]), recs[i][col[name]]; x != c {
				t.Fatalf("row %d %s: xlsx %q, csv %q", i, name, x, c)
			}
		}
		x, err1 := decimal.NewFromString(cellAt(rows[i], col["charge"]))
		c, err2 := decimal.NewFromString(recs[i][col["charge"]])
		if err1 != nil || err2 != nil || !x.Equal(c) {
			t.Fatalf("row %d charge: xlsx %q, csv %q", i, cellAt(rows[i], col["charge"]), recs[i][col["charge"]])
		}
	}
}

func cellAt(row []string, i int) string {
	if i < len(row) {
		return row[i]
	}
	return ""
}
