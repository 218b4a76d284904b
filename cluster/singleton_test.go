package cluster

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
)

// leaders counts the singleton's work running on each node.
type leaders struct {
	mu      sync.Mutex
	running map[string]int
	starts  int
}

func (l *leaders) work(node string) func(ctx context.Context) {
	return func(ctx context.Context) {
		l.mu.Lock()
		l.running[node]++
		l.starts++
		l.mu.Unlock()
		<-ctx.Done()
		l.mu.Lock()
		l.running[node]--
		l.mu.Unlock()
	}
}

// who lists the nodes whose work runs now.
func (l *leaders) who() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for n, c := range l.running {
		for range c {
			out = append(out, n)
		}
	}
	return out
}

// waitOne waits until exactly one node runs the work, not one of not, and
// returns it and how long that took.
func waitOne(t *testing.T, l *leaders, ss map[string]*Singleton, not string) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		w := l.who()
		leading := 0
		for _, s := range ss {
			if s.Leading() {
				leading++
			}
		}
		if len(w) == 1 && w[0] != not && leading == 1 && ss[w[0]].Leading() {
			return w[0], time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no single leader after 30s: running %v", l.who())
	return "", 0
}

// TestSingletonOneLeaderAndTakeover: of three nodes exactly one runs the
// work; a revoked lease (a crashed node) stops it there and another node
// takes over; a leader that closes hands over at once without overlap.
func TestSingletonOneLeaderAndTakeover(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	l := &leaders{running: map[string]int{}}
	nodes := map[string]*Node{}
	ss := map[string]*Singleton{}
	for _, id := range []string{"a", "b", "c"} {
		n := join(t, cli, id)
		nodes[id] = n
		s, err := n.RunSingleton("payer", clock.Real{}, quiet(), l.work(id))
		if err != nil {
			t.Fatal(err)
		}
		ss[id] = s
		t.Cleanup(s.Close)
	}
	first, took := waitOne(t, l, ss, "")
	t.Logf("first leader %s elected in %s", first, took)

	// The metric says the same: 1 on the leader, summed 1.
	reg := prometheus.NewRegistry()
	for id, n := range nodes {
		reg.MustRegister(NewSingletonCollector(n, ss[id]))
	}
	want := `
# HELP creditgate_cluster_singleton_leader 1 while this node runs the named singleton (payer, notifier), 0 otherwise; summed over the nodes it is 1 once a leader is elected.
# TYPE creditgate_cluster_singleton_leader gauge
`
	for _, id := range []string{"a", "b", "c"} {
		v := "0"
		if id == first {
			v = "1"
		}
		want += `creditgate_cluster_singleton_leader{name="payer",node="` + id + `"} ` + v + "\n"
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "creditgate_cluster_singleton_leader"); err != nil {
		t.Fatal(err)
	}

	// Crash: the leader's lease revoked behind its back.
	ctx := context.Background()
	revoked := time.Now()
	if _, err := cli.Revoke(ctx, nodes[first].Lease()); err != nil {
		t.Fatal(err)
	}
	second, took := waitOne(t, l, ss, first)
	t.Logf("lease of %s revoked: %s took over in %s", first, second, took)
	if ss[first].Leading() {
		t.Fatalf("%s still leads after its lease was revoked", first)
	}
	// The fenced node never leads again, however long we wait.
	time.Sleep(time.Second)
	if w := l.who(); len(w) != 1 || w[0] != second {
		t.Fatalf("after takeover running %v, want only %s", w, second)
	}
	t.Logf("revoke to a single new leader: %s", time.Since(revoked)-time.Second)

	// A clean leave: the work stops before the key goes, so the next
	// leader never overlaps; sample continuously while it hands over.
	var overlap atomic.Bool
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSampling:
				return
			default:
			}
			if len(l.who()) > 1 {
				overlap.Store(true)
			}
		}
	}()
	closed := time.Now()
	ss[second].Close()
	third, took := waitOne(t, l, ss, second)
	close(stopSampling)
	<-sampled
	if overlap.Load() {
		t.Fatal("two nodes ran the work at once during a clean handover")
	}
	t.Logf("%s closed: %s took over in %s (measured from Close: %s)", second, third, took, time.Since(closed))
	l.mu.Lock()
	starts := l.starts
	l.mu.Unlock()
	if starts != 3 {
		t.Fatalf("work started %d times, want 3 (one per term)", starts)
	}
}

// TestSingletonStopsAtDeadline: a leader whose keepalives stop (a paused
// or partitioned node) stops its work at its local deadline, before etcd
// expires the lease and a peer takes over.
func TestSingletonStopsAtDeadline(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	l := &leaders{running: map[string]int{}}
	a := join(t, cli, "a")
	sa, err := a.RunSingleton("notifier", clock.Real{}, quiet(), l.work("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	ss := map[string]*Singleton{"a": sa}
	if got, _ := waitOne(t, l, ss, ""); got != "a" {
		t.Fatalf("leader %s", got)
	}
	b := join(t, cli, "b")
	sb, err := b.RunSingleton("notifier", clock.Real{}, quiet(), l.work("b"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	ss["b"] = sb
	time.Sleep(500 * time.Millisecond)
	if w := l.who(); len(w) != 1 || w[0] != "a" {
		t.Fatalf("running %v, want a alone", w)
	}

	paused := time.Now()
	deadline := a.Deadline()
	a.stopKeepAlive()
	var stoppedA time.Time
	for time.Since(paused) < 30*time.Second {
		if !sa.Leading() && stoppedA.IsZero() {
			stoppedA = time.Now()
		}
		if sb.Leading() {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !sb.Leading() || stoppedA.IsZero() {
		t.Fatalf("after the pause: a leading %v, b leading %v", sa.Leading(), sb.Leading())
	}
	tookB := time.Now()
	if stoppedA.Before(deadline) {
		t.Fatalf("a stopped at %s, before its deadline %s: nothing told it to", stoppedA, deadline)
	}
	t.Logf("a paused: stopped %s after its local deadline; b leads %s after the pause (lease TTL %s)",
		stoppedA.Sub(deadline), tookB.Sub(paused), testConfig("a").LeaseTTL)
	if !stoppedA.Before(tookB) {
		t.Fatalf("a stopped at %s, after b took over at %s", stoppedA, tookB)
	}
}
