package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/loadtest"
)

// TestClusterKillNineBehindKamailio: three nodes behind Kamailio's
// dispatcher (configs/kamailio), the load tool as PBX and carrier, 30
// calls up spread over the nodes, acme funded so that they end only when
// its money runs out, and one node killed with SIGKILL:
//   - both legs of each of the dead node's calls get a BYE from a survivor
//     (the carrier's from a survivor's SIP address, the PBX's through the
//     proxy with the survivor's Via under the proxy's) within lease TTL +
//     one increment + 0.5 s of the kill, and a survivor wrote its CDR
//     (node_failure);
//   - the survivors' own calls still end within 50 ms of their paid time;
//   - new calls go to the survivors: every one is answered, and the last
//     new call the proxy offered the dead port is logged (and bounded as
//     in TestFrontKamailioDispatcher);
//   - every answered call has exactly one CDR across the nodes' own
//     ledgers, and etcd's spent is Σ of their charges to the cent;
//   - restarted on its data directory, the dead node serves again, its
//     CDRs from before the kill are still there, and it settled nothing
//     twice (no CDR of a reaped call, money of record unchanged).
func TestClusterKillNineBehindKamailio(t *testing.T) {
	kamailio := requireKamailio(t)
	etcd := etcdtest.Start(t, 1)
	bin := buildBinary(t)
	frontPort, pbxPort, newPBXPort := freePort(t), freePort(t), freePort(t)
	carriers := []int{freePort(t), freePort(t)}
	const incr = 3 // seconds an increment
	nodes := startCluster(t, bin, etcd.Endpoints(), 3,
		leaseConf(takeoverTTL, takeoverMargin, takeoverKeepalive)+"funding:\n  minimum: \"1.00\"\n"+frontConf(frontPort))
	// 6.00 a minute: 0.30 an increment of 3 s. 60.00 pays the warm-up,
	// the new calls and the 30 calls' increments for about 20 s.
	setupClusterAcme(t, nodes, orgSetup{PBX: []string{fmt.Sprintf("127.0.0.1:%d", pbxPort), fmt.Sprintf("127.0.0.1:%d", newPBXPort)},
		Carriers: carriers, PerMinute: "6.00", Increment: incr, Funding: "60.00"})
	var ports []int
	for _, g := range nodes {
		ports = append(ports, g.sipPort)
	}
	front := startFront(t, kamailio, frontPort, ports)
	target := fmt.Sprintf("127.0.0.1:%d", front.port)
	addr := func(g *gateway) string { return fmt.Sprintf("127.0.0.1:%d", g.sipPort) }

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run := func(cfg loadtest.Config) loadtest.Report {
		cfg.Target, cfg.From, cfg.SetupTimeout, cfg.HangupTimeout = target, []string{"+12125550100"}, 10*time.Second, 5*time.Second
		rep, err := loadtest.Run(ctx, cfg, nil)
		if err != nil {
			t.Error(err)
		}
		return rep
	}

	// Old CDRs on every node, to find again after the restart.
	if rep := run(loadtest.Config{Caller: fmt.Sprintf("127.0.0.1:%d", newPBXPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[1]),
		Dialled: carrierNumber(1), Rate: 10, Calls: 6, Hold: 300 * time.Millisecond}); rep.ByStatus["200"] != 6 {
		t.Fatalf("warm-up calls: %s", rep)
	}
	victimIdx, victim := 1, nodes[1]
	oldCDRs := victim.allCDRs()
	if len(oldCDRs) == 0 {
		t.Fatal("the victim took none of the warm-up calls")
	}

	// 30 calls that hang up only when the money runs out.
	legs := &loadtest.Legs{}
	longDone := make(chan loadtest.Report, 1)
	var bg sync.WaitGroup // waited for even if the test stops early: it reports to t
	t.Cleanup(bg.Wait)
	bg.Go(func() {
		longDone <- run(loadtest.Config{Caller: fmt.Sprintf("127.0.0.1:%d", pbxPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[0]),
			Dialled: carrierNumber(0), Rate: 15, Calls: 30, Hold: 2 * time.Minute, Legs: legs})
	})
	up := waitCallsUp(t, nodes, 30, 0, 1, 2)
	perNode := make([]int, len(nodes))
	for _, c := range up {
		perNode[c.Index]++
	}
	t.Logf("30 calls up, per node %v", perNode)
	if perNode[victimIdx] == 0 {
		t.Fatal("the victim has no call up")
	}

	killed := victim.kill9()
	dead := listenDead(t, victim.sipPort)
	t.Logf("node 2 killed with SIGKILL (%d calls up on it)", perNode[victimIdx])

	// New calls, from the first instant after the kill, for 2 s.
	newLegs := &loadtest.Legs{}
	newRep := run(loadtest.Config{Caller: fmt.Sprintf("127.0.0.1:%d", newPBXPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[1]),
		Dialled: carrierNumber(1), Rate: 10, Calls: 20, Hold: 300 * time.Millisecond, Legs: newLegs})
	offered, lastOffer := dead.invites()
	cutoff := time.Duration(0)
	if offered > 0 {
		cutoff = lastOffer.Sub(killed)
	}
	t.Logf("new calls after the kill: %d of %d answered, setup p50 %.1f ms p99 %.1f ms max %.1f ms; %d offered to the dead port, the last %v after the kill (probe interval %v)",
		newRep.ByStatus["200"], newRep.Attempted, newRep.SetupMS.P50, newRep.SetupMS.P99, newRep.SetupMS.Max, offered, cutoff.Round(time.Millisecond), frontPingInterval)
	if newRep.ByStatus["200"] != newRep.Attempted {
		t.Errorf("new calls after the kill: %v; every one should have gone to a survivor", newRep.ByStatus)
	}
	if bound := frontPingInterval*time.Duration(1+frontThreshold) + frontFRTimer; cutoff > bound+time.Second {
		t.Errorf("the proxy offered new calls to the dead node for %v, past %v (+1 s slack)", cutoff, bound)
	}
	for _, l := range newLegs.Side(loadtest.CallerSide) {
		if l.Node == addr(victim) {
			t.Errorf("new call %s answered by the dead node's address %s", l.CallID, l.Node)
		}
	}

	longRep := <-longDone
	t.Logf("the 30 calls: %s", longRep)

	// Each of the dead node's calls: both legs' BYE from a survivor, in time.
	survivors := []string{addr(nodes[0]), addr(nodes[2])}
	callerLegs := legsByCallID(legs.Side(loadtest.CallerSide))
	carrierLegs := legsByCallID(legs.Side(loadtest.CarrierSide))
	bound := killed.Add(takeoverTTL + incr*time.Second + byeSlack)
	var reapedAfter []time.Duration
	deadCalls := map[string]bool{}
	for _, c := range up {
		if c.Index != victimIdx {
			continue
		}
		deadCalls[c.ID] = true
		cl, ok := callerLegs[c.InboundCall]
		if !ok || cl.Bye.IsZero() {
			t.Errorf("dead node's call %s: its PBX leg %s got no BYE", c.ID, c.InboundCall)
		} else {
			reapedAfter = append(reapedAfter, cl.Bye.Sub(killed))
			// Through the proxy: its Via on top, the sender's under it.
			if len(cl.ByeVia) < 2 || !slices.Contains(survivors, cl.ByeVia[1]) || !cl.ByeMatched {
				t.Errorf("dead node's call %s: PBX leg's BYE via %v (matched %v), want the proxy's then a survivor's %v", c.ID, cl.ByeVia, cl.ByeMatched, survivors)
			}
			if cl.Bye.After(bound) {
				t.Errorf("dead node's call %s: PBX leg's BYE %v after the kill, past TTL + increment + %v", c.ID, cl.Bye.Sub(killed).Round(time.Millisecond), byeSlack)
			}
		}
		kl, ok := carrierLegs[c.ID]
		if !ok || kl.Bye.IsZero() {
			t.Errorf("dead node's call %s: its carrier leg got no BYE", c.ID)
			continue
		}
		reapedAfter = append(reapedAfter, kl.Bye.Sub(killed))
		if !slices.Contains(survivors, kl.ByeFrom) || !kl.ByeMatched {
			t.Errorf("dead node's call %s: carrier leg's BYE from %s (matched %v), want a survivor's %v", c.ID, kl.ByeFrom, kl.ByeMatched, survivors)
		}
		if kl.Bye.After(bound) {
			t.Errorf("dead node's call %s: carrier leg's BYE %v after the kill, past TTL + increment + %v", c.ID, kl.Bye.Sub(killed).Round(time.Millisecond), byeSlack)
		}
	}
	t.Logf("the dead node's %d calls: BYEs (both legs) arrived after the kill: %s (bound %v)", len(deadCalls), stats(reapedAfter), bound.Sub(killed))

	// Before the restart: etcd's spent is the survivors' CDRs (the reaped
	// calls' among them) and the dead node's own from before the kill.
	cli := etcd.Client()
	defer cli.Close()
	var spentBefore decimal.Decimal
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		sum := decimal.Zero
		for _, c := range oldCDRs {
			sum = sum.Add(decimal.RequireFromString(c["charge"]))
		}
		for _, c := range allNodeCDRs(t, []*gateway{nodes[0], nodes[2]}) {
			sum = sum.Add(decimal.RequireFromString(c.cdr["charge"]))
		}
		st, err := cluster.Check(ctx, cli, clusterPrefix, 5*time.Second)
		must(t, err)
		if spentBefore = st.Orgs["acme"].Spent; spentBefore.Equal(sum) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("before the restart: etcd spent %s, the survivors' and the dead node's old CDRs %s", spentBefore, sum)
		}
	}

	// The books, with the dead node's own part once it is back: its
	// restart adds no CDR of a reaped call and no charge.
	dead.close()
	back := victim.restart()
	nodes[victimIdx] = back
	acme, cdrs := settledMoney(t, cli, nodes, answeredLegs(legs.Side(loadtest.CarrierSide))+answeredLegs(newLegs.Side(loadtest.CarrierSide))+6)
	time.Sleep(2 * time.Second) // a report interval or two for anything the restart would settle
	if acme, _ = settledMoney(t, cli, nodes, len(cdrs)); !acme.Spent.Equal(spentBefore) {
		t.Errorf("the restart changed etcd's spent: %s before, %s after", spentBefore, acme.Spent)
	}
	var survivorsOff []time.Duration
	answered := 0
	for id, l := range carrierLegs {
		if l.Answered.IsZero() {
			continue
		}
		answered++
		base := baseCallID(id, cdrs)
		c, ok := cdrs[base]
		if !ok {
			t.Errorf("answered call %s has no CDR on any node", id)
			continue
		}
		if deadCalls[base] {
			if c.Node == victimIdx || c.cdr["disconnect_reason"] != "node_failure" {
				t.Errorf("dead node's call %s: CDR on node %d %v, want node_failure on a survivor", base, c.Node+1, c.cdr)
			}
			continue
		}
		if c.cdr["disconnect_reason"] != "credit_exhausted" {
			t.Errorf("survivor's call %s: CDR %v, want credit_exhausted", base, c.cdr)
		}
		off := l.Bye.Sub(paidThrough(l, c.cdr))
		survivorsOff = append(survivorsOff, off)
		if off > meterSlack || off < -meterSlack {
			t.Errorf("survivor's call %s ended %v from its paid time (%s s billed; BYE at %s); logs:%s", base, off.Round(time.Millisecond), c.cdr["billed_s"],
				l.Bye.UTC().Format("15:04:05.000"), callLog(nodes, base))
		}
	}
	t.Logf("survivors' calls: carrier BYE − paid-through: %s", stats(survivorsOff))
	for _, l := range newLegs.Side(loadtest.CarrierSide) {
		if !l.Answered.IsZero() {
			answered++
		}
	}
	if len(cdrs) != answered+6 {
		t.Errorf("%d CDRs across the nodes for %d answered calls (+6 warm-up)", len(cdrs), answered)
	}
	funded := acme.Funded
	t.Logf("etcd: funded %s, spent %s = Σ %d CDR charges, unallocated %s, in slices %s",
		funded, acme.Spent, len(cdrs), acme.Unallocated, acme.Outstanding)

	// Back on its data: its old CDRs are there, no reaped call settled
	// again, and it takes calls.
	have := map[string]bool{}
	for _, c := range back.allCDRs() {
		have[c["call_id"]] = true
		if deadCalls[c["call_id"]] {
			t.Errorf("the restarted node settled reaped call %s again: %v", c["call_id"], c)
		}
	}
	for _, c := range oldCDRs {
		if !have[c["call_id"]] {
			t.Errorf("the restarted node lost its CDR %s from before the kill", c["call_id"])
		}
	}
	before := acme.Spent
	nodes[0].api("POST", "/v1/orgs/acme/credits", "", `{"amount":"5.00","idempotency_key":"fund-2"}`, 201, nil)
	// Each node reads the cluster's balance at most a report interval
	// late: the calls wait until every node sees the funding.
	visibleWithin(t, nodes, time.Now(), "second funding", func(g *gateway) bool {
		var org struct{ Balance string }
		return g.get("/v1/orgs/acme", &org) && decimal.RequireFromString(org.Balance).GreaterThanOrEqual(decimal.RequireFromString("5.00"))
	})
	againLegs := &loadtest.Legs{}
	again := run(loadtest.Config{Caller: fmt.Sprintf("127.0.0.1:%d", newPBXPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[1]),
		Dialled: carrierNumber(1), Rate: 10, Calls: 9, Hold: 300 * time.Millisecond, Legs: againLegs})
	took := 0
	for _, l := range againLegs.Side(loadtest.CallerSide) {
		if l.Node == addr(back) {
			took++
		}
	}
	t.Logf("after its restart: %d of 9 new calls on the restarted node (%v)", took, again.ByStatus)
	if again.ByStatus["200"] != 9 || took == 0 {
		t.Errorf("after the restart: %v, %d on the restarted node", again.ByStatus, took)
	}
	acme, cdrs = settledMoney(t, cli, nodes, answered+6+9)
	if len(cdrs) != answered+6+9 {
		t.Errorf("%d CDRs after 9 more calls, want %d", len(cdrs), answered+6+9)
	}
	if !acme.Funded.Equal(funded.Add(decimal.RequireFromString("5.00"))) || acme.Spent.LessThan(before) {
		t.Errorf("etcd after the restart: %+v; funded was %s, spent %s", acme, funded, before)
	}
}
