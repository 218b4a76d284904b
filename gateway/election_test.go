package gateway

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// cluster.Books is the ledger the gateway waits for without a call's lock.
var _ pendingBooks = (*cluster.Books)(nil)

// electionDeck: 6.00 a minute in 1 s increments, 0.10 an increment.
const electionDeck = deckHeader + "44,GB,United Kingdom,geographic,6.00,,1,1\n"

// clusterEnv is one cluster node as the binary wires it (cluster.Node,
// Replica, Books over a Pebble ledger in t.TempDir()) under a gateway on
// loopback, with a carrier and two PBXs (one per org), on every member of
// etcd.
type clusterEnv struct {
	t             *testing.T
	node          *cluster.Node
	local         *ledger.Ledger
	books         *cluster.Books
	gw            *Gateway
	carrier       *carrier
	rich, lean    *phone
	richN, leanN  string
	etcd          *etcdtest.Cluster
	closeAll      func()
	closedGateway bool
	closedBooks   bool
}

func newClusterEnv(t *testing.T, etcd *etcdtest.Cluster) *clusterEnv {
	t.Helper()
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second})
	must(t, err)
	// A 10 s lease: the pause below (about 2 s) stays far inside the
	// node's local deadline, so nothing here is about fencing.
	n, err := cluster.Join(ctx, cli, cluster.Config{Prefix: "/creditgate/", NodeID: "n1", LeaseTTL: 10 * time.Second,
		Margin: 2 * time.Second, KeepAliveEvery: 500 * time.Millisecond, OpTimeout: 5 * time.Second}, clock.Real{})
	must(t, err)
	local, err := ledger.Open(t.TempDir(), ledger.Options{Logger: quietLog(), MinFunding: decimal.RequireFromString("0.10")})
	must(t, err)
	rep, err := cluster.NewReplica(ctx, n, local, quietLog())
	must(t, err)
	p := cluster.DefaultSlicePolicy()
	// Slices of 100.00: the rich org's calls are paid from the node's
	// slice throughout (no grant needed during the pause).
	p.MinSlice = decimal.RequireFromString("100.00")
	books, err := cluster.NewBooks(n, local, rep, p, clock.Real{}, quietLog())
	must(t, err)
	deck, err := rating.ParseDeck(strings.NewReader(electionDeck))
	must(t, err)
	e := &clusterEnv{t: t, node: n, local: local, books: books, etcd: etcd,
		carrier: newCarrier(t), rich: newPhone(t), lean: newPhone(t), richN: "12125550100", leanN: "12125550199"}
	must(t, books.PutTrunk(ledger.Trunk{ID: "carrier", Kind: rating.TrunkCarrier, URI: "sip:" + e.carrier.addr, Prefixes: []string{""}}))
	for _, o := range []struct {
		id, number string
		pbx        *phone
	}{{"rich", e.richN, e.rich}, {"lean", e.leanN, e.lean}} {
		_, err := books.CreateOrg(ledger.Org{ID: o.id, Name: o.id, Country: "US", Region: "r", BillingRegion: "r"})
		must(t, err)
		must(t, books.PutTrunk(ledger.Trunk{ID: "pbx-" + o.id, Kind: rating.TrunkCustomer, Org: o.id, Addresses: []string{o.pbx.addr}}))
		must(t, books.PutUser(ledger.User{Org: o.id, ID: "alice", Numbers: []string{o.number}, Licenses: []string{"communications_credits"}}))
	}
	e.gw, err = New(testConfig(), books, deck, clock.Real{}, prometheus.NewRegistry(), quietLog())
	must(t, err)
	must(t, e.gw.Start())
	e.closeAll = func() {
		if !e.closedGateway {
			e.gw.Close()
		}
		e.rich.close()
		e.lean.close()
		e.carrier.close()
		if !e.closedBooks {
			_ = books.Close(context.Background())
		}
		_ = rep.Close()
		_ = n.Close(context.Background())
		local.Close()
		cli.Close()
	}
	t.Cleanup(func() { e.closeAll() })
	return e
}

// up is one answered call of the test: its session on the PBX's side, its
// id (the carrier leg's Call-ID, the CDR's call_id) and when it answered.
type up struct {
	sess     *sipgo.DialogClientSession
	id       string
	answered time.Time
}

func (e *clusterEnv) dial(pbx *phone, from string) up {
	e.t.Helper()
	before := map[string]bool{}
	for _, c := range e.gw.Calls() {
		before[c.ID] = true
	}
	sess, status, _ := pbx.dial(e.gw.Addr(), "+"+from, "+442079460018")
	if status != 200 {
		e.t.Fatalf("call from %s refused with %d", from, status)
	}
	var u up
	eventually(e.t, "call listed", func() bool {
		for _, c := range e.gw.Calls() {
			if !before[c.ID] && c.State == "answered" {
				u = up{sess: sess, id: c.ID, answered: c.Answer}
				return true
			}
		}
		return false
	})
	return u
}

func (e *clusterEnv) increment(id string) int {
	for _, c := range e.gw.Calls() {
		if c.ID == id {
			return c.Increment
		}
	}
	return -1
}

func (e *clusterEnv) byeAt(id string) (time.Time, bool) {
	v, ok := e.carrier.byeAt.Load(id)
	if !ok {
		return time.Time{}, false
	}
	return v.(time.Time), true
}

// TestStepsThroughEtcdLeaderPause (issue 17): calls step through the loss
// of the etcd leader (SIGSTOPped for about 2 s, then continued), with real
// etcd (3 members), the binary's cluster parts (Node, Replica, Books on
// Pebble) and real SIP over loopback.
//
//   - Hang-ups during a pending step: six calls of a well-funded org,
//     answered a sixth of a second apart, step every second. Once a call
//     has stepped after the pause began (its takeover record queued, and
//     no record batch has landed since), its caller hangs up. At least one
//     such hang-up's BYE must reach the carrier before the first record
//     batch lands after the pause: the BYE did not wait for etcd. Before
//     the step's record was waited for outside the call's lock, none
//     could. The hang-up-to-BYE times are logged.
//   - The calls kept being metered from the node's slice through the
//     pause: each is billed more than the increments it had at the pause.
//   - A call of an org funded for 3 increments (0.30), answered so that
//     its money runs out during the pause: it ends billed 3 s (0.30), and
//     how far past its paid time its BYE left is logged
//     (the refusal needs etcd — the org's money of record is there — so
//     it comes once etcd answers; README, "Metering during an etcd leader
//     election").
//   - Money to the cent: every CDR is billed_s × 0.10, and, with the slices
//     given back, etcd's spent is the sum of the CDRs' charges and funded
//     = unallocated + spent for both orgs.
func TestStepsThroughEtcdLeaderPause(t *testing.T) {
	etcd := etcdtest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := newClusterEnv(t, etcd)
	_, err := e.books.FundAcrossRegions("rich", decimal.RequireFromString("500.00"), "f-rich", "")
	must(t, err)
	_, err = e.books.FundAcrossRegions("lean", decimal.RequireFromString("0.30"), "f-lean", "")
	must(t, err)

	var calls []up
	for range 6 {
		calls = append(calls, e.dial(e.rich, e.richN))
		time.Sleep(time.Second / 6)
	}
	// Let every call step a few times with etcd healthy (records land).
	time.Sleep(2 * time.Second)
	// The lean call's 0.30 pays 3 s: answered 2.2 s before the pause, its
	// money runs out about 0.8 s into it.
	lean := e.dial(e.lean, e.leanN)
	time.Sleep(2200 * time.Millisecond)
	leader, err := etcd.Leader(ctx)
	must(t, err)

	e.etcd.Pause(leader)
	paused := time.Now()
	// Continued 2 s later whatever the test is doing then (the lean
	// call's money runs out inside the pause).
	resumedAt := make(chan time.Time, 1)
	resume := time.AfterFunc(2*time.Second, func() {
		e.etcd.Continue(leader)
		resumedAt <- time.Now()
	})
	defer func() {
		if resume.Stop() {
			e.etcd.Continue(leader)
		}
	}()
	// A batch whose answer was on its way when the member stopped lands
	// within this; none can after.
	time.Sleep(100 * time.Millisecond)
	atPause := map[string]int{}
	for _, c := range calls {
		atPause[c.id] = e.increment(c.id)
	}
	batches := e.books.RecordStats().Batches

	// Hang up each call once it stepped after the pause (its step's record
	// queued, unable to land while no batch lands); each hang-up in a
	// goroutine of its own, so that one slow transaction delays no other.
	// firstLanded is when the recorder's first batch after the pause
	// returned (polled every 5 ms).
	hungUp := map[string]time.Time{}
	var firstLanded time.Time
	var byes sync.WaitGroup
	for len(hungUp) < len(calls) && firstLanded.IsZero() && time.Since(paused) < 2*time.Second {
		if firstLanded.IsZero() && e.books.RecordStats().Batches != batches {
			firstLanded = time.Now()
		}
		for _, c := range calls {
			if _, done := hungUp[c.id]; done || !firstLanded.IsZero() || e.increment(c.id) <= atPause[c.id] {
				continue
			}
			hungUp[c.id] = time.Now()
			byes.Go(func() {
				bctx, bcancel := context.WithTimeout(ctx, 5*time.Second)
				defer bcancel()
				if err := c.sess.Bye(bctx); err != nil {
					t.Errorf("caller's BYE of %s: %v", c.id, err)
				}
			})
		}
		time.Sleep(5 * time.Millisecond)
	}
	byes.Wait()
	if firstLanded.IsZero() {
		firstLanded = time.Now()
	}
	eventually(t, "the carrier gets every hung-up call's BYE", func() bool {
		for id := range hungUp {
			if _, ok := e.byeAt(id); !ok {
				return false
			}
		}
		return true
	})
	var byeLatency []time.Duration
	beforeLanding := 0
	for id, at := range hungUp {
		bye, _ := e.byeAt(id)
		byeLatency = append(byeLatency, bye.Sub(at))
		if bye.Before(firstLanded) {
			beforeLanding++
		}
	}
	if beforeLanding == 0 {
		t.Fatalf("no hang-up's BYE reached the carrier before the first record batch landed after the pause (%v in): the test showed nothing",
			firstLanded.Sub(paused).Round(time.Millisecond))
	}
	slices.Sort(byeLatency)
	t.Logf("hang-ups of calls whose step's record was pending (%d of %d hung up; their BYEs at the carrier before any record landed, %v after the pause): caller BYE sent → carrier BYE received: min %v, median %v, max %v",
		beforeLanding, len(hungUp), firstLanded.Sub(paused).Round(time.Millisecond),
		byeLatency[0].Round(time.Microsecond), byeLatency[len(byeLatency)/2].Round(time.Microsecond), byeLatency[len(byeLatency)-1].Round(time.Microsecond))

	resumed := <-resumedAt
	t.Logf("etcd member %s paused for %v", leader.Name, resumed.Sub(paused).Round(time.Millisecond))

	for _, c := range calls {
		if _, done := hungUp[c.id]; !done {
			bctx, bcancel := context.WithTimeout(ctx, 5*time.Second)
			must(t, c.sess.Bye(bctx))
			bcancel()
		}
	}
	eventually(t, "the lean call ends", func() bool { _, ok := e.byeAt(lean.id); return ok })
	eventually(t, "every call settled", func() bool {
		n := 0
		for _, org := range []string{"rich", "lean"} {
			cs, err := e.local.CDRs(org, time.Time{}, time.Time{})
			must(t, err)
			n += len(cs)
		}
		return n == len(calls)+1
	})

	charged := map[string]decimal.Decimal{}
	for _, org := range []string{"rich", "lean"} {
		cs, err := e.local.CDRs(org, time.Time{}, time.Time{})
		must(t, err)
		for _, cdr := range cs {
			want := decimal.New(int64(cdr.BilledS), 0).Mul(decimal.RequireFromString("0.10"))
			if !cdr.Charge.Equal(want) {
				t.Errorf("call %s: charged %s for %d s billed, want %s", cdr.CallID, cdr.Charge, cdr.BilledS, want)
			}
			charged[org] = charged[org].Add(cdr.Charge)
			if cdr.CallID == lean.id {
				bye, _ := e.byeAt(lean.id)
				paidThrough := lean.answered.Add(time.Duration(cdr.BilledS) * time.Second)
				t.Logf("lean call: %s, billed %d s (%s); its BYE left %v after its paid time (paid time %v into the pause, etcd continued %v into it)",
					cdr.DisconnectReason, cdr.BilledS, cdr.Charge, bye.Sub(paidThrough).Round(time.Millisecond),
					paidThrough.Sub(paused).Round(time.Millisecond), resumed.Sub(paused).Round(time.Millisecond))
				// credit_exhausted once etcd said so; failed if the node's
				// etcd request timed out first (its op timeout): billed
				// what it paid either way.
				if cdr.BilledS != 3 || cdr.DisconnectReason != ledger.ReasonCreditExhausted && cdr.DisconnectReason != ledger.ReasonFailed {
					t.Errorf("lean call: CDR %+v, want 3 s billed, credit exhausted (or failed)", cdr)
				}
				continue
			}
			if cdr.DisconnectReason != ledger.ReasonCallerHangup {
				t.Errorf("call %s ended %s, want caller_hangup", cdr.CallID, cdr.DisconnectReason)
			}
			if got := cdr.BilledS; got <= atPause[cdr.CallID] {
				t.Errorf("call %s billed %d s, no more than the %d increments it had at the pause: it was not metered through it", cdr.CallID, got, atPause[cdr.CallID])
			}
		}
	}

	// The money of record: the node's slices given back (Books.Close after
	// the gateway's), etcd's spent is what the CDRs charged.
	e.gw.Close()
	e.closedGateway = true
	e.closedBooks = true
	must(t, e.books.Close(ctx))
	accts, err := e.node.ReadAccounts(ctx, []string{"rich", "lean"})
	must(t, err)
	for org, funded := range map[string]string{"rich": "500.00", "lean": "0.30"} {
		a := accts[org]
		if !a.Funded.Equal(decimal.RequireFromString(funded)) || !a.Spent.Equal(charged[org]) || !a.Unallocated.Add(a.Spent).Equal(a.Funded) {
			t.Errorf("org %s in etcd: %+v; want funded %s, spent %s (the CDRs), unallocated + spent = funded", org, a, funded, charged[org])
		}
	}
	t.Logf("money: %s", fmt.Sprint(accts))
}
