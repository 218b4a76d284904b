package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
)

// TestFundIdempotentConcurrently: five nodes send the same funding at once;
// it lands once, and the key with another amount is refused.
func TestFundIdempotentConcurrently(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		cli := ec.Client()
		defer cli.Close()
		n := join(t, cli, fmt.Sprintf("n%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.Fund(ctx, "acme", dec("25.00"), "stripe-pi-1")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
	cli := ec.Client()
	defer cli.Close()
	n := join(t, cli, "late")
	if err := n.Fund(ctx, "acme", dec("26.00"), "stripe-pi-1"); !errors.Is(err, ErrIdempotencyConflict) {
		t.Fatalf("same key, other amount: %v", err)
	}
	if o := mustCheck(t, n).Orgs["acme"]; !o.Funded.Equal(dec("25")) || !o.Unallocated.Equal(dec("25")) {
		t.Fatalf("after 5 concurrent fundings with one key: %+v", o)
	}
}

// TestReclaimExactlyOnce: five survivors reclaim a dead node's three slices
// at the same time; each slice goes back once.
func TestReclaimExactlyOnce(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	ctx := context.Background()
	cli := ec.Client()
	defer cli.Close()
	dead := join(t, cli, "dead")
	for _, org := range []string{"acme", "bolt", "cask"} {
		if err := dead.Fund(ctx, org, dec("10"), "f"); err != nil {
			t.Fatal(err)
		}
		s, err := dead.Grant(ctx, org, dec("6"))
		if err != nil {
			t.Fatal(err)
		}
		if err := dead.Report(ctx, s, dec("1.25")); err != nil {
			t.Fatal(err)
		}
	}
	survivors := make([]*Node, 5)
	for i := range survivors {
		c := ec.Client()
		defer c.Close()
		survivors[i] = join(t, c, fmt.Sprintf("s%d", i))
	}
	if _, err := survivors[0].Reclaim(ctx, "dead"); !errors.Is(err, ErrNodeAlive) {
		t.Fatalf("reclaim of a live node: %v, want ErrNodeAlive", err)
	}
	if _, err := cli.Revoke(ctx, dead.Lease()); err != nil {
		t.Fatal(err)
	}
	got := make([][]Reclaimed, len(survivors))
	errs := make([]error, len(survivors))
	var wg sync.WaitGroup
	for i, s := range survivors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = s.Reclaim(ctx, "dead")
		}()
	}
	wg.Wait()
	ids := map[string]int{}
	for i := range survivors {
		if errs[i] != nil {
			t.Fatalf("survivor %d: %v", i, errs[i])
		}
		for _, r := range got[i] {
			ids[r.Slice.ID]++
			if !r.Unspent.Equal(dec("4.75")) {
				t.Errorf("slice %s reclaimed %s, want 4.75", r.Slice.ID, r.Unspent)
			}
		}
	}
	if len(ids) != 3 {
		t.Fatalf("reclaimed slices %v, want 3", ids)
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("slice %s reclaimed %d times", id, n)
		}
	}
	st := mustCheck(t, survivors[0])
	for _, org := range []string{"acme", "bolt", "cask"} {
		if o := st.Orgs[org]; !o.Unallocated.Equal(dec("8.75")) || !o.Spent.Equal(dec("1.25")) || o.Slices != 0 {
			t.Errorf("%s after reclaim: %+v", org, o)
		}
	}
}

// TestConcurrentSpend: four nodes spend one org at once, by slices and by
// direct debits, until it is empty; the compare-and-set loops lose no cent
// and never sell more than was funded.
func TestConcurrentSpend(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	ctx := context.Background()
	const nodes, opsPerNode = 4, 150
	ns := make([]*Node, nodes)
	for i := range ns {
		cli := ec.Client()
		defer cli.Close()
		ns[i] = join(t, cli, fmt.Sprintf("n%d", i))
	}
	if err := ns[0].Fund(ctx, "acme", dec("40.00"), "f"); err != nil {
		t.Fatal(err)
	}
	sold := make([]decimal.Decimal, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	start := time.Now()
	for i, n := range ns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sold[i], errs[i] = spendLoop(ctx, n, opsPerNode)
		}()
	}
	wg.Wait()
	total := decimal.Zero
	for i := range ns {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		total = total.Add(sold[i])
	}
	o := mustCheck(t, ns[0]).Orgs["acme"]
	t.Logf("%d nodes × %d operations in %s: sold %s of %s", nodes, opsPerNode, time.Since(start).Round(time.Millisecond), total, o.Funded)
	if !o.Spent.Equal(total) || o.Slices != 0 || total.GreaterThan(o.Funded) {
		t.Fatalf("nodes sold %s; etcd %+v", total, o)
	}
}

// spendLoop alternates slices (grant, sell from it locally, report, return)
// and direct debits, returning what it sold.
func spendLoop(ctx context.Context, n *Node, ops int) (decimal.Decimal, error) {
	sold := decimal.Zero
	for i := 0; i < ops; i++ {
		if i%2 == 0 {
			if err := n.Debit(ctx, "acme", dec("0.07")); err == nil {
				sold = sold.Add(dec("0.07"))
			} else if !errors.Is(err, ErrInsufficientCredit) {
				return sold, err
			}
			continue
		}
		s, err := n.Grant(ctx, "acme", dec("0.50"))
		if errors.Is(err, ErrInsufficientCredit) {
			continue
		}
		if err != nil {
			return sold, err
		}
		if err := n.Report(ctx, s, dec("0.20")); err != nil {
			return sold, err
		}
		if err := n.Return(ctx, s, dec("0.10")); err != nil {
			return sold, err
		}
		sold = sold.Add(dec("0.40"))
	}
	return sold, nil
}

// TestMemberKilled: on a 3-member etcd, the leader is killed (SIGKILL, by
// PID) while two nodes debit; operations go on against the other two
// members, and the money of record stays exact.
func TestMemberKilled(t *testing.T) {
	ec := etcdtest.Start(t, 3)
	ctx := context.Background()
	admin := ec.Client()
	defer admin.Close()
	const perNode = 300
	ns := make([]*Node, 2)
	for i := range ns {
		cli := ec.Client()
		defer cli.Close()
		ns[i] = join(t, cli, fmt.Sprintf("n%d", i))
	}
	if err := ns[0].Fund(ctx, "acme", dec("1000"), "f"); err != nil {
		t.Fatal(err)
	}
	var leader *etcdtest.Member
	for _, m := range ec.Members {
		st, err := admin.Status(ctx, m.ClientURL)
		if err == nil && st.Leader == st.Header.MemberId {
			leader = m
		}
	}
	if leader == nil {
		t.Fatal("no leader among the members")
	}
	type tally struct {
		acked, ambiguous, after int
		failover                time.Duration
	}
	tallies := make([]tally, len(ns))
	var killed sync.Once
	var killedAt time.Time
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i, n := range ns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tl := &tallies[i]
			for op := 0; op < perNode; op++ {
				if op == perNode/3 {
					killed.Do(func() {
						ec.Kill(leader)
						mu.Lock()
						killedAt = time.Now()
						mu.Unlock()
					})
				}
				err := n.Debit(ctx, "acme", dec("0.01"))
				switch {
				case err == nil:
					tl.acked++
					mu.Lock()
					if !killedAt.IsZero() {
						if tl.after == 0 {
							tl.failover = time.Since(killedAt)
						}
						tl.after++
					}
					mu.Unlock()
				case errors.Is(err, ErrFenced) || errors.Is(err, ErrInvalid):
					t.Errorf("node %d: %v", i, err)
					return
				default:
					tl.ambiguous++ // etcd unreachable or leader changing: it may or may not have landed
				}
			}
		}()
	}
	wg.Wait()
	o := mustCheck(t, ns[0]).Orgs["acme"]
	acked, ambiguous := 0, 0
	for i, tl := range tallies {
		t.Logf("node %d: %d debits acknowledged (%d after the kill, first %s after it), %d failed", i, tl.acked, tl.after, tl.failover.Round(time.Millisecond), tl.ambiguous)
		if tl.after == 0 {
			t.Errorf("node %d: no operation succeeded after the leader was killed", i)
		}
		acked += tl.acked
		ambiguous += tl.ambiguous
	}
	t.Logf("leader %s (pid %d) killed; %d debits in %s; spent %s", leader.Name, leader.PID(), acked+ambiguous, time.Since(start).Round(time.Millisecond), o.Spent)
	lo, hi := decimal.New(int64(acked), -2), decimal.New(int64(acked+ambiguous), -2)
	if o.Spent.LessThan(lo) || o.Spent.GreaterThan(hi) {
		t.Fatalf("spent %s, want between %s (acknowledged) and %s (acknowledged + failed)", o.Spent, lo, hi)
	}
	for i, n := range ns {
		if err := n.Sellable(); err != nil {
			t.Errorf("node %d not sellable after the failover: %v", i, err)
		}
	}
}
