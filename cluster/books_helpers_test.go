package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// testShared is a test-only SharedConfig: it applies each admin change to
// every node's local ledger in turn, which is what the real shared
// configuration (Replica, watched from etcd) does for cluster nodes. It
// answers what the first ledger answered.
type testShared struct {
	mu      sync.Mutex
	ledgers []*ledger.Ledger
}

func (s *testShared) each(f func(l *ledger.Ledger) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for i, l := range s.ledgers {
		if err := f(l); i == 0 {
			first = err
		}
	}
	return first
}

func (s *testShared) CreateOrg(o ledger.Org) (ledger.Org, error) {
	var out ledger.Org
	err := s.each(func(l *ledger.Ledger) error {
		r, err := l.CreateOrg(o)
		if out.ID == "" {
			out = r
		}
		return err
	})
	return out, err
}
func (s *testShared) SetBlockPremium(org string, block bool) (ledger.Org, error) {
	var out ledger.Org
	err := s.each(func(l *ledger.Ledger) (err error) { out, err = l.SetBlockPremium(org, block); return })
	return out, err
}
func (s *testShared) SetContacts(org string, c ledger.Contacts) (ledger.Org, error) {
	var out ledger.Org
	err := s.each(func(l *ledger.Ledger) (err error) { out, err = l.SetContacts(org, c); return })
	return out, err
}
func (s *testShared) SetFraudGuard(org string, fg ledger.FraudGuard) (ledger.Org, error) {
	var out ledger.Org
	err := s.each(func(l *ledger.Ledger) (err error) { out, err = l.SetFraudGuard(org, fg); return })
	return out, err
}
func (s *testShared) SetAutoRecharge(org string, ar ledger.AutoRecharge) (ledger.AutoRecharge, error) {
	var out ledger.AutoRecharge
	err := s.each(func(l *ledger.Ledger) (err error) { out, err = l.SetAutoRecharge(org, ar); return })
	return out, err
}
func (s *testShared) PutUser(u ledger.User) error {
	return s.each(func(l *ledger.Ledger) error { return l.PutUser(u) })
}
func (s *testShared) PutTollFree(tf ledger.TollFree) error {
	return s.each(func(l *ledger.Ledger) error { return l.PutTollFree(tf) })
}
func (s *testShared) DeleteTollFree(org, number string) (bool, error) {
	var out bool
	err := s.each(func(l *ledger.Ledger) (err error) { out, err = l.DeleteTollFree(org, number); return })
	return out, err
}
func (s *testShared) DeleteUser(org, id string) (bool, error) {
	var out bool
	err := s.each(func(l *ledger.Ledger) (err error) { out, err = l.DeleteUser(org, id); return })
	return out, err
}
func (s *testShared) DeleteTrunk(id string) (bool, error) {
	var out bool
	err := s.each(func(l *ledger.Ledger) (err error) { out, err = l.DeleteTrunk(id); return })
	return out, err
}
func (s *testShared) PutTrunk(tr ledger.Trunk) error {
	return s.each(func(l *ledger.Ledger) error { return l.PutTrunk(tr) })
}
func (s *testShared) PutDeck(csv []byte) error {
	return s.each(func(l *ledger.Ledger) error { return l.PutDeck(csv) })
}

var _ SharedConfig = (*testShared)(nil)

// spender is one cluster node as the tests run it: its etcd client,
// membership, local Pebble ledger (in dir, kept across restarts) and Books.
type spender struct {
	index int // in the shared config's ledgers
	id    string
	dir   string
	cli   *clientv3.Client
	node  *Node
	local *ledger.Ledger
	books *Books
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openSpendLedger(t testing.TB, dir string) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(dir, ledger.Options{MinFunding: dec("1.00"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// startSpenders opens n ledgers and their nodes on cli's cluster, with the
// shared config applying to all of them, and starts their Books.
func startSpenders(t testing.TB, newClient func() *clientv3.Client, n int, p SlicePolicy, clk clock.Clock) ([]*spender, *testShared) {
	t.Helper()
	return startSpendersOn(t, openSpendLedger, newClient, n, p, clk)
}

// startSpendersOn is startSpenders with the ledgers opened by open.
func startSpendersOn(t testing.TB, open func(testing.TB, string) *ledger.Ledger, newClient func() *clientv3.Client, n int,
	p SlicePolicy, clk clock.Clock) ([]*spender, *testShared) {
	t.Helper()
	shared := &testShared{}
	sp := make([]*spender, n)
	for i := range sp {
		s := &spender{index: i, id: fmt.Sprintf("n%d", i), dir: filepath.Join(t.TempDir(), "ledger"), cli: newClient()}
		s.local = open(t, s.dir)
		shared.ledgers = append(shared.ledgers, s.local)
		sp[i] = s
	}
	for _, s := range sp {
		s.start(t, shared, p, clk)
	}
	t.Cleanup(func() {
		for _, s := range sp {
			s.stop(t)
			s.cli.Close()
		}
	})
	return sp, shared
}

// start joins the node and starts its Books (after a restart too).
func (s *spender) start(t testing.TB, shared *testShared, p SlicePolicy, clk clock.Clock) {
	t.Helper()
	s.startOn(t, shared, p, clk, clk)
}

// startOn is start with the node on nodeClk and the Books on booksClk.
func (s *spender) startOn(t testing.TB, shared *testShared, p SlicePolicy, nodeClk, clk clock.Clock) {
	t.Helper()
	if s.local == nil {
		s.local = openSpendLedger(t, s.dir)
	}
	shared.mu.Lock()
	shared.ledgers[s.index] = s.local // the restarted node's ledger
	shared.mu.Unlock()
	// A 10 s lease: these tests crash nodes by revoking their lease, and
	// a 2 s one can lapse on a loaded machine (then the node is fenced
	// in the middle of a test that is not about fencing).
	cfg := testConfig(s.id)
	cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery = 10*time.Second, 2*time.Second, time.Second
	n, err := Join(context.Background(), s.cli, cfg, nodeClk)
	if err != nil {
		t.Fatal(err)
	}
	s.node = n
	b, err := NewBooks(n, s.local, shared, p, clk, quiet())
	if err != nil {
		t.Fatalf("books %s: %v", s.id, err)
	}
	s.books = b
}

// stop closes the Books (giving the slices back), the node and the ledger.
func (s *spender) stop(t testing.TB) {
	t.Helper()
	if s.books != nil {
		if err := s.books.Close(context.Background()); err != nil && s.books.Err() == nil {
			t.Errorf("close books %s: %v", s.id, err)
		}
		s.books = nil
	}
	if s.node != nil {
		s.node.Close(context.Background())
		s.node = nil
	}
	if s.local != nil {
		s.local.Close()
		s.local = nil
	}
}

// crash stops the node as a killed process would leave it: no slice given
// back, nothing reported since the last tick, the lease revoked (expired).
func (s *spender) crash(t testing.TB) {
	t.Helper()
	// The Books' goroutines stop without writing: cancel, then wait.
	s.books.mu.Lock()
	s.books.cancel()
	s.books.mu.Unlock()
	s.books.wg.Wait()
	s.books = nil
	s.node.stopKeepAlive()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, s.node.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatal(err)
	}
	s.node = nil
	s.local.Close()
	s.local = nil
}

// testCall is a call on credits: 1.00 a minute in 6 s increments, 0.10 each.
func testCall(org string) ledger.Call {
	return ledger.Call{ID: uuid.NewString(), Details: ledger.Details{Org: org, User: "u1", To: "442079460018",
		RatePerMinute: decimal.NewFromInt(1), Currency: "USD"}, FirstIncrement: 6, NextIncrement: 6, Spill: true, Fresh: true}
}

func isRefusal(err error) bool {
	return errors.Is(err, ledger.ErrInsufficientCredit)
}

// modelRand is a model test's random source: seeded from CLUSTER_SEED if
// it is set (to replay a failure), else from the time, the seed logged so
// that a failure can be replayed; stream tells the tests' sequences apart.
func modelRand(t testing.TB, stream uint64) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CLUSTER_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("CLUSTER_SEED=%d", seed)
	return rand.New(rand.NewPCG(seed, seed^stream))
}

// modelSetup is what the Books model tests (books, pools, reap) start
// from: their random source (modelRand), one etcd and an admin client on
// it (closed when the test ends), the books' fake clock at 2026-12-03
// 12:00 UTC, the default slice policy with reports and idle give-backs
// left to the test's driver (ReportEvery an hour, IdleAfter 20 s), and
// three spenders n0–n2, not started, each with its ledger (open) in a
// t.TempDir() of its own, all in shared.
type modelSetup struct {
	r      *rand.Rand
	admin  *clientv3.Client
	clk    *clock.Fake
	p      SlicePolicy
	shared *testShared
	sp     []*spender
}

func newModelSetup(t *testing.T, stream uint64, open func(testing.TB, string) *ledger.Ledger) modelSetup {
	t.Helper()
	r := modelRand(t, stream)
	ec := etcdtest.Start(t, 1)
	admin := ec.Client()
	t.Cleanup(func() { admin.Close() })
	clk := clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	p := DefaultSlicePolicy()
	p.ReportEvery = time.Hour // ticks are the driver's
	p.IdleAfter = 20 * time.Second
	shared := &testShared{}
	sp := make([]*spender, 3)
	for i := range sp {
		sp[i] = &spender{index: i, id: fmt.Sprintf("n%d", i), dir: t.TempDir(), cli: ec.Client()}
		sp[i].local = open(t, sp[i].dir)
		shared.ledgers = append(shared.ledgers, sp[i].local)
	}
	return modelSetup{r: r, admin: admin, clk: clk, p: p, shared: shared, sp: sp}
}

// startAcme is how the takeover and reap tests begin: one etcd and an
// admin client on it (closed when the test ends), n spenders with their
// ledgers opened by open, on fastPolicy with reports only where the test
// ticks (ReportEvery an hour), and org acme created and funded with amount
// through spender funder (key f1). p is the policy, for restarts.
func startAcme(t *testing.T, open func(testing.TB, string) *ledger.Ledger, n, funder int, amount decimal.Decimal) (
	admin *clientv3.Client, sp []*spender, shared *testShared, p SlicePolicy) {
	t.Helper()
	ec := etcdtest.Start(t, 1)
	admin = ec.Client()
	t.Cleanup(func() { admin.Close() })
	p = fastPolicy()
	p.ReportEvery = time.Hour
	sp, shared = startSpendersOn(t, open, ec.Client, n, p, clock.Real{})
	createOrg(t, shared, "acme")
	if _, err := sp[funder].books.FundAcrossRegions("acme", amount, "f1", ""); err != nil {
		t.Fatal(err)
	}
	return admin, sp, shared, p
}
