package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestSIPpSilentCallerEndedLegLost: a caller (SIPp, uac_silent.xml) that
// answers two in-dialog keepalives and then goes silent, through the built
// binary with sip.keepalive_interval 1s and keepalive_timeout 500ms: the
// third keepalive goes unanswered, the call is ended leg_lost, the carrier's
// SIPp gets its BYE (and the caller its own), and the CDR is billed to the
// last good keepalive (sent about 2 s after the answer: the third
// one-second increment), not to when the loss was noticed.
func TestSIPpSilentCallerEndedLegLost(t *testing.T) {
	requireSIPp(t)
	bin := buildBinary(t)
	g := startGateway(t, bin, t.TempDir(), configFile(t, "sip:\n  keepalive_interval: 1s\n  keepalive_timeout: 500ms\n")...)
	uasPort := freePort(t)
	g.setupAcme("127.0.0.1", "0.60") // 0.01 a second
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, uasPort), 200, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	uas, uasOut := startSIPp(ctx, t, "uas_answer_keepalive.xml", uasPort)
	time.Sleep(300 * time.Millisecond)
	uac, uacOut := startSIPp(ctx, t, "uac_silent.xml", freePort(t),
		"-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	if err := uas.Wait(); err != nil {
		t.Fatalf("carrier SIPp: %v (no BYE?)\n%s\n%s", err, uasOut, g.log)
	}
	if err := uac.Wait(); err != nil {
		t.Fatalf("caller SIPp: %v\n%s\n%s", err, uacOut, g.log)
	}
	c := g.cdrs(1)[0]
	if c["disconnect_reason"] != "leg_lost" || c["billed_s"] != "3" || c["charge"] != "0.03" {
		t.Fatalf("CDR %v: want leg_lost, billed 3 s, 0.03\n%s", c, g.log)
	}
	m := g.metrics()
	if m[`creditgate_calls_ended_total{reason="leg_lost"}`] != 1 || m[`creditgate_liveness_probes_total{method="OPTIONS",result="no_answer"}`] < 1 {
		t.Fatalf("metrics: calls_ended leg_lost %v, OPTIONS no_answer %v", m[`creditgate_calls_ended_total{reason="leg_lost"}`],
			m[`creditgate_liveness_probes_total{method="OPTIONS",result="no_answer"}`])
	}
	t.Logf("ended %s after %s–%s, billed %s s, %s; OPTIONS ok %v", c["disconnect_reason"], c["answer"], c["end"], c["billed_s"], c["charge"],
		m[`creditgate_liveness_probes_total{method="OPTIONS",result="ok"}`])
}
