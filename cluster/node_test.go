package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
)

// TestMoneyMoves walks one org's money through every operation on one node
// and checks the invariant and the totals after each.
func TestMoneyMoves(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	ctx := context.Background()
	a := join(t, cli, "a")
	if err := a.Fund(ctx, "acme", dec("10.00"), "f1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Grant(ctx, "acme", dec("10.01")); !errors.Is(err, ErrInsufficientCredit) {
		t.Fatalf("grant beyond unallocated: %v", err)
	}
	s, err := a.Grant(ctx, "acme", dec("4.00"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Grant(ctx, "acme", dec("1.00")); !errors.Is(err, ErrGrantInFlight) {
		t.Fatalf("second grant: %v, want ErrGrantInFlight", err)
	}
	if err := a.Report(ctx, s, dec("1.50")); err != nil {
		t.Fatal(err)
	}
	if err := a.Debit(ctx, "acme", dec("6.00")); err != nil {
		t.Fatal(err)
	}
	if err := a.Debit(ctx, "acme", dec("0.01")); !errors.Is(err, ErrInsufficientCredit) {
		t.Fatalf("debit of empty unallocated: %v", err)
	}
	st := mustCheck(t, a)
	if o := st.Orgs["acme"]; !o.Outstanding.Equal(dec("2.50")) || !o.Spent.Equal(dec("7.50")) || !o.Unallocated.IsZero() {
		t.Fatalf("after report and debit: %+v", o)
	}
	if err := a.Return(ctx, s, dec("2.00")); err != nil {
		t.Fatal(err)
	}
	if err := a.Return(ctx, s, dec("0")); !errors.Is(err, ErrSliceGone) {
		t.Fatalf("second return: %v, want ErrSliceGone", err)
	}
	st = mustCheck(t, a)
	if o := st.Orgs["acme"]; !o.Funded.Equal(dec("10")) || !o.Unallocated.Equal(dec("2")) || !o.Spent.Equal(dec("8")) || o.Slices != 0 {
		t.Fatalf("after return: %+v", o)
	}
}

// TestFencedAfterRevoke: once etcd has revoked a node's lease, every write
// of that incarnation is refused with ErrFenced, and it may not sell.
func TestFencedAfterRevoke(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	ctx := context.Background()
	a, b := join(t, cli, "a"), join(t, cli, "b")
	if err := a.Fund(ctx, "acme", dec("10"), "f1"); err != nil {
		t.Fatal(err)
	}
	s, err := a.Grant(ctx, "acme", dec("5"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, a.Lease()); err != nil {
		t.Fatal(err)
	}
	writes := map[string]func() error{
		"fund":   func() error { return a.Fund(ctx, "acme", dec("1"), "f2") },
		"grant":  func() error { _, err := a.Grant(ctx, "other", dec("1")); return err },
		"report": func() error { return a.Report(ctx, s, dec("1")) },
		"return": func() error { return a.Return(ctx, s, dec("5")) },
		"debit":  func() error { return a.Debit(ctx, "acme", dec("1")) },
	}
	for name, w := range writes {
		if err := w(); !errors.Is(err, ErrFenced) {
			t.Errorf("%s after revoke: %v, want ErrFenced", name, err)
		}
	}
	if err := a.Sellable(); !errors.Is(err, ErrFenced) {
		t.Errorf("Sellable after revoke: %v, want ErrFenced", err)
	}
	got, err := b.Reclaim(ctx, "a")
	if err != nil || len(got) != 1 || !got[0].Unspent.Equal(dec("5")) {
		t.Fatalf("reclaim by b: %+v, %v", got, err)
	}
	if o := mustCheck(t, b).Orgs["acme"]; !o.Unallocated.Equal(dec("10")) {
		t.Fatalf("after reclaim: %+v", o)
	}
	// A new incarnation of a has a larger epoch and may write again.
	a2 := join(t, cli, "a")
	if a2.Epoch() <= a.Epoch() {
		t.Fatalf("epoch %d after %d", a2.Epoch(), a.Epoch())
	}
	if err := a2.Debit(ctx, "acme", dec("1")); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, a2)
}

// TestDeadlineBeforeExpiry: a node whose keepalives stop (paused,
// partitioned) stops selling at its local deadline, before etcd expires its
// lease; after the expiry its writes are refused.
func TestDeadlineBeforeExpiry(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	ctx := context.Background()
	a := join(t, cli, "a")
	if err := a.Fund(ctx, "acme", dec("10"), "f1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // at least one keepalive acknowledged
	a.stopKeepAlive()
	stopped := time.Now()
	var localStop, etcdExpiry time.Duration
	for localStop == 0 || etcdExpiry == 0 {
		if time.Since(stopped) > 10*time.Second {
			t.Fatalf("after 10 s: local stop %s, etcd expiry %s", localStop, etcdExpiry)
		}
		if localStop == 0 && a.Sellable() != nil {
			localStop = time.Since(stopped)
		}
		if etcdExpiry == 0 {
			ttl, err := cli.TimeToLive(ctx, a.Lease())
			if err != nil {
				t.Fatal(err)
			}
			// TTL is whole seconds, truncated: 0 while under a second is
			// left; -1 once etcd has expired the lease.
			if ttl.TTL == -1 {
				etcdExpiry = time.Since(stopped)
				if localStop == 0 {
					t.Fatalf("etcd expired the lease at %s while the node could still sell", etcdExpiry)
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("keepalives stopped: node refuses to sell after %s, etcd expires the lease after %s", localStop, etcdExpiry)
	if err := a.Debit(ctx, "acme", dec("1")); !errors.Is(err, ErrFenced) {
		t.Fatalf("debit after expiry: %v, want ErrFenced", err)
	}
}
