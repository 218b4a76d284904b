package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestLeaderKilledAndRestarted: the helpers chaos tests lean on do what
// they say on three real members. The leader found is the one etcd names;
// killed, another is elected and writes go on; restarted on its data, the
// old leader answers again and still has the key written before its death
// as well as the one written while it was down.
func TestLeaderKilledAndRestarted(t *testing.T) {
	c := Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.Client()
	defer cli.Close()
	if _, err := cli.Put(ctx, "before", "1"); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cli.Status(ctx, leader.ClientURL)
	if err != nil || st.Leader != st.Header.MemberId {
		t.Fatalf("Leader returned %s, whose Status says leader %x, itself %x (%v)", leader.Name, st.Leader, st.Header.MemberId, err)
	}
	killed := time.Now()
	c.Kill(leader)
	if leader.Running() {
		t.Fatal("killed member still running")
	}
	next, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatalf("the killed member %s is still named leader", leader.Name)
	}
	t.Logf("leader %s killed; %s leads %v later", leader.Name, next.Name, time.Since(killed).Round(time.Millisecond))
	if _, err := cli.Put(ctx, "while-down", "2"); err != nil {
		t.Fatal(err)
	}

	c.Restart(leader)
	if !leader.Running() {
		t.Fatal("restarted member not running")
	}
	// Its own answer, not the cluster's: a serializable read on it alone.
	one, err := clientv3.New(clientv3.Config{Endpoints: []string{leader.ClientURL}, DialTimeout: 5 * time.Second, Logger: nopLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		res, err := one.Get(ctx, "while-down", clientv3.WithSerializable())
		if err == nil && len(res.Kvs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted %s does not have the key written while it was down: %v %v", leader.Name, res, err)
		}
	}
	if res, err := one.Get(ctx, "before", clientv3.WithSerializable()); err != nil || len(res.Kvs) != 1 {
		t.Fatalf("restarted %s lost the key written before its death: %v %v", leader.Name, res, err)
	}

	// Paused, the member's process stays; continued, it serves again.
	c.Pause(next)
	time.Sleep(200 * time.Millisecond)
	c.Continue(next)
	if !next.Running() {
		t.Fatal("paused and continued member exited")
	}
	if _, err := cli.Put(ctx, "after-pause", "3"); err != nil {
		t.Fatal(err)
	}
}
