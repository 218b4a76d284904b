// Package sipp_test drives the built creditgate binary with SIPp, the tool
// operators load-test SIP with: a SIPp caller on a customer trunk, a SIPp
// carrier behind the gateway, the admin API to set up and check the money.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const token = "sipp-e2e-token-0123456789"

// gateway is one creditgate process under test.
type gateway struct {
	t        *testing.T
	bin      string
	dataDir  string
	sipPort  int
	httpAddr string
	cmd      *exec.Cmd
	log      *logBuffer
}

// logBuffer keeps a process's output; it is written by exec's copying
// goroutine while the test reads it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) Contains(s string) bool { return strings.Contains(b.String(), s) }

func requireSIPp(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("sipp")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("sipp is not installed; .ci/run installs it (apt-get install -y sip-tester)")
		}
		t.Skip("sipp not installed (apt-get install -y sip-tester); CI fails instead of skipping")
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "creditgate")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/creditgate/creditgate/cmd/creditgate")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// configFile writes a config file for the gateway and returns the
// --config flag and its value.
func configFile(t *testing.T, yaml string) []string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "creditgate.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--config", p}
}

func startGateway(t *testing.T, bin, dataDir string, extra ...string) *gateway {
	t.Helper()
	return startGatewayOn(t, bin, dataDir, freePort(t), extra...)
}

// startGatewayOn starts the gateway with SIP on a given port, e.g. the port
// of a run it replaces.
func startGatewayOn(t *testing.T, bin, dataDir string, sipPort int, extra ...string) *gateway {
	t.Helper()
	g := &gateway{t: t, bin: bin, dataDir: dataDir, sipPort: sipPort, log: &logBuffer{}}
	g.httpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	g.cmd = exec.Command(bin, append([]string{"serve", "--data-dir", dataDir, "--admin-token", token,
		"--sip-listen", fmt.Sprintf("127.0.0.1:%d", g.sipPort), "--http-listen", g.httpAddr}, extra...)...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.stop)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if res, err := http.Get("http://" + g.httpAddr + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return g
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not become ready:\n%s", g.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *gateway) stop() {
	if g.cmd.ProcessState != nil {
		return
	}
	_ = g.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = g.cmd.Process.Kill()
		<-done
	}
}

// api calls the admin API and decodes the JSON answer into out (if not nil).
func (g *gateway) api(method, path, contentType, body string, wantStatus int, out any) {
	g.t.Helper()
	req, _ := http.NewRequest(method, "http://"+g.httpAddr+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != wantStatus {
		g.t.Fatalf("%s %s: %d %s, want %d", method, path, res.StatusCode, b, wantStatus)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			g.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

// setupAcme creates org acme with 50.00 of credit and its user alice
// (+12125550100, communications_credits), a customer trunk from pbxAddress
// (an IP, or IP:port), and a one-row deck pricing France at perMinute in
// 1-second increments.
// cdr is one row of the JSON usage report, every value as its text
// (integers are JSON numbers there, money decimal strings), so tests
// compare it with the CSV's cells and with literals alike.
type cdr map[string]string

func (c *cdr) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*c = cdr{}
	for k, v := range m {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			s = string(v) // a number
		}
		(*c)[k] = s
	}
	return nil
}

// cdrs is acme's CDRs once there are at least n. The gateway settles a call
// after it has answered the SIP side, so a caller's SIPp or the load tool
// can be done first; this bounds the wait, it times nothing.
func (g *gateway) cdrs(n int) []cdr {
	g.t.Helper()
	var usage struct{ CDRs []cdr }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		g.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
		if len(usage.CDRs) >= n || time.Now().After(deadline) {
			return usage.CDRs
		}
	}
}

func (g *gateway) setupAcme(pbxAddress, perMinute string) {
	g.t.Helper()
	g.api("POST", "/v1/orgs", "", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201, nil)
	g.api("POST", "/v1/orgs/acme/credits", "", `{"amount":"50.00","idempotency_key":"e2e-1"}`, 201, nil)
	g.api("PUT", "/v1/orgs/acme/users/alice", "", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200, nil)
	g.api("PUT", "/v1/trunks/pbx", "", fmt.Sprintf(`{"kind":"customer","org":"acme","addresses":[%q]}`, pbxAddress), 200, nil)
	g.api("PUT", "/v1/rates", "text/csv", "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,"+perMinute+",1,1\n", 200, nil)
}

// sipp runs one bounded SIPp instance and returns its error, if any.
func sipp(ctx context.Context, t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	base := []string{"-i", "127.0.0.1", "-nostdin", "-timeout", "30s", "-timeout_error", "-trace_err",
		"-error_file", filepath.Join(t.TempDir(), "errors.log")}
	cmd := exec.CommandContext(ctx, "sipp", append(base, args...)...)
	cmd.Dir = t.TempDir()
	return cmd
}

// scenarios is where the SIPp scenarios live: beside the load scripts,
// which use them too.
const scenarios = "../loadtest/sipp"

// scenario is the absolute path of a scenario of loadtest/sipp.
func scenario(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join(scenarios, name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startSIPp starts one bounded SIPp instance on a scenario of
// loadtest/sipp (or an absolute path) bound to port, one call (-m 1) unless
// args say otherwise; its output is kept for failure messages.
func startSIPp(ctx context.Context, t *testing.T, name string, port int, args ...string) (*exec.Cmd, *logBuffer) {
	t.Helper()
	if !filepath.IsAbs(name) {
		name = scenario(t, name)
	}
	scenario := name
	cmd := sipp(ctx, t, append([]string{"-sf", scenario, "-p", fmt.Sprint(port), "-m", "1"}, args...)...)
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out
}

// expectStatus writes uac_refused.xml expecting status and returns its path.
func expectStatus(t *testing.T, status int) string {
	t.Helper()
	b, err := os.ReadFile(scenario(t, "uac_refused.xml"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), fmt.Sprintf("uac_expect_%d.xml", status))
	if err := os.WriteFile(p, bytes.ReplaceAll(b, []byte("EXPECT_STATUS"), []byte(fmt.Sprint(status))), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSIPpCreditRunsOutAndZeroIsRefused: (b) a call with credit for exactly
// five increments is ended by the gateway after five, with BYE to both SIPp
// legs and the balance at exactly 0.00; (c) the next dial-out at zero gets
// 402 and never reaches the carrier.
func TestSIPpCreditRunsOutAndZeroIsRefused(t *testing.T) {
	requireSIPp(t)
	bin := buildBinary(t)
	g := startGateway(t, bin, t.TempDir())
	uacPort, uasPort := freePort(t), freePort(t)

	// 600.00 a minute in 1 s increments: 10.00 a second, so 50.00 pays 5 s.
	g.setupAcme(fmt.Sprintf("127.0.0.1:%d", uacPort), "600.00")
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, uasPort), 200, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	uas, uasOut := startSIPp(ctx, t, "uas_answer.xml", uasPort)
	time.Sleep(300 * time.Millisecond) // let the UAS bind before the call reaches it

	start := time.Now()
	uac := sipp(ctx, t, "-sf", scenario(t, "uac_until_bye.xml"), "-p", fmt.Sprint(uacPort), "-m", "1",
		"-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	if out, err := uac.CombinedOutput(); err != nil {
		t.Fatalf("SIPp caller did not get its call ended by the gateway: %v\n%s\ngateway log:\n%s", err, out, g.log)
	}
	elapsed := time.Since(start)
	if err := uas.Wait(); err != nil {
		t.Fatalf("SIPp carrier did not get a BYE: %v\n%s", err, uasOut.String())
	}
	if elapsed < 5*time.Second {
		t.Fatalf("call ended after %v, before its 5 paid seconds", elapsed)
	}

	var org struct{ Balance, Held, Available string }
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	if org.Balance != "0.00" || org.Held != "0.00" || org.Available != "0.00" {
		t.Fatalf("org after the call: %+v, want everything 0.00", org)
	}
	var usage struct{ CDRs []cdr }
	g.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
	if len(usage.CDRs) != 1 {
		t.Fatalf("%d CDRs, want 1", len(usage.CDRs))
	}
	cdr := usage.CDRs[0]
	if cdr["disconnect_reason"] != "credit_exhausted" || cdr["charge"] != "50.00" || cdr["billed_s"] != "5" || cdr["to"] != "+33142278186" {
		t.Fatalf("CDR %v", cdr)
	}

	// (c) At zero the next dial-out is refused with 402; no carrier is
	// listening any more, so had it been forwarded SIPp would see no 402.
	refused := sipp(ctx, t, "-sf", expectStatus(t, 402), "-p", fmt.Sprint(uacPort), "-m", "1",
		"-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	if out, err := refused.CombinedOutput(); err != nil {
		t.Fatalf("SIPp expected 402: %v\n%s", err, out)
	}
	g.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
	if len(usage.CDRs) != 1 {
		t.Fatalf("the refused call wrote a CDR: %v", usage.CDRs)
	}

	// Balance and CDRs survive a restart of the process.
	g.stop()
	g2 := startGateway(t, bin, g.dataDir)
	g2.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	g2.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
	if org.Balance != "0.00" || len(usage.CDRs) != 1 || usage.CDRs[0]["charge"] != "50.00" {
		t.Fatalf("after restart: org %+v CDRs %v", org, usage.CDRs)
	}
}
