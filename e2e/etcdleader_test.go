package e2e_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/loadtest"
)

// TestClusterEtcdLeaderKilled: three creditgate nodes on a three-member
// etcd (separate etcd processes), a steady load of calls through every
// node, and the etcd leader killed with SIGKILL a third of the way in.
// The calls up go on being metered from their nodes' slices: none is
// ended by the gateway (every one ends when its caller hangs up), none
// runs past what it paid (its carrier leg's BYE no later than answer +
// billed + 50 ms, through the election too: a step's takeover record is
// waited for without the call's lock, so a hang-up meanwhile is relayed
// at once) and none is billed more than the increment it was in.
// New calls see the election at most as added setup latency: every call
// is answered, and the setup latency before, during and after the
// election is logged. The money adds up to the cent: etcd's spent equals
// the sum of every node's CDR charges and funded = unallocated + Σ slices
// + spent = Σ fundings.
func TestClusterEtcdLeaderKilled(t *testing.T) {
	etcd := etcdtest.Start(t, 3)
	bin := buildBinary(t)
	nodes := startCluster(t, bin, etcd.Endpoints(), 3, "")
	carriers := []int{freePort(t), freePort(t), freePort(t)}
	// 6.00 a minute in 1 s increments; 1000.00 is far more than the run
	// spends, so every node spends from a slice it holds.
	setupClusterAcme(t, nodes, orgSetup{PBX: []string{"127.0.0.1"}, Carriers: carriers, PerMinute: "6.00", Increment: 1, Funding: "1000.00"})

	const (
		perNode = 4 // calls a second through each node
		seconds = 24
		// Hung up mid-increment: a hang-up a hair after a boundary whose
		// timer has not run yet is billed without the increment it
		// started (the gateway's race, not the election's), which a
		// whole number of seconds would meet on every busy run.
		hold = 4500 * time.Millisecond
		late = 50 * time.Millisecond
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	legs := &loadtest.Legs{}
	var addrs []string
	for _, g := range nodes {
		addrs = append(addrs, g.httpAddr)
	}
	tracker := trackCalls(t, addrs, 200*time.Millisecond)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // even if the test stops early: the load tools report to t
	reports := make([]loadtest.Report, len(nodes))
	for i, g := range nodes {
		wg.Go(func() {
			rep, err := loadtest.Run(ctx, loadtest.Config{Target: fmt.Sprintf("127.0.0.1:%d", g.sipPort),
				Carrier: fmt.Sprintf("127.0.0.1:%d", carriers[i]), Rate: perNode, Calls: perNode * seconds,
				Hold: hold, Dialled: carrierNumber(i), From: []string{"+12125550100"},
				SetupTimeout: 10 * time.Second, HangupTimeout: 5 * time.Second, Legs: legs}, nil)
			if err != nil {
				t.Errorf("load tool on node %d: %v", i+1, err)
			}
			reports[i] = rep
		})
	}

	// A third of the way in, with about perNode × hold calls up on each
	// node, the leader dies.
	time.Sleep(seconds * time.Second / 3)
	leader, err := etcd.Leader(ctx)
	must(t, err)
	etcd.Kill(leader)
	killed := time.Now()
	next, err := etcd.Leader(ctx)
	must(t, err)
	elected := time.Now()
	t.Logf("etcd leader %s killed with calls up; %s leads after %v", leader.Name, next.Name, elected.Sub(killed).Round(time.Millisecond))
	wg.Wait()
	pairs := tracker.pairs()

	var before, during, after []time.Duration
	failed := map[string]int{}
	for _, l := range legs.Side(loadtest.CallerSide) {
		if l.Status != "200" {
			failed[l.Status]++
			continue
		}
		setup := l.Answered.Sub(l.Due)
		switch {
		case l.Due.Before(killed):
			before = append(before, setup)
		case l.Due.Before(elected.Add(time.Second)):
			during = append(during, setup)
		default:
			after = append(after, setup)
		}
		if l.EndedByGateway() {
			t.Errorf("caller leg %s on %s was ended by the gateway %v after its answer, before its caller hung up: a call up was not metered through the election",
				l.CallID, l.Node, l.Bye.Sub(l.Answered).Round(time.Millisecond))
		}
	}
	t.Logf("setup latency (due → 200), before the kill: %s", stats(before))
	t.Logf("setup latency, due from the kill to 1 s after the new leader (%v): %s", elected.Add(time.Second).Sub(killed).Round(time.Millisecond), stats(during))
	t.Logf("setup latency, after: %s", stats(after))
	for i, r := range reports {
		t.Logf("node %d: attempted %d answered %d failed %d %v", i+1, r.Attempted, r.Answered, r.Failed, r.ByStatus)
	}
	if len(failed) > 0 {
		var logs strings.Builder
		for _, g := range nodes {
			logs.WriteString(g.warnings(8))
		}
		t.Errorf("call attempts failed across the election: %v; the nodes' first warnings:%s", failed, logs.String())
	}
	if len(during) == 0 {
		t.Fatal("no call was set up while the leader was being replaced: the test did not test it")
	}

	// The books: etcd has every CDR's charge, and the CDRs are each call's.
	cli := etcd.Client()
	defer cli.Close()
	acme, cdrs := settledMoney(t, cli, nodes, answeredLegs(legs.Side(loadtest.CarrierSide)))
	carrierLegs := legs.Side(loadtest.CarrierSide)
	answered := 0
	var overrun []time.Duration
	for _, l := range carrierLegs {
		if l.Answered.IsZero() {
			continue
		}
		answered++
		c, ok := cdrs[baseCallID(l.CallID, cdrs)]
		if !ok {
			t.Errorf("answered call %s (node %s) has no CDR on any node", l.CallID, l.Node)
			continue
		}
		billed, _ := strconv.Atoi(c.cdr["billed_s"])
		// Not duration_s ≤ billed_s: duration_s is rounded up, so a hang-up
		// a fraction of a millisecond after a boundary whose timer has not
		// run yet shows one second more than it paid; the BYE's time
		// below bounds that overrun instead.
		if c.cdr["disconnect_reason"] != "caller_hangup" {
			t.Errorf("call %s: CDR %v: want caller_hangup", l.CallID, c.cdr)
		}
		if !decimal.RequireFromString(c.cdr["charge"]).Equal(decimal.New(int64(billed), -1)) {
			t.Errorf("call %s: CDR %v: charge is not billed_s × 0.10", l.CallID, c.cdr)
		}
		if l.Bye.IsZero() {
			t.Errorf("call %s: its carrier leg got no BYE", l.CallID)
			continue
		}
		ran := l.Bye.Sub(l.Answered)
		over := l.Bye.Sub(paidThrough(l, c.cdr))
		overrun = append(overrun, over)
		if over > late {
			during := ""
			if !l.Bye.Before(killed) && l.Bye.Before(killed.Add(3*time.Second)) {
				during = ", during the election"
			}
			t.Errorf("call %s ran %v, %v past the %s s it paid%s", l.CallID, ran.Round(time.Millisecond), over.Round(time.Millisecond), c.cdr["billed_s"], during)
		}
		if ran+time.Second < time.Duration(billed)*time.Second {
			t.Errorf("call %s ran %v and was billed %s s: more than the increment it was in", l.CallID, ran.Round(time.Millisecond), c.cdr["billed_s"])
		}
	}
	if answered != len(cdrs) {
		t.Errorf("%d calls answered at the carriers, %d CDRs across the nodes", answered, len(cdrs))
	}
	t.Logf("%d calls answered, %d CDRs; carrier BYE − paid-through (negative: the caller hung up inside the paid increment): %s",
		answered, len(cdrs), stats(overrun))
	// How long a caller's hang-up took to reach the carrier, by when it
	// happened: a step waiting for its takeover record through the
	// election no longer holds the call's end behind it.
	var relayBefore, relayDuring, relayAfter []time.Duration
	hungAt, relays := hangupRelays(pairs, legs, cdrs)
	for i, at := range hungAt {
		switch {
		case at.Before(killed):
			relayBefore = append(relayBefore, relays[i])
		case at.Before(elected.Add(time.Second)):
			relayDuring = append(relayDuring, relays[i])
		default:
			relayAfter = append(relayAfter, relays[i])
		}
	}
	t.Logf("caller's BYE → carrier's BYE (%d of %d calls paired): before the kill %s; from the kill to 1 s after the new leader %s; after %s",
		len(relays), answered, stats(relayBefore), stats(relayDuring), stats(relayAfter))
	t.Logf("etcd at the end: funded %s, unallocated %s, in %d slices %s, spent %s = Σ CDR charges",
		acme.Funded, acme.Unallocated, acme.Slices, acme.Outstanding, acme.Spent)

	// The killed member comes back on its data and the cluster has it.
	etcd.Restart(leader)
	if _, err := cli.Put(ctx, clusterPrefix+"e2e-after-restart", "1"); err != nil {
		t.Fatalf("etcd after the old leader came back: %v", err)
	}
}
