package e2e_test

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/loadtest"
)

// clusterCall is one call of a cluster-wide GET /v1/calls.
type clusterCall struct {
	ID          string    `json:"id"`
	Node        string    `json:"node"`
	Answer      time.Time `json:"answer"`
	InboundCall string    `json:"inbound_call_id"`
}

type clusterCalls struct {
	Calls       []clusterCall `json:"calls"`
	Unavailable []struct {
		Node  string `json:"node"`
		Error string `json:"error"`
	} `json:"unavailable"`
}

// TestClusterReadsFromAnyNode: three nodes on etcd, two calls held up
// through each. Node 1's GET /v1/calls lists all six, each with the node
// that carries it; node 1 ends one of node 3's calls (the load tool on
// node 3 sees it ended by the gateway, node 3's CDR says admin, and of the
// three nodes' audit trails exactly one, node 3's, has the entry); with
// node 2 SIGSTOPped node 1's list answers within the peer timeout, naming
// n2 unavailable; and node 1's usage report (JSON and CSV) is the union of
// the three nodes' own.
func TestClusterReadsFromAnyNode(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	bin := buildBinary(t)
	const peerTimeout = 2 * time.Second
	nodes := startCluster(t, bin, etcd.Endpoints(), 3, "  peer_timeout: 2s\nfunding:\n  minimum: \"1.00\"\n")
	n1 := nodes[0]
	n1.api("POST", "/v1/orgs", "", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201, nil)
	n1.api("PUT", "/v1/orgs/acme/users/alice", "", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200, nil)
	n1.api("PUT", "/v1/trunks/pbx", "", `{"kind":"customer","org":"acme","addresses":["127.0.0.1"]}`, 200, nil)
	carriers := make([]int, len(nodes))
	for i := range nodes {
		carriers[i] = freePort(t)
		n1.api("PUT", fmt.Sprintf("/v1/trunks/carrier%d", i+1), "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":["3314227818%d"]}`, carriers[i], i+1), 200, nil)
	}
	n1.api("PUT", "/v1/rates", "text/csv", "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,6.00,1,1\n", 200, nil)
	n1.api("POST", "/v1/orgs/acme/credits", "", `{"amount":"50.00","idempotency_key":"k50"}`, 201, nil)
	visibleWithin(t, nodes, time.Now(), "configuration", func(g *gateway) bool {
		var o struct{ Balance string }
		g.api("GET", "/v1/orgs/acme", "", "", 200, &o)
		return o.Balance == "50.00" && g.hasTrunk("carrier3")
	})

	// Two calls through each node, held far longer than the test.
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	reports, wait := callThroughEveryNode(ctx, t, nodes, carriers, 2, 90*time.Second)
	// Whatever happens below, the calls end before the test does.
	defer func() { cancel(); wait() }()

	all := waitAnswered(t, n1, 6)
	if len(all.Unavailable) != 0 {
		t.Fatalf("every node is up, yet: %+v", all.Unavailable)
	}
	// Each call is labelled with the node whose own list has it.
	for i, g := range nodes {
		var own clusterCalls
		g.api("GET", "/v1/calls?scope=local", "", "", 200, &own)
		want := fmt.Sprintf("n%d", i+1)
		if len(own.Calls) != 2 || own.Unavailable != nil {
			t.Fatalf("node %d's local list: %+v", i+1, own)
		}
		for _, c := range own.Calls {
			found := false
			for _, x := range all.Calls {
				found = found || (x.ID == c.ID && x.Node == want)
			}
			if !found {
				t.Fatalf("call %s of node %d not in node 1's list as node %s: %+v", c.ID, i+1, want, all.Calls)
			}
		}
	}
	t.Logf("node 1 lists %d calls: %v", len(all.Calls), nodesOf(all.Calls))

	// Node 2 paused: node 1's list still answers, within the peer timeout,
	// with node 2 named. (Resumed well within its 5 s lease.)
	must(t, nodes[1].cmd.Process.Signal(syscall.SIGSTOP))
	asked := time.Now()
	var partial clusterCalls
	n1.api("GET", "/v1/calls", "", "", 200, &partial)
	took := time.Since(asked)
	must(t, nodes[1].cmd.Process.Signal(syscall.SIGCONT))
	t.Logf("with node 2 stopped, node 1's list answered in %v (peer timeout %v): %d calls, unavailable %+v",
		took.Round(time.Millisecond), peerTimeout, len(partial.Calls), partial.Unavailable)
	if len(partial.Unavailable) != 1 || partial.Unavailable[0].Node != "n2" || len(partial.Calls) != 4 {
		t.Fatalf("with node 2 stopped: %+v", partial)
	}
	if took > peerTimeout+3*time.Second {
		t.Fatalf("node 1's list took %v with a peer stopped; the peer timeout is %v", took, peerTimeout)
	}

	// Node 1 ends one of node 3's calls.
	var victim clusterCall
	for _, c := range all.Calls {
		if c.Node == "n3" {
			victim = c
			break
		}
	}
	n1.api("DELETE", "/v1/calls/"+url.PathEscape(victim.ID), "", "", 204, nil)
	if code, body := n1.raw("DELETE", "/v1/calls/"+url.PathEscape(victim.ID)); code != 404 {
		t.Fatalf("ending it again: %d %s, want 404", code, body)
	}
	if code, body := n1.raw("DELETE", "/v1/calls/no-such-call"); code != 404 {
		t.Fatalf("ending an unknown call: %d %s, want 404", code, body)
	}
	entries := 0
	for i, g := range nodes {
		var audit struct {
			Entries []struct{ Target, Action string } `json:"entries"`
		}
		g.api("GET", "/v1/audit?kind=call&scope=local", "", "", 200, &audit)
		for _, e := range audit.Entries {
			if e.Target == victim.ID {
				entries++
				if i != 2 {
					t.Errorf("node %d journaled the end of node 3's call: %+v", i+1, e)
				}
			}
		}
	}
	if entries != 1 {
		t.Fatalf("%d audit entries for the call ended through node 1, want exactly 1 (node 3's)", entries)
	}
	// Node 1's merged trail has it once, as node 3's.
	var trail struct {
		Entries []struct{ Target, Node string } `json:"entries"`
	}
	n1.api("GET", "/v1/audit?kind=call", "", "", 200, &trail)
	if len(trail.Entries) != 1 || trail.Entries[0].Target != victim.ID || trail.Entries[0].Node != "n3" {
		t.Fatalf("node 1's merged trail of ended calls: %+v, want node 3's one entry", trail.Entries)
	}
	var cdr3 []cdr
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var usage struct{ CDRs []cdr }
		nodes[2].api("GET", "/v1/orgs/acme/usage?scope=local", "", "", 200, &usage)
		if cdr3 = usage.CDRs; len(cdr3) == 1 {
			break
		}
	}
	if len(cdr3) != 1 || cdr3[0]["disconnect_reason"] != "admin" || (cdr3[0]["call_id"] != victim.ID && cdr3[0]["call_id"] != victim.InboundCall) {
		t.Fatalf("node 3's CDRs after node 1 ended its call %s: %v", victim.ID, cdr3)
	}

	// End the rest through node 1, then every load tool reports each of
	// its calls ended by the gateway.
	for _, c := range all.Calls {
		if c.ID != victim.ID {
			n1.api("DELETE", "/v1/calls/"+url.PathEscape(c.ID), "", "", 204, nil)
		}
	}
	wait()
	for i, rep := range reports {
		if rep.Answered != 2 || rep.EndedByGateway != 2 {
			t.Fatalf("load tool on node %d: %s", i+1, rep)
		}
	}

	// Usage: node 1's report is the three nodes' own, merged in start
	// order, in JSON and CSV alike.
	var merged struct {
		CDRs        []cdr `json:"cdrs"`
		Unavailable []any `json:"unavailable"`
	}
	n1.api("GET", "/v1/orgs/acme/usage", "", "", 200, &merged)
	var want []string
	sum := decimal.Zero
	for i, g := range nodes {
		var own struct{ CDRs []cdr }
		g.api("GET", "/v1/orgs/acme/usage?scope=local", "", "", 200, &own)
		if len(own.CDRs) != 2 {
			t.Fatalf("node %d's own usage: %v", i+1, own.CDRs)
		}
		for _, c := range own.CDRs {
			want = append(want, c["call_id"])
			sum = sum.Add(decimal.RequireFromString(c["charge"]))
		}
	}
	got, gotSum := []string{}, decimal.Zero
	for i, c := range merged.CDRs {
		got = append(got, c["call_id"])
		gotSum = gotSum.Add(decimal.RequireFromString(c["charge"]))
		if i > 0 && c["start"] < merged.CDRs[i-1]["start"] {
			t.Errorf("merged usage out of start order at row %d: %v", i, merged.CDRs)
		}
	}
	sort.Strings(want)
	sort.Strings(got)
	if fmt.Sprint(got) != fmt.Sprint(want) || !gotSum.Equal(sum) || len(merged.Unavailable) != 0 {
		t.Fatalf("node 1's usage: calls %v charged %s, unavailable %v; the nodes' own: %v charged %s",
			got, gotSum, merged.Unavailable, want, sum)
	}
	code, csvBody := n1.raw("GET", "/v1/orgs/acme/usage?format=csv")
	if lines := strings.Count(string(csvBody), "\r\n"); code != 200 || lines != 1+len(want) {
		t.Fatalf("node 1's CSV usage: %d, %d lines, want %d:\n%s", code, lines, 1+len(want), csvBody)
	}
	t.Logf("node 1's usage merged %d CDRs from 3 nodes, charged %s in all", len(got), gotSum)
}

// nodesOf counts calls per node.
func nodesOf(calls []clusterCall) map[string]int {
	m := map[string]int{}
	for _, c := range calls {
		m[c.Node]++
	}
	return m
}

// clusterTx is one entry of a cluster-wide transactions list.
type clusterTx struct {
	Seq    uint64 `json:"seq"`
	Kind   string `json:"kind"`
	Amount string `json:"amount"`
	Key    string `json:"idempotency_key"`
	Node   string `json:"node"`
}

type clusterTxPage struct {
	Transactions []clusterTx `json:"transactions"`
	NextAfter    *string     `json:"next_after"`
	Unavailable  []struct {
		Node  string `json:"node"`
		Error string `json:"error"`
	} `json:"unavailable"`
}

type clusterOrgView struct {
	Balance     string `json:"balance"`
	Held        string `json:"held"`
	Available   string `json:"available"`
	Node        string `json:"node"`
	Partial     *bool  `json:"partial"`
	Unavailable []struct {
		Node string `json:"node"`
	} `json:"unavailable"`
	Forecast *struct {
		Spend string `json:"spend"`
	} `json:"forecast"`
}

// TestClusterOrgAndTransactionsFromAnyNode: three nodes on etcd, funded
// through two of them, two calls held up through node 2 and two through
// node 3. Node 1's GET /v1/orgs/acme shows the cluster's held (the sum of
// the three nodes' own, node 1's being 0.00) and available = balance −
// held; with node 3 SIGSTOPped it names n3 and says partial. After the
// calls, node 1's transactions paged 3 at a time give every entry of every
// node's own list and both fundings (which only etcd has, labelled
// "cluster") exactly once.
func TestClusterOrgAndTransactionsFromAnyNode(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	bin := buildBinary(t)
	nodes := startCluster(t, bin, etcd.Endpoints(), 3, "  peer_timeout: 2s\nfunding:\n  minimum: \"1.00\"\n")
	n1 := nodes[0]
	n1.api("POST", "/v1/orgs", "", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201, nil)
	n1.api("PUT", "/v1/orgs/acme/users/alice", "", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200, nil)
	n1.api("PUT", "/v1/trunks/pbx", "", `{"kind":"customer","org":"acme","addresses":["127.0.0.1"]}`, 200, nil)
	carriers := make([]int, len(nodes))
	for i := range nodes {
		carriers[i] = freePort(t)
		n1.api("PUT", fmt.Sprintf("/v1/trunks/carrier%d", i+1), "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":["3314227818%d"]}`, carriers[i], i+1), 200, nil)
	}
	n1.api("PUT", "/v1/rates", "text/csv", "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,6.00,1,1\n", 200, nil)
	n1.api("POST", "/v1/orgs/acme/credits", "", `{"amount":"50.00","idempotency_key":"k50"}`, 201, nil)
	nodes[1].api("POST", "/v1/orgs/acme/credits", "", `{"amount":"20.00","idempotency_key":"k20/n2"}`, 201, nil)
	visibleWithin(t, nodes, time.Now(), "configuration", func(g *gateway) bool {
		var o struct{ Balance string }
		g.api("GET", "/v1/orgs/acme", "", "", 200, &o)
		return o.Balance == "70.00" && g.hasTrunk("carrier3")
	})

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, i := range []int{1, 2} {
		g := nodes[i]
		wg.Go(func() {
			_, err := loadtest.Run(ctx, loadtest.Config{
				Target: fmt.Sprintf("127.0.0.1:%d", g.sipPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[i]),
				Rate: 10, Calls: 2, Hold: 90 * time.Second, Dialled: fmt.Sprintf("+3314227818%d", i+1),
				From: []string{"+12125550100"}, SetupTimeout: 10 * time.Second}, nil)
			if err != nil && ctx.Err() == nil {
				t.Errorf("load tool on node %d: %v", i+1, err)
			}
		})
	}
	all := waitAnswered(t, n1, 4)

	// Held: each call holds its open one-second increment (0.10), so the
	// figures hold still while the calls step.
	own := make([]clusterOrgView, len(nodes))
	sum := decimal.Zero
	for i, g := range nodes {
		g.api("GET", "/v1/orgs/acme?scope=local", "", "", 200, &own[i])
		sum = sum.Add(decimal.RequireFromString(own[i].Held))
		if own[i].Node != fmt.Sprintf("n%d", i+1) || own[i].Partial != nil {
			t.Fatalf("node %d's own view: %+v", i+1, own[i])
		}
	}
	var cv clusterOrgView
	n1.api("GET", "/v1/orgs/acme", "", "", 200, &cv)
	t.Logf("held: the nodes' own %s, %s, %s (balances %s, %s, %s); node 1's cluster view %s (balance %s, available %s)",
		own[0].Held, own[1].Held, own[2].Held, own[0].Balance, own[1].Balance, own[2].Balance, cv.Held, cv.Balance, cv.Available)
	if own[0].Held != "0.00" || own[1].Held != "0.20" || own[2].Held != "0.20" || cv.Held != "0.40" || sum.StringFixed(2) != cv.Held ||
		cv.Partial == nil || *cv.Partial || len(cv.Unavailable) != 0 || cv.Forecast == nil ||
		// Funded 70.00 through nodes 1 and 2; the calls spent a few
		// tenths. Node 1 last read its account at its own funding (50.00).
		!decimal.RequireFromString(cv.Balance).GreaterThan(decimal.NewFromInt(60)) ||
		!decimal.RequireFromString(cv.Available).Equal(decimal.RequireFromString(cv.Balance).Sub(decimal.RequireFromString(cv.Held))) {
		t.Fatalf("node 1's cluster view %+v; the nodes' own held %s %s %s", cv, own[0].Held, own[1].Held, own[2].Held)
	}

	// Node 3 paused (resumed well within its lease): named, and partial.
	nodes[2].pause()
	var part clusterOrgView
	var partTx clusterTxPage
	n1.api("GET", "/v1/orgs/acme", "", "", 200, &part)
	n1.api("GET", "/v1/orgs/acme/transactions", "", "", 200, &partTx)
	nodes[2].resume()
	if part.Partial == nil || !*part.Partial || len(part.Unavailable) != 1 || part.Unavailable[0].Node != "n3" || part.Held != "0.20" {
		t.Fatalf("with node 3 stopped, node 1's view: %+v", part)
	}
	if len(partTx.Unavailable) != 1 || partTx.Unavailable[0].Node != "n3" {
		t.Fatalf("with node 3 stopped, node 1's transactions name %+v", partTx.Unavailable)
	}
	for _, e := range partTx.Transactions {
		if e.Node == "n3" {
			t.Fatalf("node 3 stopped, yet its entry: %+v", e)
		}
	}

	// End the calls, then page. (Node 3's may have ended already: paused
	// for up to two peer timeouts, it may have passed its local lease
	// deadline, where it holds no next increment.)
	for _, c := range all.Calls {
		if code, body := n1.raw("DELETE", "/v1/calls/"+url.PathEscape(c.ID)); code != 204 && (code != 404 || c.Node != "n3") {
			t.Fatalf("ending %s's call %s: %d %s", c.Node, c.ID, code, body)
		}
	}
	cancel()
	wg.Wait()
	want := map[string]bool{}
	for i, g := range nodes {
		var p clusterTxPage
		g.api("GET", "/v1/orgs/acme/transactions?scope=local&limit=10000", "", "", 200, &p)
		for _, e := range p.Transactions {
			want[fmt.Sprintf("n%d/%d", i+1, e.Seq)] = true
		}
	}
	seen := map[string]int{}
	var fundings []string
	after, pages := "", 0
	for ; ; pages++ {
		if pages > 1000 {
			t.Fatal("paging does not end")
		}
		var p clusterTxPage
		n1.api("GET", "/v1/orgs/acme/transactions?limit=3&after="+url.QueryEscape(after), "", "", 200, &p)
		if len(p.Unavailable) != 0 {
			t.Fatalf("page %d: unavailable %+v", pages, p.Unavailable)
		}
		for _, e := range p.Transactions {
			k := fmt.Sprintf("%s/%d", e.Node, e.Seq)
			seen[k]++
			if e.Node == "cluster" {
				fundings = append(fundings, e.Kind+" "+e.Amount+" "+e.Key)
				continue
			}
			if !want[k] {
				t.Fatalf("entry %s is in no node's own list: %+v", k, e)
			}
		}
		if p.NextAfter == nil {
			break
		}
		after = *p.NextAfter
	}
	for k, c := range seen {
		if c != 1 {
			t.Fatalf("%s given %d times", k, c)
		}
	}
	if len(seen) != len(want)+2 || strings.Join(fundings, ", ") != "funding 50.00 k50, funding 20.00 k20/n2" {
		t.Fatalf("%d entries over %d pages (fundings: %v), want the nodes' %d and the 2 fundings", len(seen), pages+1, fundings, len(want))
	}
	t.Logf("node 1's transactions: %d entries in %d pages of 3: the 3 nodes' %d and etcd's fundings %v", len(seen), pages+1, len(want), fundings)
}

// waitAnswered polls g's cluster-wide calls list until it shows want
// answered calls (20 s at most) and returns that list.
func waitAnswered(t *testing.T, g *gateway, want int) clusterCalls {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var all clusterCalls
		g.api("GET", "/v1/calls", "", "", 200, &all)
		answered := 0
		for _, c := range all.Calls {
			if !c.Answer.IsZero() {
				answered++
			}
		}
		if answered == want {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 1 lists %d answered calls, want %d: %+v", answered, want, all)
		}
	}
}
