package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
)

// The randomized model test: several nodes, each with its own etcd client
// and its own goroutine, do random fundings, grants, reports, returns,
// direct debits, crashes (lease revoked) with reclaims by a survivor, and
// restarts; a plain sequential reference predicts every result and every
// org's totals, and Check must hold after every step. The driver hands one
// operation at a time to one node's goroutine, so a seed replays exactly:
// CLUSTER_SEED=<n> go test -run TestModel ./cluster/.

const (
	modelNodes = 4
	modelSteps = 2000
	modelLimit = 90 * time.Second // bound on the whole run
)

var modelOrgs = []string{"acme", "bolt", "cask"}

// refAccount and refSlice are the reference's plain copies of the money.
type refAccount struct{ funded, unallocated, spent decimal.Decimal }

type refSlice struct {
	epoch          int64
	granted, spent decimal.Decimal
	real           *Slice
}

type model struct {
	accts    map[string]*refAccount
	fundings map[string]decimal.Decimal      // org/key → amount
	slices   map[string]map[string]*refSlice // node → org → slice
}

func newModel() *model {
	m := &model{accts: map[string]*refAccount{}, fundings: map[string]decimal.Decimal{}, slices: map[string]map[string]*refSlice{}}
	for _, o := range modelOrgs {
		m.accts[o] = &refAccount{decimal.Zero, decimal.Zero, decimal.Zero}
	}
	return m
}

// modelNode is one node: its client, its current incarnation (nil while
// crashed) and the goroutine that runs its operations.
type modelNode struct {
	id   string
	cli  *clientv3.Client
	node *Node
	ops  chan func()
	done chan struct{}
}

func (mn *modelNode) run(f func()) {
	ch := make(chan struct{})
	mn.ops <- func() { f(); close(ch) }
	<-ch
}

func cents(r *rand.Rand, max int) decimal.Decimal { return decimal.New(int64(1+r.IntN(max)), -2) }

func TestModel(t *testing.T) {
	r := modelRand(t, 0)
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	defer admin.Close()
	ctx := context.Background()

	nodes := make([]*modelNode, modelNodes)
	for i := range nodes {
		mn := &modelNode{id: fmt.Sprintf("n%d", i), cli: ec.Client(), ops: make(chan func()), done: make(chan struct{})}
		go func() {
			defer close(mn.done)
			for f := range mn.ops {
				f()
			}
		}()
		nodes[i] = mn
		mn.run(func() { mn.node = join(t, mn.cli, mn.id) })
	}
	defer func() {
		for _, mn := range nodes {
			close(mn.ops)
			<-mn.done
			mn.cli.Close()
		}
	}()

	m := newModel()
	counts := map[string]int{}
	start := time.Now()
	for step := 0; step < modelSteps; step++ {
		if time.Since(start) > modelLimit {
			t.Fatalf("step %d: over the %s bound", step, modelLimit)
		}
		var alive, dead []*modelNode
		for _, mn := range nodes {
			if mn.node != nil {
				alive = append(alive, mn)
			} else {
				dead = append(dead, mn)
			}
		}
		mn := alive[r.IntN(len(alive))]
		org := modelOrgs[r.IntN(len(modelOrgs))]
		var op string
		switch x := r.IntN(100); {
		case x < 15:
			op = "fund"
			key := fmt.Sprintf("k%d", r.IntN(40))
			amount := cents(r, 5000)
			if r.IntN(4) == 0 { // a replay of an earlier funding, as a retried request
				if prev, ok := m.fundings[org+"/"+key]; ok {
					amount = prev
				}
			}
			var err error
			mn.run(func() { err = mn.node.Fund(ctx, org, amount, key) })
			prev, seen := m.fundings[org+"/"+key]
			switch {
			case seen && prev.Equal(amount):
				expect(t, step, op, err, nil)
			case seen:
				expect(t, step, op, err, ErrIdempotencyConflict)
			default:
				expect(t, step, op, err, nil)
				m.fundings[org+"/"+key] = amount
				a := m.accts[org]
				a.funded, a.unallocated = a.funded.Add(amount), a.unallocated.Add(amount)
			}
		case x < 35:
			op = "grant"
			amount := cents(r, 3000)
			var s *Slice
			var err error
			mn.run(func() { s, err = mn.node.Grant(ctx, org, amount) })
			a := m.accts[org]
			switch {
			case m.slices[mn.id][org] != nil:
				expect(t, step, op, err, ErrGrantInFlight)
			case a.unallocated.LessThan(amount):
				expect(t, step, op, err, ErrInsufficientCredit)
			default:
				expect(t, step, op, err, nil)
				a.unallocated = a.unallocated.Sub(amount)
				if m.slices[mn.id] == nil {
					m.slices[mn.id] = map[string]*refSlice{}
				}
				m.slices[mn.id][org] = &refSlice{epoch: mn.node.Epoch(), granted: amount, spent: decimal.Zero, real: s}
			}
		case x < 55:
			op = "report"
			rs := m.slices[mn.id][org]
			if rs == nil || rs.epoch != mn.node.Epoch() {
				op = "report-none"
				break
			}
			left := rs.granted.Sub(rs.spent)
			so := rs.spent.Add(left.Mul(decimal.NewFromInt(int64(r.IntN(101)))).Div(decimal.NewFromInt(100)).Round(2))
			var err error
			mn.run(func() { err = mn.node.Report(ctx, rs.real, so) })
			expect(t, step, op, err, nil)
			a := m.accts[org]
			a.spent = a.spent.Add(so.Sub(rs.spent))
			rs.spent = so
		case x < 67:
			op = "return"
			rs := m.slices[mn.id][org]
			if rs == nil || rs.epoch != mn.node.Epoch() {
				op = "return-none"
				break
			}
			left := rs.granted.Sub(rs.spent)
			unspent := left.Mul(decimal.NewFromInt(int64(r.IntN(101)))).Div(decimal.NewFromInt(100)).Round(2)
			var err error
			mn.run(func() { err = mn.node.Return(ctx, rs.real, unspent) })
			expect(t, step, op, err, nil)
			a := m.accts[org]
			a.unallocated = a.unallocated.Add(unspent)
			a.spent = a.spent.Add(left.Sub(unspent))
			delete(m.slices[mn.id], org)
		case x < 85:
			op = "debit"
			reqs := make([]DebitReq, 1+r.IntN(3))
			for i := range reqs {
				reqs[i] = DebitReq{Org: modelOrgs[r.IntN(len(modelOrgs))], Amount: cents(r, 1500)}
			}
			var res []error
			var err error
			mn.run(func() { res, err = mn.node.DebitMany(ctx, reqs) })
			expect(t, step, op, err, nil)
			for i, q := range reqs {
				a := m.accts[q.Org]
				if a.unallocated.LessThan(q.Amount) {
					expect(t, step, op, res[i], ErrInsufficientCredit)
					continue
				}
				expect(t, step, op, res[i], nil)
				a.unallocated, a.spent = a.unallocated.Sub(q.Amount), a.spent.Add(q.Amount)
			}
		case x < 91:
			op = "crash"
			if len(alive) < 2 {
				op = "crash-none"
				break
			}
			if _, err := admin.Revoke(ctx, mn.node.Lease()); err != nil {
				t.Fatalf("step %d: revoke: %v", step, err)
			}
			var err error
			mn.run(func() { err = mn.node.Debit(ctx, org, decimal.New(1, -2)) })
			expect(t, step, op, err, ErrFenced)
			mn.run(func() { mn.node.stopKeepAlive() })
			mn.node = nil
		case x < 96:
			op = "reclaim"
			if len(dead) == 0 {
				op = "reclaim-none"
				break
			}
			d := dead[r.IntN(len(dead))]
			var got []Reclaimed
			var err error
			mn.run(func() { got, err = mn.node.Reclaim(ctx, d.id) })
			expect(t, step, op, err, nil)
			want := decimal.Zero
			for o, rs := range m.slices[d.id] {
				left := rs.granted.Sub(rs.spent)
				m.accts[o].unallocated = m.accts[o].unallocated.Add(left)
				want = want.Add(left)
			}
			n := len(m.slices[d.id])
			delete(m.slices, d.id)
			total := decimal.Zero
			for _, g := range got {
				total = total.Add(g.Unspent)
			}
			if len(got) != n || !total.Equal(want) {
				t.Fatalf("step %d: reclaim %s: %d slices, %s; want %d, %s", step, d.id, len(got), total, n, want)
			}
		default:
			op = "restart"
			if len(dead) == 0 {
				op = "restart-none"
				break
			}
			d := dead[r.IntN(len(dead))]
			d.run(func() { d.node = join(t, d.cli, d.id) })
		}
		counts[op]++
		compareModel(t, step, op, admin, m)
	}
	t.Logf("%d steps in %s on %d nodes: %v", modelSteps, time.Since(start).Round(time.Millisecond), modelNodes, counts)
}

func expect(t *testing.T, step int, op string, got, want error) {
	t.Helper()
	if (want == nil && got != nil) || (want != nil && !errors.Is(got, want)) {
		t.Fatalf("step %d %s: %v, want %v", step, op, got, want)
	}
}

// compareModel runs Check and compares every org's totals with the
// reference's.
func compareModel(t *testing.T, step int, op string, cli *clientv3.Client, m *model) {
	t.Helper()
	st, err := Check(context.Background(), cli, testPrefix, 5*time.Second)
	if err != nil {
		t.Fatalf("step %d %s: %v", step, op, err)
	}
	for _, o := range modelOrgs {
		a := m.accts[o]
		out, n := decimal.Zero, 0
		for _, bySlice := range m.slices {
			if rs := bySlice[o]; rs != nil {
				out, n = out.Add(rs.granted.Sub(rs.spent)), n+1
			}
		}
		g := st.Orgs[o]
		if !g.Funded.Equal(a.funded) || !g.Unallocated.Equal(a.unallocated) || !g.Spent.Equal(a.spent) ||
			(n > 0 && !g.Outstanding.Equal(out)) || g.Slices != n {
			t.Fatalf("step %d %s: org %s in etcd %+v; reference funded %s unallocated %s spent %s outstanding %s in %d slices",
				step, op, o, g, a.funded, a.unallocated, a.spent, out, n)
		}
		if a.spent.GreaterThan(a.funded) {
			t.Fatalf("step %d %s: org %s overspent: %s of %s", step, op, o, a.spent, a.funded)
		}
	}
}
