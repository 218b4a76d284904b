package gateway

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
)

const sourceHeader = "X-AUTH-IP"

// frontEnv is a gateway whose caller phone stands for a trusted front
// proxy: orgs acme (trunk 192.0.2.10:5060, an exact address) and beta
// (trunk 198.51.100.0/24) sit behind it, and none of them is the phone's
// own address.
func frontEnv(t *testing.T, set func(*Config)) *env {
	t.Helper()
	// newEnvFS's steps, with the rule built from the caller's address,
	// which is known only once it listens and before the gateway starts.
	e := &env{t: t, reg: prometheus.NewRegistry(), clock: clock.NewFake(epoch)}
	var err error
	e.ledger, err = ledger.Open(t.TempDir(), ledger.Options{Now: e.clock.Now, Registerer: e.reg})
	must(t, err)
	deck, err := rating.ParseDeck(strings.NewReader(testDeck))
	must(t, err)
	e.carrier = newCarrier(t)
	e.caller = newPhone(t)
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "carrier", Kind: rating.TrunkCarrier, URI: "sip:" + e.carrier.addr, Prefixes: []string{""}}))
	for _, o := range []struct{ id, addr, number string }{{"acme", "192.0.2.10:5060", "12125550100"}, {"beta", "198.51.100.0/24", "12125550199"}} {
		_, err := e.ledger.CreateOrg(ledger.Org{ID: o.id, Country: "US", Region: "r", BillingRegion: "r"})
		must(t, err)
		_, err = e.ledger.Fund(o.id, d("50.00"), "fund-"+o.id)
		must(t, err)
		must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "pbx-" + o.id, Kind: rating.TrunkCustomer, Org: o.id, Addresses: []string{o.addr}}))
		must(t, e.ledger.PutUser(ledger.User{Org: o.id, ID: "alice", Numbers: []string{o.number}, Licenses: []string{"communications_credits"}}))
	}
	cfg := testConfig()
	cfg.Front = FrontConfig{TrustedProxies: []string{e.caller.addr}, SourceHeader: sourceHeader}
	if set != nil {
		set(&cfg)
	}
	e.gw, err = New(cfg, e.ledger, deck, e.clock, e.reg, quietLog())
	must(t, err)
	must(t, e.gw.Start())
	t.Cleanup(func() {
		e.gw.Close()
		e.caller.close()
		e.carrier.close()
		e.ledger.Close()
	})
	return e
}

func vouch(v string) sip.Header { return sip.NewHeader(sourceHeader, v) }

func warningOf(res *sip.Response) string {
	if res == nil {
		return ""
	}
	if h := res.GetHeader("Warning"); h != nil {
		return h.Value()
	}
	return ""
}

// TestFrontProxyVouchedSource: behind a trusted proxy the trunk is the
// vouched address's, the call is billed to that trunk's org, and every
// way a vouched source can be missing or wrong is refused with its own
// status and Warning before anything is held.
func TestFrontProxyVouchedSource(t *testing.T) {
	e := frontEnv(t, nil)
	cases := []struct {
		name    string
		hdrs    []sip.Header
		from    string
		status  int
		org     string // billed when the call is answered
		warning string
	}{
		{"exact address", []sip.Header{vouch("192.0.2.10:5060")}, "+12125550100", 200, "acme", ""},
		{"address in a CIDR trunk", []sip.Header{vouch("198.51.100.7:5099")}, "+12125550199", 200, "beta", ""},
		{"IP only, CIDR trunk", []sip.Header{vouch(" 198.51.100.7 ")}, "+12125550199", 200, "beta", ""},
		{"IP only cannot match a trunk listed with its port", []sip.Header{vouch("192.0.2.10")}, "+12125550100", 403, "", "unknown trunk"},
		{"wrong port", []sip.Header{vouch("192.0.2.10:5061")}, "+12125550100", 403, "", "unknown trunk"},
		{"IPv6 nobody has", []sip.Header{vouch("[2001:db8::1]:5060")}, "+12125550100", 403, "", "unknown trunk"},
		{"no header", nil, "+12125550100", 403, "", "trusted front proxy sent no source header"},
		{"two headers", []sip.Header{vouch("192.0.2.10:5060"), vouch("192.0.2.10:5060")}, "+12125550100", 400, "", "source header is not one IP or IP:port"},
		{"a list", []sip.Header{vouch("192.0.2.10:5060, 203.0.113.1")}, "+12125550100", 400, "", "source header is not one IP or IP:port"},
		{"a host name", []sip.Header{vouch("pbx.example.com:5060")}, "+12125550100", 400, "", "source header is not one IP or IP:port"},
		{"port 0", []sip.Header{vouch("192.0.2.10:0")}, "+12125550100", 400, "", "source header is not one IP or IP:port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]int{"acme": len(e.cdrs("acme")), "beta": len(e.cdrs("beta"))}
			sess, status, res := e.caller.dial(e.gw.Addr(), tc.from, "+442079460018", tc.hdrs...)
			if status != tc.status {
				t.Fatalf("status %d (%s), want %d", status, warningOf(res), tc.status)
			}
			if tc.status != 200 {
				if !strings.Contains(warningOf(res), tc.warning) {
					t.Fatalf("Warning %q, want it to say %q", warningOf(res), tc.warning)
				}
				if n := e.answeredCalls(); n != 0 {
					t.Fatalf("%d calls up after a refusal", n)
				}
				return
			}
			e.clock.Advance(1500 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			must(t, sess.Bye(ctx))
			eventually(t, "call settled", func() bool { return len(e.cdrs(tc.org)) == before[tc.org]+1 })
			cdr := e.cdrs(tc.org)[before[tc.org]]
			if cdr.User != "alice" || cdr.From != strings.TrimPrefix(tc.from, "+") || !cdr.Charge.IsPositive() {
				t.Fatalf("CDR %+v: want alice's call, charged", cdr)
			}
			for org, n := range before {
				if org != tc.org && len(e.cdrs(org)) != n {
					t.Fatalf("org %s billed for a call from %s's trunk", org, tc.org)
				}
			}
		})
	}
	must(t, e.ledger.CheckInvariants())
	var charged decimal.Decimal
	for _, org := range []string{"acme", "beta"} {
		for _, c := range e.cdrs(org) {
			charged = charged.Add(c.Charge)
		}
		charged = charged.Add(e.balance(org))
	}
	if !charged.Equal(d("100.00")) {
		t.Fatalf("balances + charges = %s, want the 100.00 funded", charged)
	}
}

// TestFrontHeaderFromUntrustedRefused: the header from anyone but a
// trusted proxy is refused (403 with a Warning saying why), even when the
// sender's own address is a trunk and the vouched one another org's; the
// same sender without the header is served on its own address.
func TestFrontHeaderFromUntrustedRefused(t *testing.T) {
	e := frontEnv(t, nil)
	pbx := newPhone(t)
	t.Cleanup(pbx.close)
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "direct-beta", Kind: rating.TrunkCustomer, Org: "beta", Addresses: []string{pbx.addr}}))
	e.gw.ReloadTrunks()

	_, status, res := pbx.dial(e.gw.Addr(), "+12125550100", "+442079460018", vouch("192.0.2.10:5060"))
	if status != 403 || !strings.Contains(warningOf(res), "not a trusted front proxy") {
		t.Fatalf("spoofed source: %d %q, want 403 saying the sender is no trusted proxy", status, warningOf(res))
	}
	sess, status, res := pbx.dial(e.gw.Addr(), "+12125550199", "+442079460018")
	if status != 200 {
		t.Fatalf("the same PBX without the header: %d %q, want its own trunk's call", status, warningOf(res))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sess.Bye(ctx))
	eventually(t, "call settled", func() bool { return len(e.cdrs("beta")) == 1 })
	if n := len(e.cdrs("acme")); n != 0 {
		t.Fatalf("acme has %d CDRs: the spoofed call reached it", n)
	}
	got := testutilCounter(t, e, "source_header_untrusted")
	if got != 1 {
		t.Fatalf("creditgate_authorizations_total{refused,source_header_untrusted} = %v, want 1", got)
	}
}

// TestFrontRateLimitPerVouchedSource: sip.rate_per_source counts each
// vouched source on its own — with the proxy's address every customer
// behind it would share one bucket.
func TestFrontRateLimitPerVouchedSource(t *testing.T) {
	e := frontEnv(t, func(c *Config) { c.RatePerSource, c.BurstPerSource = 0.001, 1 })
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018", vouch("192.0.2.10:5060"))
	if status != 200 {
		t.Fatalf("acme's first call: %d", status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sess.Bye(ctx))
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018", vouch("192.0.2.10:5060")); status != 503 {
		t.Fatalf("acme's second call within its burst of 1: %d, want 503", status)
	}
	sess, status, _ = e.caller.dial(e.gw.Addr(), "+12125550199", "+442079460018", vouch("198.51.100.7:5060"))
	if status != 200 {
		t.Fatalf("beta's first call through the same proxy: %d, want 200 (its own bucket)", status)
	}
	must(t, sess.Bye(ctx))
}

func testutilCounter(t *testing.T, e *env, reason string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	must(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "creditgate_authorizations_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["result"] == "refused" && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no creditgate_authorizations_total{result=refused,reason=%s}", reason)
	return 0
}

// TestFrontConfigRefused: a rule the gateway cannot apply is refused when
// the gateway is built, naming what is wrong.
func TestFrontConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  FrontConfig
		want string
	}{
		{"host name", FrontConfig{TrustedProxies: []string{"kamailio.example"}, SourceHeader: sourceHeader}, "kamailio.example"},
		{"no header name", FrontConfig{TrustedProxies: []string{"10.0.0.0/8"}}, "SourceHeader"},
		{"header name with a colon", FrontConfig{TrustedProxies: []string{"10.0.0.0/8"}, SourceHeader: "X-A: b"}, "SourceHeader"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Front = tc.cfg
			_, err := New(cfg, nil, nil, nil, nil, quietLog())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// FuzzVouchedSource: the header's value is bytes from the network (a
// client's, when a proxy fails to strip it). Whatever it is, parseVouched
// neither panics nor accepts something that does not print back as an
// address, and whatever it accepts carries no zone and no mapped form.
func FuzzVouchedSource(f *testing.F) {
	for _, s := range []string{"192.0.2.10:5060", "192.0.2.10", "[2001:db8::1]:5060", "2001:db8::1", "[::1]",
		"::ffff:192.0.2.1", "[fe80::1%eth0]:5060", "1.2.3.4:0", "1.2.3.4:65536", "a, b", "", " 10.0.0.1 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ap, err := parseVouched(v)
		if err != nil {
			return
		}
		if !ap.Addr().IsValid() || ap.Addr().Zone() != "" || ap.Addr().Is4In6() {
			t.Fatalf("parseVouched(%q) = %v: want a plain address", v, ap)
		}
		again := ap.Addr().String()
		if ap.Port() != 0 {
			again = ap.String()
		}
		back, err := parseVouched(again)
		if err != nil || back != ap {
			t.Fatalf("parseVouched(%q) = %v, which reads back as %v, %v", v, ap, back, err)
		}
	})
}

// TestDrainingNodeFailsProbes: a front proxy's OPTIONS probe gets 503
// from a draining gateway, so the proxy takes it out of rotation instead
// of offering it new calls it would refuse; an OPTIONS inside a dialog (a
// keepalive of a call still up) is answered 200 as before.
func TestDrainingNodeFailsProbes(t *testing.T) {
	e := newEnv(t, testDeck)
	options := func(toTag string) *sip.Response {
		t.Helper()
		host, port := "127.0.0.1", 0
		fmt.Sscan(strings.TrimPrefix(e.gw.Addr(), host+":"), &port)
		req := sip.NewRequest(sip.OPTIONS, sip.Uri{Scheme: "sip", Host: host, Port: port})
		to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", Host: host, Port: port}, Params: sip.NewParams()}
		if toTag != "" {
			to.Params.Add("tag", toTag)
		}
		req.AppendHeader(to)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := e.caller.cli.Do(ctx, req)
		must(t, err)
		return res
	}
	if res := options(""); res.StatusCode != 200 {
		t.Fatalf("probe before the drain: %d, want 200", res.StatusCode)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if n := e.gw.Drain(ctx); n != 0 {
		t.Fatalf("%d calls up", n)
	}
	res := options("")
	if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("probe while draining: %d (Retry-After %v), want 503 with Retry-After", res.StatusCode, res.GetHeader("Retry-After"))
	}
	if res := options("in-dialog"); res.StatusCode != 200 {
		t.Fatalf("in-dialog OPTIONS while draining: %d, want 200", res.StatusCode)
	}
}
