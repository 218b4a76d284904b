package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// The takeover's edges (issue 17: every answered call has exactly one CDR,
// cluster-wide; the money adds up to the cent): a crash at each point
// where a call could get two CDRs or money could go unaccounted, with real
// etcd and real Pebble ledgers.

// oneCDREach fails unless each answered call has exactly one CDR over the
// ledgers (and no call more than one); it returns the CDRs' charges.
func oneCDREach(t testing.TB, org string, answered []string, ledgers ...*ledger.Ledger) decimal.Decimal {
	t.Helper()
	seen := map[string][]string{}
	total := decimal.Zero
	for i, l := range ledgers {
		for id, c := range cdrsOf(t, l, org) {
			seen[id] = append(seen[id], fmt.Sprintf("%s@ledger%d", c.DisconnectReason, i))
			total = total.Add(c.Charge)
		}
	}
	for _, id := range answered {
		if len(seen[id]) != 1 {
			t.Errorf("answered call %s has %d CDRs: %v", id, len(seen[id]), seen[id])
		}
	}
	for id, by := range seen {
		if len(by) > 1 {
			t.Errorf("call %s has %d CDRs: %v", id, len(by), by)
		}
	}
	return total
}

// answer opens and answers a call on b with a dialog record, then steps it
// through increment n (6 s each from at), billed to its answer when alive.
func answerAndStep(t testing.TB, b *Books, at time.Time, n int, alive bool) ledger.Call {
	t.Helper()
	c := testCall("acme")
	if _, err := b.OpenCall(c, at); err != nil {
		t.Fatal(err)
	}
	if err := b.AnswerDialog(c.ID, at, json.RawMessage(`{"call":"`+c.ID+`"}`)); err != nil {
		t.Fatal(err)
	}
	stepTo(t, b, c, 1, n, at, alive)
	return c
}

func stepTo(t testing.TB, b *Books, c ledger.Call, from, to int, at time.Time, alive bool) {
	t.Helper()
	live := ledger.Liveness{}
	if alive {
		live.Alive = at
	}
	for i := from; i <= to; i++ {
		if _, err := b.StepAlive(c.ID, i, at.Add(time.Duration(6*i)*time.Second), live); err != nil {
			t.Fatal(err)
		}
	}
}

// waitRecordClosed waits until the takeover record of call (node's
// incarnation epoch) in etcd is the closed one.
func waitRecordClosed(t testing.TB, cli *clientv3.Client, node string, epoch int64, call string) {
	t.Helper()
	k := keys{prefix: testPrefix}
	for limit := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := cli.Get(context.Background(), k.takeover(node, epoch, call))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 1 {
			var r Record
			if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
				t.Fatal(err)
			}
			if r.Closed != nil {
				return
			}
		}
		if time.Now().After(limit) {
			t.Fatalf("the closed record of %s did not land", call)
		}
	}
}

// checkLedgers asserts every ledger's invariants, its stored history's
// included.
func checkLedgers(t testing.TB, sp []*spender) {
	t.Helper()
	for _, s := range sp {
		if err := s.local.CheckInvariants(); err != nil {
			t.Fatalf("%s: %v", s.id, err)
		}
		if err := s.local.CheckHistory(); err != nil {
			t.Fatalf("%s: %v", s.id, err)
		}
	}
}

// Edge (a): n0 closes a call in its ledger (the CDR committed, with a
// refund to its answer) and dies before the closed takeover record reaches
// etcd: the survivor reaps the call as live and adopts its CDR at the
// charge the record says (committed + held), settling etcd at that. When
// n0 restarts, its own CDR is replaced by a settled-elsewhere marker:
// exactly one CDR per answered call over both ledgers, and etcd's spent is
// their charges to the cent.
func TestReapClosedRecordNotLanded(t *testing.T) {
	funded := dec("20.00")
	admin, sp, shared, p := startAcme(t, openPoolLedger, 2, 1, funded)
	a := sp[0].books
	past := time.Now().Add(-10 * time.Minute)
	x := answerAndStep(t, a, past, 3, true)
	y := answerAndStep(t, a, past, 2, false)
	z := answerAndStep(t, a, past, 2, false)
	a.Tick()
	stepTo(t, a, x, 4, 5, past, true)
	stepTo(t, a, y, 3, 3, past, false)
	if _, err := a.CloseCall(y.ID, ledger.CallEnd{At: past.Add(time.Minute), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	a.Tick() // y's closed record landed (the report waits for it)
	// x: closed in the local ledger only; the node dies before its closed
	// record is written.
	xcdr, err := sp[0].local.CloseCall(x.ID, ledger.CallEnd{At: past.Add(time.Minute), Reason: ledger.ReasonLegLost, BillTo: past})
	if err != nil {
		t.Fatal(err)
	}
	deadEpoch := sp[0].node.Epoch()
	sp[0].crash(t)

	var legs legLog
	sp[1].books.SetLegEnder(legs.ender("n1"))
	if err := sp[1].books.ReapDead(context.Background()); err != nil {
		t.Fatal(err)
	}
	cl := waitClaimDone(t, sp[1].node, "n0", deadEpoch, 30*time.Second)
	if rc := cl.Calls[x.ID]; !rc.Live {
		t.Fatalf("the reaper did not take x as live: %+v", cl.Calls)
	}
	rj := sp[0].rejoin(t, shared, p, clock.Real{})
	if _, ok := rj.SettledElsewhere[x.ID]; !ok {
		t.Fatalf("rejoin: %+v", rj)
	}
	for _, s := range sp {
		s.books.Tick()
	}
	total := oneCDREach(t, "acme", []string{x.ID, y.ID, z.ID}, sp[0].local, sp[1].local)
	if c := cdrsOf(t, sp[1].local, "acme")[x.ID]; c.DisconnectReason != ledger.ReasonNodeFailure || !c.Charge.Equal(dec("0.60")) {
		t.Errorf("the survivor's CDR of x: %+v (n0's own said %s)", c, xcdr.Charge)
	}
	if _, err := sp[0].books.CloseCall(x.ID, ledger.CallEnd{At: time.Now(), Reason: ledger.ReasonCallerHangup}); !errors.Is(err, ledger.ErrCallEnded) {
		t.Errorf("closing x again on n0: %v", err)
	}
	acct := conserved(t, sp, "acme", funded)
	if !acct.Spent.Equal(total) {
		t.Fatalf("etcd spent %s, the CDRs charge %s (%+v)", acct.Spent, total, acct)
	}
	checkLedgers(t, sp)
	t.Logf("x: n0's own CDR charged %s (refunded to its answer), the survivor's %s; spent %s = CDRs %s",
		xcdr.Charge, cdrsOf(t, sp[1].local, "acme")[x.ID].Charge, acct.Spent, total)
	_ = admin
}

// Edge (a'), the review's case: as edge (a), but n0's slice of the org
// had been given back whole while x was up (so the survivor finds no slice
// of the org, and n0's restart gives its leftover back to unallocated),
// and after x's local close a new call, still ringing, held part of the
// money x's close refunded. n0's restart ends the ringing call (its hold
// released, nothing charged) and supersedes x's own CDR, debiting again
// what the survivor charged beyond it: that debit must not be capped by
// the ringing call's hold, released by the same settlement — else the
// leftover given back is too large and etcd's spent ends below the CDRs'
// charges.
func TestReapClosedRecordNotLandedHoldsUp(t *testing.T) {
	funded := dec("20.00")
	admin, sp, shared, p := startAcme(t, openPoolLedger, 2, 1, funded)
	a := sp[0].books
	past := time.Now().Add(-10 * time.Minute)
	x := answerAndStep(t, a, past, 5, true)
	giveBackWhole(t, a, sp[1].node)
	// x: closed in the local ledger only (its closed record never
	// written), refunded to its answer.
	xcdr, err := sp[0].local.CloseCall(x.ID, ledger.CallEnd{At: past.Add(time.Minute), Reason: ledger.ReasonLegLost, BillTo: past})
	if err != nil {
		t.Fatal(err)
	}
	ringing := testCall("acme")
	if _, err := sp[0].local.OpenCall(ringing, time.Now()); err != nil {
		t.Fatal(err)
	}
	lo, _ := sp[0].local.Org("acme")
	deadEpoch := sp[0].node.Epoch()
	sp[0].crash(t)

	if err := sp[1].books.ReapDead(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitClaimDone(t, sp[1].node, "n0", deadEpoch, 30*time.Second)
	rj := sp[0].rejoin(t, shared, p, clock.Real{})
	if _, ok := rj.SettledElsewhere[x.ID]; !ok || !rj.LastReaped || rj.ReapedOrgs["acme"] {
		t.Fatalf("rejoin: %+v", rj)
	}
	for _, s := range sp {
		s.books.Tick()
	}
	total := oneCDREach(t, "acme", []string{x.ID}, sp[0].local, sp[1].local)
	survivor := cdrsOf(t, sp[1].local, "acme")[x.ID]
	if survivor.DisconnectReason != ledger.ReasonNodeFailure || !survivor.Charge.GreaterThan(xcdr.Charge) {
		t.Fatalf("the survivor's CDR of x: %+v (n0's own charged %s)", survivor, xcdr.Charge)
	}
	acct := conserved(t, sp, "acme", funded)
	if !acct.Spent.Equal(total) {
		t.Fatalf("etcd spent %s, the CDRs charge %s (%+v)", acct.Spent, total, acct)
	}
	checkLedgers(t, sp)
	t.Logf("x: n0's own CDR %s, the survivor's %s (extra %s); n0 died with balance %s, held %s (the ringing call); spent %s = CDRs %s",
		xcdr.Charge, survivor.Charge, survivor.Charge.Sub(xcdr.Charge), lo.Balance, lo.Held, acct.Spent, total)
	_ = admin
}

// Edge (b): the survivor n1 claims dead n0, adopts its live calls' CDRs
// and dies — before the claim names its adoption ("adopted": n2 takes the
// claim over and adopts them again, the adoption of record, and n1 drops
// its copies when it restarts) or just after ("named": n2 adopts nothing,
// n1's restart keeps its copies). Exactly one CDR per answered call over
// the three ledgers; the money to the cent.
func TestReapAdopterDies(t *testing.T) {
	for _, point := range []string{"adopted", "named"} {
		t.Run(point, func(t *testing.T) {
			funded := dec("20.00")
			_, sp, shared, p := startAcme(t, openPoolLedger, 3, 2, funded)
			a := sp[0].books
			past := time.Now().Add(-10 * time.Minute)
			var ids []string
			for k := 0; k < 3; k++ {
				ids = append(ids, answerAndStep(t, a, past, 2+k, false).ID)
			}
			a.Tick()
			deadEpoch := sp[0].node.Epoch()
			sp[0].crash(t)

			crash := errors.New("the reaper died here")
			reapCrashAt = func(at string, _ incarnation) error {
				if at == point {
					return crash
				}
				return nil
			}
			t.Cleanup(func() { reapCrashAt = nil })
			var legs legLog
			sp[1].books.SetLegEnder(legs.ender("n1"))
			if err := sp[1].books.ReapDead(context.Background()); !errors.Is(err, crash) {
				t.Fatalf("reap with the crash hook: %v", err)
			}
			reapCrashAt = nil
			if n := len(cdrsOf(t, sp[1].local, "acme")); n != len(ids) {
				t.Fatalf("n1 adopted %d CDRs before it died, want %d", n, len(ids))
			}
			n1Epoch := sp[1].node.Epoch()
			sp[1].crash(t)

			sp[2].books.SetLegEnder(legs.ender("n2"))
			if err := sp[2].books.ReapDead(context.Background()); err != nil {
				t.Fatal(err)
			}
			cl := waitClaimDone(t, sp[2].node, "n0", deadEpoch, 30*time.Second)
			want, on := adopter("n2", sp[2].node.Epoch()), 2
			if point == "named" {
				want, on = adopter("n1", n1Epoch), 1
			}
			if cl.AdoptedBy != want {
				t.Fatalf("claim adopted by %q, want %q", cl.AdoptedBy, want)
			}
			sp[1].rejoin(t, shared, p, clock.Real{})
			sp[0].rejoin(t, shared, p, clock.Real{})
			if pend, err := sp[1].local.PendingAdoptions(); err != nil || len(pend) != 0 {
				t.Fatalf("n1's pending adoptions after its restart: %v %v", pend, err)
			}
			for _, s := range sp {
				s.books.Tick()
			}
			total := oneCDREach(t, "acme", ids, sp[0].local, sp[1].local, sp[2].local)
			if n := len(cdrsOf(t, sp[on].local, "acme")); n != len(ids) {
				t.Errorf("n%d has %d CDRs, want %d", on, n, len(ids))
			}
			acct := conserved(t, sp, "acme", funded)
			if !acct.Spent.Equal(total) {
				t.Fatalf("etcd spent %s, the CDRs charge %s (%+v)", acct.Spent, total, acct)
			}
			checkLedgers(t, sp)
			t.Logf("crash %s: calls %d, CDRs (on n%d) charge %s = spent; BYEs sent %d", point, len(ids), on, total, len(legs.snapshot()))
		})
	}
}

// Edge (e): n0's slice of the org was given back whole while a call was up
// (the state the report tick leaves when it read the balance just before
// the call's close), then the call closed with a refund to its answer: n0
// holds money etcd counts as spent, with no slice to report it on; it dies
// before its next tick. The survivor reaps the incarnation (its closed
// record) and finds no slice to settle. n0's restart gives the money back
// to unallocated (it is not the reaper's to settle): etcd's spent ends equal
// to the CDRs' charges.
func TestRejoinRefundWithoutSlice(t *testing.T) {
	funded := dec("20.00")
	admin, sp, shared, p := startAcme(t, openPoolLedger, 2, 1, funded)
	a := sp[0].books
	past := time.Now().Add(-10 * time.Minute)
	c := answerAndStep(t, a, past, 4, true)
	giveBackWhole(t, a, sp[1].node)
	cdr, err := a.CloseCall(c.ID, ledger.CallEnd{At: past.Add(time.Minute), Reason: ledger.ReasonLegLost, BillTo: past})
	if err != nil {
		t.Fatal(err)
	}
	deadEpoch := sp[0].node.Epoch()
	waitRecordClosed(t, admin, "n0", deadEpoch, c.ID)
	lo, _ := sp[0].local.Org("acme")
	sp[0].crash(t)

	if err := sp[1].books.ReapDead(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitClaimDone(t, sp[1].node, "n0", deadEpoch, 30*time.Second)
	before := mustCheck(t, sp[1].node).Orgs["acme"]
	t.Logf("reaped: etcd spent %s, the call's CDR charges %s, n0 holds %s etcd counts as spent", before.Spent, cdr.Charge, lo.Balance)
	rj := sp[0].rejoin(t, shared, p, clock.Real{})
	if !rj.LastReaped || rj.ReapedOrgs["acme"] {
		t.Fatalf("rejoin: %+v", rj)
	}
	for _, s := range sp {
		s.books.Tick()
	}
	total := oneCDREach(t, "acme", []string{c.ID}, sp[0].local, sp[1].local)
	acct := conserved(t, sp, "acme", funded)
	if !acct.Spent.Equal(total) {
		t.Fatalf("etcd spent %s, the CDRs charge %s (%+v)", acct.Spent, total, acct)
	}
	if l, _ := sp[0].local.Org("acme"); !l.Balance.IsZero() {
		t.Fatalf("n0 kept %s after its restart", l.Balance)
	}
	checkLedgers(t, sp)
}

// Edge (c): n0's takeover records cannot land and its Books fail closed
// (failHard, what the record committer does after OpTimeout): it gives its
// lease up (its keepalives went on before), so the survivor reaps its call
// at once — BYEs, the CDR, the money — instead of waiting for n0's
// restart. n0 closes no recorded call of its own meanwhile; restarted, it
// settles nothing twice. Exactly one CDR; the money to the cent.
func TestFailedClosedIsReaped(t *testing.T) {
	funded := dec("20.00")
	_, sp, shared, p := startAcme(t, openPoolLedger, 2, 1, funded)
	a := sp[0].books
	past := time.Now().Add(-10 * time.Minute)
	up := answerAndStep(t, a, past, 3, false)
	running := answerAndStep(t, a, time.Now(), 0, false)
	a.Tick()
	deadEpoch := sp[0].node.Epoch()
	var legs legLog
	for _, s := range sp {
		s.books.SetLegEnder(legs.ender(s.id))
		s.books.StartReaper()
	}
	failedAt := time.Now()
	a.failHard(errors.New("injected: takeover records could not land"))
	cl := waitClaimDone(t, sp[1].node, "n0", deadEpoch, 30*time.Second)
	t.Logf("failed closed → its claim done after %s (lease TTL %s; the running call's legs end at the end of what it paid)",
		time.Since(failedAt).Round(time.Millisecond), 10*time.Second)
	if cl.By != "n1" || len(cl.Calls) != 2 {
		t.Fatalf("claim: %+v", cl)
	}
	if _, err := a.CloseCall(up.ID, ledger.CallEnd{At: time.Now(), Reason: ledger.ReasonCallerHangup}); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("the failed node closed a recorded call: %v", err)
	}
	if err := sp[0].node.Sellable(); !errors.Is(err, ErrFenced) {
		t.Fatalf("the failed node's Sellable: %v", err)
	}
	for _, l := range legs.snapshot() {
		if l.by != "n1" {
			t.Errorf("legs of %s ended by %s", l.id, l.by)
		}
	}
	sp[0].crash(t)
	rj := sp[0].rejoin(t, shared, p, clock.Real{})
	if !rj.LastReaped || len(rj.SettledElsewhere) != 2 {
		t.Fatalf("rejoin: %+v", rj)
	}
	for _, s := range sp {
		s.books.Tick()
	}
	total := oneCDREach(t, "acme", []string{up.ID, running.ID}, sp[0].local, sp[1].local)
	acct := conserved(t, sp, "acme", funded)
	if !acct.Spent.Equal(total) {
		t.Fatalf("etcd spent %s, the CDRs charge %s (%+v)", acct.Spent, total, acct)
	}
	checkLedgers(t, sp)
}

// Edge (d): n0 dies with calls up; its restart claims its own earlier
// incarnation (a self-claim) and dies too, at each point of its
// settlement:
//
//   - "claimed": before opening its ledger;
//   - "opened": after the ledger settled the calls from disk with restart
//     CDRs, before the Books began (nothing in etcd moved);
//   - "marked": just after the claim was marked Settling;
//   - "reclaimed": after it reclaimed the old slice (deleted, its reported
//     unspent back to unallocated), before it charged the unreported
//     spend (the review's case: the Charge failing on an etcd error);
//   - "settled": after the money was settled, before the claim was done
//     and the takeover records deleted.
//
// In the first two a survivor takes the dead self-claim over and reaps the
// incarnation from its takeover records; the node's next start settles
// nothing twice (its restart CDRs superseded by the survivor's). In the
// others the survivor must leave the claim alone (it would bill the calls
// from the records while the money was settled from the node's disk): the
// node's next start continues the settlement from its disk. Either way,
// exactly one CDR per answered call and the money to the cent.
func TestReapDeadSelfClaim(t *testing.T) {
	for _, phase := range []string{"claimed", "opened", "marked", "reclaimed", "settled"} {
		t.Run(phase, func(t *testing.T) {
			funded := dec("20.00")
			_, sp, shared, p := startAcme(t, openPoolLedger, 2, 1, funded)
			a := sp[0].books
			past := time.Now().Add(-10 * time.Minute)
			var ids []string
			for k := 0; k < 3; k++ {
				ids = append(ids, answerAndStep(t, a, past, 2+k, false).ID)
			}
			// A call whose session expired while no process was up: the
			// restart ends it at its expiry, billed to its last proof of
			// life — not what its takeover record says it paid, which a
			// survivor would bill.
			exp := answerAndStep(t, a, past, 0, false)
			for i := 1; i <= 6; i++ {
				if _, err := a.StepAlive(exp.ID, i, past.Add(time.Duration(6*i)*time.Second),
					ledger.Liveness{Alive: past.Add(7 * time.Second), Expires: past.Add(40 * time.Second)}); err != nil {
					t.Fatal(err)
				}
			}
			ids = append(ids, exp.ID)
			a.Tick()
			deadEpoch := sp[0].node.Epoch()
			sp[0].crash(t)

			// The restart that fails.
			cfg := testConfig("n0")
			cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery = 10*time.Second, 2*time.Second, time.Second
			n, err := Join(context.Background(), sp[0].cli, cfg, clock.Real{})
			if err != nil {
				t.Fatal(err)
			}
			rj, err := n.ClaimOwn(context.Background())
			if err != nil || len(rj.Claimed) != 1 {
				t.Fatalf("claim own: %+v %v", rj, err)
			}
			failedEpoch := n.Epoch()
			if phase != "claimed" {
				l, err := ledger.Open(sp[0].dir, ledger.Options{MinFunding: dec("1.00"), Logger: quiet(), Plans: poolPlans(),
					SettledElsewhere: rj.SettledElsewhere, LastReaped: rj.LastReaped})
				if err != nil {
					t.Fatal(err)
				}
				if got := len(cdrsOf(t, l, "acme")); got != len(ids) {
					t.Fatalf("the failed restart wrote %d restart CDRs, want %d", got, len(ids))
				}
				if phase != "opened" {
					crash := errors.New("injected: the restart died here")
					restartCrashAt = func(at string) error {
						if at == phase {
							return crash
						}
						return nil
					}
					t.Cleanup(func() { restartCrashAt = nil })
					if _, err := NewBooks(n, l, shared, p, clock.Real{}, quiet()); !errors.Is(err, crash) {
						t.Fatalf("books with the crash hook: %v", err)
					}
					restartCrashAt = nil
				}
				l.Close()
			}
			if err := n.abandon(context.Background()); err != nil { // it dies: lease gone
				t.Fatal(err)
			}

			var legs legLog
			sp[1].books.SetLegEnder(legs.ender("n1"))
			if err := sp[1].books.ReapDead(context.Background()); err != nil {
				t.Fatal(err)
			}
			survivorTakes := phase == "claimed" || phase == "opened"
			if survivorTakes {
				cl := waitClaimDone(t, sp[1].node, "n0", deadEpoch, 30*time.Second)
				if cl.Self || cl.By != "n1" || len(cl.Calls) != len(ids) {
					t.Fatalf("claim: %+v", cl)
				}
			} else {
				cl, _, err := sp[1].node.readClaim(context.Background(), sp[1].node.k.reap("n0", deadEpoch))
				if err != nil {
					t.Fatal(err)
				}
				if cl == nil || !cl.Self || !cl.Settling || cl.By != "n0" || cl.ByEpoch != failedEpoch || cl.Done {
					t.Fatalf("the survivor took over a self-claim whose disk settlement had begun: %+v", cl)
				}
				if got := len(cdrsOf(t, sp[1].local, "acme")); got != 0 || len(legs.snapshot()) != 0 {
					t.Fatalf("the survivor adopted %d CDRs, sent %d BYEs", got, len(legs.snapshot()))
				}
			}
			rj = sp[0].rejoin(t, shared, p, clock.Real{})
			if survivorTakes {
				if !rj.LastReaped || len(rj.SettledElsewhere) != len(ids) {
					t.Fatalf("rejoin: %+v", rj)
				}
			} else {
				if rj.LastReaped || len(rj.SettledElsewhere) != 0 || len(rj.Claimed) != 1 || rj.Claimed[0] != deadEpoch {
					t.Fatalf("rejoin: %+v", rj)
				}
				cl, _, err := sp[1].node.readClaim(context.Background(), sp[1].node.k.reap("n0", deadEpoch))
				if err != nil {
					t.Fatal(err)
				}
				if cl == nil || !cl.Done || cl.ByEpoch != sp[0].node.Epoch() {
					t.Fatalf("the next start did not finish the claim: %+v", cl)
				}
				if recs, err := sp[1].node.records(context.Background(), incarnation{"n0", deadEpoch}); err != nil || len(recs) != 0 {
					t.Fatalf("takeover records left: %d %v", len(recs), err)
				}
			}
			for _, s := range sp {
				s.books.Tick()
			}
			total := oneCDREach(t, "acme", ids, sp[0].local, sp[1].local)
			acct := conserved(t, sp, "acme", funded)
			if !acct.Spent.Equal(total) {
				t.Fatalf("etcd spent %s, the CDRs charge %s (%+v)", acct.Spent, total, acct)
			}
			checkLedgers(t, sp)
			t.Logf("phase %s: %d calls, survivor took the claim over: %v; CDRs charge %s = spent, BYEs by the survivor %d",
				phase, len(ids), survivorTakes, total, len(legs.snapshot()))
		})
	}
}

// giveBackWhole reports acme on b, then gives its slice back whole (as an
// idle org's is), and checks through peer that etcd holds no slice of it.
func giveBackWhole(t *testing.T, b *Books, peer *Node) {
	t.Helper()
	b.Tick()
	o := b.org("acme")
	o.etcd.Lock()
	err := b.giveBack(context.Background(), o, true)
	o.etcd.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if st := mustCheck(t, peer); st.Orgs["acme"].Slices != 0 {
		t.Fatalf("the slice is still in etcd: %+v", st.Orgs["acme"])
	}
}
