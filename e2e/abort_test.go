package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creditgate/creditgate/loadtest"
	"github.com/xuri/excelize/v2"
)

// TestSIPpAbortedDownloadsLeaveCallsUp: while a SIPp call is up, clients
// abort every streamed download at several points — after the headers,
// mid-body, just before the end — and reset the connection. The process
// stays up, the call is metered and ends exactly as it would have (credit
// for five 1 s increments: billed 5 s, 50.00, BYE to both legs), and the
// next download of each is complete and the same as before. Before the
// fix, the first abort of a large export ended the process (issue 13).
func TestSIPpAbortedDownloadsLeaveCallsUp(t *testing.T) {
	requireSIPp(t)
	bin := buildBinary(t)
	g := startGateway(t, bin, t.TempDir())
	uacPort, uasPort, loadCarrier := freePort(t), freePort(t), freePort(t)

	// acme gets 1,500 calls' worth of CDRs and transactions from the load
	// tool, so each export is hundreds of KB: more than the socket buffers
	// hold, so an abort lands while the gateway is still writing.
	g.setupAcme("127.0.0.1", "0.60")
	g.api("PUT", "/v1/rates", "text/csv", "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,0.60,1,1\n44,GB,United Kingdom,geographic,600.00,1,1\n", 200, nil)
	g.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, loadCarrier), 200, nil)
	g.api("PUT", "/v1/trunks/uk", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":["44"]}`, uasPort), 200, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := loadtest.Run(ctx, loadtest.Config{Target: fmt.Sprintf("127.0.0.1:%d", g.sipPort),
		Carrier: fmt.Sprintf("127.0.0.1:%d", loadCarrier), Rate: 500, Calls: 1500, Hold: 10 * time.Millisecond,
		Dialled: "+33142278186", From: []string{"+12125550100"}, SetupTimeout: 10 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Answered != 1500 {
		t.Fatalf("load report:\n%s", rep)
	}
	g.cdrs(1500)

	// The long call: org "long" can pay five 1 s increments at 10.00 each.
	g.api("POST", "/v1/orgs", "", `{"id":"long","name":"Long","country":"US","region":"us"}`, 201, nil)
	g.api("POST", "/v1/orgs/long/credits", "", `{"amount":"50.00","idempotency_key":"long-1"}`, 201, nil)
	g.api("PUT", "/v1/orgs/long/users/bob", "", `{"numbers":["+12125550199"],"licenses":["communications_credits"]}`, 200, nil)
	g.api("PUT", "/v1/trunks/pbx-long", "", fmt.Sprintf(`{"kind":"customer","org":"long","addresses":["127.0.0.1:%d"]}`, uacPort), 200, nil)

	httpAddr := g.httpAddr
	exports := []string{
		"/v1/orgs/acme/usage?format=csv",
		"/v1/orgs/acme/usage?format=json",
		"/v1/orgs/acme/usage?format=xlsx",
		"/v1/orgs/acme/transactions?limit=10000",
	}
	before := map[string][]byte{}
	wire := map[string]int{}
	for _, p := range exports {
		before[p] = download(t, httpAddr, p)
		wire[p] = rawLength(t, httpAddr, p)
		t.Logf("%s: %d bytes of body, %d on the wire", p, len(before[p]), wire[p])
	}

	uas, uasOut := startSIPp(ctx, t, "uas_answer.xml", uasPort)
	time.Sleep(200 * time.Millisecond)
	uac, uacOut := startSIPp(ctx, t, "uac_until_bye.xml", uacPort,
		"-s", "+442079460018", "-key", "caller", "+12125550199", fmt.Sprintf("127.0.0.1:%d", g.sipPort))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var up struct{ Calls []struct{ State string } }
		g.api("GET", "/v1/calls", "", "", 200, &up)
		if len(up.Calls) == 1 && up.Calls[0].State == "answered" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the long call was not answered:\n%s\n%s", uacOut, g.log)
		}
	}

	// Nothing the call stands on can be deleted while it is up: its
	// user, the trunk it came in on, the carrier it went out to.
	for _, path := range []string{"/v1/orgs/long/users/bob", "/v1/trunks/pbx-long", "/v1/trunks/uk"} {
		var e struct{ Error struct{ Code string } }
		g.api("DELETE", path, "", "", 409, &e)
		if e.Error.Code != "in_use" {
			t.Fatalf("DELETE %s with the call up: %+v, want in_use", path, e)
		}
	}

	// Abort each export at each point while the call is up.
	aborts := 0
	for _, p := range exports {
		for _, at := range []struct {
			name  string
			bytes int // read this many bytes of the response, then reset
		}{{"after the headers", -1}, {"mid-body", wire[p] / 2}, {"just before the end", wire[p] - 16}} {
			abortAt(t, httpAddr, p, at.bytes)
			aborts++
			if res, err := http.Get("http://" + httpAddr + "/healthz"); err != nil {
				t.Fatalf("after aborting %s %s the gateway is gone: %v\n%s", p, at.name, err, g.log)
			} else {
				res.Body.Close()
			}
		}
	}

	for name, p := range map[string]struct {
		wait func() error
		out  *logBuffer
	}{"caller": {uac.Wait, uacOut}, "carrier": {uas.Wait, uasOut}} {
		if err := p.wait(); err != nil {
			t.Fatalf("SIPp %s side did not get its BYE: %v\n%s\ngateway log:\n%s", name, err, p.out, g.log)
		}
	}
	var usage struct{ CDRs []cdr }
	g.api("GET", "/v1/orgs/long/usage", "", "", 200, &usage)
	var org struct{ Balance, Held string }
	g.api("GET", "/v1/orgs/long", "", "", 200, &org)
	if len(usage.CDRs) != 1 {
		t.Fatalf("long's CDRs: %v", usage.CDRs)
	}
	c := usage.CDRs[0]
	if c["billed_s"] != "5" || c["charge"] != "50.00" || c["disconnect_reason"] != "credit_exhausted" || org.Balance != "0.00" || org.Held != "0.00" {
		t.Fatalf("the long call's CDR %v, balance %s held %s: want billed 5 s, 50.00, credit_exhausted, 0.00 and 0.00", c, org.Balance, org.Held)
	}
	t.Logf("%d aborted downloads during the call; it billed %s s for %s and ended on %s", aborts, c["billed_s"], c["charge"], c["disconnect_reason"])

	for _, p := range exports {
		after := download(t, httpAddr, p)
		if strings.Contains(p, "xlsx") {
			if !reflect.DeepEqual(xlsxRows(t, before[p]), xlsxRows(t, after)) {
				t.Fatalf("%s after the aborts differs from before", p)
			}
			continue
		}
		if !bytes.Equal(before[p], after) {
			t.Fatalf("%s after the aborts differs from before (%d vs %d bytes)", p, len(after), len(before[p]))
		}
	}
	if strings.Contains(g.log.String(), "panic") {
		t.Fatalf("the gateway logged a panic:\n%s", g.log)
	}
}

// download is a complete GET of an admin API path.
func download(t *testing.T, addr, path string) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("GET %s: %d, %v after %d bytes", path, res.StatusCode, err, len(b))
	}
	return b
}

// dialSlow connects with a 4 KiB receive buffer, so the gateway cannot put
// a large response in flight at once and is still writing when we go.
func dialSlow(t *testing.T, addr, path string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: creditgate\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n", path, token); err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// rawLength is how many bytes the whole response takes on the wire.
func rawLength(t *testing.T, addr, path string) int {
	t.Helper()
	c := dialSlow(t, addr, path)
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// abortAt reads n bytes of the response to path (n < 0: up to the end of
// the headers) and then resets the connection.
func abortAt(t *testing.T, addr, path string, n int) {
	t.Helper()
	c := dialSlow(t, addr, path)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReaderSize(c, 1024)
	if n < 0 {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: %v before the end of the headers", path, err)
			}
			if line == "\r\n" {
				break
			}
		}
	} else if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		t.Fatalf("%s: %v after reading part of %d bytes", path, err, n)
	}
	_ = c.SetLinger(0) // close with RST, like a killed browser tab
	_ = c.Close()
}

func xlsxRows(t *testing.T, b []byte) [][]string {
	t.Helper()
	f, err := excelize.OpenReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := f.GetRows("PSTN usage")
	if err != nil {
		t.Fatal(err)
	}
	return rows
}
