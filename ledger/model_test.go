package ledger

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// The model test drives the ledger from many goroutines with random holds,
// commits, releases, steps, closes, fundings and retries of all of them, on
// a few orgs whose money and minutes run out. Every operation the ledger
// linearizes is replayed, in that same order, into model — a deliberately
// plain sequential reference written from the README's billing and ledger rules — and the two must agree
// on the outcome, on the increment held and on the org's balance, holds and
// pool; the ledger's invariants are checked after every single step.
//
// Steps carry a random last proof of life and some closes a bill-to time
// (liveness.go): the model keeps every committed increment with its start
// and gives back, at such a close, each one that started after the bill-to
// time — the plain per-increment reading of "billed to the last proof of
// life, to the increment" that the ledger's runs must agree with.

type model struct {
	refunded int // increments given back by closes with a bill-to time
	orgs     map[string]*mOrg
	calls    map[string]*mCall
	ended    map[string]bool
}

type mOrg struct {
	balance, held decimal.Decimal
	keys          map[string]decimal.Decimal // funding key → amount
	pool          mPool                      // the domestic pool of t0's month
}

type mPool struct{ total, used, held int }

type mCall struct {
	org, to     string
	plan        bool
	spill       bool
	price       decimal.Decimal // of every 1-second credit increment
	answered    bool
	n           int
	open        bool
	src         string
	credit      decimal.Decimal
	charge      decimal.Decimal
	poolMinutes int
	holdFrom    time.Time // when the open increment started
	tail        []mInc    // committed increments that started after the last proof of life
}

type mInc struct {
	start  time.Time
	src    string
	credit decimal.Decimal
}

// trim forgets the committed increments that started at or before alive.
func (c *mCall) trim(alive time.Time) {
	var kept []mInc
	for _, i := range c.tail {
		if i.start.After(alive) {
			kept = append(kept, i)
		}
	}
	c.tail = kept
}

func (m *model) next(o *mOrg, c *mCall, n int) (Increment, error) {
	if c.plan {
		if o.pool.total-o.pool.used-o.pool.held >= 1 {
			return Increment{N: n, Source: SourcePool, Seconds: 60, Minutes: 1, Month: "2026-11", Open: true}, nil
		}
		if !c.spill {
			return Increment{}, ErrPoolExhausted
		}
	}
	if o.balance.Sub(o.held).LessThan(c.price) {
		return Increment{}, ErrInsufficientCredit
	}
	return Increment{N: n, Source: SourceCredits, Seconds: 1, Credit: c.price, Open: true}, nil
}

func (m *model) hold(o *mOrg, c *mCall, inc Increment) {
	c.n, c.open, c.src, c.credit = inc.N, true, inc.Source, inc.Credit
	if inc.Source == SourcePool {
		o.pool.held++
	} else {
		o.held = o.held.Add(inc.Credit)
	}
}

func (m *model) settle(o *mOrg, c *mCall, commit bool) {
	if c.src == SourcePool {
		o.pool.held--
		if commit {
			o.pool.used++
			c.poolMinutes++
		}
	} else {
		o.held = o.held.Sub(c.credit)
		if commit {
			o.balance = o.balance.Sub(c.credit)
			c.charge = c.charge.Add(c.credit)
		}
	}
	c.open = false
}

func (c *mCall) inc() Increment {
	if c.n == 0 {
		return Increment{}
	}
	i := Increment{N: c.n, Source: c.src, Open: c.open}
	if c.src == SourcePool {
		i.Seconds, i.Minutes, i.Month = 60, 1, "2026-11"
	} else {
		i.Seconds, i.Credit = 1, c.credit
	}
	return i
}

// apply is the reference: what op must do to a ledger in the model's state.
func (m *model) apply(op Op, tmpl Call) (Increment, error) {
	c, up := m.calls[op.Call]
	lookup := func() error {
		if up {
			return nil
		}
		if m.ended[op.Call] {
			return ErrCallEnded
		}
		return ErrUnknownCall
	}
	switch op.Kind {
	case "fund":
		o := m.orgs[op.Org]
		if prev, ok := o.keys[op.Key]; ok {
			if prev.Equal(op.Amount) {
				return Increment{}, nil // a retry: answered, nothing changes
			}
			return Increment{}, ErrDuplicateFunding
		}
		o.keys[op.Key] = op.Amount
		o.balance = o.balance.Add(op.Amount)
		return Increment{}, nil
	case "open":
		if up {
			if c.org != tmpl.Org || c.to != tmpl.To {
				return Increment{}, ErrInvalid
			}
			return c.inc(), nil
		}
		if m.ended[op.Call] {
			return Increment{}, ErrCallEnded
		}
		o := m.orgs[tmpl.Org]
		c = &mCall{org: tmpl.Org, to: tmpl.To, plan: tmpl.Plan != "", spill: tmpl.Spill, price: tmpl.RatePerMinute.Div(decimal.NewFromInt(60))}
		inc, err := m.next(o, c, 1)
		if err != nil {
			return Increment{}, err
		}
		m.hold(o, c, inc)
		c.holdFrom = op.At
		m.calls[op.Call] = c
		return c.inc(), nil
	case "answer":
		if err := lookup(); err != nil {
			return Increment{}, err
		}
		if !c.answered {
			c.answered, c.holdFrom = true, op.At
		}
		return Increment{}, nil
	case "close":
		if m.ended[op.Call] {
			return Increment{}, nil
		}
		if err := lookup(); err != nil {
			return Increment{}, err
		}
		o := m.orgs[c.org]
		billTo := !op.BillTo.IsZero() && c.answered
		if billTo {
			c.trim(op.BillTo)
		}
		if c.open {
			m.settle(o, c, c.answered && !(billTo && c.holdFrom.After(op.BillTo)))
		}
		if billTo {
			m.refunded += len(c.tail)
			for _, i := range c.tail {
				if i.src == SourcePool {
					o.pool.used--
					c.poolMinutes--
				} else {
					o.balance = o.balance.Add(i.credit)
					c.charge = c.charge.Sub(i.credit)
				}
			}
		}
		delete(m.calls, op.Call)
		m.ended[op.Call] = true
		return Increment{}, nil
	}
	if err := lookup(); err != nil {
		return Increment{}, err
	}
	o, n := m.orgs[c.org], op.N
	switch op.Kind {
	case "hold":
		if n <= c.n {
			if n == c.n {
				return c.inc(), nil
			}
			return Increment{N: n}, nil
		}
		if !c.answered || n != c.n+1 || c.open {
			return Increment{}, ErrInvalid
		}
		inc, err := m.next(o, c, n)
		if err != nil {
			return Increment{}, err
		}
		m.hold(o, c, inc)
		c.holdFrom = op.At
		return c.inc(), nil
	case "commit", "release":
		if n < c.n || (n == c.n && !c.open) {
			return Increment{}, nil
		}
		if n > c.n || (op.Kind == "commit" && !c.answered) {
			return Increment{}, ErrInvalid
		}
		m.settle(o, c, op.Kind == "commit")
		c.tail = nil
		return Increment{}, nil
	case "step":
		if c.n == n+1 {
			return c.inc(), nil
		}
		if c.n != n || !c.answered {
			return Increment{}, ErrInvalid
		}
		inc, nextErr := m.next(o, c, n+1)
		if !c.open && nextErr != nil {
			return Increment{}, nextErr
		}
		if c.open {
			c.tail = append(c.tail, mInc{start: c.holdFrom, src: c.src, credit: c.credit})
			m.settle(o, c, true)
		}
		alive := op.Live.Alive
		if alive.IsZero() {
			alive = op.At
		}
		c.trim(alive)
		if nextErr == nil {
			m.hold(o, c, inc)
			c.holdFrom = op.At
		}
		return c.inc(), nextErr
	}
	panic("unknown op " + op.Kind)
}

var modelErrs = []error{ErrInsufficientCredit, ErrPoolExhausted, ErrCallEnded, ErrUnknownCall, ErrInvalid, ErrDuplicateFunding}

func errClass(err error) string {
	if err == nil {
		return "ok"
	}
	for _, e := range modelErrs {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "other: " + err.Error()
}

// modelCall is the one call a given id always names, so a retried open
// asks for the same call.
func modelCall(id string, orgs []string) Call {
	h := fnv.New32a()
	h.Write([]byte(id))
	v := h.Sum32()
	c := Call{ID: id, Details: Details{Org: orgs[v%uint32(len(orgs))], User: "u", To: "12125550100", Currency: "USD"},
		FirstIncrement: 1, NextIncrement: 1}
	c.RatePerMinute = []decimal.Decimal{d("0.60"), d("15"), d("60")}[(v/7)%3]
	switch (v / 21) % 3 {
	case 0:
		c.Spill = true
	case 1:
		c.Plan, c.Spill = PlanDomestic, true
	case 2:
		c.Plan = PlanDomestic
	}
	return c
}

func TestModelRandomizedConcurrent(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	plans := DefaultPlans()
	plans[0].Minutes = 4
	// Small fundings, so orgs run dry and get funded again all the time.
	l := openWith(t, t.TempDir(), Options{Plans: plans, MinFunding: d("1")})
	defer l.Close()
	orgs := []string{"o1", "o2", "o3"}
	m := &model{orgs: map[string]*mOrg{}, calls: map[string]*mCall{}, ended: map[string]bool{}}
	for _, id := range orgs {
		newOrg(t, l, id, "")
		if err := l.PutUser(User{Org: id, ID: "u", Licenses: []string{"domestic_calling_plan"}}); err != nil {
			t.Fatal(err)
		}
		m.orgs[id] = &mOrg{keys: map[string]decimal.Decimal{}, pool: mPool{total: 4}}
	}

	var (
		mu       sync.Mutex // guards failed, steps and outcomes
		failed   error
		steps    int
		outcomes = map[string]int{}
		inflight sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		if failed == nil {
			failed = fmt.Errorf(format, args...)
		}
	}
	// The trace runs under the ledger's lock, in linearization order.
	l.trace = func(op Op) {
		mu.Lock()
		defer mu.Unlock()
		steps++
		applied := "replayed"
		if op.Seq > 0 {
			applied = "applied"
		}
		outcomes[op.Kind+" "+applied+" "+errClass(op.Err)]++
		if failed != nil {
			return
		}
		want, wantErr := m.apply(op, modelCall(op.Call, orgs))
		if errClass(op.Err) != errClass(wantErr) {
			fail("step %d %s %s#%d (org %s): ledger says %v, model says %v", steps, op.Kind, op.Call, op.N, op.Org, op.Err, wantErr)
			return
		}
		if hasResult(op.Kind) && (op.Err == nil || op.Seq > 0) && !sameInc(op.Result, want) {
			fail("step %d %s %s#%d: ledger holds %+v, model %+v", steps, op.Kind, op.Call, op.N, op.Result, want)
			return
		}
		if err := l.checkLocked(); err != nil {
			fail("step %d %s %s#%d: invariant: %v", steps, op.Kind, op.Call, op.N, err)
			return
		}
		for id, mo := range m.orgs {
			st := l.orgs[id]
			p := l.peekPool(st, 0, "2026-11")
			if !st.Balance.Equal(mo.balance) || !st.Held.Equal(mo.held) || p.Used != mo.pool.used || p.Held != mo.pool.held {
				fail("step %d %s %s#%d: org %s ledger balance %s held %s pool %d+%d, model %s %s %d+%d", steps, op.Kind, op.Call, op.N,
					id, st.Balance, st.Held, p.Used, p.Held, mo.balance, mo.held, mo.pool.used, mo.pool.held)
				return
			}
		}
	}

	// Each goroutine plays calls from start to end, with retries and the
	// odd out-of-order request; the ids come from a window that slides
	// along, so goroutines often drive the same call at once.
	const workers, callsEach = 8, 40
	for w := range workers {
		inflight.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			clock := 0
			do := func(kind, id string, n int) {
				clock++
				op := Op{Kind: kind, Call: id, N: n}
				switch x := r.IntN(3); {
				case kind == "step" && x > 0:
					// A last proof of life a little before now, or after.
					op.Live = Liveness{Alive: at(clock - 12 + r.IntN(14))}
				case kind == "close" && x > 0:
					op.BillTo = at(clock - 12 + r.IntN(14))
				}
				if kind == "fund" {
					op = Op{Kind: "fund", Org: orgs[r.IntN(len(orgs))], Key: fmt.Sprintf("k%d", r.IntN(20)),
						Amount: decimal.NewFromInt(int64(1 + r.IntN(3)))}
				}
				runOp(l, op, modelCall(id, orgs), at(clock))
			}
			for round := range callsEach {
				id := fmt.Sprintf("c%d", round*3+r.IntN(5))
				if r.IntN(6) == 0 {
					do("fund", "", 0)
				}
				do("open", id, 1)
				if r.IntN(5) == 0 {
					do("open", id, 1)
				}
				if r.IntN(10) > 0 {
					do("answer", id, 0)
				}
				for range r.IntN(14) {
					n := l.latest(id)
					switch x := r.IntN(100); {
					case x < 65:
						do("step", id, n)
					case x < 75:
						do("step", id, n-1)
					case x < 83:
						do("commit", id, n)
						do("hold", id, n+1)
					case x < 88:
						do("release", id, n)
						do("hold", id, n+1)
					case x < 95:
						do("hold", id, n)
					default:
						do("commit", id, n+1)
					}
				}
				do("close", id, 0)
				if r.IntN(5) == 0 {
					do("close", id, 0)
				}
			}
		})
	}
	inflight.Wait()
	if failed != nil {
		t.Fatalf("seed %d: %v", seed, failed)
	}
	for _, c := range l.OpenCalls() {
		if _, err := l.CloseCall(c.ID, CallEnd{At: at(1 << 20), Reason: ReasonAdmin}); err != nil {
			t.Fatal(err)
		}
	}
	check(t, l)
	t.Logf("%d operations linearized and checked: %v; %d increments given back", steps, outcomes, m.refunded)
	if m.refunded == 0 {
		t.Error("no close gave back an increment in this run")
	}
	// The run must have reached the interesting states, or it proved little.
	for _, want := range []string{"step applied ok", "step replayed ok", "open replayed ok", "commit applied ok",
		"release applied ok", "fund replayed idempotency key already used", "close applied ok", "not enough credit",
		"included minutes used up"} {
		seen := 0
		for k, n := range outcomes {
			if strings.Contains(k, want) {
				seen += n
			}
		}
		if seen == 0 {
			t.Errorf("no %q in this run", want)
		}
	}
}

// latest is the number of the call's latest increment, 0 if it is not up.
func (l *Ledger) latest(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.calls[id]; ok {
		return c.Hold.N
	}
	return 0
}

// runOp performs op through the public API; the trace checks the outcome.
func runOp(l *Ledger, op Op, tmpl Call, when time.Time) {
	switch op.Kind {
	case "fund":
		_, _ = l.Fund(op.Org, op.Amount, op.Key)
	case "open":
		_, _ = l.OpenCall(tmpl, when)
	case "answer":
		_ = l.Answer(op.Call, when)
	case "step":
		_, _ = l.StepAlive(op.Call, op.N, when, op.Live)
	case "hold":
		_, _ = l.Hold(op.Call, op.N, when)
	case "commit":
		_ = l.Commit(op.Call, op.N, when)
	case "release":
		_ = l.Release(op.Call, op.N, when)
	case "close":
		_, _ = l.CloseCall(op.Call, CallEnd{At: when, Reason: ReasonCallerHangup, BillTo: op.BillTo})
	}
}

func hasResult(kind string) bool { return kind == "open" || kind == "hold" || kind == "step" }

func sameInc(a, b Increment) bool {
	return a.N == b.N && a.Source == b.Source && a.Seconds == b.Seconds && a.Minutes == b.Minutes &&
		a.Month == b.Month && a.Credit.Equal(b.Credit) && a.Open == b.Open
}
