package console

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
)

// operatorToken is the bootstrap token: the first operator_admin key.
const operatorToken = "console-test-token-0123456789"

const sessionTTL = 8 * time.Hour

// harness is a real admin API (Pebble ledger in a temp dir, a gateway on
// loopback) with the console mounted, served over real HTTP.
type harness struct {
	t       testing.TB
	base    string
	ledger  *ledger.Ledger
	gw      *gateway.Gateway
	console *Console
	clock   *clock.Fake // the console's: sessions expire by it
	// apiSkew moves the API's clock ahead of the wall clock (e.g. past
	// its 5-minute cache of funding advice).
	apiSkew *atomic.Int64
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func gatewayConfig() gateway.Config {
	d := configs.Default()
	return gateway.Config{Listen: "127.0.0.1:0", RingTimeout: d.SIP.RingTimeout, ByeTimeout: d.SIP.ByeTimeout,
		MaxCalls: d.SIP.MaxCalls, MaxPending: d.SIP.MaxPending, FailoverTimeout: d.SIP.FailoverTimeout,
		Catalog: &d.Catalog, RatePerSource: d.SIP.RatePerSource, BurstPerSource: d.SIP.BurstPerSource,
		SessionExpires: d.SIP.SessionExpires, MinSE: d.SIP.MinSE, KeepaliveInterval: d.SIP.KeepaliveInterval,
		KeepaliveTimeout: d.SIP.KeepaliveTimeout, MaxCallDuration: d.SIP.MaxCallDuration}
}

func newHarness(t *testing.T) *harness { t.Helper(); return newHarnessTB(t) }

// newHarnessTB serves it for a test or a benchmark; the gateway listens
// for SIP on a free loopback port.
func newHarnessTB(t testing.TB) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := ledger.Open(t.TempDir(), ledger.Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gatewayConfig(), l, rating.SampleDeck(), clock.Real{}, reg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	skew := &atomic.Int64{}
	srv := api.New(l, gw, operatorToken, reg, func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }, quiet())
	clk := clock.NewFake(time.Now())
	c, err := New(Config{API: srv.Handle, Gatherer: reg, Now: clk.Now, Log: quiet(), SessionTTL: sessionTTL,
		MaxSessions: 100, FundingMinimum: decimal.RequireFromString("50.00")})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetConsole(c.Handle)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		_ = gw.Close()
		_ = l.Close()
	})
	return &harness{t: t, base: "http://" + ln.Addr().String(), ledger: l, gw: gw, console: c, clock: clk, apiSkew: skew}
}

// api calls the admin API directly with the operator token.
func (h *harness) api(method, path, body string, want int) []byte {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+operatorToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		h.t.Fatalf("%s %s: %d %s, want %d", method, path, res.StatusCode, b, want)
	}
	return b
}

// setupAcme is org acme (50.00), its user alice, through the API.
func (h *harness) setupAcme() {
	h.t.Helper()
	h.api("POST", "/v1/orgs", `{"id":"acme","name":"Acme","country":"US","region":"us","timezone":"America/New_York"}`, 201)
	h.api("POST", "/v1/orgs/acme/credits", `{"amount":"50.00","idempotency_key":"h-1"}`, 201)
	h.api("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200)
}

// browser is one user agent: a cookie jar, redirects not followed (the
// tests look at each 303), Origin set as a browser sets it on a POST.
type browser struct {
	h      *harness
	client *http.Client
}

func (h *harness) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{h: h, client: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type page struct {
	status   int
	body     string
	location string
	header   http.Header
}

func (b *browser) get(path string) page {
	b.h.t.Helper()
	res, err := b.client.Get(b.h.base + path)
	if err != nil {
		b.h.t.Fatal(err)
	}
	return read(res)
}

// post sends a form; origin "" sends none.
func (b *browser) post(path string, v url.Values, origin string) page {
	b.h.t.Helper()
	return b.postWith(path, v, origin, nil)
}

// htmxHeaders are what htmx sends with its requests.
var htmxHeaders = http.Header{"Hx-Request": {"true"}}

// getHX is a GET as htmx sends it (a refresh).
func (b *browser) getHX(path string) page {
	b.h.t.Helper()
	req, _ := http.NewRequest("GET", b.h.base+path, nil)
	for k, vs := range htmxHeaders {
		req.Header[k] = vs
	}
	res, err := b.client.Do(req)
	if err != nil {
		b.h.t.Fatal(err)
	}
	return read(res)
}

// postWith sends a form with extra headers (htmx's).
func (b *browser) postWith(path string, v url.Values, origin string, hdr http.Header) page {
	b.h.t.Helper()
	req, _ := http.NewRequest("POST", b.h.base+path, strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	res, err := b.client.Do(req)
	if err != nil {
		b.h.t.Fatal(err)
	}
	return read(res)
}

func read(res *http.Response) page {
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return page{status: res.StatusCode, body: string(body), location: res.Header.Get("Location"), header: res.Header}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the token in a page's forms.
func (p page) csrf(t testing.TB) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no CSRF token in the page (%d):\n%s", p.status, p.body)
	}
	return m[1]
}

// login signs in with key and returns the CSRF token of the session.
func (b *browser) login(key string) string {
	b.h.t.Helper()
	lp := b.get("/console/login")
	res := b.post("/console/login", url.Values{"csrf": {lp.csrf(b.h.t)}, "key": {key}}, b.h.base)
	if res.status != 303 {
		b.h.t.Fatalf("login: %d, want 303:\n%s", res.status, res.body)
	}
	home := b.get(res.location)
	if home.status != 200 {
		b.h.t.Fatalf("home %s after login: %d\n%s", res.location, home.status, home.body)
	}
	return home.csrf(b.h.t)
}

// state is everything a console form could change, as the API answers
// it, plus the console's own sessions: two equal states mean nothing
// changed.
func (h *harness) state() string {
	h.t.Helper()
	var b strings.Builder
	for _, p := range []string{"/v1/orgs/acme", "/v1/orgs/acme/users", "/v1/orgs/acme/transactions", "/v1/calls",
		"/v1/rates?number=%2B442079460018"} {
		req, _ := http.NewRequest("GET", h.base+p, nil)
		req.Header.Set("Authorization", "Bearer "+operatorToken)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			h.t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		// The org's forecast is stamped with the time it was computed.
		var m map[string]any
		if json.Unmarshal(body, &m) == nil {
			delete(m, "forecast")
			body, _ = json.Marshal(m)
		}
		b.WriteString(p + " " + res.Status + " " + string(body) + "\n")
	}
	// Live sessions only: an expired one is dropped when it is next
	// seen, which is housekeeping, not a change.
	st := h.console.sessions
	st.mu.Lock()
	live := 0
	for _, s := range st.byID {
		if h.clock.Now().Before(s.expires) {
			live++
		}
	}
	st.mu.Unlock()
	b.WriteString("live sessions " + itoa(live))
	return b.String()
}

func itoa(n int) string { return decimal.NewFromInt(int64(n)).String() }

// freeUDPPort is a loopback UDP port free now, for the load tool's
// carrier side.
func freeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
