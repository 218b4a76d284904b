package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// TestSIPpConferencingDialOut: a meeting bridge dials out through a
// conferencing trunk. To a zone A country the call draws the org's
// audio-conferencing minutes and costs no credit; outside zone A it is paid
// from credits at the deck's rate.
func TestSIPpConferencingDialOut(t *testing.T) {
	requireSIPp(t)
	g := startGateway(t, buildBinary(t), t.TempDir())
	g.api("POST", "/v1/orgs", "", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201, nil)
	g.api("POST", "/v1/orgs/acme/credits", "", `{"amount":"50.00","idempotency_key":"conf-1"}`, 201, nil)
	g.api("PUT", "/v1/orgs/acme/users/bridge", "", `{"numbers":["+12125550199"],"licenses":["audio_conferencing","communications_credits"]}`, 200, nil)
	g.api("PUT", "/v1/trunks/meetings", "", `{"kind":"conferencing","org":"acme","addresses":["127.0.0.1"]}`, 200, nil)
	g.api("PUT", "/v1/rates", "text/csv", "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,0.60,1,1\n55,BR,Brazil,mobile,1.20,1,1\n", 200, nil)
	uasPort := freePort(t)
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, uasPort), 200, nil)

	dialOut := func(to string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		carrier, carrierOut := startSIPp(ctx, t, "uas_answer.xml", uasPort)
		time.Sleep(300 * time.Millisecond)
		caller, callerOut := startSIPp(ctx, t, "uac_call.xml", freePort(t), "-d", "2000",
			"-s", to, "-key", "caller", "+12125550199", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
		if err := caller.Wait(); err != nil {
			t.Fatalf("SIPp caller to %s: %v\n%s\ngateway log:\n%s", to, err, callerOut, g.log)
		}
		if err := carrier.Wait(); err != nil {
			t.Fatalf("SIPp carrier: %v\n%s", err, carrierOut)
		}
	}
	calls := 0
	cdrTo := func(number string) map[string]string {
		t.Helper()
		calls++
		cdrs := g.cdrs(calls)
		for _, c := range cdrs {
			if c["to"] == number {
				return c
			}
		}
		t.Fatalf("no CDR to %s in %v", number, cdrs)
		return nil
	}
	var org struct {
		Balance string
		Pools   []struct {
			Plan        string
			Used, Total int
		}
	}

	dialOut("+33142278186")
	zoneA := cdrTo("+33142278186")
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	conf := -1
	for _, p := range org.Pools {
		if p.Plan == "conferencing" {
			conf = p.Used
		}
	}
	if zoneA["pool"] != "conferencing" || zoneA["pool_minutes"] != "1" || zoneA["charge"] != "0.00" || org.Balance != "50.00" || conf != 1 {
		t.Fatalf("zone A dial-out: CDR %v, balance %s, conferencing minutes used %d; want the pool's minute, no charge", zoneA, org.Balance, conf)
	}

	dialOut("+5511987654321")
	brazil := cdrTo("+5511987654321")
	charge := decimal.RequireFromString(brazil["charge"])
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	if brazil["pool"] != "" || !charge.IsPositive() || !decimal.RequireFromString(org.Balance).Equal(decimal.RequireFromString("50.00").Sub(charge)) {
		t.Fatalf("dial-out outside zone A: CDR %v, balance %s; want it paid from credits", brazil, org.Balance)
	}
}
