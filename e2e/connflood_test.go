package e2e_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestIdleConnectionFlood (issue 21): with the process's NOFILE at 512, a
// stranger opens 600 idle TCP connections to the SIP port while a call is
// up. The process stays up, the admin API answers throughout (on a new
// connection each time, so through Accept), the call ends exactly when its
// credit does with the CDR it would have had, a new UDP call goes through,
// and the connections past the cap (512 − sip.reserved_fds 256 = 256) are
// closed as soon as accepted. Before the cap, the SIP listener took
// descriptors until EMFILE, the admin API's Accept failed, its Serve
// returned and main ended every call and the process.
func TestIdleConnectionFlood(t *testing.T) {
	requireSIPp(t)
	const (
		nofile = 512
		flood  = 600
		// 512 − sip.reserved_fds (256 by default).
		sipCap = nofile - 256
	)
	bin := buildBinary(t)
	// Every stranger's connection is from one address here: lift the
	// per-source cap so that the cap under test is the one derived from
	// the descriptor limit.
	g := startGatewayNOFILE(t, bin, t.TempDir(), nofile, configFile(t, "sip:\n  max_connections_per_source: 2048\n")...)
	uacPort, uac2Port, uasPort := freePort(t), freePort(t), freePort(t)

	// 375.00 a minute in 1 s increments: 6.25 a second, so acme's 50.00
	// pays exactly 8 s.
	g.setupAcme(fmt.Sprintf("127.0.0.1:%d", uacPort), "375.00")
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, uasPort), 200, nil)
	g.api("POST", "/v1/orgs", "", `{"id":"beta","name":"Beta","country":"US","region":"us"}`, 201, nil)
	g.api("POST", "/v1/orgs/beta/credits", "", `{"amount":"50.00","idempotency_key":"flood-1"}`, 201, nil)
	g.api("PUT", "/v1/orgs/beta/users/bob", "", `{"numbers":["+12125550111"],"licenses":["communications_credits"]}`, 200, nil)
	g.api("PUT", "/v1/trunks/pbx2", "", fmt.Sprintf(`{"kind":"customer","org":"beta","addresses":["127.0.0.1:%d"]}`, uac2Port), 200, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	uas, uasOut := startSIPp(ctx, t, "uas_answer.xml", uasPort, "-m", "2")
	time.Sleep(300 * time.Millisecond) // let the UAS bind before the call reaches it
	uac, uacOut := startSIPp(ctx, t, "uac_until_bye.xml", uacPort,
		"-s", "+33142278186", "-key", "caller", "+12125550100", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	g.waitAnswered(1)

	// The admin API, probed on a fresh connection each time from now until
	// the end: the path that failed was its Accept.
	probe := &prober{g: g}
	probeCtx, stopProbe := context.WithCancel(ctx)
	var probing sync.WaitGroup
	probing.Go(func() { probe.run(probeCtx) })
	defer func() { stopProbe(); probing.Wait() }()

	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	sipAddr := fmt.Sprintf("127.0.0.1:%d", g.sipPort)
	// From 127.0.0.2: its ephemeral ports do not collide with the
	// 127.0.0.1 ports other tests running meanwhile bind (a gateway binds
	// TCP on the port UDP picked, and would find it taken).
	stranger := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	for range flood {
		c, err := stranger.Dial("tcp", sipAddr)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}

	// Every connection was either admitted or refused.
	var m map[string]float64
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m = g.metrics()
		if m[`creditgate_sip_connections_open{listener="sip_tcp"}`]+m[`creditgate_sip_connections_refused_total{reason="fd_limit"}`] >= flood {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections not all accounted for: %v\ngateway log:\n%s", m, g.log)
		}
	}
	if open, refused := m[`creditgate_sip_connections_open{listener="sip_tcp"}`], m[`creditgate_sip_connections_refused_total{reason="fd_limit"}`]; open != sipCap || refused != flood-sipCap {
		t.Fatalf("open %v, refused %v; want %d and %d", open, refused, sipCap, flood-sipCap)
	}

	// From the stranger's side: the refused ones read EOF (or a reset)
	// at once; the admitted ones are open and silent.
	closed, open := classify(conns)
	if closed != flood-sipCap || open != sipCap {
		t.Fatalf("client side: %d closed, %d open; want %d and %d", closed, open, flood-sipCap, sipCap)
	}

	// A new UDP call, from another org, goes through during the flood.
	uac2, uac2Out := startSIPp(ctx, t, "uac_call.xml", uac2Port, "-d", "1000", "-default_behaviors", "all,-abortunexp",
		"-s", "+33142278186", "-key", "caller", "+12125550111", sipAddr)
	if err := uac2.Wait(); err != nil {
		t.Fatalf("new UDP call during the flood: %v\n%s\ngateway log:\n%s", err, uac2Out, g.log)
	}

	// The call up ends when its 8 paid seconds do, BYE'd by the gateway.
	if err := uac.Wait(); err != nil {
		t.Fatalf("the call up did not end with the gateway's BYE: %v\n%s\ngateway log:\n%s", err, uacOut, g.log)
	}
	if err := uas.Wait(); err != nil {
		t.Fatalf("carrier: %v\n%s", err, uasOut)
	}
	stopProbe()
	probing.Wait()
	if g.log.Contains("msg=stopped") || g.log.Contains("admin API stopped") {
		t.Fatalf("the gateway stopped:\n%s", g.log)
	}
	if probe.failed.Load() != 0 || probe.ok.Load() == 0 {
		t.Fatalf("admin API probes: %d ok, %d failed (last: %v)\ngateway log:\n%s", probe.ok.Load(), probe.failed.Load(), probe.lastErr.Load(), g.log)
	}

	cdrs := g.cdrs(1)
	var acme map[string]string
	for _, c := range cdrs {
		if c["user"] == "alice" {
			acme = c
		}
	}
	if acme["disconnect_reason"] != "credit_exhausted" || acme["billed_s"] != "8" || acme["charge"] != "50.00" {
		t.Fatalf("acme's CDR %v; want credit_exhausted, billed_s 8, charge 50.00", acme)
	}
	var usage struct{ CDRs []cdr }
	for deadline := time.Now().Add(10 * time.Second); len(usage.CDRs) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		g.api("GET", "/v1/orgs/beta/usage", "", "", 200, &usage)
	}
	if len(usage.CDRs) != 1 || usage.CDRs[0]["disconnect_reason"] != "caller_hangup" || usage.CDRs[0]["sip_status"] != "200" {
		t.Fatalf("beta's CDRs %v; want one answered call the caller hung up", usage.CDRs)
	}
	m = g.metrics()
	t.Logf("NOFILE %d: %v SIP connections open, %v refused (fd_limit), %v accept errors; process_open_fds %v of process_max_fds %v; admin API probes %d ok, 0 failed",
		nofile, m[`creditgate_sip_connections_open{listener="sip_tcp"}`], m[`creditgate_sip_connections_refused_total{reason="fd_limit"}`],
		m[`creditgate_accept_errors_total{listener="sip_tcp"}`]+m[`creditgate_accept_errors_total{listener="http"}`],
		m["process_open_fds"], m["process_max_fds"], probe.ok.Load())
}

// startGatewayNOFILE is startGateway with the process's NOFILE limit (soft
// and hard) set to nofile; the shell execs the binary, so g.cmd is it.
func startGatewayNOFILE(t *testing.T, bin, dataDir string, nofile int, extra ...string) *gateway {
	t.Helper()
	g := &gateway{t: t, bin: bin, dataDir: dataDir, sipPort: freePort(t), log: &logBuffer{}}
	g.httpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), bin, "serve", "--data-dir", dataDir,
		"--admin-token", token, "--sip-listen", fmt.Sprintf("127.0.0.1:%d", g.sipPort), "--http-listen", g.httpAddr}, extra...)
	g.cmd = exec.Command("sh", args...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.stop)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if res, err := http.Get("http://" + g.httpAddr + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not become ready:\n%s", g.log)
		}
	}
	if m := g.metrics(); m["process_max_fds"] != float64(nofile) {
		t.Fatalf("process_max_fds = %v, want %d", m["process_max_fds"], nofile)
	}
	return g
}

// waitAnswered waits until n calls are up and answered.
func (g *gateway) waitAnswered(n int) {
	g.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var calls struct{ Calls []struct{ State string } }
		g.api("GET", "/v1/calls", "", "", 200, &calls)
		answered := 0
		for _, c := range calls.Calls {
			if c.State == "answered" {
				answered++
			}
		}
		if answered >= n {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%d calls answered, want %d\n%s", answered, n, g.log)
		}
	}
}

// metrics scrapes /metrics into series → value ("name{labels}" as exposed).
func (g *gateway) metrics() map[string]float64 {
	g.t.Helper()
	res, err := http.Get("http://" + g.httpAddr + "/metrics")
	if err != nil {
		g.t.Fatalf("GET /metrics: %v\n%s", err, g.log)
	}
	defer res.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// prober calls GET /healthz and an authenticated GET /v1/calls on a new
// connection each time until ctx is done, counting answers.
type prober struct {
	g          *gateway
	ok, failed atomic.Int64
	lastErr    atomic.Value
	client     *http.Client
}

func (p *prober) run(ctx context.Context) {
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		for _, path := range []string{"/healthz", "/v1/calls"} {
			if err := p.get(ctx, path); err != nil {
				if ctx.Err() != nil {
					return
				}
				p.failed.Add(1)
				p.lastErr.Store(err.Error())
			} else {
				p.ok.Add(1)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *prober) get(ctx context.Context, path string) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+p.g.httpAddr+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	if res.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", path, res.Status)
	}
	return nil
}

// classify reads from every connection until one shared deadline: EOF or
// a reset is a connection the gateway closed; the deadline passing is one
// it keeps open.
func classify(conns []net.Conn) (closed, open int) {
	deadline := time.Now().Add(time.Second)
	var nClosed, nOpen atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			_ = c.SetReadDeadline(deadline)
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				nOpen.Add(1)
			case err != nil:
				nClosed.Add(1)
			}
		})
	}
	wg.Wait()
	return int(nClosed.Load()), int(nOpen.Load())
}
