package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/loadtest"
)

// clusterPrefix is the etcd key prefix the test cluster's nodes share.
const clusterPrefix = "/creditgate-e2e/"

// startCluster starts n creditgate nodes (the built binary) joined to the
// etcd members eps, each with its own data directory and SIP port; conf is
// extra YAML for every node.
func startCluster(t *testing.T, bin string, eps []string, n int, conf string) []*gateway {
	t.Helper()
	nodes := make([]*gateway, n)
	for i := range nodes {
		extra := append(configFile(t, "cluster:\n  prefix: "+clusterPrefix+"\n"+conf),
			"--cluster-etcd", strings.Join(eps, ","), "--node-id", fmt.Sprintf("n%d", i+1))
		nodes[i] = startGateway(t, bin, t.TempDir(), extra...)
	}
	return nodes
}

// visibleWithin polls every node but the first until see(node) is true and
// returns how long after the change each took; the change was made through
// nodes[0] at changed.
func visibleWithin(t *testing.T, nodes []*gateway, changed time.Time, what string, see func(g *gateway) bool) []time.Duration {
	t.Helper()
	var lags []time.Duration
	for _, g := range nodes[1:] {
		for deadline := time.Now().Add(10 * time.Second); !see(g); time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s made on node 1 not seen on %s after 10 s", what, g.httpAddr)
			}
		}
		lags = append(lags, time.Since(changed))
	}
	t.Logf("%s made on node 1: seen on nodes 2 and 3 after %v", what, lags)
	return lags
}

// TestClusterLastCentAcrossNodes: three creditgate processes on a
// three-member etcd, an org funded through node 1 for exactly 40 one-second
// increments, and the load tool calling through all three nodes at once
// (90 attempts wanting far more than 40 increments). Exactly 40 increments
// are sold cluster-wide, the balance ends at 0.00 on every node, no call is
// billed past what it paid, and etcd's invariant (funded = unallocated +
// Σ slices + spent) holds at every sample taken while the calls run.
// Before the calls, the configuration made through node 1 (org, user,
// trunks, deck, funding) is measured arriving on nodes 2 and 3.
func TestClusterLastCentAcrossNodes(t *testing.T) {
	etcd := etcdtest.Start(t, 3)
	bin := buildBinary(t)
	nodes := startCluster(t, bin, etcd.Endpoints(), 3, "funding:\n  minimum: \"1.00\"\n")
	n1 := nodes[0]

	// The configuration, made through node 1 only; each change is looked
	// for on nodes 2 and 3 and its lag recorded.
	var lags []time.Duration
	at := time.Now()
	n1.api("POST", "/v1/orgs", "", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201, nil)
	lags = append(lags, visibleWithin(t, nodes, at, "org", func(g *gateway) bool { return g.status("GET", "/v1/orgs/acme") == 200 })...)
	at = time.Now()
	n1.api("PUT", "/v1/orgs/acme/users/alice", "", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200, nil)
	lags = append(lags, visibleWithin(t, nodes, at, "user", func(g *gateway) bool {
		var u struct{ Users []struct{ ID string } }
		g.api("GET", "/v1/orgs/acme/users", "", "", 200, &u)
		return len(u.Users) == 1
	})...)
	at = time.Now()
	n1.api("PUT", "/v1/trunks/pbx", "", `{"kind":"customer","org":"acme","addresses":["127.0.0.1"]}`, 200, nil)
	lags = append(lags, visibleWithin(t, nodes, at, "trunk", func(g *gateway) bool { return g.hasTrunk("pbx") })...)
	// Each node's load tool has its own carrier, reached by its own
	// dialled number's prefix.
	carriers := make([]int, len(nodes))
	for i := range nodes {
		carriers[i] = freePort(t)
		at = time.Now()
		id := fmt.Sprintf("carrier%d", i+1)
		n1.api("PUT", "/v1/trunks/"+id, "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":["3314227818%d"]}`, carriers[i], i+1), 200, nil)
		lags = append(lags, visibleWithin(t, nodes, at, "trunk "+id, func(g *gateway) bool { return g.hasTrunk(id) })...)
	}
	// 6.00 a minute in 1 s increments: 0.10 an increment.
	at = time.Now()
	n1.api("PUT", "/v1/rates", "text/csv", "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,6.00,1,1\n", 200, nil)
	lags = append(lags, visibleWithin(t, nodes, at, "deck", func(g *gateway) bool {
		var r struct {
			RatePerMinute string `json:"rate_per_minute"`
		}
		return g.status("GET", "/v1/rates?number=%2B33142278181") == 200 && g.get("/v1/rates?number=%2B33142278181", &r) && r.RatePerMinute != "" && decimal.RequireFromString(r.RatePerMinute).Equal(decimal.NewFromInt(6))
	})...)
	at = time.Now()
	n1.api("POST", "/v1/orgs/acme/credits", "", `{"amount":"4.00","idempotency_key":"k40"}`, 201, nil)
	lags = append(lags, visibleWithin(t, nodes, at, "funding", func(g *gateway) bool {
		var o struct{ Balance string }
		g.api("GET", "/v1/orgs/acme", "", "", 200, &o)
		return o.Balance == "4.00"
	})...)
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	t.Logf("config made on node 1, seen on nodes 2 and 3: %d observations, median %v, max %v",
		len(lags), lags[len(lags)/2].Round(time.Millisecond), lags[len(lags)-1].Round(time.Millisecond))

	// The invariant, sampled while the calls run.
	cli := etcd.Client()
	sctx, stopSampling := context.WithCancel(context.Background())
	var samples atomic.Int64
	var sampleErr error
	var sampling sync.WaitGroup
	sampling.Go(func() {
		for sctx.Err() == nil {
			if _, err := cluster.Check(sctx, cli, clusterPrefix, 5*time.Second); err != nil && sctx.Err() == nil {
				sampleErr = err
				return
			}
			samples.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	reports, wait := callThroughEveryNode(ctx, t, nodes, carriers, 30, 4*time.Second)
	wait()
	stopSampling()
	sampling.Wait()
	if sampleErr != nil {
		t.Fatalf("cluster invariant broken while calls ran: %v", sampleErr)
	}

	// The books, per node and in all.
	sold, billed := decimal.Zero, 0
	answered := 0
	for i, g := range nodes {
		answered += reports[i].Answered
		t.Logf("node %d: %s", i+1, strings.ReplaceAll(reports[i].String(), "\n", "; "))
		for _, c := range g.allCDRs() {
			charge := decimal.RequireFromString(c["charge"])
			b, _ := strconv.Atoi(c["billed_s"])
			if !charge.Equal(decimal.New(int64(b), -1)) {
				t.Errorf("node %d CDR %v: charge is not billed_s × 0.10", i+1, c)
			}
			if d, _ := strconv.Atoi(c["duration_s"]); d > b {
				t.Errorf("node %d CDR %v: ran %d s, paid %d s", i+1, c, d, b)
			}
			sold, billed = sold.Add(charge), billed+b
		}
	}
	if !sold.Equal(decimal.RequireFromString("4.00")) || billed != 40 {
		t.Fatalf("sold %s for %d increments cluster-wide; want exactly 4.00 for 40", sold, billed)
	}
	if answered < 2 {
		t.Fatalf("only %d calls answered", answered)
	}
	for i, g := range nodes {
		var o struct{ Balance, Held string }
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			g.api("GET", "/v1/orgs/acme", "", "", 200, &o)
			if o.Balance == "0.00" && o.Held == "0.00" || time.Now().After(deadline) {
				break
			}
		}
		if o.Balance != "0.00" || o.Held != "0.00" {
			t.Fatalf("node %d shows balance %s held %s after the money ran out; want 0.00", i+1, o.Balance, o.Held)
		}
	}
	st, err := cluster.Check(context.Background(), cli, clusterPrefix, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d invariant samples during the calls; etcd at the end: %+v", samples.Load(), st)
}

// status is the HTTP status of an authorized request.
func (g *gateway) status(method, path string) int {
	g.t.Helper()
	code, _ := g.raw(method, path)
	return code
}

// get decodes a 200 answer into out; false on any other status.
func (g *gateway) get(path string, out any) bool {
	g.t.Helper()
	if g.status("GET", path) != 200 {
		return false
	}
	g.api("GET", path, "", "", 200, out)
	return true
}

func (g *gateway) hasTrunk(id string) bool {
	var tr struct{ Trunks []struct{ ID string } }
	g.api("GET", "/v1/trunks", "", "", 200, &tr)
	for _, x := range tr.Trunks {
		if x.ID == id {
			return true
		}
	}
	return false
}

// allCDRs is every CDR of acme this node wrote (its own part: without
// ?scope=local a node's report is the cluster's).
func (g *gateway) allCDRs() []cdr {
	var usage struct{ CDRs []cdr }
	g.api("GET", "/v1/orgs/acme/usage?scope=local", "", "", 200, &usage)
	return usage.CDRs
}

// raw is an authorized request's status and body, whatever the status.
func (g *gateway) raw(method, path string) (int, []byte) {
	g.t.Helper()
	req, _ := http.NewRequest(method, "http://"+g.httpAddr+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// TestClusterPausedNodeIsFenced: a node SIGSTOPped for three lease TTLs
// with calls up, then continued. While it is frozen its lease expires and
// the other node reaps its calls: both legs of each get a BYE from the
// survivor's address, the survivor writes each CDR (node_failure), billed
// no further than the paused node could have held (its local deadline,
// lease_ttl − lease_margin after the pause began, plus the increment it
// held then). Woken, the node's writes are fenced: it writes no CDR of a
// reaped call, stays up out of service (/readyz 503, no call connected,
// no funding taken) while the other node goes on; restarted on its data
// it serves again and settles nothing twice. The money of record is Σ of
// every CDR's charge to the cent.
func TestClusterPausedNodeIsFenced(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	bin := buildBinary(t)
	nodes := startCluster(t, bin, etcd.Endpoints(), 2, leaseConf(takeoverTTL, takeoverMargin, takeoverKeepalive))
	n1, n2 := nodes[0], nodes[1]
	carriers := []int{freePort(t), freePort(t)}
	const incr = 1
	setupClusterAcme(t, nodes, orgSetup{PBX: []string{"127.0.0.1"}, Carriers: carriers, PerMinute: "6.00", Increment: incr, Funding: "50.00"})
	addr := func(g *gateway) string { return fmt.Sprintf("127.0.0.1:%d", g.sipPort) }

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	legs := &loadtest.Legs{}
	var bg sync.WaitGroup // waited for even if the test stops early: they report to t
	t.Cleanup(bg.Wait)
	call := func(g *gateway, calls int, hold time.Duration, legs *loadtest.Legs) <-chan loadtest.Report {
		done := make(chan loadtest.Report, 1)
		bg.Go(func() {
			rep, err := loadtest.Run(ctx, loadtest.Config{Target: addr(g), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[1]),
				Rate: 10, Calls: calls, Hold: hold, Dialled: carrierNumber(1), From: []string{"+12125550100"},
				SetupTimeout: 5 * time.Second, HangupTimeout: 5 * time.Second, Legs: legs}, nil)
			if err != nil {
				t.Error(err)
			}
			done <- rep
		})
		return done
	}
	// One more call with both legs over TCP: the survivor's BYEs need new
	// connections from its own address.
	tcpCarrier := freePort(t)
	const tcpNumber = "+33142278189"
	n1.api("PUT", "/v1/trunks/carrier-tcp", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d;transport=tcp","prefixes":[%q]}`, tcpCarrier, tcpNumber[1:]), 200, nil)
	visibleWithin(t, nodes, time.Now(), "tcp carrier", func(g *gateway) bool { return g.hasTrunk("carrier-tcp") })
	tcpDone := make(chan loadtest.Report, 1)
	bg.Go(func() {
		rep, err := loadtest.Run(ctx, loadtest.Config{Target: addr(n2), Transport: "tcp", Carrier: fmt.Sprintf("127.0.0.1:%d", tcpCarrier),
			Rate: 10, Calls: 1, Hold: time.Minute, Dialled: tcpNumber, From: []string{"+12125550100"},
			SetupTimeout: 5 * time.Second, HangupTimeout: 5 * time.Second, Legs: legs}, nil)
		if err != nil {
			t.Error(err)
		}
		tcpDone <- rep
	})
	const udpCalls = 3
	const calls = udpCalls + 1
	long := call(n2, udpCalls, time.Minute, legs)
	up := waitCallsUp(t, nodes, calls, 1)
	time.Sleep(time.Second) // a paid increment or two on the clock

	paused := time.Now()
	n2.pause()
	time.Sleep(3 * takeoverTTL)
	n2.resume()
	woke := time.Now()
	for _, done := range []<-chan loadtest.Report{long, tcpDone} {
		select {
		case rep := <-done:
			t.Logf("node 2 paused %v; its callers: %s", woke.Sub(paused).Round(time.Millisecond), strings.ReplaceAll(rep.String(), "\n", "; "))
		case <-time.After(20 * time.Second):
			t.Fatalf("node 2's calls were not ended\n%s", n2.log)
		}
	}

	callerLegs := legsByCallID(legs.Side(loadtest.CallerSide))
	carrierLegs := legsByCallID(legs.Side(loadtest.CarrierSide))
	bound := paused.Add(takeoverTTL + incr*time.Second + byeSlack)
	reaped := map[string]upCall{}
	for _, c := range up {
		reaped[c.ID] = c
		transport := "udp"
		if c.To == tcpNumber {
			transport = "tcp"
		}
		for _, l := range []loadtest.Leg{callerLegs[c.InboundCall], carrierLegs[c.ID]} {
			// Over UDP the BYE leaves from the survivor's SIP socket. Over
			// TCP it comes on a new connection from an ephemeral port
			// (its Via names that port too), which on loopback does not
			// say which process opened it: one that arrived while node 2
			// was frozen was sent by another.
			fromSurvivor := l.ByeFrom == addr(n1)
			if transport == "tcp" {
				fromSurvivor = l.Bye.Before(woke) && l.ByeFrom != addr(n2)
			}
			switch {
			case l.Bye.IsZero():
				t.Errorf("call %s (%s): its %s leg got no BYE", c.ID, transport, l.Side)
			case !fromSurvivor || !l.ByeMatched:
				t.Errorf("call %s (%s): its %s leg's BYE came from %s via %v (matched %v), want the survivor %s", c.ID, transport, l.Side, l.ByeFrom, l.ByeVia, l.ByeMatched, addr(n1))
			case l.Bye.After(bound):
				t.Errorf("call %s: its %s leg's BYE came %v after the pause, past TTL + increment + %v", c.ID, l.Side, l.Bye.Sub(paused).Round(time.Millisecond), byeSlack)
			default:
				t.Logf("call %s (%s): %s leg's BYE from the survivor (%s) %v after the pause began", c.ID, transport, l.Side, l.ByeFrom, l.Bye.Sub(paused).Round(time.Millisecond))
			}
		}
	}

	// The survivor's CDRs, billed no later than the paused node could hold.
	survivorCDRs := map[string]cdr{}
	for _, c := range n1.cdrs(calls) {
		survivorCDRs[c["call_id"]] = c
	}
	for id, c := range reaped {
		cd, ok := survivorCDRs[id]
		if !ok || cd["disconnect_reason"] != "node_failure" {
			t.Errorf("call %s: survivor's CDR %v, want node_failure", id, cd)
			continue
		}
		billed, _ := strconv.Atoi(cd["billed_s"])
		limit := int((paused.Sub(c.Answer) + takeoverTTL - takeoverMargin).Seconds()) + incr
		t.Logf("call %s: answered %v before the pause, billed %d s (bound %d s)", id, paused.Sub(c.Answer).Round(time.Millisecond), billed, limit)
		if billed > limit {
			t.Errorf("call %s billed %d s, past the paused node's local deadline (bound %d s): it held after it", id, billed, limit)
		}
	}

	// Woken: nothing written for the reaped calls, and out of service.
	// The binary stays up, fenced, until it is restarted: /readyz 503,
	// no call connected, no change taken; the other node goes on.
	time.Sleep(2 * time.Second) // anything it was going to write, written
	code, body := 0, ""
	if res, err := http.Get("http://" + n2.httpAddr + "/readyz"); err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		code, body = res.StatusCode, strings.TrimSpace(string(b))
	}
	t.Logf("node 2 after waking: /readyz %d %s", code, body)
	if code != 503 {
		t.Fatalf("node 2's /readyz answers %d after its lease expired under it; want 503 (fenced)\n%s", code, n2.log)
	}
	for _, c := range n2.allCDRs() {
		if _, ok := reaped[c["call_id"]]; ok {
			t.Errorf("woken node 2 wrote a CDR for reaped call %s: %v", c["call_id"], c)
		}
	}
	if rep := <-call(n2, 1, time.Second, nil); rep.Answered != 0 || rep.CarrierInvites != 0 {
		t.Errorf("fenced node 2 connected a call: %s", rep)
	}
	if code, body := n2.raw("POST", "/v1/orgs/acme/credits"); code < 400 {
		t.Errorf("fenced node 2 took a funding: %d %s", code, body)
	}
	if rep := <-call(n1, 1, time.Second, nil); rep.ByStatus["200"] != 1 {
		t.Errorf("node 1 after node 2's pause: %s\n%s", rep, n1.log)
	}

	// Restarted on its data: it serves and settles nothing twice.
	back := n2.restart()
	nodes[1] = back
	for _, c := range back.allCDRs() {
		if _, ok := reaped[c["call_id"]]; ok {
			t.Errorf("restarted node 2 settled reaped call %s again: %v", c["call_id"], c)
		}
	}
	if rep := <-call(back, 1, time.Second, nil); rep.ByStatus["200"] != 1 {
		t.Errorf("restarted node 2 does not serve: %s\n%s", rep, back.log)
	}
	cli := etcd.Client()
	defer cli.Close()
	// The reaped calls, node 1's call and the restarted node's.
	acme, cdrs := settledMoney(t, cli, nodes, calls+2)
	if len(cdrs) != calls+2 {
		t.Errorf("%d CDRs across the nodes, want %d", len(cdrs), calls+2)
	}
	t.Logf("etcd: funded %s, spent %s = Σ %d CDR charges, unallocated %s, in slices %s", acme.Funded, acme.Spent, len(cdrs), acme.Unallocated, acme.Outstanding)
}

// callThroughEveryNode starts one load tool per node, calls of hold at 10
// a second, each node's calls to its own number and carrier (carriers[i],
// prefix 3314227818<i+1>). The reports are filled once wait returns.
func callThroughEveryNode(ctx context.Context, t *testing.T, nodes []*gateway, carriers []int, calls int, hold time.Duration) (reports []loadtest.Report, wait func()) {
	reports = make([]loadtest.Report, len(nodes))
	var wg sync.WaitGroup
	for i, g := range nodes {
		wg.Go(func() {
			rep, err := loadtest.Run(ctx, loadtest.Config{
				Target: fmt.Sprintf("127.0.0.1:%d", g.sipPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[i]),
				Rate: 10, Calls: calls, Hold: hold, Dialled: fmt.Sprintf("+3314227818%d", i+1),
				From: []string{"+12125550100"}, SetupTimeout: 10 * time.Second}, nil)
			if err != nil {
				t.Errorf("load tool on node %d: %v", i+1, err)
			}
			reports[i] = rep
		})
	}
	return reports, wg.Wait
}
