package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// call runs one SIPp call from the acme PBX through the gateway to a SIPp
// carrier: uas answers on the carrier side, uac dials +33142278186 as
// alice. Both must finish their scenario (exit 0).
func (g *gateway) call(uas, uac string, uacArgs ...string) {
	g.t.Helper()
	uasPort := freePort(g.t)
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, uasPort), 200, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	carrier, carrierOut := startSIPp(ctx, g.t, uas, uasPort)
	time.Sleep(300 * time.Millisecond)
	caller, callerOut := startSIPp(ctx, g.t, uac, freePort(g.t), append([]string{"-s", "+33142278186", "-key", "caller", "+12125550100",
		fmt.Sprintf("127.0.0.1:%d", g.sipPort)}, uacArgs...)...)
	if err := caller.Wait(); err != nil {
		g.t.Fatalf("SIPp caller (%s): %v\n%s\ngateway log:\n%s", uac, err, callerOut, g.log)
	}
	if err := carrier.Wait(); err != nil {
		g.t.Fatalf("SIPp carrier (%s): %v\n%s\ngateway log:\n%s", uas, err, carrierOut, g.log)
	}
}

// onlyCDR is the org's one CDR, and its balance and held amount.
func (g *gateway) onlyCDR() (c cdr, balance, held string) {
	g.t.Helper()
	cdrs := g.cdrs(1)
	if len(cdrs) != 1 {
		g.t.Fatalf("%d CDRs, want 1: %v", len(cdrs), cdrs)
	}
	var org struct{ Balance, Held string }
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	return cdrs[0], org.Balance, org.Held
}

// TestSIPpCancelBeforeAnswerCostsNothing: the caller CANCELs while the
// carrier rings; the CANCEL reaches the carrier, the caller gets 200 and
// 487, and the call costs nothing.
func TestSIPpCancelBeforeAnswerCostsNothing(t *testing.T) {
	requireSIPp(t)
	g := startGateway(t, buildBinary(t), t.TempDir())
	g.setupAcme("127.0.0.1", "0.60")
	g.call("uas_ring_cancel.xml", "uac_cancel.xml")
	cdr, balance, held := g.onlyCDR()
	if cdr["disconnect_reason"] != "canceled" || cdr["sip_status"] != "487" || cdr["charge"] != "0.00" || cdr["billed_s"] != "0" ||
		balance != "50.00" || held != "0.00" {
		t.Fatalf("cancelled call: CDR %v, balance %s held %s", cdr, balance, held)
	}
}

// TestSIPpCancelCrossesAnswer: the carrier's 200 OK crosses the gateway's
// CANCEL on the wire. The caller still gets its 487; the gateway ACKs the
// carrier's 200 and BYEs that leg at once (the carrier scenario checks
// both); nobody pays.
func TestSIPpCancelCrossesAnswer(t *testing.T) {
	requireSIPp(t)
	g := startGateway(t, buildBinary(t), t.TempDir())
	g.setupAcme("127.0.0.1", "0.60")
	g.call("uas_answer_crosses_cancel.xml", "uac_cancel.xml")
	cdr, balance, held := g.onlyCDR()
	if cdr["disconnect_reason"] != "canceled" || cdr["charge"] != "0.00" || balance != "50.00" || held != "0.00" {
		t.Fatalf("call cancelled as it was answered: CDR %v, balance %s held %s", cdr, balance, held)
	}
}

// TestSIPpReInviteKeepsMetering: the caller puts the call on hold with a
// re-INVITE 1.5 s into it (the carrier checks it gets a=sendonly, the
// caller checks it gets a=recvonly back) and hangs up 1.5 s later. The
// call is billed for its whole length from answer to BYE, to the cent.
func TestSIPpReInviteKeepsMetering(t *testing.T) {
	requireSIPp(t)
	g := startGateway(t, buildBinary(t), t.TempDir())
	g.setupAcme("127.0.0.1", "0.60") // 0.01 a second
	g.call("uas_reinvite.xml", "uac_reinvite.xml")
	cdr, balance, held := g.onlyCDR()
	billed := decimal.RequireFromString(cdr["billed_s"])
	charge := decimal.RequireFromString(cdr["charge"])
	if cdr["disconnect_reason"] != "caller_hangup" || billed.LessThan(decimal.NewFromInt(3)) || billed.GreaterThan(decimal.NewFromInt(5)) ||
		!charge.Equal(billed.Mul(decimal.RequireFromString("0.01"))) || held != "0.00" ||
		!decimal.RequireFromString(balance).Add(charge).Equal(decimal.RequireFromString("50.00")) {
		t.Fatalf("call with a re-INVITE: CDR %v, balance %s held %s; want 3 to 5 s billed at 0.01/s, from answer to BYE", cdr, balance, held)
	}
}
