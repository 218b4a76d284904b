package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/creditgate/creditgate/loadtest/testcert"

	"github.com/creditgate/creditgate/loadtest"
	"github.com/shopspring/decimal"
)

// The Go load tool through the built gateway, on every mix of UDP and TCP
// legs: every call it places is
// answered, billed once and adds up to the cent; calls the gateway refuses
// are counted by their status and never reach the carrier side.
func TestLoadToolThroughGateway(t *testing.T) {
	bin := buildBinary(t)
	tlsCfg, certFile, keyFile := testcert.New(t)
	for _, legs := range [][2]string{{"udp", "udp"}, {"tcp", "tcp"}, {"udp", "tcp"}, {"tcp", "udp"}, {"tls", "tls"}, {"udp", "tls"}} {
		in, out := legs[0], legs[1]
		t.Run(in+"-to-"+out, func(t *testing.T) {
			// The gateway accepts TLS with the test certificate and
			// trusts it on the carrier side too.
			tlsPort := freePort(t)
			conf := filepath.Join(t.TempDir(), "creditgate.yaml")
			must(t, os.WriteFile(conf, []byte(fmt.Sprintf("sip:\n  tls_listen: 127.0.0.1:%d\n  tls_cert: %s\n  tls_key: %s\n  tls_ca: %s\n",
				tlsPort, certFile, keyFile, certFile)), 0o600))
			g := startGateway(t, bin, t.TempDir(), "--config", conf)
			g.setupAcme("127.0.0.1", "0.60") // 0.01 per 1 s increment
			carrierPort := freePort(t)
			uri := fmt.Sprintf("sip:127.0.0.1:%d", carrierPort)
			if out != "udp" {
				uri += ";transport=" + out
			}
			g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":%q,"prefixes":[""]}`, uri), 200, nil)

			cfg := loadtest.Config{
				Target:    fmt.Sprintf("127.0.0.1:%d", g.sipPort),
				TLS:       tlsCfg,
				Carrier:   fmt.Sprintf("127.0.0.1:%d", carrierPort),
				Transport: in, CarrierTransport: out,
				Rate: 100, Calls: 150, Hold: 300 * time.Millisecond,
				Dialled: "+33142278186", From: []string{"+12125550100"},
				SetupTimeout: 10 * time.Second,
			}
			if in == "tls" {
				cfg.Target = fmt.Sprintf("127.0.0.1:%d", tlsPort)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rep, err := loadtest.Run(ctx, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Attempted != 150 || rep.Answered != 150 || rep.Failed != 0 || rep.ByStatus["200"] != 150 || rep.CarrierInvites != 150 {
				t.Fatalf("report:\n%s\ngateway log:\n%s", rep, g.log)
			}
			if rep.SetupMS.P50 <= 0 || rep.SetupMS.Max < rep.SetupMS.P99 || rep.SetupMS.P99 < rep.SetupMS.P50 {
				t.Fatalf("setup percentiles out of order: %+v", rep.SetupMS)
			}

			// Each call talked 300 ms: one started 1 s increment, 0.01.
			cdrs := g.cdrs(150)
			sum := decimal.Zero
			for _, c := range cdrs {
				if c["charge"] != "0.01" || c["disconnect_reason"] != "caller_hangup" {
					t.Fatalf("CDR %v: want charge 0.01 and caller_hangup", c)
				}
				sum = sum.Add(decimal.RequireFromString(c["charge"]))
			}
			var org struct{ Balance, Held string }
			g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
			if len(cdrs) != 150 || !sum.Equal(decimal.RequireFromString("1.50")) || org.Balance != "48.50" || org.Held != "0.00" {
				t.Fatalf("%d CDRs charging %s, balance %s held %s; want 150, 1.50, 48.50, 0.00", len(cdrs), sum, org.Balance, org.Held)
			}

			// A destination the deck has no rate for: refused, counted by status.
			cfg.Dialled, cfg.Calls = "+442079460018", 20
			rep, err = loadtest.Run(ctx, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Answered != 0 || rep.Failed != 20 || rep.ByStatus["404"] != 20 || rep.CarrierInvites != 0 {
				t.Fatalf("refused calls report:\n%s", rep)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
