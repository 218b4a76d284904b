package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// TestSIPpKill9MidCallByesBothLegs: ten calls up between a SIPp caller and
// a SIPp carrier, the gateway killed with SIGKILL, started again on the
// same data and port. Every call is settled (the started second counts),
// both legs of every call get a BYE within a few seconds of the start, and
// the money adds up to the cent: balance + charges = the funding, nothing
// held.
func TestSIPpKill9MidCallByesBothLegs(t *testing.T) {
	requireSIPp(t)
	bin := buildBinary(t)
	g := startGateway(t, bin, t.TempDir())
	uacPort, uasPort := freePort(t), freePort(t)
	g.setupAcme(fmt.Sprintf("127.0.0.1:%d", uacPort), "0.60") // 0.01 a second
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, uasPort), 200, nil)

	const calls = 10
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	uas, uasOut := startSIPp(ctx, t, "uas_answer.xml", uasPort, "-m", fmt.Sprint(calls))
	time.Sleep(300 * time.Millisecond)
	uac, uacOut := startSIPp(ctx, t, "uac_until_bye.xml", uacPort, "-m", fmt.Sprint(calls), "-r", "20", "-l", fmt.Sprint(calls),
		"-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))

	deadline := time.Now().Add(15 * time.Second)
	for {
		var up struct{ Calls []struct{ State string } }
		g.api("GET", "/v1/calls", "", "", 200, &up)
		answered := 0
		for _, c := range up.Calls {
			if c.State == "answered" {
				answered++
			}
		}
		if answered == calls {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d calls answered:\n%s\n%s", answered, calls, uacOut.String(), g.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // let every call pay a few increments

	if err := g.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = g.cmd.Wait()
	restarted := time.Now()
	g2 := startGatewayOn(t, bin, g.dataDir, g.sipPort)

	// Both SIPp instances end (exit 0) only when each of their calls got
	// its BYE and answered it.
	for name, p := range map[string]struct {
		wait func() error
		out  *logBuffer
	}{"caller": {uac.Wait, uacOut}, "carrier": {uas.Wait, uasOut}} {
		if err := p.wait(); err != nil {
			t.Fatalf("SIPp %s side did not get a BYE for every call: %v\n%s\ngateway log after restart:\n%s", name, err, p.out, g2.log)
		}
	}
	took := time.Since(restarted)
	if took > 10*time.Second {
		t.Fatalf("the BYEs took %v after the restart began", took)
	}
	t.Logf("both legs of %d calls got BYE %v after the restart began", calls, took.Round(time.Millisecond))

	var usage struct{ CDRs []cdr }
	g2.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
	if len(usage.CDRs) != calls {
		t.Fatalf("%d CDRs, want %d: %v", len(usage.CDRs), calls, usage.CDRs)
	}
	sum := decimal.Zero
	cent := decimal.RequireFromString("0.01")
	for _, cdr := range usage.CDRs {
		charge := decimal.RequireFromString(cdr["charge"])
		billed := decimal.RequireFromString(cdr["billed_s"])
		if cdr["disconnect_reason"] != "gateway_restart" || billed.LessThan(decimal.NewFromInt(2)) || !charge.Equal(billed.Mul(cent)) {
			t.Fatalf("CDR %v: want gateway_restart, at least 2 s billed at 0.01 a second", cdr)
		}
		sum = sum.Add(charge)
	}
	var org struct{ Balance, Held string }
	g2.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	if org.Held != "0.00" || !decimal.RequireFromString(org.Balance).Add(sum).Equal(decimal.RequireFromString("50.00")) {
		t.Fatalf("org %+v, CDR charges %s: balance + charges must be the 50.00 funded, nothing held", org, sum)
	}
	var up struct{ Calls []any }
	g2.api("GET", "/v1/calls", "", "", 200, &up)
	if len(up.Calls) != 0 {
		t.Fatalf("calls up after the restart: %v", up.Calls)
	}
	if !g2.log.Contains("ending calls the last run left up") {
		t.Fatalf("restart did not report the calls it ended:\n%s", g2.log)
	}
}
