package api

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// staticPeers is a fixed peer list, as the cluster registry would give it.
type staticPeers []Peer

func (p staticPeers) Peers(context.Context) ([]Peer, error) { return p, nil }

// stalledPeer accepts connections and never answers: a SIGSTOPped node as
// the network sees it. Closed when the test ends.
func stalledPeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// deadPeer is an address nothing listens on.
func deadPeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// endedCall puts one ended, answered call of acme starting at start into
// h's ledger.
func endedCall(t *testing.T, h *harness, id string, start time.Time) {
	t.Helper()
	c := ledger.Call{ID: id, Details: ledger.Details{Org: "acme", User: "alice", From: "12125550100", To: "442079460018",
		Destination: "United Kingdom", Country: "GB", Type: "geographic", Direction: "outbound",
		RatePerMinute: decimal.RequireFromString("0.60"), Currency: "USD"}, FirstIncrement: 60, NextIncrement: 60, Spill: true}
	if _, err := h.ledger.OpenCall(c, start); err != nil {
		t.Fatal(err)
	}
	if err := h.ledger.Answer(id, start.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ledger.CloseCall(id, ledger.CallEnd{At: start.Add(31 * time.Second), Reason: ledger.ReasonCallerHangup, SIPStatus: 200}); err != nil {
		t.Fatal(err)
	}
}

type unavailableList []Unavailable

func (u unavailableList) nodes() string {
	var s []string
	for _, x := range u {
		s = append(s, x.Node)
	}
	return strings.Join(s, ",")
}

// TestClusterReadsThroughPeers: three real API servers, each with its own
// ledger and gateway, node a told b and c are its peers, plus a peer that
// never answers and one nothing listens on. a's calls list, end and usage
// answer 200 (or the right 404) within the peer timeout, name exactly the
// peers that could not answer, and merge b's and c's CDRs with a's in
// start order; the local-only form never fans out; an org key that only a
// knows gets its peers' 401 as unavailable, not their data. A node whose
// lease is gone (Down) is never asked: the calls list and an end leave it
// out (a survivor reaped its calls), the usage names it as unavailable.
func TestClusterReadsThroughPeers(t *testing.T) {
	a, b, c := setup(t), setup(t), setup(t)
	const timeout = 500 * time.Millisecond
	var goneAsked atomic.Int64
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		goneAsked.Add(1)
		http.Error(w, "a Down node is never asked", 500)
	}))
	defer gone.Close()
	a.srv.SetPeers("a", staticPeers{{Node: "b", URL: b.base}, {Node: "c", URL: c.base},
		{Node: "stalled", URL: stalledPeer(t)}, {Node: "dead", URL: deadPeer(t)}, {Node: "gone", URL: gone.URL, Down: true}}, timeout)
	b.srv.SetPeers("b", staticPeers{{Node: "a", URL: a.base}}, timeout)

	var calls struct {
		Calls       []nodeCall
		Unavailable unavailableList
	}
	asked := time.Now()
	_ = json.Unmarshal(a.mustDo("GET", "/v1/calls", "", 200).body, &calls)
	t.Logf("calls list with a stalled and a dead peer answered in %v (peer timeout %v)", time.Since(asked).Round(time.Millisecond), timeout)
	if calls.Unavailable.nodes() != "stalled,dead" || len(calls.Calls) != 0 {
		t.Fatalf("a's calls list: %+v", calls)
	}
	for _, u := range calls.Unavailable {
		if u.Error == "" {
			t.Fatalf("unavailable without a reason: %+v", calls.Unavailable)
		}
	}
	// b in cluster mode, asked for its own part only: no fan-out back to a.
	var own map[string]json.RawMessage
	_ = json.Unmarshal(b.mustDo("GET", "/v1/calls?scope=local", "", 200).body, &own)
	if _, ok := own["unavailable"]; ok || string(own["calls"]) != "[]" {
		t.Fatalf("b's local list: %v", own)
	}
	if r := a.do("GET", "/v1/calls?scope=everywhere", ""); r.status != 422 {
		t.Fatalf("scope=everywhere: %d %s", r.status, r.body)
	}

	// Ending a call no node has: 404, naming who could not say.
	r := a.do("DELETE", "/v1/calls/no-such-call", "")
	if r.status != 404 || r.errorCode() != "unknown_call" || !strings.Contains(string(r.body), "stalled") ||
		!strings.Contains(string(r.body), "dead") || strings.Contains(string(r.body), "b:") {
		t.Fatalf("ending an unknown call: %d %s", r.status, r.body)
	}
	// Nothing was journaled anywhere.
	for name, h := range map[string]*harness{"a": a, "b": b, "c": c} {
		var audit struct{ Entries []ledger.AuditEntry }
		_ = json.Unmarshal(h.mustDo("GET", "/v1/audit?kind=call", "", 200).body, &audit)
		if len(audit.Entries) != 0 {
			t.Fatalf("%s journaled %v", name, audit.Entries)
		}
	}

	// Usage: each node's CDRs interleaved in time.
	base := time.Now().UTC().Truncate(time.Second).Add(-time.Hour)
	for i, h := range []*harness{a, b, c, a, c, b} {
		h.mustDo("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200)
		endedCall(t, h, string(rune('p'+i)), base.Add(time.Duration(i)*time.Minute))
	}
	var usage struct {
		CDRs        []map[string]any
		Unavailable unavailableList
	}
	if err := json.Unmarshal(a.mustDo("GET", "/v1/orgs/acme/usage", "", 200).body, &usage); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, row := range usage.CDRs {
		ids = append(ids, row["call_id"].(string))
	}
	if strings.Join(ids, "") != "pqrstu" || usage.Unavailable.nodes() != "stalled,dead,gone" ||
		!strings.Contains(usage.Unavailable[2].Error, "not running") {
		t.Fatalf("a's merged usage: calls %v, unavailable %+v", ids, usage.Unavailable)
	}
	if usage.CDRs[1]["charge"] != "0.60" || usage.CDRs[1]["from"] != "+12125550100" || usage.CDRs[1]["billed_s"] != float64(60) {
		t.Fatalf("b's CDR through a: %v", usage.CDRs[1])
	}
	r = a.do("GET", "/v1/orgs/acme/usage?format=csv&from="+base.Add(90*time.Second).Format(time.RFC3339), "")
	rows, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(string(r.body), "\ufeff"))).ReadAll()
	if r.status != 200 || err != nil || len(rows) != 5 || rows[1][0] != "r" || rows[4][0] != "u" {
		t.Fatalf("a's merged CSV from the third call: %d %v %q", r.status, err, rows)
	}
	if h := r.header.Get(UnavailableHeader); !strings.Contains(h, "stalled: ") || !strings.Contains(h, "dead: ") || !strings.Contains(h, "gone: ") {
		t.Fatalf("%s: %q", UnavailableHeader, h)
	}
	var bOwn struct{ CDRs []map[string]any }
	_ = json.Unmarshal(b.mustDo("GET", "/v1/orgs/acme/usage?scope=local", "", 200).body, &bOwn)
	if len(bOwn.CDRs) != 2 {
		t.Fatalf("b's own usage: %v", bOwn.CDRs)
	}

	// A key only a knows: its peers answer 401, reported, never their data.
	var key struct{ Secret string }
	_ = json.Unmarshal(a.mustDo("POST", "/v1/keys", `{"name":"ro","role":"org_read","org":"acme"}`, 201).body, &key)
	r = a.do("GET", "/v1/orgs/acme/usage", "", key.Secret)
	usage.CDRs, usage.Unavailable = nil, nil
	_ = json.Unmarshal(r.body, &usage)
	if r.status != 200 || len(usage.CDRs) != 2 || !strings.Contains(usage.Unavailable[0].Error, "401") {
		t.Fatalf("org key through a: %d %s", r.status, r.body)
	}
	if n := goneAsked.Load(); n != 0 {
		t.Fatalf("the Down node was asked %d times", n)
	}
}

// stallingUsagePeer answers a usage request with 200 and the opening of
// its CDR list, then goes silent: a node paused mid-report.
func stallingUsagePeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 4096)
				_, _ = c.Read(buf) // the request (small: one read)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"+
					"9\r\n{\"cdrs\":[\r\n")
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "http://" + ln.Addr().String()
}

// TestClusterUsagePeerStallsMidReport: a peer that starts its report and
// stalls cuts the merged report short after the peer timeout: the client
// gets a truncated body, never one that looks complete.
func TestClusterUsagePeerStallsMidReport(t *testing.T) {
	a := setup(t)
	const timeout = 300 * time.Millisecond
	a.srv.SetPeers("a", staticPeers{{Node: "slow", URL: stallingUsagePeer(t)}}, timeout)
	a.mustDo("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200)
	endedCall(t, a, "p", time.Now().UTC().Add(-time.Hour))
	req, _ := http.NewRequest("GET", a.base+"/v1/orgs/acme/usage?format=csv", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	asked := time.Now()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	t.Logf("report cut after %v (peer timeout %v): %d bytes, read error %v", time.Since(asked).Round(time.Millisecond), timeout, len(body), err)
	if res.StatusCode != 200 || err == nil {
		t.Fatalf("status %d, body read to its end (%v): %q — a stalled peer must cut the report short", res.StatusCode, err, body)
	}
	if res.Header.Get(UnavailableHeader) != "" {
		t.Fatalf("the peer answered in time, yet it is named unavailable: %q", res.Header.Get(UnavailableHeader))
	}
}
