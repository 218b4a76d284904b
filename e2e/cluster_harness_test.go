package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/loadtest"
)

// The failure tests' shared pieces (takeover_test.go, etcdleader_test.go,
// chaos_test.go): what they do to a node's process, how they set up the
// one org every node serves, and how they read the money and the CDRs
// back from every node and etcd.

// The failure tests' lease: a node's lease expires 2 s after its last
// keepalive (one every 500 ms), its local deadline 500 ms before that.
const (
	takeoverTTL       = 2 * time.Second
	takeoverMargin    = 500 * time.Millisecond
	takeoverKeepalive = 500 * time.Millisecond
	// byeSlack is the allowance past TTL + one increment for a
	// survivor's BYE: noticing the expiry, claiming, sending.
	byeSlack = 500 * time.Millisecond
	// meterSlack is how far from its paid time a call a live node meters
	// may end.
	meterSlack = 50 * time.Millisecond
)

// leaseConf is the cluster section's lease settings, to append to
// startCluster's conf: a short TTL keeps a test of a node's death short.
func leaseConf(ttl, margin, keepalive time.Duration) string {
	return fmt.Sprintf("  lease_ttl: %s\n  lease_margin: %s\n  keepalive_every: %s\n", ttl, margin, keepalive)
}

// frontConf trusts the front proxy on frontPort (sip section).
func frontConf(frontPort int) string {
	return fmt.Sprintf("sip:\n  trusted_proxies: [\"127.0.0.1:%d\"]\n", frontPort)
}

// orgSetup is the one org, acme, every node of a failure test serves.
type orgSetup struct {
	PBX []string // the customer trunk's addresses (IP, or IP:port)
	// Carriers are the carriers' ports: one is the default route; with
	// several, carrier i takes the numbers of prefix 3314227818<i+1>
	// (carrierNumber(i)), so each load tool can answer its own calls.
	Carriers  []int
	PerMinute string // France's rate
	Increment int    // first and next increment, seconds
	Funding   string // acme's one funding
}

// setupClusterAcme makes acme (user alice, +12125550100, credits), its
// PBX trunk, the carrier and a one-row deck through nodes[0], funds it,
// and returns once every node shows the funding and the carrier.
func setupClusterAcme(t *testing.T, nodes []*gateway, o orgSetup) {
	t.Helper()
	n1 := nodes[0]
	addrs := make([]string, len(o.PBX))
	for i, a := range o.PBX {
		addrs[i] = strconv.Quote(a)
	}
	n1.api("POST", "/v1/orgs", "", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201, nil)
	n1.api("PUT", "/v1/orgs/acme/users/alice", "", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200, nil)
	n1.api("PUT", "/v1/trunks/pbx", "", fmt.Sprintf(`{"kind":"customer","org":"acme","addresses":[%s]}`, strings.Join(addrs, ",")), 200, nil)
	for i, port := range o.Carriers {
		prefix := ""
		if len(o.Carriers) > 1 {
			prefix = carrierNumber(i)[1:]
		}
		n1.api("PUT", fmt.Sprintf("/v1/trunks/carrier%d", i+1), "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[%q]}`, port, prefix), 200, nil)
	}
	lastCarrier := fmt.Sprintf("carrier%d", len(o.Carriers))
	n1.api("PUT", "/v1/rates", "text/csv", fmt.Sprintf("prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,%s,%d,%d\n", o.PerMinute, o.Increment, o.Increment), 200, nil)
	n1.api("POST", "/v1/orgs/acme/credits", "", fmt.Sprintf(`{"amount":%q,"idempotency_key":"fund-1"}`, o.Funding), 201, nil)
	want := decimal.RequireFromString(o.Funding)
	visibleWithin(t, nodes, time.Now(), "funding and carrier", func(g *gateway) bool {
		var org struct{ Balance string }
		if !g.get("/v1/orgs/acme", &org) {
			return false
		}
		b, err := decimal.NewFromString(org.Balance)
		return err == nil && b.Equal(want) && g.hasTrunk(lastCarrier)
	})
}

// carrierNumber is the number dialled to reach carrier i when there are
// several (orgSetup.Carriers).
func carrierNumber(i int) string { return fmt.Sprintf("+3314227818%d", i+1) }

// kill9 ends the node's process with SIGKILL, by its PID, and reaps it.
func (g *gateway) kill9() time.Time {
	g.t.Helper()
	must(g.t, g.cmd.Process.Kill())
	_ = g.cmd.Wait()
	return time.Now()
}

// pause and resume send SIGSTOP and SIGCONT to the node's process.
func (g *gateway) pause()  { must(g.t, g.cmd.Process.Signal(syscall.SIGSTOP)) }
func (g *gateway) resume() { must(g.t, g.cmd.Process.Signal(syscall.SIGCONT)) }

// restart starts the node again with the very arguments it ran with: its
// data directory, SIP and HTTP ports and node id. The old process must
// have exited (kill9) or is stopped first, gently then by SIGKILL.
func (g *gateway) restart() *gateway {
	g.t.Helper()
	g.stop()
	n := &gateway{t: g.t, bin: g.bin, dataDir: g.dataDir, sipPort: g.sipPort, httpAddr: g.httpAddr, log: &logBuffer{}}
	n.cmd = exec.Command(g.cmd.Path, g.cmd.Args[1:]...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	must(g.t, n.cmd.Start())
	g.t.Cleanup(n.stop)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if res, err := http.Get("http://" + n.httpAddr + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return n
			}
		}
		if time.Now().After(deadline) || n.cmd.ProcessState != nil {
			g.t.Fatalf("node on %d did not come back ready:\n%s", n.sipPort, n.log)
		}
	}
}

// ready is the node's /readyz status, 0 if it does not answer.
func (g *gateway) ready() int {
	c := http.Client{Timeout: time.Second}
	res, err := c.Get("http://" + g.httpAddr + "/readyz")
	if err != nil {
		return 0
	}
	res.Body.Close()
	return res.StatusCode
}

// upCall is one call up on a node, as its /v1/calls?scope=local shows it.
type upCall struct {
	Index       int    `json:"-"` // the node's, in the test's nodes
	NodeID      string `json:"node"`
	ID          string
	To          string
	State       string
	Answer      time.Time
	PaidUntil   time.Time `json:"paid_until"`
	InboundCall string    `json:"inbound_call_id"`
}

// callsUp is every answered call up on the nodes given (by index).
func callsUp(nodes []*gateway, which ...int) []upCall {
	var all []upCall
	for _, i := range which {
		var up struct{ Calls []upCall }
		nodes[i].api("GET", "/v1/calls?scope=local", "", "", 200, &up)
		for _, c := range up.Calls {
			if c.State == "answered" {
				c.Index = i
				all = append(all, c)
			}
		}
	}
	return all
}

// waitCallsUp returns once n answered calls are up across the nodes given.
func waitCallsUp(t *testing.T, nodes []*gateway, n int, which ...int) []upCall {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		up := callsUp(nodes, which...)
		if len(up) >= n {
			return up
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls up after 30 s, want %d", len(up), n)
		}
	}
}

// nodeCDR is one CDR and the node (index) whose own ledger wrote it.
type nodeCDR struct {
	Node int
	cdr
}

// allNodeCDRs is every node's own CDRs (scope=local) by call id. Two
// CDRs of one call, on one node or two, fail the test: a call is settled
// once, wherever it ends.
func allNodeCDRs(t *testing.T, nodes []*gateway) map[string]nodeCDR {
	t.Helper()
	by := map[string]nodeCDR{}
	for i, g := range nodes {
		for _, c := range g.allCDRs() {
			if prev, dup := by[c["call_id"]]; dup {
				t.Errorf("call %s has two CDRs: node %d %v and node %d %v", c["call_id"], prev.Node+1, prev.cdr, i+1, c)
			}
			by[c["call_id"]] = nodeCDR{Node: i, cdr: c}
		}
	}
	return by
}

// sumCharges is Σ charge of the CDRs.
func sumCharges(cdrs map[string]nodeCDR) decimal.Decimal {
	sum := decimal.Zero
	for _, c := range cdrs {
		sum = sum.Add(decimal.RequireFromString(c.cdr["charge"]))
	}
	return sum
}

// baseCallID is the gateway's call id of a carrier leg's Call-ID, which
// is the id itself or "<id>-<n>" for the n-th carrier tried.
func baseCallID(legCallID string, cdrs map[string]nodeCDR) string {
	if _, ok := cdrs[legCallID]; ok {
		return legCallID
	}
	if i := strings.LastIndexByte(legCallID, '-'); i > 0 {
		return legCallID[:i]
	}
	return legCallID
}

// settledMoney waits until the nodes hold at least wantCDRs CDRs of acme
// (a call's CDR is written as it ends, which can be after its caller saw
// it end) and etcd's acme account has every CDR's charge in spent (a node
// reports its spending every second; a dead node's is settled by its
// reaper), and returns the account, its invariant checked (funded =
// unallocated + Σ slices' unspent + spent = Σ fundings), and the CDRs. It
// fails the test if that does not happen within 20 s.
func settledMoney(t *testing.T, cli *clientv3.Client, nodes []*gateway, wantCDRs int) (cluster.OrgTotals, map[string]nodeCDR) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		cdrs := allNodeCDRs(t, nodes)
		st, err := cluster.Check(context.Background(), cli, clusterPrefix, 5*time.Second)
		if err != nil {
			t.Fatalf("etcd's money of record: %v", err)
		}
		acme := st.Orgs["acme"]
		sum := sumCharges(cdrs)
		if len(cdrs) >= wantCDRs && acme.Spent.Equal(sum) {
			return acme, cdrs
		}
		last = fmt.Sprintf("%d CDRs (want %d), etcd spent %s, Σ CDR charges %s (funded %s, unallocated %s, in slices %s); %s",
			len(cdrs), wantCDRs, acme.Spent, sum, acme.Funded, acme.Unallocated, acme.Outstanding, chargesBy(cdrs))
		if time.Now().After(deadline) {
			// Not Fatal: the caller's checks of each call say which one.
			t.Errorf("the books do not add up 20 s after the calls: %s", last)
			return acme, cdrs
		}
	}
}

// answeredLegs is how many legs of the side were answered.
func answeredLegs(legs []loadtest.Leg) int {
	n := 0
	for _, l := range legs {
		if !l.Answered.IsZero() {
			n++
		}
	}
	return n
}

// chargesBy is Σ charge and count of the CDRs per node and reason.
func chargesBy(cdrs map[string]nodeCDR) string {
	type k struct {
		node   int
		reason string
	}
	sums, counts := map[k]decimal.Decimal{}, map[k]int{}
	for _, c := range cdrs {
		key := k{c.Node + 1, c.cdr["disconnect_reason"]}
		sums[key] = sums[key].Add(decimal.RequireFromString(c.cdr["charge"]))
		counts[key]++
	}
	var parts []string
	for key, sum := range sums {
		parts = append(parts, fmt.Sprintf("node %d %s: %d CDRs %s", key.node, key.reason, counts[key], sum))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// stats is p50, p99 and max of durations, and how many, for t.Logf.
func stats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no calls"
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	return fmt.Sprintf("%d calls: p50 %s p99 %s max %s", len(s), ms(q(0.50)), ms(q(0.99)), ms(s[len(s)-1]))
}

// legsByCallID indexes the load tool's legs of one side by Call-ID.
func legsByCallID(legs []loadtest.Leg) map[string]loadtest.Leg {
	m := make(map[string]loadtest.Leg, len(legs))
	for _, l := range legs {
		m[l.CallID] = l
	}
	return m
}

// paidThrough is when a carrier leg's call had paid up to: the carrier's
// answer plus the CDR's billed seconds. The gateway's own answer instant
// is the carrier's 200 plus its trip over loopback, so this is at most
// that trip early.
func paidThrough(l loadtest.Leg, c cdr) time.Time {
	billed, _ := strconv.Atoi(c["billed_s"])
	return l.Answered.Add(time.Duration(billed) * time.Second)
}

// warnings is the first n WARN and ERROR lines of the node's log, for a
// failure message.
func (g *gateway) warnings(n int) string {
	var b strings.Builder
	for _, line := range strings.Split(g.log.String(), "\n") {
		if n > 0 && (strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR")) {
			fmt.Fprintf(&b, "\n  node :%d: %s", g.sipPort, line)
			n--
		}
	}
	return b.String()
}

// callLog is what each of the node processes logged about a call.
func callLog(procs []*gateway, id string) string {
	var b strings.Builder
	for _, g := range procs {
		for _, line := range strings.Split(g.log.String(), "\n") {
			if strings.Contains(line, id) {
				fmt.Fprintf(&b, "\n  node :%d: %s", g.sipPort, line)
			}
		}
	}
	return b.String()
}

// callTracker polls every node's /v1/calls?scope=local while calls run,
// to pair each call's two legs: the gateway's call id (the carrier leg's
// Call-ID) with its inbound Call-ID (the caller leg's). A node that does
// not answer (killed, frozen) is skipped until it does; a call that lasts
// longer than the poll period is always seen.
type callTracker struct {
	stop func()
	wg   sync.WaitGroup
	mu   sync.Mutex
	byID map[string]upCall // guarded by mu
}

// trackCalls starts polling the admin addresses every period; stop it
// (and wait for it) with pairs, or the test's end does.
func trackCalls(t *testing.T, httpAddrs []string, period time.Duration) *callTracker {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &callTracker{stop: cancel, byID: map[string]upCall{}}
	t.Cleanup(func() { cancel(); tr.wg.Wait() })
	client := &http.Client{Timeout: time.Second}
	tr.wg.Go(func() {
		for ctx.Err() == nil {
			for i, a := range httpAddrs {
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+a+"/v1/calls?scope=local", nil)
				req.Header.Set("Authorization", "Bearer "+token)
				res, err := client.Do(req)
				if err != nil {
					continue
				}
				var up struct{ Calls []upCall }
				if res.StatusCode == 200 {
					_ = json.NewDecoder(res.Body).Decode(&up)
				}
				res.Body.Close()
				tr.mu.Lock()
				for _, c := range up.Calls {
					if _, seen := tr.byID[c.ID]; !seen && c.InboundCall != "" {
						c.Index = i
						tr.byID[c.ID] = c
					}
				}
				tr.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(period):
			}
		}
	})
	return tr
}

// pairs stops the tracker and returns every call it saw, by call id.
func (tr *callTracker) pairs() map[string]upCall {
	tr.stop()
	tr.wg.Wait()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return maps.Clone(tr.byID)
}

// hangupRelays is, for each call whose caller hung up, how long after
// the caller's BYE left the gateway's BYE reached the carrier, keyed by
// when the caller hung up.
func hangupRelays(pairs map[string]upCall, legs *loadtest.Legs, cdrs map[string]nodeCDR) (at []time.Time, relay []time.Duration) {
	callers := legsByCallID(legs.Side(loadtest.CallerSide))
	carriers := legsByCallID(legs.Side(loadtest.CarrierSide))
	for id, c := range pairs {
		cl, ok := callers[c.InboundCall]
		kl, ok2 := carriers[id]
		if !ok || !ok2 || cl.HungUp.IsZero() || kl.Bye.IsZero() || cl.EndedByGateway() {
			continue
		}
		if r, ok := cdrs[id]; ok && r.cdr["disconnect_reason"] != "caller_hangup" {
			continue
		}
		at, relay = append(at, cl.HungUp), append(relay, kl.Bye.Sub(cl.HungUp))
	}
	return at, relay
}
