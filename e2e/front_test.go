package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creditgate/creditgate/loadtest"
	"github.com/shopspring/decimal"
)

// The front proxy's timers in these tests (configs/kamailio/kamailio.cfg
// takes them as -A defines): an OPTIONS probe every second, a node down
// after one unanswered probe or one INVITE with no reply within 1 s.
const (
	frontPingInterval = time.Second
	frontThreshold    = 1
	frontFRTimer      = time.Second
)

func requireKamailio(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("kamailio")
	if err != nil {
		// Debian puts it in /usr/sbin, which a user's PATH may lack.
		if _, serr := os.Stat("/usr/sbin/kamailio"); serr == nil {
			return "/usr/sbin/kamailio"
		}
		if os.Getenv("CI") != "" {
			t.Fatal("kamailio is not installed; .ci/run installs it (apt-get install -y kamailio)")
		}
		t.Skip("kamailio not installed (apt-get install -y kamailio); CI fails instead of skipping")
	}
	return p
}

// frontProxy is Kamailio running configs/kamailio/kamailio.cfg as a child
// of the test, in the foreground, on its own port and dispatcher list.
type frontProxy struct {
	t    *testing.T
	port int
	cmd  *exec.Cmd
	log  *logBuffer
}

// startFront starts the shipped Kamailio config on port in front of the
// nodes (their SIP ports), with the test's probe timers, and returns once
// it answers an OPTIONS.
func startFront(t *testing.T, kamailio string, port int, nodes []int) *frontProxy {
	t.Helper()
	dir := t.TempDir()
	var list strings.Builder
	for _, p := range nodes {
		fmt.Fprintf(&list, "1 sip:127.0.0.1:%d 0 0\n", p)
	}
	listFile := filepath.Join(dir, "dispatcher.list")
	must(t, os.WriteFile(listFile, []byte(list.String()), 0o644))
	cfg, err := filepath.Abs("../configs/kamailio/kamailio.cfg")
	must(t, err)
	f := &frontProxy{t: t, port: port, log: &logBuffer{}}
	f.cmd = exec.Command(kamailio, "-f", cfg, "-DD", "-E", "-n", "2", "-m", "32", "-M", "8",
		"-P", filepath.Join(dir, "kamailio.pid"), "-Y", dir,
		"-A", fmt.Sprintf("LISTEN=udp:127.0.0.1:%d", f.port),
		"-A", fmt.Sprintf("DISPATCHER_LIST=%q", listFile),
		"-A", fmt.Sprintf("PING_INTERVAL=%d", int(frontPingInterval/time.Second)),
		"-A", fmt.Sprintf("PROBING_THRESHOLD=%d", frontThreshold),
		"-A", fmt.Sprintf("FR_TIMER_MS=%d", frontFRTimer.Milliseconds()),
		"-A", "LOG_LEVEL=2")
	f.cmd.Stdout, f.cmd.Stderr = f.log, f.log
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.stop)
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", f.port))
	must(t, err)
	defer conn.Close()
	buf := make([]byte, 4096)
	for deadline, i := time.Now().Add(10*time.Second), 0; ; i++ {
		opts := fmt.Sprintf("OPTIONS sip:127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-ready-%d;rport\r\n"+
			"From: <sip:test@127.0.0.1>;tag=r%d\r\nTo: <sip:127.0.0.1:%d>\r\nCall-ID: ready-%d\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
			f.port, conn.LocalAddr(), i, i, f.port, i)
		_, _ = conn.Write([]byte(opts))
		_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil && bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200")) {
			return f
		}
		if time.Now().After(deadline) || f.cmd.ProcessState != nil {
			t.Fatalf("kamailio did not answer OPTIONS on %d:\n%s", f.port, f.log)
		}
	}
}

// stop ends the Kamailio it started, by its PID: SIGTERM (its main
// process then stops its children), SIGKILL if it lingers.
func (f *frontProxy) stop() {
	if f.cmd.ProcessState != nil {
		return
	}
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = f.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = f.cmd.Process.Kill()
		<-done
	}
}

// arrival is one SIP request that reached a dead node's port.
type arrival struct {
	at     time.Time
	method string
	callID string
}

// deadNode listens on a killed node's SIP port and records what still
// arrives there, answering nothing: to the proxy it is as dead as the
// killed process (a UDP port with no reader gets no ICMP to an
// unconnected socket either), and the test learns when the proxy stopped
// sending new calls to it.
type deadNode struct {
	conn net.PacketConn
	wg   sync.WaitGroup
	mu   sync.Mutex
	got  []arrival
}

func listenDead(t *testing.T, port int) *deadNode {
	t.Helper()
	var conn net.PacketConn
	var err error
	// The killed process's socket is gone once Wait returned; retry a
	// few times all the same.
	for i := 0; i < 50; i++ {
		if conn, err = net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(t, err)
	d := &deadNode{conn: conn}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			msg := string(buf[:n])
			a := arrival{at: time.Now(), method: strings.SplitN(msg, " ", 2)[0]}
			for _, line := range strings.Split(msg, "\r\n") {
				if v, ok := strings.CutPrefix(line, "Call-ID: "); ok {
					a.callID = v
				}
			}
			d.mu.Lock()
			d.got = append(d.got, a)
			d.mu.Unlock()
		}
	}()
	t.Cleanup(d.close)
	return d
}

func (d *deadNode) close() {
	d.conn.Close()
	d.wg.Wait()
}

// invites is the distinct new calls that reached the dead port and the
// time the last one's first INVITE did.
func (d *deadNode) invites() (calls int, last time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[string]bool{}
	for _, a := range d.got {
		if a.method == "INVITE" && !seen[a.callID] {
			seen[a.callID] = true
			last = a.at
		}
	}
	return len(seen), last
}

func (d *deadNode) count(method string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, a := range d.got {
		if a.method == method {
			n++
		}
	}
	return n
}

// frontNodes starts n creditgate processes (single-node mode, each its own
// ledger) that trust the front proxy on frontPort, each set up with org
// acme, its PBX's trunk on pbx (IP:port) and the carrier on carrierPort.
// conf is the --config flag they run with.
func frontNodes(t *testing.T, bin string, n, frontPort int, pbx string, carrierPort int) (nodes []*gateway, conf []string) {
	t.Helper()
	conf = configFile(t, fmt.Sprintf("sip:\n  trusted_proxies: [\"127.0.0.1:%d\"]\n", frontPort))
	for i := 0; i < n; i++ {
		g := startGateway(t, bin, t.TempDir(), conf...)
		g.setupAcme(pbx, "0.60") // 0.01 a 1 s increment
		g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, carrierPort), 200, nil)
		nodes = append(nodes, g)
	}
	return nodes, conf
}

// settled checks one node's money: every CDR acme's, balance + charges =
// the 50.00 funded, nothing held, no call up. It returns the CDRs.
func (g *gateway) settled() []cdr {
	g.t.Helper()
	var up struct{ Calls []any }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		g.api("GET", "/v1/calls", "", "", 200, &up)
		if len(up.Calls) == 0 {
			break
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("node on %d still has calls up: %v", g.sipPort, up.Calls)
		}
	}
	var usage struct{ CDRs []cdr }
	g.api("GET", "/v1/orgs/acme/usage", "", "", 200, &usage)
	sum := decimal.Zero
	for _, c := range usage.CDRs {
		if c["org"] != "acme" || c["user"] != "alice" {
			g.t.Fatalf("node on %d: CDR %v is not acme's alice's", g.sipPort, c)
		}
		sum = sum.Add(decimal.RequireFromString(c["charge"]))
	}
	var org struct{ Balance, Held string }
	g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
	if org.Held != "0.00" || !decimal.RequireFromString(org.Balance).Add(sum).Equal(decimal.RequireFromString("50.00")) {
		g.t.Fatalf("node on %d: balance %s held %s, CDRs charge %s: want balance + charges = 50.00, nothing held", g.sipPort, org.Balance, org.Held, sum)
	}
	return usage.CDRs
}

func cdrCounts(nodes []*gateway) []int {
	var n []int
	for _, g := range nodes {
		n = append(n, len(g.settled()))
	}
	return n
}

// TestFrontKamailioDispatcher: Kamailio's dispatcher (the shipped config)
// in front of three creditgate processes. The PBX's trunk is recognised
// behind the proxy and its calls are billed to its org on whichever node
// takes them; calls are spread over the nodes; the gateway's BYE reaches
// the PBX through the proxy; the vouched-source header straight from a
// PBX is refused, and one a client sends through the proxy is replaced by
// the proxy's own. Then one node is killed with SIGKILL during steady
// load: the proxy stops offering it new calls within one probe interval
// plus the threshold (the figure and the failed attempts are logged),
// and once the node is back it takes calls again.
func TestFrontKamailioDispatcher(t *testing.T) {
	requireSIPp(t)
	kamailio := requireKamailio(t)
	bin := buildBinary(t)
	pbxPort, carrierPort, spoofPort := freePort(t), freePort(t), freePort(t)
	pbx := fmt.Sprintf("127.0.0.1:%d", pbxPort)

	// The proxy's port must be known to the nodes' trusted_proxies before
	// they start, and the nodes' ports to the proxy's list: take the
	// proxy's port first, hand it to Kamailio below.
	frontPort := freePort(t)
	nodes, conf := frontNodes(t, bin, 3, frontPort, pbx, carrierPort)
	var ports []int
	for _, g := range nodes {
		ports = append(ports, g.sipPort)
	}
	front := startFront(t, kamailio, frontPort, ports)
	target := fmt.Sprintf("127.0.0.1:%d", front.port)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	load := func(calls int, rate float64) loadtest.Report {
		t.Helper()
		rep, err := loadtest.Run(ctx, loadtest.Config{Target: target, Caller: pbx,
			Carrier: fmt.Sprintf("127.0.0.1:%d", carrierPort), Rate: rate, Calls: calls, Hold: 200 * time.Millisecond,
			Dialled: "+33142278186", From: []string{"+12125550100"}, SetupTimeout: 10 * time.Second, HangupTimeout: 5 * time.Second}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}

	t.Log("front: trunk recognised and calls spread")
	func() {
		rep := load(60, 30)
		if rep.Attempted != 60 || rep.ByStatus["200"] != 60 || rep.Failed != 0 {
			t.Fatalf("through the proxy:\n%s\nproxy log:\n%s\nnode 0 log:\n%s", rep, front.log, nodes[0].log)
		}
		counts := cdrCounts(nodes)
		t.Logf("60 calls through Kamailio: CDRs per node %v (round robin), setup p50 %.1f ms p99 %.1f ms", counts, rep.SetupMS.P50, rep.SetupMS.P99)
		total := 0
		for i, n := range counts {
			if n < 10 {
				t.Fatalf("node %d took %d of 60 calls: not spread (%v)", i, n, counts)
			}
			total += n
		}
		if total != 60 {
			t.Fatalf("%d CDRs over the nodes for 60 calls", total)
		}
		// The callers' BYEs (and ACKs) went through the proxy's route
		// set, not straight to a node.
		if n := strings.Count(front.log.String(), "front: in-dialog BYE"); n < 60 {
			t.Fatalf("the proxy relayed %d in-dialog BYEs for 60 calls:\n%s", n, front.log)
		}
	}()

	t.Log("front: gateway BYE through the proxy")
	func() {
		// The node's BYE (here an admin's DELETE) must follow the route
		// set to the PBX: through the proxy, whose Via it then carries.
		caller := withViaCheck(t, "uac_until_bye.xml", front.port)
		uas, uasOut := startSIPp(ctx, t, "uas_answer.xml", carrierPort)
		waitUDPBound(t, carrierPort, uasOut)
		uac, uacOut := startSIPp(ctx, t, caller, pbxPort, "-s", "+33142278186", "-key", "caller", "+12125550100", target)
		id, node := "", (*gateway)(nil)
		for deadline := time.Now().Add(10 * time.Second); id == ""; time.Sleep(50 * time.Millisecond) {
			for _, g := range nodes {
				var up struct{ Calls []struct{ ID, State string } }
				g.api("GET", "/v1/calls", "", "", 200, &up)
				if len(up.Calls) == 1 && up.Calls[0].State == "answered" {
					id, node = up.Calls[0].ID, g
				}
			}
			if id == "" && time.Now().After(deadline) {
				t.Fatalf("the call was not answered on any node:\n%s", uacOut)
			}
		}
		node.api("DELETE", "/v1/calls/"+id, "", "", 204, nil)
		if err := uac.Wait(); err != nil {
			t.Fatalf("the PBX did not get the gateway's BYE through the proxy: %v\n%s\nproxy log:\n%s", err, uacOut, front.log)
		}
		if err := uas.Wait(); err != nil {
			t.Fatalf("the carrier did not get its BYE: %v\n%s", err, uasOut)
		}
	}()

	t.Log("front: vouched source refused from anyone else")
	func() {
		before := cdrCounts(nodes)
		// Straight to a node, claiming to be the PBX: 403 and why.
		spoof := withSourceHeader(t, 403, "not a trusted front proxy", pbx)
		cmd := sipp(ctx, t, "-sf", spoof, "-p", fmt.Sprint(spoofPort), "-m", "1", "-s", "+33142278186", "-key", "caller", "+12125550100",
			fmt.Sprintf("127.0.0.1:%d", nodes[0].sipPort))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("the header straight from a PBX was not refused 403 with its Warning: %v\n%s\n%s", err, out, nodes[0].log)
		}
		// Through the proxy, the client's header is replaced by the
		// proxy's, which names the real (unknown) sender.
		spoof = withSourceHeader(t, 403, "unknown trunk", pbx)
		cmd = sipp(ctx, t, "-sf", spoof, "-p", fmt.Sprint(spoofPort), "-m", "1", "-s", "+33142278186", "-key", "caller", "+12125550100", target)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("a client's header through the proxy was believed: %v\n%s\nproxy log:\n%s", err, out, front.log)
		}
		if after := cdrCounts(nodes); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("refused calls changed the CDRs: %v → %v", before, after)
		}
	}()

	t.Log("front: no open relay")
	func() {
		// A request "in a dialog" through the proxy's route set that
		// neither comes from a node nor goes to one is refused, not
		// relayed to wherever its Request-URI points.
		elsewhere := freePort(t)
		res := rawRequest(t, front.port, fmt.Sprintf("BYE sip:victim@127.0.0.1:%d SIP/2.0\r\n"+
			"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-relay;rport\r\nRoute: <sip:127.0.0.1:%d;lr>\r\n"+
			"From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:victim@127.0.0.1>;tag=b\r\nCall-ID: relay-1\r\nCSeq: 2 BYE\r\n"+
			"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n", elsewhere, spoofPort, front.port))
		if !strings.HasPrefix(res, "SIP/2.0 403") {
			t.Fatalf("an in-dialog request between two strangers: %q, want 403", res)
		}
	}()

	t.Log("front: kill -9 a node, then bring it back")
	func() {
		victim := nodes[1]
		before := cdrCounts(nodes)
		// 30 calls a second for 10 s; the node dies 2 s in.
		done := make(chan loadtest.Report, 1)
		go func() {
			rep, err := loadtest.Run(ctx, loadtest.Config{Target: target, Caller: pbx,
				Carrier: fmt.Sprintf("127.0.0.1:%d", carrierPort), Rate: 30, Calls: 300, Hold: 200 * time.Millisecond,
				Dialled: "+33142278186", From: []string{"+12125550100"}, SetupTimeout: 10 * time.Second, HangupTimeout: 5 * time.Second}, nil)
			if err != nil {
				t.Error(err)
			}
			done <- rep
		}()
		time.Sleep(2 * time.Second)
		must(t, victim.cmd.Process.Kill())
		_ = victim.cmd.Wait()
		killed := time.Now()
		dead := listenDead(t, victim.sipPort)
		rep := <-done
		calls, last := dead.invites()
		cutoff := time.Duration(0)
		if calls > 0 {
			cutoff = last.Sub(killed)
		}
		newFailed := rep.Attempted - rep.ByStatus["200"]
		t.Logf("kill -9 of the node on %d during 300 calls at 30/s: the proxy's last new call to it came %v after the kill "+
			"(bound: %v probe interval × (1 + threshold %d) + %v no-reply timer); %d new calls were offered to it and failed over, "+
			"%d call attempts failed (%v), %d calls up lost their hang-up with it; setup p50 %.1f ms, p99 %.1f ms, max %.1f ms; "+
			"%d OPTIONS probes reached the dead port",
			victim.sipPort, cutoff.Round(time.Millisecond), frontPingInterval, frontThreshold, frontFRTimer, calls, newFailed, rep.ByStatus,
			rep.Failed-newFailed, rep.SetupMS.P50, rep.SetupMS.P99, rep.SetupMS.Max, dead.count("OPTIONS"))
		bound := frontPingInterval*time.Duration(1+frontThreshold) + frontFRTimer
		if cutoff > bound+time.Second {
			t.Fatalf("the proxy sent new calls to the dead node for %v, past %v (+1 s slack)", cutoff, bound)
		}
		// A call whose INVITE the victim had answered 100 Trying to when it
		// died is not new: the proxy will not move a branch that replied
		// (the node may already be ringing a carrier), so it ends without
		// an answer (a timeout here). At 30 calls/s a handful can be in
		// setup at the instant of the kill; anything else that failed, or
		// more than that, is a call the proxy should have moved.
		inSetup := rep.ByStatus["timeout"]
		if newFailed != inSetup || inSetup > 3 {
			t.Fatalf("%d new calls failed (%d timed out in setup at the kill); the proxy should have moved each to a survivor: %v\nproxy log:\n%s",
				newFailed, inSetup, rep.ByStatus, front.log)
		}
		if dead.count("OPTIONS") == 0 {
			t.Fatal("no probe reached the dead node's port: the proxy is not probing")
		}
		for _, i := range []int{0, 2} {
			if n := len(nodes[i].settled()); n <= before[i] {
				t.Fatalf("survivor %d took no calls (%d CDRs before, %d after)", i, before[i], n)
			}
		}

		// Back on its old data and port: the probe finds it, and it is
		// offered calls again.
		dead.close()
		back := startGatewayOn(t, bin, victim.dataDir, victim.sipPort, conf...)
		ready := time.Now()
		nodes[1] = back
		settledOnStart := 0 // the calls it had up at the kill
		for _, c := range back.settled() {
			if c["disconnect_reason"] == "gateway_restart" {
				settledOnStart++
			}
		}
		restarted := len(back.settled())
		loaded := make(chan loadtest.Report, 1)
		go func() { loaded <- load(90, 30) }()
		// The first call it is offered, to within this poll's 20 ms.
		var firstCall time.Duration
		for firstCall == 0 {
			var up struct{ Calls []any }
			back.api("GET", "/v1/calls", "", "", 200, &up)
			if len(up.Calls) > 0 {
				firstCall = time.Since(ready)
				break
			}
			select {
			case rep = <-loaded:
				t.Fatalf("the node that came back was offered none of 90 calls:\n%s\nproxy log:\n%s", rep, front.log)
			case <-time.After(20 * time.Millisecond):
			}
		}
		rep = <-loaded
		if rep.ByStatus["200"] != 90 {
			t.Fatalf("after the node came back:\n%s", rep)
		}
		took := len(back.settled()) - restarted
		t.Logf("the node back on %d was offered its first call %v after it was ready (probe interval %v) and took %d of the next 90; "+
			"the %d calls it had up at the kill were settled on its start (gateway_restart)",
			back.sipPort, firstCall.Round(time.Millisecond), frontPingInterval, took, settledOnStart)
		if took == 0 {
			t.Fatal("the node that came back took no call")
		}
		// Every node's money, once more, after everything.
		t.Logf("CDRs per node at the end: %v", cdrCounts(nodes))
	}()
}

// waitUDPBound returns once something listens on UDP port (a SIPp just
// started, which says nothing when it is ready): a fixed sleep was too
// short on a loaded machine, and the call found no carrier.
func waitUDPBound(t *testing.T, port int, out *logBuffer) {
	t.Helper()
	want := fmt.Sprintf(":%04X ", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile("/proc/net/udp")
		must(t, err)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 1 && strings.HasSuffix(f[1]+" ", want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on UDP %d after 10 s:\n%s", port, out)
		}
	}
}

// rawRequest sends one request to the proxy from a socket of its own and
// returns the first line of the first final answer.
func rawRequest(t *testing.T, port int, req string) string {
	t.Helper()
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	must(t, err)
	defer conn.Close()
	// The Via names the address the test says; the answer comes back to
	// the socket it was sent from (rport).
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		_ = conn.SetReadDeadline(deadline)
		n, err := conn.Read(buf)
		if err != nil {
			break
		}
		line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
		if !strings.HasPrefix(line, "SIP/2.0 1") {
			return line
		}
	}
	return "no answer"
}

// withSourceHeader writes uac_refused.xml expecting status with a Warning
// containing warning, its INVITE carrying X-AUTH-IP: vouched.
func withSourceHeader(t *testing.T, status int, warning, vouched string) string {
	t.Helper()
	b, err := os.ReadFile(expectStatus(t, status))
	must(t, err)
	b = bytes.Replace(b, []byte("      Max-Forwards: 70\n"), []byte("      Max-Forwards: 70\n      X-AUTH-IP: "+vouched+"\n"), 1)
	b = bytes.Replace(b, []byte(fmt.Sprintf(`<recv response="%d"/>`, status)), []byte(fmt.Sprintf(
		`<recv response="%d"><action><ereg regexp="%s" search_in="hdr" header="Warning:" check_it="true" assign_to="w"/></action></recv>`,
		status, warning)), 1)
	// SIPp refuses a variable assigned and never read.
	b = bytes.Replace(b, []byte("</scenario>"), []byte(`  <Reference variables="w"/>
</scenario>`), 1)
	if !bytes.Contains(b, []byte("X-AUTH-IP")) || !bytes.Contains(b, []byte("check_it")) {
		t.Fatal("uac_refused.xml changed shape: the header or the Warning check was not added")
	}
	p := filepath.Join(t.TempDir(), "uac_source_header.xml")
	must(t, os.WriteFile(p, b, 0o644))
	return p
}

// withViaCheck writes scenario name with its BYE required to carry the
// proxy's Via (it came through the proxy, not straight from a node).
func withViaCheck(t *testing.T, name string, frontPort int) string {
	t.Helper()
	b, err := os.ReadFile(scenario(t, name))
	must(t, err)
	b = bytes.Replace(b, []byte(`<recv request="BYE"/>`), []byte(fmt.Sprintf(
		`<recv request="BYE"><action><ereg regexp="Via: SIP/2.0/UDP 127.0.0.1:%d;" search_in="msg" check_it="true" assign_to="v"/></action></recv>`,
		frontPort)), 1)
	b = bytes.Replace(b, []byte("</scenario>"), []byte(`  <Reference variables="v"/>
</scenario>`), 1)
	if !bytes.Contains(b, []byte("check_it")) {
		t.Fatalf("%s changed shape: the Via check was not added", name)
	}
	p := filepath.Join(t.TempDir(), "via_"+name)
	must(t, os.WriteFile(p, b, 0o644))
	return p
}
