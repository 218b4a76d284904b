package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestSIPpSIGTERMDrains: SIGTERM with a call up → /readyz turns 503, a new
// INVITE gets 503, the call up goes on until its caller hangs up (billed
// normally, not cut), and the process then exits by itself, long before the
// drain timeout.
func TestSIPpSIGTERMDrains(t *testing.T) {
	requireSIPp(t)
	bin := buildBinary(t)
	g := startGateway(t, bin, t.TempDir(), configFile(t, "sip:\n  drain_timeout: 30s\n")...)
	uasPort := freePort(t)
	g.setupAcme("127.0.0.1", "0.60") // 0.01 a second
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, uasPort), 200, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	uas, uasOut := startSIPp(ctx, t, "uas_answer.xml", uasPort)
	time.Sleep(300 * time.Millisecond)
	uac, uacOut := startSIPp(ctx, t, "uac_call.xml", freePort(t), "-d", "4000",
		"-default_behaviors", "all,-abortunexp", "-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	deadline := time.Now().Add(10 * time.Second)
	for {
		var calls struct{ Calls []struct{ State string } }
		g.api("GET", "/v1/calls", "", "", 200, &calls)
		if len(calls.Calls) == 1 && calls.Calls[0].State == "answered" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("call never answered:\n%s\n%s", uacOut.String(), g.log)
		}
		time.Sleep(50 * time.Millisecond)
	}

	sigAt := time.Now()
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for {
		res, err := http.Get("http://" + g.httpAddr + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 503 {
				break
			}
		}
		if time.Since(sigAt) > 5*time.Second {
			t.Fatal("/readyz did not turn 503 after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	refused := sipp(ctx, t, "-sf", expectStatus(t, 503), "-p", fmt.Sprint(freePort(t)), "-m", "1",
		"-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	if out, err := refused.CombinedOutput(); err != nil {
		t.Fatalf("a new INVITE while draining did not get 503: %v\n%s", err, out)
	}

	if err := uac.Wait(); err != nil {
		t.Fatalf("the call up was not left to finish: %v\n%s\ngateway log:\n%s", err, uacOut.String(), g.log)
	}
	if err := uas.Wait(); err != nil {
		t.Fatalf("carrier side: %v\n%s", err, uasOut.String())
	}
	exited := make(chan error, 1)
	go func() { exited <- g.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("gateway exit: %v\n%s", err, g.log)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("gateway still running %v after its last call ended (drain timeout 30 s):\n%s", time.Since(sigAt), g.log)
	}
	if !g.log.Contains("drained: no calls up") {
		t.Fatalf("gateway did not report a clean drain:\n%s", g.log)
	}

	g2 := startGateway(t, bin, g.dataDir)
	var usage struct{ CDRs []cdr }
	g2.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
	if len(usage.CDRs) != 1 || usage.CDRs[0]["disconnect_reason"] != "caller_hangup" {
		t.Fatalf("CDRs after the drain: %v", usage.CDRs)
	}
	var org struct{ Balance, Held string }
	g2.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	if org.Held != "0.00" || org.Balance == "50.00" {
		t.Fatalf("org after the drain: %+v", org)
	}
}
