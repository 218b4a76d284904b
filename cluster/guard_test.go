package cluster

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// startGuarded starts n nodes on one real etcd, each with a Guard given to
// its Pebble ledger (ledger.Options.PeerGuard) and to its Books, and org
// acme funded with 100.00 and the fraud guard fg set on every node.
func startGuarded(t *testing.T, n int, fg ledger.FraudGuard) ([]*spender, []*Guard, *testShared) {
	t.Helper()
	ec := etcdtest.Start(t, 1)
	var mu sync.Mutex
	byDir := map[string]*Guard{}
	open := func(t testing.TB, dir string) *ledger.Ledger {
		t.Helper()
		g := NewGuard(clock.Real{}, quiet())
		l, err := ledger.Open(dir, ledger.Options{MinFunding: dec("1.00"), Logger: quiet(), PeerGuard: g})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		byDir[dir] = g
		mu.Unlock()
		return l
	}
	sp, shared := startSpendersOn(t, open, ec.Client, n, fastPolicy(), clock.Real{})
	guards := make([]*Guard, n)
	for i, s := range sp {
		g := byDir[s.dir]
		g.Start(s.node, s.local)
		s.books.UseGuard(g)
		t.Cleanup(g.Close) // before the spenders stop (cleanups run last first)
		guards[i] = g
	}
	createOrg(t, shared, "acme")
	if _, err := sp[0].books.FundAcrossRegions("acme", dec("100.00"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.SetFraudGuard("acme", fg); err != nil {
		t.Fatal(err)
	}
	return sp, guards, shared
}

func tripOf(err error) string {
	var tr *ledger.Trip
	if errors.As(err, &tr) {
		return tr.Guard
	}
	return ""
}

// waitSeen waits until sees(i) holds for every node i and returns how long
// that took: how late the peers' figures are (publish delay, etcd commit,
// watch delivery). It fails the test after 10 s.
func waitSeen(t *testing.T, n int, sees func(i int) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		all := true
		for i := 0; i < n && all; i++ {
			all = sees(i)
		}
		if all {
			return time.Since(start)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the nodes' fraud-guard figures did not converge within 10 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// seesCalls: node i counts want calls of acme up, its own plus its peers'.
func seesCalls(sp []*spender, guards []*Guard, want int) func(int) bool {
	return func(i int) bool {
		peers, _ := guards[i].PeerCalls("acme", "")
		return sp[i].local.CallsUp("acme")+peers == want
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestGuardMaxCallsAcrossNodes: max_calls=10 holds for the org across 3
// nodes. 30 attempts at once, 10 a node: the calls up at once are logged
// (the documented bound: what the other nodes admit before their figures
// land), and once the figures land every node refuses. Then 30 attempts
// one after another, each after the previous one's figures reached every
// node (the spacing beyond the publish interval): exactly 10 are admitted.
func TestGuardMaxCallsAcrossNodes(t *testing.T) {
	const limit, attempts = 10, 30
	sp, guards, _ := startGuarded(t, 3, ledger.FraudGuard{MaxCalls: limit})

	// A burst: every attempt at the same instant.
	var wg sync.WaitGroup
	start := make(chan struct{})
	ids := make([]string, attempts)
	errs := make([]error, attempts)
	for i := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := testCall("acme")
			<-start
			if _, err := sp[i%3].books.OpenCall(c, time.Now()); err == nil {
				ids[i] = c.ID
			} else {
				errs[i] = err
			}
		}()
	}
	close(start)
	wg.Wait()
	up := 0
	for i, err := range errs {
		switch {
		case err == nil:
			up++
		case tripOf(err) != ledger.GuardMaxCalls:
			t.Fatalf("attempt %d refused for another reason: %v", i, err)
		}
	}
	t.Logf("burst: %d attempts at once over 3 nodes, max_calls %d: %d calls up (%d over the limit; the bound is 2 × %d)",
		attempts, limit, up, max(up-limit, 0), limit)
	if up < limit || up > 3*limit {
		t.Fatalf("burst: %d calls up, want %d to %d", up, limit, 3*limit)
	}
	lag := waitSeen(t, 3, seesCalls(sp, guards, up))
	t.Logf("burst: every node counted all %d calls %v after the last admission", up, lag)
	for i, s := range sp {
		if _, err := s.books.OpenCall(testCall("acme"), time.Now()); tripOf(err) != ledger.GuardMaxCalls {
			t.Fatalf("node %d, %d calls up cluster-wide, limit %d: %v, want the max_calls trip", i, up, limit, err)
		}
	}
	for i, id := range ids {
		if id != "" {
			if _, err := sp[i%3].books.CloseCall(id, ledger.CallEnd{At: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitSeen(t, 3, seesCalls(sp, guards, 0))

	// A steady stream: one attempt every 2 ms (500 a second at one org),
	// round the nodes. How far over depends on the figures' lag against
	// the spacing; logged, not asserted.
	up, ids = 0, ids[:0]
	for i := range attempts {
		c := testCall("acme")
		_, err := sp[i%3].books.OpenCall(c, time.Now())
		switch {
		case err == nil:
			up++
			ids = append(ids, c.ID)
		case tripOf(err) != ledger.GuardMaxCalls:
			t.Fatalf("stream attempt %d refused for another reason: %v", i, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("stream: %d attempts 2 ms apart over 3 nodes, max_calls %d: %d calls up (%d over the limit)",
		attempts, limit, up, max(up-limit, 0))
	if up < limit {
		t.Fatalf("stream: %d calls up, want at least %d", up, limit)
	}
	for _, id := range ids {
		for _, s := range sp {
			if _, err := s.books.CloseCall(id, ledger.CallEnd{At: time.Now()}); err == nil {
				break
			} else if !errors.Is(err, ledger.ErrUnknownCall) {
				t.Fatal(err)
			}
		}
	}
	waitSeen(t, 3, seesCalls(sp, guards, 0))

	// Spaced: each attempt once the previous admission is seen everywhere.
	admitted, lags := 0, []time.Duration{}
	for i := range attempts {
		_, err := sp[i%3].books.OpenCall(testCall("acme"), time.Now())
		switch {
		case err == nil:
			admitted++
			lags = append(lags, waitSeen(t, 3, seesCalls(sp, guards, admitted)))
		case tripOf(err) != ledger.GuardMaxCalls:
			t.Fatalf("spaced attempt %d refused for another reason: %v", i, err)
		}
	}
	t.Logf("spaced: %d attempts, %d admitted; the figures reached every node in %v median, %v at most",
		attempts, admitted, median(lags), slices.Max(lags))
	if admitted != limit {
		t.Fatalf("spaced attempts: %d admitted, want exactly %d", admitted, limit)
	}
}

// TestGuardSpendPerHourAcrossNodes: max_spend_per_hour=1.00 holds for the
// org across 3 nodes: calls of 0.10 each, opened one after another
// round the nodes with the figures landed in between, exactly 10 are held.
func TestGuardSpendPerHourAcrossNodes(t *testing.T) {
	sp, guards, _ := startGuarded(t, 3, ledger.FraudGuard{MaxSpendPerHour: dec("1.00")})
	total := decimal.Zero
	seesSpend := func(i int) bool {
		now := time.Now()
		own, _ := sp[i].local.GuardFigures("acme", now)
		peers, _ := guards[i].PeerSpend("acme", "", now)
		return ledger.WindowSum(own.Spend, now).Add(peers).Equal(total)
	}
	admitted, lags := 0, []time.Duration{}
	first := ""
	for i := range 20 {
		c := testCall("acme")
		inc, err := sp[i%3].books.OpenCall(c, time.Now())
		switch {
		case err == nil:
			if first == "" {
				first = c.ID // on node 0
			}
			admitted++
			total = total.Add(inc.Credit)
			lags = append(lags, waitSeen(t, 3, seesSpend))
		case tripOf(err) != ledger.GuardSpendPerHour:
			t.Fatalf("attempt %d refused for another reason: %v", i, err)
		}
	}
	t.Logf("spend: %d calls of 0.10 held (%s) under a 1.00 hourly cap across 3 nodes; figures reached every node in %v median, %v at most",
		admitted, total.StringFixed(2), median(lags), slices.Max(lags))
	if admitted != 10 || !total.Equal(dec("1.00")) {
		t.Fatalf("%d calls held %s, want exactly 10 holding 1.00", admitted, total)
	}
	// A refusal says what the other nodes spent.
	_, err := sp[0].books.OpenCall(testCall("acme"), time.Now())
	var tr *ledger.Trip
	if !errors.As(err, &tr) || tr.Guard != ledger.GuardSpendPerHour {
		t.Fatalf("11th call: %v", err)
	}
	t.Logf("refusal: %s", tr.Detail)
	// A call up whose next increment would cross the cap ends: the cap
	// counts what the other nodes held.
	if err := sp[0].books.AnswerDialog(first, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sp[0].books.Step(first, 1, time.Now()); tripOf(err) != ledger.GuardSpendPerHour {
		t.Fatalf("the next increment of a call up with the org at its cap: %v, want the spend_per_hour trip", err)
	}
}

// TestGuardPerUserAcrossNodes: the per-user limits hold for the user across
// the nodes, and one user's figures do not count against another.
func TestGuardPerUserAcrossNodes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fg    ledger.FraudGuard
		guard string
		want  int
	}{
		{"calls", ledger.FraudGuard{MaxCallsPerUser: 4}, ledger.GuardMaxCallsPerUser, 4},
		{"spend", ledger.FraudGuard{MaxSpendPerHourPerUser: dec("0.30")}, ledger.GuardSpendPerHourPerUser, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp, guards, _ := startGuarded(t, 3, tc.fg)
			total := map[string]int{}
			seen := func(user string) func(int) bool {
				return func(i int) bool {
					now := time.Now()
					own, _ := sp[i].local.GuardFigures("acme", now)
					peerCalls, peerUser := guards[i].PeerCalls("acme", user)
					_, peerSpend := guards[i].PeerSpend("acme", user, now)
					if tc.name == "calls" {
						return own.UserCalls[user]+peerUser == total[user] && peerCalls == 0 // no org figure published
					}
					return ledger.WindowSum(own.UserSpend[user], now).Add(peerSpend).Equal(dec("0.10").Mul(decimal.NewFromInt(int64(total[user]))))
				}
			}
			for _, user := range []string{"u1", "u2"} {
				for i := range 3 * tc.want {
					c := testCall("acme")
					c.User = user
					_, err := sp[i%3].books.OpenCall(c, time.Now())
					switch {
					case err == nil:
						total[user]++
						waitSeen(t, 3, seen(user))
					case tripOf(err) != tc.guard:
						t.Fatalf("%s attempt %d: %v, want the %s trip", user, i, err, tc.guard)
					}
				}
			}
			if total["u1"] != tc.want || total["u2"] != tc.want {
				t.Fatalf("admitted %v, want %d for each user", total, tc.want)
			}
		})
	}
}

// TestGuardDeadNodeStopsCounting: a node's calls (up before the limit was
// set) count on its peers while its lease stands, and stop counting once etcd has expired it (here: the
// crashed node's lease revoked), so the survivors may admit up to the
// limit again.
func TestGuardDeadNodeStopsCounting(t *testing.T) {
	const limit = 6
	sp, guards, shared := startGuarded(t, 3, ledger.FraudGuard{})
	open := func(node int) error {
		_, err := sp[node].books.OpenCall(testCall("acme"), time.Now())
		return err
	}
	for range 3 {
		if err := open(2); err != nil {
			t.Fatal(err)
		}
	}
	// Calls up before the limit was set count once it is.
	if _, err := shared.SetFraudGuard("acme", ledger.FraudGuard{MaxCalls: limit}); err != nil {
		t.Fatal(err)
	}
	waitSeen(t, 3, seesCalls(sp, guards, 3))
	for range 3 {
		if err := open(0); err != nil {
			t.Fatal(err)
		}
	}
	waitSeen(t, 3, seesCalls(sp, guards, limit))
	if err := open(0); tripOf(err) != ledger.GuardMaxCalls {
		t.Fatalf("7th call with 3 up on node 2: %v, want the max_calls trip", err)
	}
	guards[2].Close()
	start := time.Now()
	sp[2].crash(t)
	waitSeen(t, 2, func(i int) bool {
		peers, _ := guards[i].PeerCalls("acme", "")
		return peers == sp[0].local.CallsUp("acme")+sp[1].local.CallsUp("acme")-sp[i].local.CallsUp("acme")
	})
	t.Logf("the dead node's 3 calls stopped counting %v after its crash began (lease revoked, ledger closed)", time.Since(start))
	for i := range 3 {
		if err := open(1); err != nil {
			t.Fatalf("call %d after node 2 died: %v", i, err)
		}
	}
	waitSeen(t, 2, seesCalls(sp, guards, limit))
	if err := open(1); tripOf(err) != ledger.GuardMaxCalls {
		t.Fatalf("a 7th call on the survivors: %v, want the max_calls trip", err)
	}
}

// TestGuardNotifiesOncePerCluster: the three nodes trip the same guard at
// once, twice: the cluster's outbox gets one fraud_guard notification for
// it, and none stays in any node's own outbox; another guard gets its own,
// and the same guard an hour later another one.
func TestGuardNotifiesOncePerCluster(t *testing.T) {
	sp, _, _ := startGuarded(t, 3, ledger.FraudGuard{MaxCalls: 1})
	at := time.Now()
	trip := &ledger.Trip{Guard: ledger.GuardMaxCalls, Org: "acme", User: "u1", Detail: "1 calls up, the limit is 1"}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = sp[i%3].books.FraudTripped(trip, at.Add(time.Duration(i/3)*time.Second))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("trip %d: %v", i, err)
		}
	}
	box := NewOutbox(sp[0].node, sp[0].local)
	count := func() map[string]int {
		t.Helper()
		ns, err := box.Outbox()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, n := range ns {
			if n.Kind != ledger.NotifyFraudGuard || n.Org != "acme" {
				t.Fatalf("unexpected notification %+v", n)
			}
			guard, _, _ := strings.Cut(n.Reason, ": ")
			out[guard]++
		}
		return out
	}
	if got := count(); got[ledger.GuardMaxCalls] != 1 || len(got) != 1 {
		t.Fatalf("6 trips on 3 nodes within a second: %v in the cluster's outbox, want one max_calls", got)
	}
	for i, s := range sp {
		ns, err := s.local.Outbox()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.Kind == ledger.NotifyFraudGuard {
				t.Fatalf("node %d's own outbox has %+v", i, n)
			}
		}
	}
	other := &ledger.Trip{Guard: ledger.GuardSpendPerHour, Org: "acme", Detail: "1.00 spent in the last hour, the limit is 1.00"}
	if err := sp[1].books.FraudTripped(other, at); err != nil {
		t.Fatal(err)
	}
	if err := sp[2].books.FraudTripped(trip, at.Add(61*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := sp[0].books.FraudTripped(trip, at.Add(62*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got := count(); got[ledger.GuardMaxCalls] != 2 || got[ledger.GuardSpendPerHour] != 1 {
		t.Fatalf("after another guard and the hour: %v, want 2 max_calls and 1 spend_per_hour", got)
	}
}

// TestGuardLimitThroughReplica: the fraud guard set and lifted through the
// shared configuration (Replica, applied by every node's ledger): a node
// with calls up before the limit publishes them once it applies the limit,
// and takes its figures away once the limit is lifted.
func TestGuardLimitThroughReplica(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	type node struct {
		g *Guard
		l *ledger.Ledger
		r *Replica
	}
	nodes := make([]node, 2)
	for i := range nodes {
		cli := ec.Client()
		t.Cleanup(func() { cli.Close() })
		n := join(t, cli, []string{"a", "b"}[i])
		g := NewGuard(clock.Real{}, quiet())
		l, err := ledger.Open(t.TempDir(), ledger.Options{MinFunding: dec("1.00"), Logger: quiet(), PeerGuard: g})
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewReplica(t.Context(), n, l, quiet())
		if err != nil {
			t.Fatal(err)
		}
		g.Start(n, l)
		t.Cleanup(func() { g.Close(); r.Close(); l.Close() })
		nodes[i] = node{g, l, r}
	}
	a, b := nodes[0], nodes[1]
	if _, err := a.r.CreateOrg(ledger.Org{ID: "acme", Name: "acme", Country: "GB", Region: "eu", BillingRegion: "eu"}); err != nil {
		t.Fatal(err)
	}
	waitSeen(t, 1, func(int) bool { _, err := b.l.Org("acme"); return err == nil })
	for i, n := range nodes {
		if _, err := n.l.FundAcrossRegions("acme", dec("100.00"), "f", ""); err != nil {
			t.Fatalf("fund on node %d: %v", i, err)
		}
	}
	for range 3 {
		if _, err := b.l.OpenCall(testCall("acme"), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.r.SetFraudGuard("acme", ledger.FraudGuard{MaxCalls: 4}); err != nil {
		t.Fatal(err)
	}
	lag := waitSeen(t, 1, func(int) bool { n, _ := a.g.PeerCalls("acme", ""); return n == 3 })
	t.Logf("node b's 3 calls counted on node a %v after the limit was set through the replica", lag)
	if _, err := a.l.OpenCall(testCall("acme"), time.Now()); err != nil {
		t.Fatalf("4th call of the org: %v", err)
	}
	if _, err := a.l.OpenCall(testCall("acme"), time.Now()); tripOf(err) != ledger.GuardMaxCalls {
		t.Fatalf("5th call of the org with a limit of 4: %v, want the max_calls trip", err)
	}
	if _, err := a.r.SetFraudGuard("acme", ledger.FraudGuard{}); err != nil {
		t.Fatal(err)
	}
	waitSeen(t, 1, func(int) bool { n, _ := a.g.PeerCalls("acme", ""); return n == 0 })
	if _, err := a.l.OpenCall(testCall("acme"), time.Now()); err != nil {
		t.Fatalf("a call after the limit was lifted: %v", err)
	}
}
