package e2e_test

import (
	"context"
	"fmt"
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

// poolsCatalog is the plan catalogue of TestClusterPoolsAcrossNodes: one
// pool, 5 minutes a license, so five licensed users give the org exactly 25
// minutes a month. Pool increments are whole minutes of real time whatever
// the catalogue says (the catalogue sets minutes per license, not the
// increment), so the calls below last a little over two minutes.
const poolsCatalog = `catalog:
  pools:
    - name: international
      minutes_per_license: 5
      licenses: [international_calling_plan]
      trunk: customer
      destinations: international
      types: [geographic, mobile]
`

// poolUsers are the org's five licensed users: the first three may spend
// credits when the pool is used up, the last two may not.
var poolUsers = []struct {
	id, number string
	credits    bool
}{
	{"u1", "+12125550101", true},
	{"u2", "+12125550102", true},
	{"u3", "+12125550103", true},
	{"u4", "+12125550104", false},
	{"u5", "+12125550105", false},
}

// TestClusterPoolsAcrossNodes: three creditgate processes on a
// three-member etcd and an org whose five licensed users give it exactly 25
// pool minutes this month. Ten calls (two per user) through the three nodes
// at once (4, 3 and 3) are all answered and draw their first two minutes
// from the pool (20); at the third minute's boundary they race for the last
// 5. Exactly 25 pool minutes are used cluster-wide (etcd's pool account and
// every CDR's pool_minutes); a call that did not win a third minute goes on
// credits if its user holds communications_credits, else ends
// included_minutes_exhausted at the end of its second minute; the credits
// spent are exactly what the CDRs charge, the balance every node shows is
// the funding less them, and etcd's invariants (money and minutes) hold at
// every sample taken while the calls run.
//
// It runs a little over two minutes of real time: pool increments are
// whole minutes and nothing in the plan or the configuration shortens
// them, so 25 minutes over 10 calls need three increments' boundaries.
func TestClusterPoolsAcrossNodes(t *testing.T) {
	etcd := etcdtest.Start(t, 3)
	bin := buildBinary(t)
	nodes := startCluster(t, bin, etcd.Endpoints(), 3, "funding:\n  minimum: \"1.00\"\n"+poolsCatalog)
	n1 := nodes[0]

	n1.api("POST", "/v1/orgs", "", `{"id":"acme","name":"Acme","country":"US","region":"us"}`, 201, nil)
	for _, u := range poolUsers {
		lic := `"international_calling_plan"`
		if u.credits {
			lic += `,"communications_credits"`
		}
		n1.api("PUT", "/v1/orgs/acme/users/"+u.id, "", fmt.Sprintf(`{"numbers":[%q],"licenses":[%s]}`, u.number, lic), 200, nil)
	}
	n1.api("PUT", "/v1/trunks/pbx", "", `{"kind":"customer","org":"acme","addresses":["127.0.0.1"]}`, 200, nil)
	carriers := make([]int, len(nodes))
	for i := range nodes {
		carriers[i] = freePort(t)
		n1.api("PUT", fmt.Sprintf("/v1/trunks/carrier%d", i+1), "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":["3314227818%d"]}`, carriers[i], i+1), 200, nil)
	}
	// On credits: 6.00 a minute in 1 s increments, 0.10 an increment.
	n1.api("PUT", "/v1/rates", "text/csv", "prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n"+
		"33,FR,France,geographic,6.00,1,1\n", 200, nil)
	n1.api("POST", "/v1/orgs/acme/credits", "", `{"amount":"50.00","idempotency_key":"k50"}`, 201, nil)
	visibleWithin(t, nodes, time.Now(), "configuration", func(g *gateway) bool {
		var o struct {
			Balance string
			Pools   []struct {
				Plan  string
				Total int
			}
		}
		g.api("GET", "/v1/orgs/acme", "", "", 200, &o)
		return o.Balance == "50.00" && len(o.Pools) == 1 && o.Pools[0].Total == 25 && g.hasTrunk("carrier3")
	})

	// Both invariants, sampled while the calls run.
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
			time.Sleep(50 * time.Millisecond)
		}
	})

	// Ten calls, two per user, 4/3/3 over the nodes; each caller hangs up
	// 125 s after the answer, 5 s into the third minute.
	const hold = 125 * time.Second
	from := [][]string{
		{"+12125550101", "+12125550102", "+12125550103", "+12125550104"},
		{"+12125550105", "+12125550101", "+12125550102"},
		{"+12125550103", "+12125550104", "+12125550105"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	reports := make([]loadtest.Report, len(nodes))
	var wg sync.WaitGroup
	started := time.Now()
	for i, g := range nodes {
		wg.Go(func() {
			rep, err := loadtest.Run(ctx, loadtest.Config{
				Target: fmt.Sprintf("127.0.0.1:%d", g.sipPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[i]),
				Rate: 20, Calls: len(from[i]), Hold: hold, Dialled: fmt.Sprintf("+3314227818%d", i+1),
				From: from[i], SetupTimeout: 10 * time.Second}, nil)
			if err != nil {
				t.Errorf("load tool on node %d: %v", i+1, err)
			}
			reports[i] = rep
		})
	}
	wg.Wait()
	stopSampling()
	sampling.Wait()
	t.Logf("calls ran %v", time.Since(started).Round(time.Second))
	if sampleErr != nil {
		t.Fatalf("cluster invariant broken while calls ran: %v", sampleErr)
	}
	answered, endedByGateway := 0, 0
	for i, rep := range reports {
		answered += rep.Answered
		endedByGateway += rep.EndedByGateway
		t.Logf("node %d: %s", i+1, strings.ReplaceAll(rep.String(), "\n", "; "))
	}
	if answered != 10 {
		t.Fatalf("%d of 10 calls answered; every call has two pool minutes at least", answered)
	}

	// Every CDR, from the node that carried it.
	credits := map[string]bool{}
	for _, u := range poolUsers {
		credits[u.id] = u.credits
	}
	poolMinutes, third, ended := 0, 0, 0
	charged := decimal.Zero
	for i, g := range nodes {
		cdrs := g.allCDRs()
		for deadline := time.Now().Add(10 * time.Second); len(cdrs) < len(from[i]) && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			cdrs = g.allCDRs()
		}
		if len(cdrs) != len(from[i]) {
			t.Fatalf("node %d has %d CDRs, want %d: %v", i+1, len(cdrs), len(from[i]), cdrs)
		}
		for _, c := range cdrs {
			t.Logf("node %d: %s pool %s %s min, billed %s s of %s s, charge %s, %s", i+1, c["user"], c["pool"],
				c["pool_minutes"], c["billed_s"], c["duration_s"], c["charge"], c["disconnect_reason"])
			pm, _ := strconv.Atoi(c["pool_minutes"])
			billed, _ := strconv.Atoi(c["billed_s"])
			dur, _ := strconv.Atoi(c["duration_s"])
			charge := decimal.RequireFromString(c["charge"])
			poolMinutes += pm
			charged = charged.Add(charge)
			if c["pool"] != "international" || dur > billed {
				t.Errorf("node %d CDR %v: want the international pool, no second unpaid", i+1, c)
			}
			switch {
			case pm == 3:
				// Won a third minute: hung up inside it, nothing on credits.
				third++
				if !charge.IsZero() || c["disconnect_reason"] != "caller_hangup" {
					t.Errorf("node %d CDR %v: a call with three pool minutes pays nothing and is hung up by its caller", i+1, c)
				}
			case pm == 2 && credits[c["user"]]:
				// Went on credits at 120 s, 0.10 a second to the hang-up.
				if want := decimal.New(int64(billed-120), -1); !charge.Equal(want) || charge.IsZero() || c["disconnect_reason"] != "caller_hangup" {
					t.Errorf("node %d CDR %v: on credits after its second pool minute it pays %s", i+1, c, want)
				}
			case pm == 2:
				// No credits license: ends with its last included minute.
				ended++
				if !charge.IsZero() || billed != 120 || c["disconnect_reason"] != "included_minutes_exhausted" {
					t.Errorf("node %d CDR %v: without credits it ends at 120 s, included_minutes_exhausted", i+1, c)
				}
			default:
				t.Errorf("node %d CDR %v: %d pool minutes; every call has two or three", i+1, c, pm)
			}
		}
	}
	if poolMinutes != 25 || third != 5 {
		t.Fatalf("CDRs used %d pool minutes (%d calls had a third); want exactly 25 (5)", poolMinutes, third)
	}
	if endedByGateway != ended {
		t.Errorf("the load tool saw %d calls ended by the gateway, the CDRs %d ended at the pool's end", endedByGateway, ended)
	}

	// etcd: the pool used up exactly once its minutes are reported, the
	// credits spent are the CDRs' charges, and every node shows the
	// balance left.
	var st cluster.State
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if st, err = cluster.Check(context.Background(), cli, clusterPrefix, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		var p cluster.PoolTotals
		for k, v := range st.Pools {
			if strings.HasPrefix(k, "acme/international/") {
				p = v
			}
		}
		o := st.Orgs["acme"]
		if p.Used == 25 && p.Total == 25 && o.Spent.Equal(charged) || time.Now().After(deadline) {
			if p.Used != 25 || p.Total != 25 || p.Unallocated != 0 || p.Outstanding != 0 {
				t.Fatalf("etcd's pool after the calls: %+v; want total 25, all 25 used", p)
			}
			if !o.Spent.Equal(charged) {
				t.Fatalf("etcd has %s spent, the CDRs charged %s", o.Spent, charged)
			}
			break
		}
	}
	left := decimal.RequireFromString("50.00").Sub(charged).StringFixed(2)
	for i, g := range nodes {
		var o struct {
			Balance, Held string
			Pools         []struct{ Total int }
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			g.api("GET", "/v1/orgs/acme", "", "", 200, &o)
			if o.Balance == left && o.Held == "0.00" || time.Now().After(deadline) {
				break
			}
		}
		if o.Balance != left || o.Held != "0.00" || len(o.Pools) != 1 || o.Pools[0].Total != 25 {
			t.Fatalf("node %d shows %+v; want balance %s, nothing held, a 25-minute pool", i+1, o, left)
		}
	}
	t.Logf("25 pool minutes used cluster-wide: %d calls won a third minute, %d ended at the pool's end, %s charged on credits; %d invariant samples; etcd: %+v",
		third, ended, charged.StringFixed(2), samples.Load(), st.Pools)
}
