package e2e_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/loadtest"
)

// TestClusterChaos: for CHAOS_SECONDS (60 unless set; loadtest/chaos.sh
// runs it longer) a steady call rate goes through Kamailio to three nodes
// on a three-member etcd while, every few seconds, one of these happens
// (chosen at random; CHAOS_SEED replays a run): a node killed with SIGKILL
// and started again on its data once its lease is gone (2 TTLs + 0.5 s
// later); a node frozen with SIGSTOP for TTL + 1 s to 3 TTLs + 1 s (its
// lease expires and a survivor reaps its calls), continued, and restarted
// if it is out of service; an etcd member (the leader or not, as it
// falls) killed and started again on its data 2–4 s later. One thing at a time, so never more than one node
// or etcd member is down. At the end, with everything back:
//   - the money of record holds to the cent: funded = unallocated + Σ
//     slices + spent = Σ fundings, and spent = Σ of every node's CDR
//     charges;
//   - every answered call has exactly one CDR across the nodes;
//   - no call ran past what it paid: its carrier leg's BYE came within
//     50 ms of answer + billed, except a call whose node died or froze
//     under it, which a survivor ends not before its paid-through and at
//     most lease TTL + one increment + 0.5 s after its node went down
//     (or, settled by its own node's restart before any survivor reaped
//     it, when that node came back);
//
// and the counts are logged: calls, kills, pauses, etcd kills, reaped
// calls, failed call attempts.
func TestClusterChaos(t *testing.T) {
	kamailio := requireKamailio(t)
	seconds := 60
	if s := os.Getenv("CHAOS_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 10 || n > 24*3600 {
			t.Fatalf("CHAOS_SECONDS=%q: want whole seconds from 10 to 86400", s)
		}
		seconds = n
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: want an unsigned integer", s)
		}
		seed = n
	}
	rng := rand.New(rand.NewPCG(seed, 17))
	t.Logf("chaos for %d s, CHAOS_SEED=%d", seconds, seed)

	etcd := etcdtest.Start(t, 3)
	bin := buildBinary(t)
	frontPort, pbxPort, carrierPort := freePort(t), freePort(t), freePort(t)
	nodes := startCluster(t, bin, etcd.Endpoints(), 3,
		leaseConf(takeoverTTL, takeoverMargin, takeoverKeepalive)+frontConf(frontPort))
	// 1 s increments of 0.10; far more money than the run spends, so the
	// calls end when their callers hang up (or their node dies).
	setupClusterAcme(t, nodes, orgSetup{PBX: []string{fmt.Sprintf("127.0.0.1:%d", pbxPort)}, Carriers: []int{carrierPort},
		PerMinute: "6.00", Increment: 1, Funding: "100000.00"})
	var ports []int
	nodeAddrs := map[string]int{} // a node's SIP address → its index (restarts keep their ports)
	for i, g := range nodes {
		ports = append(ports, g.sipPort)
		nodeAddrs[fmt.Sprintf("127.0.0.1:%d", g.sipPort)] = i
	}
	front := startFront(t, kamailio, frontPort, ports)

	// 5 calls a second, each hung up by its caller 2.5 s after its answer:
	// mid-increment, so a hang-up never races an increment's boundary
	// (see TestClusterEtcdLeaderKilled).
	const rate = 5
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds)*time.Second+3*time.Minute)
	defer cancel()
	legs := &loadtest.Legs{}
	var addrs []string
	for _, g := range nodes {
		addrs = append(addrs, g.httpAddr) // a restarted node keeps its address
	}
	tracker := trackCalls(t, addrs, 200*time.Millisecond)
	loadDone := make(chan loadtest.Report, 1)
	var bg sync.WaitGroup // waited for even if the test stops early: it reports to t
	t.Cleanup(bg.Wait)
	bg.Go(func() {
		rep, err := loadtest.Run(ctx, loadtest.Config{Target: fmt.Sprintf("127.0.0.1:%d", front.port),
			Caller: fmt.Sprintf("127.0.0.1:%d", pbxPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carrierPort),
			Rate: rate, Calls: rate * seconds, Hold: 2500 * time.Millisecond, Dialled: carrierNumber(0), From: []string{"+12125550100"},
			SetupTimeout: 10 * time.Second, HangupTimeout: 5 * time.Second, Legs: legs}, nil)
		if err != nil {
			t.Errorf("load tool: %v", err)
		}
		loadDone <- rep
	})

	// The chaos, on the test's goroutine (restarts may fail the test),
	// until the load has placed its last call.
	var (
		kills, pauses, restartsFenced, etcdKills, leaderKills int
		// outages is, per node, when each of its incarnations stopped
		// serving (killed or frozen) and when it served again: a call
		// of that node ended inside such a window by its own restart is
		// the one overrun allowed besides a reaper's.
		outages = map[int][][2]time.Time{}
		// past is every node process the chaos replaced, for their logs.
		past []*gateway
		// elections: from each kill of the etcd leader to 3 s after it,
		// named in a failure message that falls inside one.
		elections [][2]time.Time
	)
	sleep := func(d time.Duration) bool {
		select {
		case <-time.After(d):
			return true
		case <-ctx.Done():
			return false
		}
	}
	var rep loadtest.Report
	// Leave the first seconds and the last few calm: the load starts, and
	// every call's end is observed with everything up.
	began := time.Now()
	chaosUntil := began.Add(time.Duration(seconds)*time.Second - 5*time.Second)
	sleep(3 * time.Second)
	for time.Now().Before(chaosUntil) && ctx.Err() == nil {
		i := rng.IntN(len(nodes))
		switch what := rng.IntN(3); what {
		case 0:
			g := nodes[i]
			from := g.kill9()
			kills++
			// Started again once its lease has expired and a survivor
			// had the time to reap its calls.
			sleep(2*takeoverTTL + 500*time.Millisecond)
			nodes[i] = g.restart()
			past = append(past, g)
			outages[i] = append(outages[i], [2]time.Time{from, time.Now()})
			t.Logf("%5.1fs (%s)  node %d killed, back after %v", from.Sub(began).Seconds(), from.UTC().Format(clockFmt), i+1, time.Since(from).Round(time.Millisecond))
		case 1:
			g := nodes[i]
			frozen := takeoverTTL + time.Second + time.Duration(rng.Int64N(int64(2*takeoverTTL)))
			from := time.Now()
			g.pause()
			pauses++
			sleep(frozen)
			g.resume()
			state := g.ready()
			if state != 200 {
				nodes[i] = g.restart()
				past = append(past, g)
				restartsFenced++
			}
			outages[i] = append(outages[i], [2]time.Time{from, time.Now()})
			t.Logf("%5.1fs (%s)  node %d frozen %v; /readyz after %d", from.Sub(began).Seconds(), from.UTC().Format(clockFmt), i+1, frozen.Round(time.Millisecond), state)
		default:
			m := etcd.Members[rng.IntN(len(etcd.Members))]
			role := "follower"
			lctx, lcancel := context.WithTimeout(ctx, 3*time.Second)
			if l, err := etcd.Leader(lctx); err == nil && l == m {
				role, leaderKills = "leader", leaderKills+1
			}
			lcancel()
			etcd.Kill(m)
			from := time.Now()
			if role == "leader" {
				elections = append(elections, [2]time.Time{from, from.Add(3 * time.Second)})
			}
			etcdKills++
			down := 2*time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
			sleep(down)
			etcd.Restart(m)
			t.Logf("%5.1fs (%s)  etcd %s (%s) killed, back after %v", from.Sub(began).Seconds(), from.UTC().Format(clockFmt), m.Name, role, down.Round(time.Millisecond))
		}
		sleep(time.Second + time.Duration(rng.Int64N(int64(2*time.Second))))
	}
	rep = <-loadDone
	pairs := tracker.pairs()

	// Everything back and every call ended: the books.
	for i, g := range nodes {
		if g.ready() != 200 {
			nodes[i] = g.restart()
			past = append(past, g)
		}
	}
	logOf := func(id string) string { return callLog(append(slices.Clone(past), nodes...), id) }
	cli := etcd.Client()
	defer cli.Close()
	acme, cdrs := settledMoney(t, cli, nodes, answeredLegs(legs.Side(loadtest.CarrierSide)))

	reasons := map[string]int{}
	for _, c := range cdrs {
		reasons[c.cdr["disconnect_reason"]]++
	}
	answered, reaped, restarted := 0, 0, 0
	var normal, reapedOver []time.Duration
	withAnswer := map[string]bool{}
	for _, l := range legs.Side(loadtest.CarrierSide) {
		if l.Answered.IsZero() {
			continue
		}
		answered++
		id := baseCallID(l.CallID, cdrs)
		withAnswer[id] = true
		c, ok := cdrs[id]
		if !ok {
			t.Errorf("answered call %s (node %s) has no CDR on any node; logs:%s", id, l.Node, logOf(id))
			continue
		}
		if l.Bye.IsZero() {
			t.Errorf("answered call %s (node %s) never got a BYE on its carrier leg; CDR %v; logs:%s", id, l.Node, c.cdr, logOf(id))
			continue
		}
		over := l.Bye.Sub(paidThrough(l, c.cdr))
		switch c.cdr["disconnect_reason"] {
		case "node_failure":
			reaped++
			reapedOver = append(reapedOver, over)
			// A survivor ends it at the end of what it paid, never
			// before; and, as for TestClusterKillNineBehindKamailio,
			// within lease TTL + one increment + 0.5 s of its node's
			// death or freeze.
			if over < -meterSlack {
				t.Errorf("reaped call %s (node %s) ended %v before its paid-through (BYE %s from %s); logs:%s",
					id, l.Node, (-over).Round(time.Millisecond), l.Bye.UTC().Format(clockFmt), l.ByeFrom, logOf(id))
			}
			death, ok := deathUnder(outages, nodeAddrs, l.Node, l.Bye)
			if !ok {
				t.Errorf("reaped call %s: its node %s had no death or freeze before its BYE at %s; logs:%s",
					id, l.Node, l.Bye.UTC().Format(clockFmt), logOf(id))
				break
			}
			if d := l.Bye.Sub(death); d > takeoverTTL+chaosIncrement+byeSlack {
				during := ""
				if inOutage(elections, l.Bye) {
					during = " during an etcd leader election"
				}
				t.Errorf("reaped call %s (node %s) got its BYE %v after its node went down%s: past lease TTL + one increment + %v (carrier answered %s, BYE %s from %s); logs:%s",
					id, l.Node, d.Round(time.Millisecond), during, byeSlack, l.Answered.UTC().Format(clockFmt), l.Bye.UTC().Format(clockFmt), l.ByeFrom, logOf(id))
			}
		case "gateway_restart":
			restarted++
			if !inOutage(outages[c.Node], l.Bye) {
				t.Errorf("call %s settled by its node's restart at %v, outside any outage of node %d", id, l.Bye, c.Node+1)
			}
		default:
			normal = append(normal, over)
			if r := c.cdr["disconnect_reason"]; r != "caller_hangup" {
				t.Logf("answered call %s ended %s (CDR %v); logs:%s", id, r, c.cdr, logOf(id))
			}
			if over > meterSlack {
				during := ""
				if inOutage(elections, l.Bye) {
					during = " during an etcd leader election"
				}
				t.Errorf("call %s ran %v past what it paid%s (carrier answered %s, BYE %s; CDR %v); logs:%s", id, over.Round(time.Millisecond), during,
					l.Answered.UTC().Format(clockFmt), l.Bye.UTC().Format(clockFmt), c.cdr, logOf(id))
			}
		}
	}
	for id, c := range cdrs {
		if c.cdr["answer"] != "" && !withAnswer[id] {
			t.Errorf("CDR of call %s on node %d says answered, but no carrier answered it: %v", id, c.Node+1, c.cdr)
		}
	}
	failed := map[string]int{}
	for k, v := range rep.ByStatus {
		if k != "200" {
			failed[k] = v
		}
	}
	var failedKeys []string
	for k, v := range failed {
		failedKeys = append(failedKeys, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(failedKeys)
	t.Logf("chaos %d s (CHAOS_SEED=%d): %d calls attempted, %d answered, %d CDRs %v; %d node kills, %d pauses (%d left fenced and restarted), %d etcd member kills (%d of the leader); %d calls reaped by a survivor, %d settled by their node's restart; failed call attempts: %d (%s)",
		seconds, seed, rep.Attempted, answered, len(cdrs), reasons, kills, pauses, restartsFenced, etcdKills, leaderKills, reaped, restarted,
		rep.Attempted-rep.ByStatus["200"], strings.Join(failedKeys, ", "))
	t.Logf("carrier BYE − paid-through, calls ended on their own node: %s; reaped calls: %s",
		stats(normal), stats(reapedOver))
	var relayCalm, relayElection []time.Duration
	hungAt, relays := hangupRelays(pairs, legs, cdrs)
	for i, at := range hungAt {
		if inOutage(elections, at) {
			relayElection = append(relayElection, relays[i])
		} else {
			relayCalm = append(relayCalm, relays[i])
		}
	}
	t.Logf("caller's BYE → carrier's BYE: within 3 s of an etcd leader's kill %s; otherwise %s", stats(relayElection), stats(relayCalm))
	t.Logf("setup latency over the run: p50 %.1f ms p99 %.1f ms max %.1f ms", rep.SetupMS.P50, rep.SetupMS.P99, rep.SetupMS.Max)
	t.Logf("etcd at the end: funded %s, unallocated %s, in %d slices %s, spent %s = Σ CDR charges",
		acme.Funded, acme.Unallocated, acme.Slices, acme.Outstanding, acme.Spent)
	if answered == 0 || kills+pauses+etcdKills == 0 {
		t.Fatalf("nothing happened: %d calls answered, %d actions", answered, kills+pauses+etcdKills)
	}
}

// chaosIncrement is the billing increment of the chaos run's calls.
const chaosIncrement = time.Second

// deathUnder is when the node at addr last went down (killed or frozen)
// at or before at: the start of its latest outage window that began by
// then. ok is false if it never went down by then.
func deathUnder(outages map[int][][2]time.Time, addrs map[string]int, addr string, at time.Time) (time.Time, bool) {
	i, known := addrs[addr]
	if !known {
		return time.Time{}, false
	}
	var death time.Time
	for _, w := range outages[i] {
		if !w[0].After(at) && w[0].After(death) {
			death = w[0]
		}
	}
	return death, !death.IsZero()
}

// clockFmt is how the chaos log writes an instant, to match the nodes'.
const clockFmt = "15:04:05.000"

// inOutage: at falls in one of the windows (a node's death or freeze to
// its service again), with a second's slack for its restart's BYEs.
func inOutage(windows [][2]time.Time, at time.Time) bool {
	for _, w := range windows {
		if !at.Before(w[0]) && !at.After(w[1].Add(time.Second)) {
			return true
		}
	}
	return false
}
