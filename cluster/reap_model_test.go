package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// The randomized model test of the takeover: three nodes spend one org's
// money (random OpenCall, AnswerDialog, Step, CloseCall with and without a
// refund, fundings, report ticks, direct-mode switches) and die at random
// (kill -9: nothing given back, the lease revoked), each death reaped by a
// random survivor (ReapDead) or, sometimes, by the dead node's own restart
// before anyone reaps it (ClaimOwn); dead nodes rejoin later on their
// data directory. One operation at a time; ticks on a fake clock; a seed
// replays: CLUSTER_SEED=<n> go test -run TestReapModel ./cluster/.
//
// After every step: etcd's Check (funded = unallocated + Σ slices + spent,
// to the cent, every term ≥ 0) and every live ledger's invariants; never
// overspent. After every reap, with every live node reported: etcd's spent
// is exactly what every call was charged — Σ CDR charges over every
// ledger (the dead node's as it died, the reaper's adopted ones) plus the
// committed charges of the calls up on live nodes. At the end (every call
// closed, every node back and closed): spent = Σ every ledger's CDR
// charges, no slice left, unallocated = funded − spent.
const reapModelSteps = 400

func TestReapModel(t *testing.T) {
	m := newModelSetup(t, 0x7ea9, openSpendLedger)
	r, admin, clk, p, shared, sp := m.r, m.admin, m.clk, m.p, m.shared, m.sp
	p.MinSlice = dec("0.30")
	legs := &legLog{}
	start := func(s *spender) {
		s.startOn(t, shared, p, clock.Real{}, clk)
		s.books.SetLegEnder(legs.ender(s.id))
	}
	rejoin := func(s *spender) *Rejoin {
		cfg := testConfig(s.id)
		cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery = 10*time.Second, 2*time.Second, time.Second
		n, err := Join(context.Background(), s.cli, cfg, clock.Real{})
		if err != nil {
			t.Fatal(err)
		}
		rj, err := n.ClaimOwn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if s.local, err = ledger.Open(s.dir, ledger.Options{MinFunding: dec("1.00"), Logger: quiet(), SettledElsewhere: rj.SettledElsewhere, LastReaped: rj.LastReaped}); err != nil {
			t.Fatal(err)
		}
		shared.mu.Lock()
		shared.ledgers[s.index] = s.local
		shared.mu.Unlock()
		s.node = n
		if s.books, err = NewBooks(n, s.local, shared, p, clk, quiet()); err != nil {
			t.Fatal(err)
		}
		s.books.SetLegEnder(legs.ender(s.id))
		return rj
	}
	for _, s := range sp {
		start(s)
	}
	dead := make([]bool, len(sp))
	deadCDRs := make([]map[string]ledger.CDR, len(sp)) // a dead node's CDRs as it died
	defer func() {
		for i, s := range sp {
			if !dead[i] && (s.books != nil || s.node != nil) {
				s.stop(t)
			}
			s.cli.Close()
		}
	}()
	createOrg(t, shared, "acme")
	// A dead node's shared-config ledger slot keeps its closed ledger out
	// of the admin changes: the test makes none after the start.

	funded := dec("3.00")
	fundings := map[string]decimal.Decimal{"k-init": funded}
	if _, err := sp[0].books.FundAcrossRegions("acme", funded, "k-init", ""); err != nil {
		t.Fatal(err)
	}
	var calls []*refCall
	counts := map[string]int{}
	reapedCalls := 0
	alive := func() []int {
		var out []int
		for i := range sp {
			if !dead[i] {
				out = append(out, i)
			}
		}
		return out
	}
	check := func(step int, op string) {
		t.Helper()
		st, err := Check(context.Background(), admin, testPrefix, 5*time.Second)
		if err != nil {
			t.Fatalf("step %d (%s): %v", step, op, err)
		}
		a := st.Orgs["acme"]
		if !a.Funded.Equal(funded) {
			t.Fatalf("step %d (%s): etcd funded %s, reference %s", step, op, a.Funded, funded)
		}
		for _, i := range alive() {
			if err := sp[i].local.CheckInvariants(); err != nil {
				t.Fatalf("step %d (%s): %s: %v", step, op, sp[i].id, err)
			}
		}
	}
	// exact checks etcd's spent against every charge, once every live node
	// reported.
	exact := func(step int, op string) {
		t.Helper()
		charged := decimal.Zero
		for i, s := range sp {
			var cdrs map[string]ledger.CDR
			if dead[i] {
				cdrs = map[string]ledger.CDR{}
				gone := settledElsewhere(t, admin, s.id)
				for id, c := range deadCDRs[i] {
					if !gone[id] {
						cdrs[id] = c
					}
				}
			} else {
				s.books.Tick()
				cdrs = cdrsOf(t, s.local, "acme")
			}
			charged = charged.Add(sumCharges(cdrs))
		}
		for _, c := range calls {
			if dead[c.node] {
				continue
			}
			if lc, _, up := sp[c.node].local.CallAsOf(c.id); up {
				charged = charged.Add(lc.Charge)
			}
		}
		st, err := Check(context.Background(), admin, testPrefix, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if a := st.Orgs["acme"]; !a.Spent.Equal(charged) {
			t.Fatalf("step %d (%s): etcd spent %s, the calls were charged %s (%+v)", step, op, a.Spent, charged, a)
		}
	}
	kill := func(i int) {
		deadCDRs[i] = cdrsOf(t, sp[i].local, "acme")
		// CDRs it adopted as a reaper and that no claim names it for are
		// dropped by its restart (reap_adopt.go): a successor's count.
		pend, err := sp[i].local.PendingAdoptions()
		if err != nil {
			t.Fatal(err)
		}
		for _, ids := range pend {
			for _, id := range ids {
				delete(deadCDRs[i], id)
			}
		}
		sp[i].crash(t)
		dead[i] = true
		kept := calls[:0]
		for _, c := range calls {
			if c.node != i {
				kept = append(kept, c)
			}
		}
		calls = kept
	}

	deadline := time.Now().Add(200 * time.Second)
	for step := 0; step < reapModelSteps; step++ {
		if time.Now().After(deadline) {
			t.Fatalf("step %d: over the time bound", step)
		}
		live := alive()
		i := live[r.IntN(len(live))]
		s := sp[i]
		var op string
		x := r.IntN(100)
		switch {
		case x < 3:
			op = "fund"
			key := fmt.Sprintf("k%d", r.IntN(12))
			amount := decimal.New(int64(100+r.IntN(150)), -2)
			if _, seen := fundings[key]; seen {
				op = "fund-replay"
				amount = fundings[key]
			}
			en, err := s.books.FundAcrossRegions("acme", amount, key, "")
			if err != nil {
				t.Fatalf("step %d: fund: %v", step, err)
			}
			if !en.Replayed {
				fundings[key] = amount
				funded = funded.Add(amount)
			}
		case x < 28:
			op = "open"
			c := testCall("acme")
			_, err := s.books.OpenCall(c, clk.Now())
			switch {
			case err == nil:
				calls = append(calls, &refCall{id: c.ID, node: i, n: 1})
			case errors.Is(err, ledger.ErrInsufficientCredit):
				op = "open-refused"
			default:
				t.Fatalf("step %d: open: %v", step, err)
			}
		case x < 40:
			op = "answer"
			var c *refCall
			for _, k := range r.Perm(len(calls)) {
				if calls[k].answered.IsZero() {
					c = calls[k]
					break
				}
			}
			if c == nil {
				op = "answer-none"
				break
			}
			if err := sp[c.node].books.AnswerDialog(c.id, clk.Now(), json.RawMessage(`{"c":"`+c.id+`"}`)); err != nil {
				t.Fatalf("step %d: answer: %v", step, err)
			}
			c.answered = clk.Now()
		case x < 62:
			op = "step"
			var c *refCall
			for _, k := range r.Perm(len(calls)) {
				if !calls[k].answered.IsZero() && calls[k].n > 0 {
					c = calls[k]
					break
				}
			}
			if c == nil {
				op = "step-none"
				break
			}
			_, err := sp[c.node].books.Step(c.id, c.n, clk.Now())
			switch {
			case err == nil:
				c.n++
			case errors.Is(err, ledger.ErrInsufficientCredit):
				op = "step-refused"
				c.n = -c.n
			default:
				t.Fatalf("step %d: step: %v", step, err)
			}
		case x < 76:
			op = "close"
			if len(calls) == 0 {
				op = "close-none"
				break
			}
			k := r.IntN(len(calls))
			c := calls[k]
			end := ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonCallerHangup}
			if !c.answered.IsZero() && r.IntN(3) == 0 {
				end.BillTo, end.Reason = c.answered, ledger.ReasonLegLost
				op = "close-refund"
			}
			if _, err := sp[c.node].books.CloseCall(c.id, end); err != nil {
				t.Fatalf("step %d: close: %v", step, err)
			}
			calls = append(calls[:k], calls[k+1:]...)
		case x < 88:
			op = "tick"
			clk.Advance(time.Duration(r.IntN(4000)) * time.Millisecond)
			s.books.Tick()
		case x < 91:
			op = "flip-direct"
			o := s.books.org("acme")
			s.books.setDirect(o, !s.books.Direct("acme"))
		case x < 95:
			// A dead node rejoins, or a live one dies and is reaped.
			var deadOnes []int
			for j := range sp {
				if dead[j] {
					deadOnes = append(deadOnes, j)
				}
			}
			if len(deadOnes) > 0 && r.IntN(2) == 0 {
				op = "rejoin"
				j := deadOnes[r.IntN(len(deadOnes))]
				rj := rejoin(sp[j])
				if len(rj.Claimed) != 0 {
					t.Fatalf("step %d: rejoin of reaped %s: %+v", step, sp[j].id, rj)
				}
				dead[j] = false
				deadCDRs[j] = nil
				break
			}
			if len(live) < 2 {
				op = "kill-none"
				break
			}
			op = "kill-reap"
			epoch := s.node.Epoch()
			kill(i)
			survivors := alive()
			reaper := sp[survivors[r.IntN(len(survivors))]]
			if err := reaper.books.ReapDead(context.Background()); err != nil {
				t.Fatalf("step %d: reap: %v", step, err)
			}
			cl, _, err := reaper.node.readClaim(context.Background(), reaper.node.k.reap(s.id, epoch))
			if err != nil || cl != nil && (!cl.Settled || cl.By != reaper.id) {
				t.Fatalf("step %d: claim after the reap of %s epoch %d: %+v %v", step, s.id, epoch, cl, err)
			}
			if cl == nil {
				op = "kill-nothing-to-reap"
			} else {
				for _, c := range cl.Calls {
					if c.Live {
						reapedCalls++
					}
				}
			}
			exact(step, op)
		case x < 96:
			// Edge (a): a call closed in the node's ledger whose closed
			// record never reached etcd: the node dies at once.
			op = "close-unrecorded-kill"
			var c *refCall
			for _, k := range r.Perm(len(calls)) {
				if calls[k].node == i && !calls[k].answered.IsZero() {
					c = calls[k]
					break
				}
			}
			if c == nil || len(live) < 2 {
				op = "close-unrecorded-none"
				break
			}
			end := ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonCallerHangup}
			if r.IntN(2) == 0 {
				end.BillTo, end.Reason = c.answered, ledger.ReasonLegLost
			}
			if _, err := s.local.CloseCall(c.id, end); err != nil {
				t.Fatalf("step %d: local close: %v", step, err)
			}
			kill(i)
			survivors := alive()
			if err := sp[survivors[r.IntN(len(survivors))]].books.ReapDead(context.Background()); err != nil {
				t.Fatalf("step %d: reap: %v", step, err)
			}
			exact(step, op)
		case x < 97:
			// Edge (b): the reaper dies between adopting the CDRs and
			// the claim naming it; another survivor takes over.
			op = "reaper-dies"
			if len(live) < 3 {
				op = "reaper-dies-none"
				break
			}
			kill(i)
			survivors := alive()
			k := survivors[r.IntN(len(survivors))]
			died := errors.New("the reaper died")
			reapCrashAt = func(point string, _ incarnation) error {
				if point == "adopted" {
					return died
				}
				return nil
			}
			err := sp[k].books.ReapDead(context.Background())
			reapCrashAt = nil
			if err != nil && !errors.Is(err, died) {
				t.Fatalf("step %d: reap: %v", step, err)
			}
			kill(k)
			survivors = alive()
			if err := sp[survivors[r.IntN(len(survivors))]].books.ReapDead(context.Background()); err != nil {
				t.Fatalf("step %d: reap after the reaper died: %v", step, err)
			}
			exact(step, op)
		case x < 98:
			// Edge (d): the node's restart claims its last incarnation and
			// dies (sometimes after its ledger settled the calls from
			// disk); a survivor takes the dead self-claim over.
			op = "restart-dies"
			if len(live) < 2 {
				op = "restart-dies-none"
				break
			}
			kill(i)
			cfg := testConfig(s.id)
			cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery = 10*time.Second, 2*time.Second, time.Second
			n, err := Join(context.Background(), s.cli, cfg, clock.Real{})
			if err != nil {
				t.Fatal(err)
			}
			rj, err := n.ClaimOwn(context.Background())
			if err != nil {
				t.Fatalf("step %d: claim own: %v", step, err)
			}
			if r.IntN(2) == 0 {
				op = "restart-dies-opened"
				l, err := ledger.Open(s.dir, ledger.Options{MinFunding: dec("1.00"), Logger: quiet(), SettledElsewhere: rj.SettledElsewhere, LastReaped: rj.LastReaped})
				if err != nil {
					t.Fatal(err)
				}
				deadCDRs[i] = cdrsOf(t, l, "acme")
				l.Close()
			}
			if err := n.abandon(context.Background()); err != nil {
				t.Fatal(err)
			}
			survivors := alive()
			if err := sp[survivors[r.IntN(len(survivors))]].books.ReapDead(context.Background()); err != nil {
				t.Fatalf("step %d: reap: %v", step, err)
			}
			exact(step, op)
		case x < 99:
			op = "crash-rejoin"
			epoch := s.node.Epoch()
			kill(i)
			rj := rejoin(s)
			dead[i] = false
			deadCDRs[i] = nil
			if len(rj.Claimed) > 1 || len(rj.Claimed) == 1 && (rj.Claimed[0] != epoch || rj.LastReaped) {
				t.Fatalf("step %d: self-claim of %s epoch %d: %+v", step, s.id, epoch, rj)
			}
			exact(step, op)
		default:
			op = "noop"
		}
		counts[op]++
		check(step, op)
	}

	// The end: every call closed, every dead node back, every Books closed.
	for _, c := range calls {
		if _, err := sp[c.node].books.CloseCall(c.id, ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonCallerHangup}); err != nil {
			t.Fatal(err)
		}
	}
	calls = nil
	for j, s := range sp {
		if dead[j] {
			rejoin(s)
			dead[j] = false
		}
	}
	exact(reapModelSteps, "end")
	// The legs of every reaped call that was up are ended (on the fake
	// clock: advance past every increment); a reap whose reaper died
	// before its BYEs is taken over by a survivor, which sends them.
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, s := range sp {
			if err := s.books.ReapDead(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		clk.Advance(time.Minute)
		if n, err := admin.Get(context.Background(), testPrefix+"takeover/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
			t.Fatal(err)
		} else if len(distinct(legs.snapshot())) >= reapedCalls && n.Count == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d reaped calls were up, %d had their legs ended", reapedCalls, len(distinct(legs.snapshot())))
		}
	}
	twice := len(legs.snapshot()) - len(distinct(legs.snapshot()))
	charged := decimal.Zero
	cdrOn := map[string]string{} // call → the node whose ledger has its CDR
	for _, s := range sp {
		if err := s.books.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.books = nil
		for id := range cdrsOf(t, s.local, "acme") {
			if prev, ok := cdrOn[id]; ok {
				t.Fatalf("call %s has a CDR on %s and on %s", id, prev, s.id)
			}
			cdrOn[id] = s.id
		}
		charged = charged.Add(sumCharges(cdrsOf(t, s.local, "acme")))
		if err := s.local.CheckHistory(); err != nil {
			t.Fatal(err)
		}
	}
	st := mustCheck(t, sp[0].node)
	a := st.Orgs["acme"]
	if a.Slices != 0 || !a.Spent.Equal(charged) || !a.Unallocated.Equal(funded.Sub(charged)) {
		t.Fatalf("at the end etcd has %+v; the CDRs charge %s of %s", a, charged, funded)
	}
	names := make([]string, 0, len(counts))
	for k := range counts {
		names = append(names, k)
	}
	sort.Strings(names)
	var b []byte
	for _, k := range names {
		b = fmt.Appendf(b, " %s=%d", k, counts[k])
	}
	t.Logf("%d steps:%s; reaped calls %d (legs ended again by a successor: %d); funded %s, spent %s", reapModelSteps, b, reapedCalls, twice, funded, charged)
}

// settledElsewhere are the calls of node's incarnations a survivor settled
// as up (its claims): the node's restart replaces its own CDRs of them.
func settledElsewhere(t testing.TB, cli *clientv3.Client, node string) map[string]bool {
	t.Helper()
	resp, err := cli.Get(context.Background(), testPrefix+"reaps/"+node+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, kv := range resp.Kvs {
		var cl claim
		if err := json.Unmarshal(kv.Value, &cl); err != nil {
			t.Fatal(err)
		}
		if cl.Self || !cl.Settled {
			continue
		}
		for id, c := range cl.Calls {
			if c.Live {
				out[id] = true
			}
		}
	}
	return out
}

// distinct is the calls whose legs were ended, once each.
func distinct(ls []legCall) map[string]bool {
	out := map[string]bool{}
	for _, l := range ls {
		out[l.id] = true
	}
	return out
}
