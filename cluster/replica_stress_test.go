package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/ledger"
)

// checkShared verifies the shared configuration's invariants in etcd, in
// one read: every number is in at most one user's or toll-free record, and
// index/number names it; every toll-free record's delivering trunk has its
// index/delivers key and every such key a toll-free record; users and
// toll-free numbers belong to orgs that exist.
func checkShared(t testing.TB, cli *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, testPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	k := keys{testPrefix}
	orgs, index, delivers := map[string]bool{}, map[string]string{}, map[string]bool{}
	holder := map[string]string{} // number → "u:org/id" or "t:org", from the records
	var tollFree []ledger.TollFree
	var bad []string
	claim := func(n, who string) {
		if prev, ok := holder[n]; ok {
			bad = append(bad, fmt.Sprintf("+%s held by %s and %s", n, prev, who))
		}
		holder[n] = who
	}
	var users []ledger.User
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case strings.HasPrefix(key, k.prefix+"config/org/"):
			orgs[strings.TrimPrefix(key, k.prefix+"config/org/")] = true
		case strings.HasPrefix(key, k.prefix+"config/user/"):
			var u ledger.User
			if err := json.Unmarshal(kv.Value, &u); err != nil {
				t.Fatal(err)
			}
			users = append(users, u)
			for _, n := range u.Numbers {
				claim(n, "u:"+u.Org+"/"+u.ID)
			}
		case strings.HasPrefix(key, k.prefix+"config/tollfree/"):
			var tf ledger.TollFree
			if err := json.Unmarshal(kv.Value, &tf); err != nil {
				t.Fatal(err)
			}
			tollFree = append(tollFree, tf)
			claim(tf.Number, "t:"+tf.Org)
		case strings.HasPrefix(key, k.prefix+"index/number/"):
			index[strings.TrimPrefix(key, k.prefix+"index/number/")] = string(kv.Value)
		case strings.HasPrefix(key, k.prefix+"index/delivers/"):
			delivers[strings.TrimPrefix(key, k.prefix+"index/delivers/")] = true
		}
	}
	for n, who := range holder {
		if index[n] != who {
			bad = append(bad, fmt.Sprintf("+%s held by %s, its index says %q", n, who, index[n]))
		}
	}
	for _, u := range users {
		if !orgs[u.Org] {
			bad = append(bad, fmt.Sprintf("user %s/%s of no org", u.Org, u.ID))
		}
	}
	want := map[string]bool{}
	for _, tf := range tollFree {
		if !orgs[tf.Org] {
			bad = append(bad, fmt.Sprintf("toll-free %s of no org", tf.Number))
		}
		if tf.Trunk != "" {
			want[tf.Trunk+"/"+tf.Number] = true
		}
	}
	for d := range delivers {
		if !want[d] {
			bad = append(bad, "delivery "+d+" without its toll-free record")
		}
	}
	for d := range want {
		if !delivers[d] {
			bad = append(bad, "toll-free delivery "+d+" without its index key")
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		t.Fatalf("shared configuration inconsistent:\n%s", strings.Join(bad, "\n"))
	}
}

// TestReplicaRandomConcurrent: three nodes each make random admin changes
// at once over a small set of ids and numbers (so they collide); every
// answer is one the ledger could give, the shared configuration's
// invariants hold, and the three ledgers end up holding the same
// configuration.
func TestReplicaRandomConcurrent(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	var nodes []*replicaNode
	for i := 0; i < 3; i++ {
		nodes = append(nodes, startReplica(t, cli, fmt.Sprintf("n%d", i+1), t.TempDir()))
	}
	for _, org := range []string{"acme", "beta"} {
		if _, err := nodes[0].r.CreateOrg(ledger.Org{ID: org, Country: "US"}); err != nil {
			t.Fatal(err)
		}
	}
	const opsPerNode = 150
	allowed := []error{ledger.ErrNumberTaken, ledger.ErrInUse, ledger.ErrInvalid, ledger.ErrOrgExists}
	counts := make([]map[string]int, len(nodes))
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for i, rn := range nodes {
		counts[i] = map[string]int{}
		wg.Add(1)
		go func(i int, r *Replica) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 16))
			pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
			number := func() string { return fmt.Sprintf("1800555%04d", rng.IntN(12)) }
			for j := 0; j < opsPerNode; j++ {
				org := pick("acme", "beta")
				var err error
				kind := rng.IntN(8)
				switch kind {
				case 0, 1:
					err = r.PutUser(ledger.User{Org: org, ID: pick("u1", "u2", "u3"), Numbers: []string{number(), number()}})
				case 2:
					_, err = r.DeleteUser(org, pick("u1", "u2", "u3"))
				case 3:
					err = r.PutTollFree(ledger.TollFree{Number: number(), Org: org, Trunk: pick("", "t-"+org)})
				case 4:
					_, err = r.DeleteTollFree(org, number())
				case 5:
					err = r.PutTrunk(ledger.Trunk{ID: "t-" + org, Kind: "customer", Org: org, MaxCalls: j})
				case 6:
					_, err = r.DeleteTrunk("t-" + org)
				case 7:
					_, err = r.CreateOrg(ledger.Org{ID: pick("gamma", "delta"), Country: "US"})
				}
				ok := err == nil
				for _, a := range allowed {
					ok = ok || errors.Is(err, a)
				}
				if !ok {
					errs <- fmt.Errorf("node %d op %d (kind %d): %w", i+1, j, kind, err)
					return
				}
				if err == nil {
					counts[i]["ok"]++
				} else {
					counts[i]["refused"]++
				}
			}
		}(i, rn.r)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkShared(t, cli)
	var last int64
	for _, rn := range nodes {
		last = max(last, rn.r.Applied())
	}
	want := ""
	for i, rn := range nodes {
		must(t, rn.r.await(last))
		got := configDump(t, rn.l)
		if i == 0 {
			want = got
		} else if got != want {
			t.Fatalf("node %d holds\n%s\nnode 1\n%s", i+1, got, want)
		}
		must(t, rn.l.CheckInvariants())
	}
	t.Logf("3 nodes × %d random changes at once: %v accepted/refused per node; all converged at revision %d", opsPerNode, counts, last)
}

// TestReplicaMoreRaces: a user and a toll-free assignment racing for one
// number, and a trunk's deletion racing a toll-free number given to it:
// exactly one of each pair succeeds.
func TestReplicaMoreRaces(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	a := startReplica(t, cli, "a", t.TempDir())
	b := startReplica(t, cli, "b", t.TempDir())
	if _, err := a.r.CreateOrg(ledger.Org{ID: "acme", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	race := func(fa, fb func() error) (errA, errB error) {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); errA = fa() }()
		go func() { defer wg.Done(); errB = fb() }()
		wg.Wait()
		return errA, errB
	}
	const rounds = 20
	wins := map[string]int{}
	for i := 0; i < rounds; i++ {
		n := fmt.Sprintf("1888555%04d", i)
		errA, errB := race(
			func() error {
				return a.r.PutUser(ledger.User{Org: "acme", ID: fmt.Sprintf("u%d", i), Numbers: []string{n}})
			},
			func() error { return b.r.PutTollFree(ledger.TollFree{Number: n, Org: "acme"}) })
		if (errA == nil) == (errB == nil) || !errors.Is(errors.Join(errA, errB), ledger.ErrNumberTaken) {
			t.Fatalf("round %d user vs toll-free: %v, %v", i, errA, errB)
		}
		if errA == nil {
			wins["user"]++
		} else {
			wins["toll-free"]++
		}

		trunk := fmt.Sprintf("pbx%d", i)
		must(t, a.r.PutTrunk(ledger.Trunk{ID: trunk, Kind: "customer", Org: "acme"}))
		tf := fmt.Sprintf("1877555%04d", i)
		var found bool
		errA, errB = race(
			func() error { var err error; found, err = a.r.DeleteTrunk(trunk); return err },
			func() error { return b.r.PutTollFree(ledger.TollFree{Number: tf, Org: "acme", Trunk: trunk}) })
		switch {
		case errA == nil && found && errors.Is(errB, ledger.ErrInvalid):
			wins["delete trunk"]++
		case errors.Is(errA, ledger.ErrInUse) && errB == nil:
			wins["deliver"]++
		default:
			t.Fatalf("round %d delete trunk (%v, found %v) vs toll-free on it (%v): want exactly one", i, errA, found, errB)
		}
	}
	checkShared(t, cli)
	must(t, a.r.await(b.r.Applied()))
	must(t, b.r.await(a.r.Applied()))
	if x, y := configDump(t, a.l), configDump(t, b.l); x != y {
		t.Fatalf("the nodes disagree:\n%s\n%s", x, y)
	}
	t.Logf("winners over %d rounds: %v", rounds, wins)
}

// TestReplicaLeaderKilled: on a 3-member etcd, the leader is killed (by
// PID) while node 1 keeps changing the configuration: writes go on against
// the other members (some fail as ErrUnavailable meanwhile), and nodes 2
// and 3, whose watches may be cancelled by the leader's loss, converge on
// what node 1 holds.
func TestReplicaLeaderKilled(t *testing.T) {
	ec := etcdtest.Start(t, 3)
	admin := ec.Client()
	defer admin.Close()
	var nodes []*replicaNode
	for i := 0; i < 3; i++ {
		cli := ec.Client()
		defer cli.Close()
		nodes = append(nodes, startReplica(t, cli, fmt.Sprintf("n%d", i+1), t.TempDir()))
	}
	r1 := nodes[0].r
	if _, err := r1.CreateOrg(ledger.Org{ID: "acme", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	var leader *etcdtest.Member
	for _, m := range ec.Members {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := admin.Status(ctx, m.ClientURL)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			leader = m
		}
	}
	if leader == nil {
		t.Fatal("no leader among the members")
	}
	const changes = 120
	acked, failed, afterKill := 0, 0, 0
	var killedAt time.Time
	var failover time.Duration
	for i := 0; i < changes; i++ {
		if i == changes/3 {
			ec.Kill(leader)
			killedAt = time.Now()
		}
		// Bounded in time as well as in count: a client that keeps
		// trying the dead member costs op_timeout per change, and the
		// test must end by itself.
		if !killedAt.IsZero() && time.Since(killedAt) > 30*time.Second {
			t.Logf("stopped after %d changes: 30 s since the kill", i)
			break
		}
		err := r1.PutUser(ledger.User{Org: "acme", ID: fmt.Sprintf("u%d", i%15), Numbers: []string{fmt.Sprintf("1303555%04d", i)}})
		switch {
		case err == nil:
			acked++
			if !killedAt.IsZero() {
				if afterKill == 0 {
					failover = time.Since(killedAt)
				}
				afterKill++
			}
		case errors.Is(err, ledger.ErrUnavailable) && !errors.Is(err, ErrFenced):
			failed++
		default:
			t.Fatalf("change %d: %v", i, err)
		}
	}
	if afterKill == 0 {
		t.Fatal("no change succeeded after the leader was killed")
	}
	// One more that must land, then everyone converges on it.
	var err error
	for try := 0; try < 50; try++ {
		if err = r1.PutTrunk(ledger.Trunk{ID: "last", Kind: "carrier"}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	must(t, err)
	want := configDump(t, nodes[0].l)
	for i, rn := range nodes[1:] {
		must(t, rn.r.await(r1.Applied()))
		if got := configDump(t, rn.l); got != want {
			t.Fatalf("node %d holds\n%s\nnode 1\n%s", i+2, got, want)
		}
	}
	t.Logf("leader %s killed; %d changes acknowledged (%d after the kill, the first %s after it), %d unavailable; resyncs on nodes 2 and 3: %d, %d",
		leader.Name, acked, afterKill, failover.Round(time.Millisecond), failed, nodes[1].r.Resyncs(), nodes[2].r.Resyncs())
}
