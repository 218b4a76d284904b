package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// The randomized model test of Books: three nodes spend one org's money
// through their own Books (random OpenCall, Answer, Step, CloseCall with
// and without a refund, fundings and their replays, report ticks, idle
// give-backs, forced direct-mode switches, clean restarts, crashes, and
// fencing by a revoked lease) against a plain sequential reference. One
// operation at a time, from this goroutine; the Books' own ticks are
// driven here on a fake clock (the nodes keep the real clock, which their
// etcd leases need), so a seed replays: CLUSTER_SEED=<n> go test -run
// TestBooksModel ./cluster/.
//
// After every step: etcd's Check; every ledger's invariants; money
// conserved between etcd and the nodes (unallocated + what the nodes'
// ledgers received net = Σ fundings); never overspent (Σ debited ≤ funded).
// The reference predicts what must succeed (a hold that fits the node's
// local available money) and what must be refused (one that does not fit
// in all the money the cluster has left, or on a fenced node). At the end,
// once every call is closed and every Books closed, etcd's spent is what
// the ledgers debited, to the cent.

const booksModelSteps = 600

type refCall struct {
	id       string
	node     int
	n        int // latest increment
	answered time.Time
}

func TestBooksModel(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CLUSTER_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("CLUSTER_SEED=%d", seed)
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	clk := clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	p := DefaultSlicePolicy()
	p.MinSlice = dec("0.30")
	p.ReportEvery = time.Hour // ticks are the driver's
	p.IdleAfter = 20 * time.Second
	shared := &testShared{}
	sp := make([]*spender, 3)
	for i := range sp {
		sp[i] = &spender{index: i, id: fmt.Sprintf("n%d", i), dir: t.TempDir(), cli: ec.Client()}
		sp[i].local = openSpendLedger(t, sp[i].dir)
		shared.ledgers = append(shared.ledgers, sp[i].local)
	}
	start := func(s *spender) { s.startOn(t, shared, p, clock.Real{}, clk) }
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

	funded := decimal.Zero
	fundings := map[string]decimal.Decimal{}
	var calls []*refCall
	fenced := make([]bool, len(sp))
	counts := map[string]int{}
	price := dec("0.10")

	// clusterLeft is all the money the cluster has left to hold: etcd's
	// unallocated plus every node's local available money.
	clusterLeft := func() decimal.Decimal {
		st := mustCheck(t, sp[0].node)
		left := st.Orgs["acme"].Unallocated
		for _, s := range sp {
			lo, _ := s.local.Org("acme")
			left = left.Add(lo.Available())
		}
		return left
	}
	localAvail := func(s *spender) decimal.Decimal {
		lo, _ := s.local.Org("acme")
		return lo.Available()
	}
	dropCalls := func(node int) {
		kept := calls[:0]
		for _, c := range calls {
			if c.node != node {
				kept = append(kept, c)
			}
		}
		calls = kept
	}
	check := func(step int, op string) {
		t.Helper()
		st, err := Check(context.Background(), admin, testPrefix, 5*time.Second)
		if err != nil {
			t.Fatalf("step %d (%s): %v", step, op, err)
		}
		a := st.Orgs["acme"]
		sum, spent := a.Unallocated, decimal.Zero
		for _, s := range sp {
			if err := s.local.CheckInvariants(); err != nil {
				t.Fatalf("step %d (%s): %s: %v", step, op, s.id, err)
			}
			lo, _ := s.local.Org("acme")
			sum = sum.Add(lo.Funded)
			spent = spent.Add(lo.Debited)
		}
		if !a.Funded.Equal(funded) || !sum.Equal(funded) {
			t.Fatalf("step %d (%s): etcd funded %s, unallocated %s + the nodes' net slices = %s, reference funded %s", step, op, a.Funded, a.Unallocated, sum, funded)
		}
		if spent.GreaterThan(funded) {
			t.Fatalf("step %d (%s): overspent: the nodes debited %s of %s", step, op, spent, funded)
		}
	}

	deadline := time.Now().Add(150 * time.Second)
	for step := 0; step < booksModelSteps; step++ {
		if time.Now().After(deadline) {
			t.Fatalf("step %d: over the time bound", step)
		}
		i := r.IntN(len(sp))
		s := sp[i]
		var op string
		x := r.IntN(100)
		if fenced[i] && r.IntN(3) == 0 {
			x = 95 // a fenced node is restarted soon
		}
		switch {
		case x < 3:
			op = "fund"
			key := fmt.Sprintf("k%d", r.IntN(12))
			amount := decimal.New(int64(100+r.IntN(150)), -2)
			if prev, ok := fundings[key]; ok && r.IntN(2) == 0 {
				amount = prev
			}
			if fenced[i] {
				op = "fund-fenced"
				_, err := s.books.FundAcrossRegions("acme", amount, key, "")
				if !errors.Is(err, ledger.ErrUnavailable) {
					t.Fatalf("step %d: fund on a fenced node: %v", step, err)
				}
				break
			}
			en, err := s.books.FundAcrossRegions("acme", amount, key, "")
			prev, seen := fundings[key]
			switch {
			case seen && prev.Equal(amount):
				if err != nil || !en.Replayed {
					t.Fatalf("step %d: replayed funding: %+v %v", step, en, err)
				}
			case seen:
				if !errors.Is(err, ledger.ErrDuplicateFunding) {
					t.Fatalf("step %d: funding key reused: %v", step, err)
				}
			default:
				if err != nil || en.Replayed {
					t.Fatalf("step %d: funding: %+v %v", step, en, err)
				}
				fundings[key] = amount
				funded = funded.Add(amount)
			}
		case x < 30:
			op = "open"
			c := testCall("acme")
			local, left := localAvail(s), clusterLeft()
			_, err := s.books.OpenCall(c, clk.Now())
			switch {
			case fenced[i]:
				if !errors.Is(err, ledger.ErrUnavailable) {
					t.Fatalf("step %d: open on a fenced node: %v", step, err)
				}
				op = "open-fenced"
			case err == nil:
				if left.LessThan(price) {
					t.Fatalf("step %d: held %s with %s left in the whole cluster", step, price, left)
				}
				calls = append(calls, &refCall{id: c.ID, node: i, n: 1})
			case errors.Is(err, ledger.ErrInsufficientCredit):
				if !local.LessThan(price) {
					t.Fatalf("step %d: refused with %s available locally", step, local)
				}
				op = "open-refused"
			default:
				t.Fatalf("step %d: open: %v", step, err)
			}
		case x < 42:
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
			err := sp[c.node].books.AnswerDialog(c.id, clk.Now(), nil)
			if fenced[c.node] {
				// No takeover record can land: the gateway answers 503.
				if !errors.Is(err, ledger.ErrUnavailable) {
					t.Fatalf("step %d: answer on a fenced node: %v", step, err)
				}
				op = "answer-fenced"
				break
			}
			if err != nil {
				t.Fatalf("step %d: answer: %v", step, err)
			}
			c.answered = clk.Now()
		case x < 62:
			op = "step"
			var c *refCall
			for _, k := range r.Perm(len(calls)) {
				if !calls[k].answered.IsZero() && calls[k].n > 0 { // a refused one must end
					c = calls[k]
					break
				}
			}
			if c == nil {
				op = "step-none"
				break
			}
			cs := sp[c.node]
			local, left := localAvail(cs), clusterLeft()
			_, err := cs.books.Step(c.id, c.n, clk.Now())
			switch {
			case fenced[c.node]:
				if !errors.Is(err, ledger.ErrUnavailable) {
					t.Fatalf("step %d: step on a fenced node: %v", step, err)
				}
				op = "step-fenced"
			case err == nil:
				// Committing n turned held money into spent: what n+1
				// took must have been there besides.
				if left.LessThan(price) {
					t.Fatalf("step %d: held %s with %s left in the whole cluster", step, price, left)
				}
				c.n++
			case errors.Is(err, ledger.ErrInsufficientCredit):
				if !local.LessThan(price) {
					t.Fatalf("step %d: step refused with %s available locally", step, local)
				}
				op = "step-refused"
				c.n = -c.n // ends at the next close
			default:
				t.Fatalf("step %d: step: %v", step, err)
			}
		case x < 75:
			op = "close"
			if len(calls) == 0 {
				op = "close-none"
				break
			}
			k := r.IntN(len(calls))
			c := calls[k]
			end := ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonCallerHangup}
			if !c.answered.IsZero() && r.IntN(3) == 0 {
				end.BillTo, end.Reason = c.answered, ledger.ReasonLegLost // refunds what followed the answer
				op = "close-refund"
			}
			if _, err := sp[c.node].books.CloseCall(c.id, end); err != nil {
				if fenced[c.node] && !c.answered.IsZero() && errors.Is(err, ledger.ErrUnavailable) {
					// A survivor's or the restart's to settle (reap.go):
					// the fenced node writes no CDR.
					op = "close-fenced"
					break
				}
				t.Fatalf("step %d: close: %v", step, err)
			}
			calls = append(calls[:k], calls[k+1:]...)
		case x < 87:
			op = "tick"
			clk.Advance(time.Duration(r.IntN(4000)) * time.Millisecond)
			if !fenced[i] {
				s.books.Tick()
			}
		case x < 91:
			op = "flip-direct"
			if !fenced[i] {
				o := s.books.org("acme")
				s.books.setDirect(o, !s.books.Direct("acme"))
			}
		case x < 94:
			op = "idle"
			clk.Advance(p.IdleAfter)
			if !fenced[i] {
				s.books.Tick()
			}
		case x < 96:
			op = "restart"
			if fenced[i] {
				s.crash(t)
			} else {
				s.stop(t)
			}
			fenced[i] = false
			dropCalls(i) // the ledger settles them as it opens
			start(s)
		case x < 98:
			op = "crash"
			s.crash(t)
			fenced[i] = false
			dropCalls(i)
			start(s)
		case x < 99:
			op = "fence"
			if fenced[i] {
				break
			}
			if _, err := admin.Revoke(context.Background(), s.node.Lease()); err != nil {
				t.Fatal(err)
			}
			for end := time.Now().Add(5 * time.Second); !errors.Is(s.node.Sellable(), ErrFenced); {
				if time.Now().After(end) {
					t.Fatalf("step %d: node never noticed its revoked lease", step)
				}
				time.Sleep(10 * time.Millisecond)
			}
			fenced[i] = true
		default:
			op = "noop"
		}
		counts[op]++
		check(step, op)
	}

	// The end: every call closed, every node fenced restarted, every Books
	// closed (slices given back): etcd's spent is what the ledgers debited.
	for _, c := range calls {
		if fenced[c.node] && !c.answered.IsZero() {
			continue // settled by the node's restart below
		}
		if _, err := sp[c.node].books.CloseCall(c.id, ledger.CallEnd{At: clk.Now(), Reason: ledger.ReasonCallerHangup}); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range sp {
		if fenced[i] {
			s.crash(t)
			start(s)
		}
	}
	check(booksModelSteps, "end")
	spent := decimal.Zero
	for _, s := range sp {
		t.Logf("%s: etcd ops %+v", s.id, s.books.Ops())
		if err := s.books.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.books = nil
		lo, _ := s.local.Org("acme")
		spent = spent.Add(lo.Debited)
		if err := s.local.CheckHistory(); err != nil {
			t.Fatal(err)
		}
	}
	st := mustCheck(t, sp[0].node)
	a := st.Orgs["acme"]
	if a.Slices != 0 || !a.Spent.Equal(spent) || !a.Unallocated.Equal(funded.Sub(spent)) {
		t.Fatalf("at the end etcd has %+v; the ledgers debited %s of %s", a, spent, funded)
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
	t.Logf("%d steps:%s; funded %s, spent %s", booksModelSteps, b, funded, spent)
}
