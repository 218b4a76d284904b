package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestSIPpCarrierFailoverOn503: the first carrier for +33 (a SIPp UAS
// answering 503) fails the call over to the next (a SIPp UAS that answers);
// the caller sees one answered call, billed once.
func TestSIPpCarrierFailoverOn503(t *testing.T) {
	requireSIPp(t)
	bin := buildBinary(t)
	g := startGateway(t, bin, t.TempDir())
	downPort, upPort := freePort(t), freePort(t)
	g.setupAcme("127.0.0.1", "0.60") // 0.01 a second
	g.api("PUT", "/v1/trunks/a-down", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":["33"]}`, downPort), 200, nil)
	g.api("PUT", "/v1/trunks/b-up", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":["33"]}`, upPort), 200, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	down, downOut := startSIPp(ctx, t, "uas_unavailable.xml", downPort)
	up, upOut := startSIPp(ctx, t, "uas_answer.xml", upPort)
	time.Sleep(300 * time.Millisecond)
	uac := sipp(ctx, t, "-sf", scenario(t, "uac_call.xml"), "-p", fmt.Sprint(freePort(t)), "-m", "1", "-d", "2000",
		"-default_behaviors", "all,-abortunexp", "-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	if out, err := uac.CombinedOutput(); err != nil {
		t.Fatalf("call through failover: %v\n%s\ngateway log:\n%s", err, out, g.log)
	}
	if err := down.Wait(); err != nil {
		t.Fatalf("the 503 carrier was not tried first: %v\n%s", err, downOut.String())
	}
	if err := up.Wait(); err != nil {
		t.Fatalf("the next carrier did not take the call to its end: %v\n%s", err, upOut.String())
	}
	var usage struct{ CDRs []cdr }
	g.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
	if len(usage.CDRs) != 1 || usage.CDRs[0]["disconnect_reason"] != "caller_hangup" || usage.CDRs[0]["billed_s"] < "2" {
		t.Fatalf("CDRs: %v", usage.CDRs)
	}
}
