package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// legLog records the reaper's LegEnder calls: which call, when, by whom.
type legLog struct {
	mu    sync.Mutex
	calls []legCall
}

type legCall struct {
	id, by string
	at     time.Time
	dialog json.RawMessage
}

func (l *legLog) ender(by string) LegEnder {
	return func(_ context.Context, id string, dialog json.RawMessage) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.calls = append(l.calls, legCall{id: id, by: by, at: time.Now(), dialog: dialog})
		return nil
	}
}

func (l *legLog) snapshot() []legCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]legCall(nil), l.calls...)
}

// rejoin restarts the spender the way cmd/creditgate does in cluster mode:
// join, claim its earlier incarnations, open the ledger with the calls
// survivors settled, start the Books.
func (s *spender) rejoin(t testing.TB, shared *testShared, p SlicePolicy, clk clock.Clock) *Rejoin {
	t.Helper()
	cfg := testConfig(s.id)
	cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery = 10*time.Second, 2*time.Second, time.Second
	n, err := Join(context.Background(), s.cli, cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	rj, err := n.ClaimOwn(context.Background())
	if err != nil {
		t.Fatalf("claim own %s: %v", s.id, err)
	}
	s.local, err = ledger.Open(s.dir, ledger.Options{MinFunding: dec("1.00"), Logger: quiet(), Plans: poolPlans(),
		SettledElsewhere: rj.SettledElsewhere})
	if err != nil {
		t.Fatal(err)
	}
	shared.mu.Lock()
	shared.ledgers[s.index] = s.local
	shared.mu.Unlock()
	s.node = n
	if s.books, err = NewBooks(n, s.local, shared, p, clk, quiet()); err != nil {
		t.Fatalf("books %s: %v", s.id, err)
	}
	return rj
}

// cdrsOf lists a ledger's CDRs of org by call id.
func cdrsOf(t testing.TB, l *ledger.Ledger, org string) map[string]ledger.CDR {
	t.Helper()
	out := map[string]ledger.CDR{}
	if err := l.EachCDR(org, time.Time{}, time.Time{}, func(c *ledger.CDR) error {
		out[c.CallID] = *c
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func sumCharges(cdrs ...map[string]ledger.CDR) decimal.Decimal {
	s := decimal.Zero
	for _, m := range cdrs {
		for _, c := range m {
			s = s.Add(c.Charge)
		}
	}
	return s
}

// waitClaimDone waits until the claim on (node, epoch) is done.
func waitClaimDone(t testing.TB, n *Node, node string, epoch int64, within time.Duration) *claim {
	t.Helper()
	limit := time.Now().Add(within)
	for {
		cl, _, err := n.readClaim(context.Background(), n.k.reap(node, epoch))
		if err != nil {
			t.Fatal(err)
		}
		if cl != nil && cl.Done {
			return cl
		}
		if time.Now().After(limit) {
			t.Fatalf("claim on %s epoch %d not done after %s: %+v", node, epoch, within, cl)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countKeys(t testing.TB, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// TestReapDeadNode: node n0 dies (its lease revoked, nothing given back,
// as kill -9 leaves it) with calls at every stage: up with spend after its
// last report, up on a pool, up with its paid time still running, closed
// after the report, closed with a refund after the report, unanswered.
// Two survivors race to reap it: exactly one claims it, the legs of each
// call that was up are ended once, at the end of what it paid (at once if
// past), its CDR is adopted by the reaper with reason node_failure and the
// charge committed + held, and etcd's spent equals the sum of every CDR's
// charge across the ledgers to the cent, the invariant holding. Then n0
// restarts on its data directory: it settles none of the reaped calls
// again (no CDR, no charge; closing one answers ErrCallEnded), its ledger's
// invariants hold, and it serves again.
func TestReapDeadNode(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	p := fastPolicy()
	p.ReportEvery = time.Hour // reports only where the test ticks
	sp, shared := startSpendersOn(t, openPoolLedger, ec.Client, 3, p, clock.Real{})
	createOrg(t, shared, "acme")
	licenseUsers(t, shared, "acme")
	funded := dec("50.00")
	if _, err := sp[1].books.FundAcrossRegions("acme", funded, "f1", ""); err != nil {
		t.Fatal(err)
	}
	a := sp[0].books
	past := time.Now().Add(-10 * time.Minute)
	open := func(c ledger.Call, at time.Time) ledger.Call {
		t.Helper()
		if _, err := a.OpenCall(c, at); err != nil {
			t.Fatal(err)
		}
		if err := a.AnswerDialog(c.ID, at, json.RawMessage(`{"call":"`+c.ID+`"}`)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	step := func(c ledger.Call, from, to int, at time.Time, live ledger.Liveness) {
		t.Helper()
		for i := from; i <= to; i++ {
			if _, err := a.StepAlive(c.ID, i, at.Add(time.Duration(6*i)*time.Second), live); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Before the report.
	upLate := open(testCall("acme"), past)
	step(upLate, 1, 3, past, ledger.Liveness{})
	closedLate := open(testCall("acme"), past)
	step(closedLate, 1, 2, past, ledger.Liveness{})
	refunded := open(testCall("acme"), past)
	step(refunded, 1, 4, past, ledger.Liveness{Alive: past})
	closedEarly := open(testCall("acme"), past)
	step(closedEarly, 1, 2, past, ledger.Liveness{})
	if _, err := a.CloseCall(closedEarly.ID, ledger.CallEnd{At: past.Add(time.Minute), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	spend(t, sp[1].books, 3, past, time.Time{})
	a.Tick()
	sp[1].books.Tick()
	// After it.
	step(upLate, 4, 5, past, ledger.Liveness{})
	step(closedLate, 3, 3, past, ledger.Liveness{})
	if _, err := a.CloseCall(closedLate.ID, ledger.CallEnd{At: past.Add(time.Minute), Reason: ledger.ReasonCalleeHangup}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CloseCall(refunded.ID, ledger.CallEnd{At: past.Add(time.Minute), Reason: ledger.ReasonLegLost, BillTo: past}); err != nil {
		t.Fatal(err)
	}
	onPool := open(poolCall("acme", "u1", true), past)
	step(onPool, 1, 1, past.Add(54*time.Second), ledger.Liveness{})
	unanswered := testCall("acme")
	if _, err := a.OpenCall(unanswered, past); err != nil {
		t.Fatal(err)
	}
	running := open(testCall("acme"), time.Now()) // paid until 6 s from now
	paidUntil := time.Now().Add(6 * time.Second)

	deadCDRs := cdrsOf(t, sp[0].local, "acme")
	deadEpoch := sp[0].node.Epoch()
	stats := a.RecordStats()
	t.Logf("records before the crash: %+v", stats)
	if stats.Live != 6-1 { // closedEarly's record was covered by the report and deleted
		t.Errorf("n0 keeps %d records, want 5: %+v", stats.Live, stats)
	}
	sp[0].crash(t)

	// Two survivors race.
	var legs legLog
	for _, s := range sp[1:] {
		s.books.SetLegEnder(legs.ender(s.id))
		s.books.StartReaper()
	}
	cl := waitClaimDone(t, sp[1].node, "n0", deadEpoch, 30*time.Second)
	// The reaper counts the reap once its last step landed: just after.
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		i1, _ := sp[1].books.Reaped()
		i2, _ := sp[2].books.Reaped()
		if i1+i2 > 0 {
			break
		}
	}
	var reaper *spender
	for _, s := range sp[1:] {
		if inc, calls := s.books.Reaped(); inc == 1 {
			if reaper != nil {
				t.Fatalf("both %s and %s reaped", reaper.id, s.id)
			}
			reaper = s
			if calls != 3 {
				t.Errorf("%s reaped %d calls, want 3", s.id, calls)
			}
		}
	}
	if reaper == nil || cl.By != reaper.id {
		t.Fatalf("claim %+v, reaper %v", cl, reaper)
	}
	// Legs: each call that was up, once, at the end of what it paid.
	deadline := time.Now().Add(20 * time.Second)
	for len(legs.snapshot()) < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a fourth (wrong) one would show now
	got := legs.snapshot()
	ids := map[string]int{}
	for _, l := range got {
		ids[l.id]++
		if l.by != reaper.id {
			t.Errorf("legs of %s ended by %s, the reaper is %s", l.id, l.by, reaper.id)
		}
		if string(l.dialog) != `{"call":"`+l.id+`"}` {
			t.Errorf("legs of %s ended with dialog %s", l.id, l.dialog)
		}
		if l.id == running.ID {
			if l.at.Before(paidUntil.Add(-time.Second)) {
				t.Errorf("the running call's legs were ended at %s, it paid until %s", l.at, paidUntil)
			}
			t.Logf("running call: paid until %s, legs ended %s after", paidUntil.Format(time.StampMilli), l.at.Sub(paidUntil))
		}
	}
	if len(got) != 3 || ids[upLate.ID] != 1 || ids[onPool.ID] != 1 || ids[running.ID] != 1 {
		t.Fatalf("legs ended: %+v", got)
	}
	// CDRs on the reaper.
	adopted := cdrsOf(t, reaper.local, "acme")
	for id, want := range map[string]string{upLate.ID: "0.60", onPool.ID: "0", running.ID: "0.10"} {
		c, ok := adopted[id]
		if !ok || c.DisconnectReason != ledger.ReasonNodeFailure || !c.Charge.Equal(dec(want)) {
			t.Errorf("adopted CDR of %s: %+v (want charge %s, reason node_failure)", id, c, want)
		}
	}
	if c := adopted[onPool.ID]; c.PoolMinutes != 2 {
		t.Errorf("the pool call's CDR: %d pool minutes, want 2", c.PoolMinutes)
	}
	if _, ok := adopted[unanswered.ID]; ok {
		t.Errorf("an unanswered call got a CDR")
	}
	for _, s := range sp[1:] {
		if err := s.local.CheckHistory(); err != nil {
			t.Fatal(err)
		}
	}
	if n := countKeys(t, admin, testPrefix+"takeover/n0/"); n != 0 {
		t.Errorf("%d takeover records of n0 left after the reap", n)
	}
	// The money, to the cent.
	for _, s := range sp[1:] {
		s.books.Tick()
	}
	st := mustCheck(t, sp[1].node)
	acct := st.Orgs["acme"]
	all := sumCharges(deadCDRs, cdrsOf(t, sp[1].local, "acme"), cdrsOf(t, sp[2].local, "acme"))
	if !acct.Spent.Equal(all) {
		t.Fatalf("etcd spent %s, the CDRs charge %s (%+v)", acct.Spent, all, acct)
	}
	pool := st.Pools["acme/"+ledger.PlanDomestic+"/"+past.In(time.UTC).Format("2006-01")]
	t.Logf("after the reap: account %+v, pool %+v, money returned %s", acct, pool, cl.Returned)
	if pool.Used != 2 {
		t.Errorf("pool used %d minutes, want 2: %+v", pool.Used, pool)
	}

	// n0 comes back on its data directory.
	rj := sp[0].rejoin(t, shared, p, clock.Real{})
	if !rj.LastReaped || len(rj.SettledElsewhere) != 3 || len(rj.Claimed) != 0 {
		t.Fatalf("rejoin: %+v", rj)
	}
	if _, err := sp[0].books.CloseCall(upLate.ID, ledger.CallEnd{At: time.Now(), Reason: ledger.ReasonCallerHangup}); !errors.Is(err, ledger.ErrCallEnded) {
		t.Fatalf("closing a reaped call after the restart: %v", err)
	}
	back := cdrsOf(t, sp[0].local, "acme")
	for _, id := range []string{upLate.ID, onPool.ID, running.ID} {
		if c, ok := back[id]; ok {
			t.Errorf("the restarted node wrote a CDR for reaped call %s: %+v", id, c)
		}
	}
	if c, ok := back[unanswered.ID]; !ok || !c.Charge.IsZero() {
		t.Errorf("the unanswered call after the restart: %+v", c)
	}
	if err := sp[0].local.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	if err := sp[0].local.CheckHistory(); err != nil {
		t.Fatal(err)
	}
	after := mustCheck(t, sp[1].node).Orgs["acme"]
	if !after.Spent.Equal(acct.Spent) {
		t.Fatalf("the restart moved spent from %s to %s", acct.Spent, after.Spent)
	}
	// It serves again.
	spend(t, sp[0].books, 2, time.Now(), time.Time{})
	sp[0].books.Tick()
	after = mustCheck(t, sp[1].node).Orgs["acme"]
	if !after.Spent.Equal(acct.Spent.Add(dec("0.20"))) {
		t.Fatalf("after a call on the restarted node spent is %s, want %s", after.Spent, acct.Spent.Add(dec("0.20")))
	}
	// A clean stop of everyone: all money back, spent = every CDR.
	for _, s := range sp {
		s.stop(t)
		s.local = openPoolLedger(t, s.dir)
	}
	fst, err := Check(context.Background(), admin, testPrefix, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	final := fst.Orgs["acme"]
	var every []map[string]ledger.CDR
	for _, s := range sp {
		every = append(every, cdrsOf(t, s.local, "acme"))
	}
	if total := sumCharges(every...); !final.Spent.Equal(total) || !final.Outstanding.IsZero() || !final.Unallocated.Add(final.Spent).Equal(funded) {
		t.Fatalf("after a clean stop: %+v, CDRs charge %s", final, total)
	}
	for _, s := range sp {
		s.local.Close()
		s.local = nil
	}
}

// TestRejoinSelfClaim: n0 dies with calls up and restarts before any
// survivor reaps it: it claims its own earlier incarnation without waiting
// for the old lease, settles it from its own disk (restart CDRs, the
// unreported spend charged), deletes its records; a survivor's reaper then
// finds nothing to do, and the money adds up to the cent.
func TestRejoinSelfClaim(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	p := fastPolicy()
	p.ReportEvery = time.Hour
	sp, shared := startSpendersOn(t, openPoolLedger, ec.Client, 2, p, clock.Real{})
	createOrg(t, shared, "acme")
	funded := dec("20.00")
	if _, err := sp[1].books.FundAcrossRegions("acme", funded, "f1", ""); err != nil {
		t.Fatal(err)
	}
	a := sp[0].books
	past := time.Now().Add(-10 * time.Minute)
	var up []string
	for k := 0; k < 3; k++ {
		c := testCall("acme")
		if _, err := a.OpenCall(c, past); err != nil {
			t.Fatal(err)
		}
		if err := a.AnswerDialog(c.ID, past, json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 2+k; i++ {
			if _, err := a.Step(c.ID, i, past.Add(time.Duration(6*i)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		if k == 0 {
			a.Tick()
		}
		up = append(up, c.ID)
	}
	deadEpoch := sp[0].node.Epoch()
	sp[0].crash(t)
	rj := sp[0].rejoin(t, shared, p, clock.Real{})
	if len(rj.Claimed) != 1 || rj.Claimed[0] != deadEpoch || rj.LastReaped || len(rj.SettledElsewhere) != 0 {
		t.Fatalf("rejoin: %+v (dead epoch %d)", rj, deadEpoch)
	}
	cl, _, err := sp[1].node.readClaim(context.Background(), sp[1].node.k.reap("n0", deadEpoch))
	if err != nil || cl == nil || !cl.Done || !cl.Self {
		t.Fatalf("claim after the rejoin: %+v, %v", cl, err)
	}
	if n := countKeys(t, admin, testPrefix+"takeover/n0/"); n != 0 {
		t.Errorf("%d takeover records of n0 left", n)
	}
	restarted := cdrsOf(t, sp[0].local, "acme")
	for _, id := range up {
		if c, ok := restarted[id]; !ok || c.DisconnectReason != ledger.ReasonRestart {
			t.Errorf("call %s after the restart: %+v", id, c)
		}
	}
	var legs legLog
	sp[1].books.SetLegEnder(legs.ender("n1"))
	if err := sp[1].books.ReapDead(context.Background()); err != nil {
		t.Fatal(err)
	}
	if inc, _ := sp[1].books.Reaped(); inc != 0 || len(legs.snapshot()) != 0 {
		t.Fatalf("a survivor reaped a self-claimed incarnation: %d, legs %+v", inc, legs.snapshot())
	}
	for _, s := range sp {
		s.books.Tick()
	}
	acct := conserved(t, sp, "acme", funded)
	if d := debited(t, sp, "acme"); !acct.Spent.Equal(d) {
		t.Fatalf("etcd spent %s, the ledgers debited %s", acct.Spent, d)
	}
	var ids []string
	for id := range restarted {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	t.Logf("self-claimed: epoch %d, %d restart CDRs, account %+v", deadEpoch, len(ids), acct)
}

// TestReapClaimTakenOver: the survivor reaping a dead node dies itself
// after settling the money and before the dead node's call's paid time
// came (its BYEs still due): another survivor takes the claim over once
// the first one's lease is gone, ends the legs, and finishes the reap,
// moving no money twice and adopting no CDR twice.
func TestReapClaimTakenOver(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	p := fastPolicy()
	p.ReportEvery = time.Hour
	sp, shared := startSpenders(t, ec.Client, 3, p, clock.Real{})
	createOrg(t, shared, "acme")
	funded := dec("20.00")
	if _, err := sp[0].books.FundAcrossRegions("acme", funded, "f1", ""); err != nil {
		t.Fatal(err)
	}
	a := sp[0].books
	c := testCall("acme")
	// Paid until 6 s after the answer: n1 dies before.
	if _, err := a.OpenCall(c, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := a.AnswerDialog(c.ID, time.Now(), json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	deadEpoch := sp[0].node.Epoch()
	sp[0].crash(t)

	// n1 reaps: the money is settled, the BYE waits for the paid time.
	var legs legLog
	sp[1].books.SetLegEnder(legs.ender("n1"))
	if err := sp[1].books.ReapDead(context.Background()); err != nil {
		t.Fatal(err)
	}
	ck := sp[1].node.k.reap("n0", deadEpoch)
	cl, _, err := sp[1].node.readClaim(context.Background(), ck)
	if err != nil || cl == nil || !cl.Settled || cl.Done || cl.By != "n1" {
		t.Fatalf("claim after n1's reap: %+v %v", cl, err)
	}
	settled := mustCheck(t, sp[2].node).Orgs["acme"]
	n1CDRs := cdrsOf(t, sp[1].local, "acme")
	if cdr, ok := n1CDRs[c.ID]; !ok || cdr.DisconnectReason != ledger.ReasonNodeFailure {
		t.Fatalf("n1's adopted CDR: %+v", n1CDRs)
	}
	sp[1].crash(t) // before the BYE was due

	sp[2].books.SetLegEnder(legs.ender("n2"))
	if err := sp[2].books.ReapDead(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitClaimDone(t, sp[2].node, "n0", deadEpoch, 20*time.Second)
	cl, _, err = sp[2].node.readClaim(context.Background(), ck)
	if err != nil || cl.By != "n2" {
		t.Fatalf("claim after n2 took it over: %+v %v", cl, err)
	}
	for end := time.Now().Add(5 * time.Second); len(legs.snapshot()) == 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	got := legs.snapshot()
	if len(got) != 1 || got[0].id != c.ID || got[0].by != "n2" {
		t.Fatalf("legs ended: %+v", got)
	}
	if cdrs := cdrsOf(t, sp[2].local, "acme"); len(cdrs) != 0 {
		t.Fatalf("n2 adopted the CDR again: %+v", cdrs)
	}
	if after := mustCheck(t, sp[2].node).Orgs["acme"]; !after.Spent.Equal(settled.Spent) || !after.Unallocated.Equal(settled.Unallocated) {
		t.Fatalf("the take-over moved money: %+v, then %+v", settled, after)
	}
	if n := countKeys(t, admin, testPrefix+"takeover/n0/"); n != 0 {
		t.Fatalf("%d records of n0 left", n)
	}
	t.Logf("n0's call: settled by n1 (%+v), legs ended by n2", settled)
}
