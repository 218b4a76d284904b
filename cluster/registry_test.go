package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
)

// peersOf is n's peers as "id=url" strings, in order, " down" after a
// node registered once whose lease is gone.
func peersOf(t *testing.T, n *Node) []string {
	t.Helper()
	ps, err := n.Peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		s := p.NodeID + "=" + p.AdminURL
		if p.Down {
			s += " down"
		}
		out = append(out, s)
	}
	return out
}

func sameList(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// TestRegistry: each node sees every other registered node and not itself;
// a bad URL is refused and changes nothing; registering again replaces the
// URL; a restarted node is listed once, under its newest epoch; a node
// whose lease etcd expired disappears without anyone removing it; a node
// whose lease was revoked cannot register.
func TestRegistry(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	ctx := context.Background()
	a, b, c := join(t, cli, "a"), join(t, cli, "b"), join(t, cli, "c")
	if err := a.Register(ctx, "http://127.0.0.1:8081"); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, "http://127.0.0.1:8082"); err != nil {
		t.Fatal(err)
	}
	// c joined but has not registered (its API is not up yet): not a peer.
	if got, want := peersOf(t, a), []string{"b=http://127.0.0.1:8082"}; !sameList(got, want) {
		t.Fatalf("a's peers %v, want %v", got, want)
	}
	for _, bad := range []string{"", "127.0.0.1:8083", "ftp://127.0.0.1:8083", "http://127.0.0.1", "http://127.0.0.1:8083/v1",
		"http://u:p@127.0.0.1:8083", "http://127.0.0.1:8083?x=1"} {
		if err := c.Register(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("register %q: %v, want ErrInvalid", bad, err)
		}
	}
	if got := peersOf(t, a); len(got) != 1 {
		t.Fatalf("a bad registration changed the registry: %v", got)
	}
	if err := c.Register(ctx, "https://c.example:8443/"); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, "http://127.0.0.1:9082"); err != nil {
		t.Fatal(err)
	}
	if got, want := peersOf(t, a), []string{"b=http://127.0.0.1:9082", "c=https://c.example:8443"}; !sameList(got, want) {
		t.Fatalf("a's peers %v, want %v", got, want)
	}
	if got, want := peersOf(t, c), []string{"a=http://127.0.0.1:8081", "b=http://127.0.0.1:9082"}; !sameList(got, want) {
		t.Fatalf("c's peers %v, want %v", got, want)
	}

	// b stops renewing (paused) and restarts at once as b2 under a new
	// epoch, with another URL: listed once, the newest.
	b.stopKeepAlive()
	b2 := join(t, cli, "b")
	if err := b2.Register(ctx, "http://127.0.0.1:7082"); err != nil {
		t.Fatal(err)
	}
	if got, want := peersOf(t, a), []string{"b=http://127.0.0.1:7082", "c=https://c.example:8443"}; !sameList(got, want) {
		t.Fatalf("with two incarnations of b: a's peers %v, want %v", got, want)
	}
	// c stops renewing: once etcd expires its lease it is down (still
	// named: its history is on its disk), and b's first incarnation's key
	// is gone, with nobody deleting either.
	c.stopKeepAlive()
	waited := time.Now()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if got := peersOf(t, a); sameList(got, []string{"b=http://127.0.0.1:7082", "c=https://c.example:8443 down"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("c still live 20 s after it stopped renewing a 2 s lease: %v", peersOf(t, a))
		}
	}
	t.Logf("c went down in the registry %v after it stopped renewing (lease TTL 2 s)", time.Since(waited).Round(10*time.Millisecond))
	resp, err := cli.Get(ctx, keys{testPrefix}.admins(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 2 {
		t.Fatalf("%d admin keys left, want a's and b2's", len(resp.Kvs))
	}

	// A revoked node's registration is refused by the fence, and its key
	// went with the lease.
	if _, err := cli.Revoke(ctx, a.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := a.Register(ctx, "http://127.0.0.1:8081"); !errors.Is(err, ErrFenced) {
		t.Fatalf("register after revoke: %v, want ErrFenced", err)
	}
	if got, want := peersOf(t, b2), []string{"a=http://127.0.0.1:8081 down", "c=https://c.example:8443 down"}; !sameList(got, want) {
		t.Fatalf("b2's peers after a's lease was revoked: %v, want %v", got, want)
	}
	// A node retired for good: its nodes/ key deleted, it is no longer
	// named.
	if _, err := cli.Delete(ctx, keys{testPrefix}.knownNode("c")); err != nil {
		t.Fatal(err)
	}
	if got, want := peersOf(t, b2), []string{"a=http://127.0.0.1:8081 down"}; !sameList(got, want) {
		t.Fatalf("b2's peers after c was retired: %v, want %v", got, want)
	}
}
