package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// The randomized model test of minute pools across nodes: three nodes spend
// one org's domestic pool (25 minutes, growing when a license is added)
// through their own Books — random pool calls that may or may not spill to
// credits, answers, steps, closes with and without a refund, report ticks,
// idle give-backs, forced direct-mode switches, clean restarts and crashes
// — against a sequential reference that knows the licensed total. One
// operation at a time; the Books' ticks are driven here on a fake clock, so
// a seed replays: CLUSTER_SEED=<n> go test -run TestPoolsModel ./cluster/.
//
// After every step: etcd's Check (the pool invariant among the rest);
// every ledger's invariants (a node's used + held ≤ its allowance); each
// node's allowance ≤ what its etcd slice granted; the minutes used and held
// on all nodes together never exceed the reference's total; a hold
// refused for the pool (no spill) only when the cluster had no minute left
// outside the other nodes' allowances; a call that may spill never refused
// for the pool. At the end, every call closed and every Books closed:
// etcd's used is the ledgers' used, nothing is left in a slice, and the
// rest is unallocated.

const poolsModelSteps = 400

type refPoolCall struct {
	id       string
	node     int
	n        int // latest increment; negative once refused
	answered time.Time
	spill    bool
}

func TestPoolsModel(t *testing.T) {
	m := newModelSetup(t, 0x9001, openPoolLedger)
	r, admin, clk, p, shared, sp := m.r, m.admin, m.clk, m.p, m.shared, m.sp
	month := "2026-12"
	start := func(s *spender) {
		if s.local == nil {
			s.local = openPoolLedger(t, s.dir)
		}
		s.startOn(t, shared, p, clock.Real{}, clk)
	}
	for _, s := range sp {
		start(s)
	}
	defer func() {
		for _, s := range sp {
			if s.books != nil || s.node != nil {
				s.stop(t)
			}
			s.cli.Close()
		}
	}()
	createOrg(t, shared, "acme")
	licenseUsers(t, shared, "acme")
	if _, err := sp[0].books.FundAcrossRegions("acme", dec("500.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	total, users := 25, 5

	share := func(s *spender) ledger.PoolShare {
		sh, err := s.local.PoolShare("acme", ledger.PlanDomestic, month)
		if err != nil {
			t.Fatal(err)
		}
		return sh
	}
	granted := func(s *spender) int {
		resp, err := admin.Get(context.Background(), testPrefix+"poolslices/"+s.id+"/acme/"+ledger.PlanDomestic+"/"+month)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return 0
		}
		var ps PoolSlice
		if err := json.Unmarshal(resp.Kvs[0].Value, &ps); err != nil {
			t.Fatal(err)
		}
		return ps.Granted
	}
	// left is what a hold on node i could have had: the pool's unallocated
	// minutes (with the licenses added since etcd's total last followed
	// them) plus what node i's allowance has free.
	left := func(i int) int {
		pt := mustCheck(t, sp[0].node).Pools["acme/"+ledger.PlanDomestic+"/"+month]
		return pt.Unallocated + total - pt.Total + share(sp[i]).Available()
	}
	var calls []*refPoolCall
	dropCalls := func(node int) {
		kept := calls[:0]
		for _, c := range calls {
			if c.node != node {
				kept = append(kept, c)
			}
		}
		calls = kept
	}
	counts := map[string]int{}
	maxUsed := 0
	check := func(step int, op string) {
		t.Helper()
		if _, err := Check(context.Background(), admin, testPrefix, 5*time.Second); err != nil {
			t.Fatalf("step %d (%s): %v", step, op, err)
		}
		inUse := 0
		for _, s := range sp {
			if err := s.local.CheckInvariants(); err != nil {
				t.Fatalf("step %d (%s): %s: %v", step, op, s.id, err)
			}
			sh := share(s)
			if g := granted(s); sh.Allowance > g {
				t.Fatalf("step %d (%s): %s: allowance %d above the %d etcd granted", step, op, s.id, sh.Allowance, g)
			}
			inUse += sh.Used + sh.Held
		}
		if inUse > total {
			t.Fatalf("step %d (%s): the nodes use and hold %d minutes of a %d-minute pool", step, op, inUse, total)
		}
		maxUsed = max(maxUsed, inUse)
	}

	deadline := time.Now().Add(150 * time.Second)
	for step := 0; step < poolsModelSteps; step++ {
		if time.Now().After(deadline) {
			t.Fatalf("step %d: over the time bound", step)
		}
		i := r.IntN(len(sp))
		s := sp[i]
		var op string
		switch x := r.IntN(100); {
		case x < 20:
			op = "open"
			c := poolCall("acme", "u1", r.IntN(2) == 0)
			before := left(i)
			inc, err := s.books.OpenCall(c, clk.Now())
			switch {
			case err == nil:
				if inc.Source == ledger.SourcePool && before < 1 {
					t.Fatalf("step %d: a pool minute held with none left", step)
				}
				calls = append(calls, &refPoolCall{id: c.ID, node: i, n: 1, spill: c.Spill})
			case errors.Is(err, ledger.ErrPoolExhausted) && !c.Spill:
				if before >= 1 {
					t.Fatalf("step %d: open refused for the pool with %d minutes reachable", step, before)
				}
				op = "open-exhausted"
			default:
				t.Fatalf("step %d: open (spill %v): %v", step, c.Spill, err)
			}
		case x < 32:
			op = "answer"
			var c *refPoolCall
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
			if err := sp[c.node].books.AnswerDialog(c.id, clk.Now(), nil); err != nil {
				t.Fatalf("step %d: answer: %v", step, err)
			}
			c.answered = clk.Now()
		case x < 60:
			op = "step"
			var c *refPoolCall
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
			clk.Advance(time.Second)
			before := left(c.node)
			inc, err := sp[c.node].books.Step(c.id, c.n, clk.Now())
			switch {
			case err == nil:
				// Committing n frees nothing of the pool: n+1's minute
				// must have been reachable besides.
				if inc.Source == ledger.SourcePool && before < 1 {
					t.Fatalf("step %d: a pool minute held with none left", step)
				}
				c.n++
			case errors.Is(err, ledger.ErrPoolExhausted) && !c.spill:
				if before >= 1 {
					t.Fatalf("step %d: step refused for the pool with %d minutes reachable", step, before)
				}
				op = "step-exhausted"
				c.n = -c.n
			default:
				t.Fatalf("step %d: step (spill %v): %v", step, c.spill, err)
			}
		case x < 72:
			op = "close"
			if len(calls) == 0 {
				op = "close-none"
				break
			}
			k := r.IntN(len(calls))
			c := calls[k]
			end := ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonCallerHangup}
			if !c.answered.IsZero() && r.IntN(3) == 0 {
				end.BillTo, end.Reason = c.answered, ledger.ReasonLegLost // minutes back to the pool
				op = "close-refund"
			}
			if _, err := sp[c.node].books.CloseCall(c.id, end); err != nil {
				t.Fatalf("step %d: close: %v", step, err)
			}
			calls = append(calls[:k], calls[k+1:]...)
		case x < 84:
			op = "tick"
			clk.Advance(time.Duration(r.IntN(4000)) * time.Millisecond)
			s.books.Tick()
		case x < 88:
			op = "flip-direct"
			ps := s.books.pool("acme", ledger.PlanDomestic, month)
			s.books.mu.Lock()
			ps.direct = !ps.direct
			s.books.mu.Unlock()
		case x < 92:
			op = "idle"
			clk.Advance(p.IdleAfter)
			s.books.Tick()
		case x < 94:
			op = "license"
			if users >= 8 {
				break
			}
			users++
			if err := shared.PutUser(ledger.User{Org: "acme", ID: fmt.Sprintf("u%d", users), Licenses: []string{"domestic_calling_plan"}}); err != nil {
				t.Fatal(err)
			}
			total += 5
		case x < 97:
			op = "restart"
			s.stop(t)
			dropCalls(i) // the ledger settles them as it opens
			start(s)
		default:
			op = "crash"
			s.crash(t)
			dropCalls(i)
			start(s)
		}
		counts[op]++
		check(step, op)
	}

	// The end: every call closed, every Books closed (minutes given back).
	for _, c := range calls {
		if _, err := sp[c.node].books.CloseCall(c.id, ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonCallerHangup}); err != nil {
			t.Fatal(err)
		}
	}
	check(poolsModelSteps, "end")
	used := 0
	for _, s := range sp {
		t.Logf("%s: etcd ops %+v", s.id, s.books.Ops())
		if err := s.books.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.books = nil
		sh := share(s)
		used += sh.Used
		if sh.Allowance != sh.Used {
			t.Errorf("%s: closed with allowance %d, used %d", s.id, sh.Allowance, sh.Used)
		}
	}
	st := mustCheck(t, sp[0].node)
	pt := st.Pools["acme/"+ledger.PlanDomestic+"/"+month]
	if pt.Total != total || pt.Used != used || pt.Outstanding != 0 || pt.Unallocated != total-used {
		t.Fatalf("at the end etcd has %+v; the ledgers used %d of %d", pt, used, total)
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
	t.Logf("%d steps:%s; pool %d minutes, %d used at the end, at most %d used or held at once", poolsModelSteps, b, total, used, maxUsed)
}
