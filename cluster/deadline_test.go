package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
)

// TestDeadlineOnInjectedClock: the local deadline follows the node's own
// clock: join time + TTL − margin, moved by each acknowledged keepalive to
// its send time + TTL − margin, and it passes when keepalives stop.
func TestDeadlineOnInjectedClock(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	t0 := time.Unix(1_700_000_000, 0)
	clk := clock.NewFake(t0)
	cfg := testConfig("a")
	cfg.KeepAliveEvery = 1400 * time.Millisecond // TTL 2 s, margin 0.5 s
	n, err := Join(context.Background(), cli, cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	if got, want := n.Deadline(), t0.Add(1500*time.Millisecond); !got.Equal(want) {
		t.Fatalf("deadline after join %s, want %s", got, want)
	}
	waitTimer(t, clk)
	clk.Advance(1400 * time.Millisecond) // the keepalive is sent at t0+1.4 s
	want := t0.Add(2900 * time.Millisecond)
	for wait := time.Now(); !n.Deadline().Equal(want); time.Sleep(time.Millisecond) {
		if time.Since(wait) > 5*time.Second {
			t.Fatalf("deadline %s, want %s after the keepalive", n.Deadline(), want)
		}
	}
	waitTimer(t, clk)        // the next keepalive, due at t0+2.8 s
	clk.Advance(time.Second) // t0+2.4 s: past the join's deadline, before the keepalive's
	if err := n.Sellable(); err != nil {
		t.Fatalf("at t0+2.4 s: %v", err)
	}
	n.stopKeepAlive()
	clk.Advance(500 * time.Millisecond) // t0+2.9 s
	if err := n.Sellable(); !errors.Is(err, ErrLeaseDeadline) {
		t.Fatalf("at the deadline: %v, want ErrLeaseDeadline", err)
	}
}

// waitTimer waits until the keepalive loop has set its timer on clk.
func waitTimer(t *testing.T, clk *clock.Fake) {
	t.Helper()
	for wait := time.Now(); clk.Pending() != 1; time.Sleep(time.Millisecond) {
		if time.Since(wait) > 5*time.Second {
			t.Fatalf("%d timers pending, want the keepalive's", clk.Pending())
		}
	}
}
