package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// seedSecret is the secret of the API key the single node made; the
// cluster keeps only its hash, as the node did.
const seedSecret = "cgk_00000000000000ac_the-old-secret"

// singleNode builds a single node's ledger in dir as an operator's would
// be after some use: orgs acme (two fundings, a credit call, 3 of its 25
// pool minutes used this month, a trunk, users, a toll-free number, a
// deck) and beta (funded, no calls), org "empty" with no money, and an API
// key of acme. It returns the ledger (closed: the seed opens it as the
// command does) and each org's balance.
func singleNode(t testing.TB, dir string) map[string]decimal.Decimal {
	t.Helper()
	l := openPoolLedger(t, dir)
	defer l.Close()
	shared := &testShared{ledgers: []*ledger.Ledger{l}}
	for _, id := range []string{"acme", "beta", "empty"} {
		createOrg(t, shared, id)
	}
	licenseUsers(t, shared, "acme")
	for _, f := range []struct{ org, amount, key string }{{"acme", "100.00", "f1"}, {"acme", "23.45", "f2"}, {"beta", "7.01", "f1"}} {
		if _, err := l.Fund(f.org, dec(f.amount), f.key); err != nil {
			t.Fatal(err)
		}
	}
	must(t, l.PutTrunk(ledger.Trunk{ID: "pbx", Kind: "customer", Org: "acme"}))
	must(t, l.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme", Trunk: "pbx"}))
	must(t, l.PutDeck([]byte("1,US,US,geographic,0.01\n44,GB,GB,geographic,0.02\n")))
	h := sha256.Sum256([]byte(seedSecret))
	if _, err := l.CreateKey(ledger.APIKey{ID: "key_00000000000000ac", Name: "desk", Role: "org_admin", Org: "acme", Hash: h[:]},
		ledger.AuditEntry{KeyID: "bootstrap", Role: "operator_admin", Action: "create", Via: "api"}); err != nil {
		t.Fatal(err)
	}
	// This month (the seed reads the pools of its clock's month): a pool
	// call of 3 minutes and a credit call of 5 increments (0.50).
	at := time.Now()
	c := poolCall("acme", "u4", false)
	if _, err := l.OpenCall(c, at); err != nil {
		t.Fatal(err)
	}
	must(t, l.Answer(c.ID, at))
	for n := 1; n <= 2; n++ {
		if _, err := l.Step(c.ID, n, at.Add(time.Duration(n)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.CloseCall(c.ID, ledger.CallEnd{At: at.Add(150 * time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	c = testCall("acme")
	if _, err := l.OpenCall(c, at); err != nil {
		t.Fatal(err)
	}
	must(t, l.Answer(c.ID, at))
	for n := 1; n <= 4; n++ {
		if _, err := l.Step(c.ID, n, at.Add(time.Duration(6*n)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.CloseCall(c.ID, ledger.CallEnd{At: at.Add(29 * time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	out := map[string]decimal.Decimal{}
	for _, id := range l.OrgIDs() {
		o, err := l.Org(id)
		must(t, err)
		out[id] = o.Balance
	}
	if !out["acme"].Equal(dec("122.95")) {
		t.Fatalf("acme's single-node balance %s, want 122.95 (123.45 funded, 0.50 spent)", out["acme"])
	}
	return out
}

func joinPrefix(t testing.TB, cli *clientv3.Client, prefix, node string) *Node {
	t.Helper()
	cfg := testConfig(node)
	cfg.Prefix = prefix
	n, err := Join(context.Background(), cli, cfg, clock.Real{})
	if err != nil {
		t.Fatalf("join %s: %v", node, err)
	}
	return n
}

// checkSeeded verifies the outcome of a finished seed: etcd funded with
// exactly each org's old balance, under one funding each; acme's pool at
// 25 total with 3 used, this node's; the ledger at 0 with one seed entry
// per org that had money.
func checkSeeded(t testing.TB, n *Node, l *ledger.Ledger, before map[string]decimal.Decimal) {
	t.Helper()
	st := mustCheck(t, n)
	for org, b := range before {
		got := st.Orgs[org]
		if !got.Funded.Equal(b) || !got.Unallocated.Equal(b) || !got.Spent.IsZero() || !got.Fundings.Equal(b) {
			t.Errorf("etcd has org %s at %+v, want funded = unallocated = fundings = %s", org, got, b)
		}
		o, err := l.Org(org)
		must(t, err)
		if !o.Balance.IsZero() || !o.Held.IsZero() {
			t.Errorf("org %s's ledger balance %s held %s after the seed, want 0", org, o.Balance, o.Held)
		}
		es, err := l.Transactions(org, 0, 1000)
		must(t, err)
		var seeds []ledger.Entry
		for _, e := range es {
			if e.Key == ledger.SeedSlice+"/1" {
				seeds = append(seeds, e)
			}
		}
		switch {
		case b.IsZero() && len(seeds) != 0:
			t.Errorf("org %s had no money and has seed entries %+v", org, seeds)
		case b.IsPositive() && (len(seeds) != 1 || seeds[0].Kind != ledger.EntryReturn || !seeds[0].Amount.Equal(b.Neg()) || !seeds[0].Balance.IsZero()):
			t.Errorf("org %s's seed entries %+v, want one return of %s to 0", org, seeds, b)
		}
	}
	if len(st.Orgs) != 2 { // acme and beta; "empty" had nothing to fund
		t.Errorf("etcd accounts %v, want acme and beta", st.Orgs)
	}
	month := n.clk.Now().Format("2006-01")
	pt, ok := st.Pools["acme/"+ledger.PlanDomestic+"/"+month]
	if !ok || pt.Total != 25 || pt.Used != 3 || pt.Unallocated != 22 || pt.SliceUsed != 3 || pt.Outstanding != 0 || pt.Slices != 1 {
		t.Errorf("etcd pool %+v (found %v), want total 25, 3 used in this node's one slice, 22 unallocated", pt, ok)
	}
	sh, err := l.PoolShare("acme", ledger.PlanDomestic, month)
	must(t, err)
	if sh.Used != 3 || sh.Allowance != 3 {
		t.Errorf("the ledger's pool share %+v, want 3 used of an allowance of 3", sh)
	}
}

// TestSeedCluster: a single node's ledger seeded into an empty etcd. The
// money is etcd's to the cent, the ledger's at 0 with the entry that says
// where it went, the pool's used minutes are the cluster's; a second seed
// changes nothing, another data directory is refused; then the seeded
// node serves (its replica and Books start on its ledger) next to a fresh
// node, which has the whole configuration and the old API key, and sells
// a call from the moved money.
func TestSeedCluster(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	dir := t.TempDir()
	before := singleNode(t, dir)
	l := openPoolLedger(t, dir)
	defer l.Close()
	want := configDump(t, l)

	n := joinPrefix(t, cli, testPrefix, "n0")
	rep, err := SeedCluster(context.Background(), n, l, "src-1")
	must(t, err)
	t.Logf("seed: %d records (%d keys), orgs %+v, pools %+v", rep.Records, rep.Keys, rep.Orgs, rep.Pools)
	if rep.AlreadyDone || rep.Resumed || rep.Keys != 1 || len(rep.Orgs) != 2 || len(rep.Pools) != 1 {
		t.Fatalf("report %+v: want a fresh seed of 1 key, 2 orgs' money, 1 pool", rep)
	}
	checkSeeded(t, n, l, before)
	must(t, CheckSeeded(context.Background(), n, ""))

	again, err := SeedCluster(context.Background(), n, l, "src-1")
	must(t, err)
	if !again.AlreadyDone || len(again.Orgs) != 0 {
		t.Fatalf("second seed: %+v, want already done", again)
	}
	if _, err := SeedCluster(context.Background(), n, l, "src-2"); !errors.Is(err, ErrConfigExists) {
		t.Fatalf("seed from another data directory: %v, want ErrConfigExists", err)
	}
	checkSeeded(t, n, l, before)
	must(t, n.Close(context.Background()))
	other := join(t, cli, "n9")
	if err := CheckSeeded(context.Background(), other, "src-1"); !errors.Is(err, ErrSeedNode) {
		t.Fatalf("the seeded data directory as another node id: %v, want ErrSeedNode", err)
	}
	must(t, CheckSeeded(context.Background(), other, "")) // a fresh node's directory
	must(t, other.Close(context.Background()))

	// The seeded node serves, as n0 again.
	n0 := join(t, cli, "n0")
	r0, err := NewReplica(context.Background(), n0, l, quietLog())
	must(t, err)
	defer r0.Close()
	if got := configDump(t, l); got != want {
		t.Fatalf("the seeded node's configuration changed when it joined:\n%s\nwant\n%s", got, want)
	}
	b0, err := NewBooks(n0, l, r0, fastPolicy(), clock.Real{}, quiet())
	must(t, err)
	defer b0.Close(context.Background())
	if o, err := b0.Org("acme"); err != nil || !o.Balance.Equal(before["acme"]) {
		t.Fatalf("the seeded node answers acme %+v, %v; want the cluster's balance %s", o, err, before["acme"])
	}

	// The seeded node's pool: the minutes it used as a single node are
	// its slice's; a new pool call takes the next minute from etcd.
	pc := poolCall("acme", "u4", false)
	pat := time.Now()
	if inc, err := b0.OpenCall(pc, pat); err != nil || inc.Source != ledger.SourcePool {
		t.Fatalf("a pool call on the seeded node: %+v, %v; want a pool minute", inc, err)
	}
	must(t, b0.AnswerDialog(pc.ID, pat, nil))
	if _, err := b0.CloseCall(pc.ID, ledger.CallEnd{At: pat.Add(30 * time.Second), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	b0.Tick()
	month := time.Now().Format("2006-01")
	if pt := mustCheck(t, n0).Pools["acme/"+ledger.PlanDomestic+"/"+month]; pt.Total != 25 || pt.Used != 4 || pt.SliceUsed != 4 || pt.Used+pt.Unallocated+pt.Outstanding != 25 || pt.Slices != 1 {
		t.Fatalf("etcd pool after a pool call on the seeded node: %+v, want 25 in all, 4 used (3 before the seed), one slice", pt)
	}

	// A fresh node: the configuration, the key, the money.
	n1 := join(t, cli, "n1")
	l1 := openPoolLedger(t, filepath.Join(t.TempDir(), "ledger"))
	defer l1.Close()
	r1, err := NewReplica(context.Background(), n1, l1, quietLog())
	must(t, err)
	defer r1.Close()
	if got := configDump(t, l1); got != want {
		t.Fatalf("the new node holds\n%s\nwant\n%s", got, want)
	}
	k, ok := l1.Key("key_00000000000000ac")
	sum := sha256.Sum256([]byte(seedSecret))
	if !ok || string(k.Hash) != string(sum[:]) || k.Revoked() || k.Org != "acme" || k.Role != "org_admin" {
		t.Fatalf("the new node's key %+v (found %v): want acme's org_admin key with the old secret's hash", k, ok)
	}
	b1, err := NewBooks(n1, l1, r1, fastPolicy(), clock.Real{}, quiet())
	must(t, err)
	c := testCall("acme")
	at := time.Now()
	if _, err := b1.OpenCall(c, at); err != nil {
		t.Fatalf("a call on the new node: %v", err)
	}
	must(t, b1.AnswerDialog(c.ID, at, nil))
	if _, err := b1.Step(c.ID, 1, at.Add(6*time.Second)); err != nil {
		t.Fatal(err)
	}
	cdr, err := b1.CloseCall(c.ID, ledger.CallEnd{At: at.Add(10 * time.Second), Reason: ledger.ReasonCallerHangup})
	must(t, err)
	must(t, b1.Close(context.Background()))
	must(t, b0.Close(context.Background()))
	st := mustCheck(t, n1)
	got := st.Orgs["acme"]
	t.Logf("acme after a call on the new node: %+v, CDR charge %s", got, cdr.Charge)
	if !cdr.Charge.Equal(dec("0.20")) || !got.Funded.Equal(before["acme"]) || !got.Spent.Equal(cdr.Charge) ||
		!got.Unallocated.Equal(before["acme"].Sub(cdr.Charge)) || got.Slices != 0 {
		t.Fatalf("etcd acme %+v after a 0.20 call, want funded %s, spent the charge %s, the rest unallocated", got, before["acme"], cdr.Charge)
	}
}

// TestSeedClusterCrashAtEachStep: a seed cut short after each of its
// steps (as a killed process would leave it), then run again from the same
// data directory, ends exactly as an uncut one: each org funded once with
// its old balance, one seed entry, the pool once. At the cut, no org's
// money counts twice (ledger + etcd ≤ the old balance) and CheckSeeded
// refuses nodes until the seed is done.
func TestSeedClusterCrashAtEachStep(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()

	// The steps, from an uncut run.
	var steps []string
	{
		dir := t.TempDir()
		before := singleNode(t, dir)
		l := openPoolLedger(t, dir)
		n := joinPrefix(t, cli, "/steps/", "n0")
		_, err := seedCluster(context.Background(), n, l, "src", func(s string) error { steps = append(steps, s); return nil })
		must(t, err)
		checkSeeded(t, n, l, before)
		n.Close(context.Background())
		l.Close()
	}
	t.Logf("steps: %q", steps)
	if len(steps) != 8 { // claim, config, 1 pool, 2 ledger moves, 2 fundings, done
		t.Fatalf("steps %q", steps)
	}
	errCrash := errors.New("crash")
	for i, cut := range steps {
		t.Run(cut, func(t *testing.T) {
			prefix := fmt.Sprintf("/cut%d/", i)
			dir := t.TempDir()
			before := singleNode(t, dir)
			l := openPoolLedger(t, dir)
			n := joinPrefix(t, cli, prefix, "n0")
			_, err := seedCluster(context.Background(), n, l, "src", func(s string) error {
				if s == cut {
					return errCrash
				}
				return nil
			})
			if !errors.Is(err, errCrash) {
				t.Fatalf("cut at %s: %v", cut, err)
			}
			st := mustCheck(t, n)
			for org, b := range before {
				o, err := l.Org(org)
				must(t, err)
				if sum := o.Balance.Add(st.Orgs[org].Funded); sum.GreaterThan(b) {
					t.Errorf("cut at %s: org %s has %s in the ledger and %s in etcd: more than its %s", cut, org, o.Balance, st.Orgs[org].Funded, b)
				}
			}
			if err := CheckSeeded(context.Background(), n, ""); (cut == "done") != (err == nil) || err != nil && !errors.Is(err, ErrSeedUnfinished) {
				t.Errorf("cut at %s: CheckSeeded %v", cut, err)
			}
			// The process is gone: lease revoked, ledger closed; the
			// operator runs the seed again (as another node id first: refused
			// unless the seed is done).
			n.Close(context.Background())
			if cut != "done" {
				wrong := joinPrefix(t, cli, prefix, "n5")
				if _, err := SeedCluster(context.Background(), wrong, l, "src"); !errors.Is(err, ErrInvalid) {
					t.Errorf("cut at %s: rerun as another node id: %v, want ErrInvalid", cut, err)
				}
				wrong.Close(context.Background())
			}
			l.Close()
			l = openPoolLedger(t, dir)
			defer l.Close()
			n = joinPrefix(t, cli, prefix, "n0")
			defer n.Close(context.Background())
			rep, err := SeedCluster(context.Background(), n, l, "src")
			must(t, err)
			if rep.AlreadyDone != (cut == "done") || !rep.AlreadyDone && !rep.Resumed {
				t.Errorf("rerun after a cut at %s: %+v", cut, rep)
			}
			checkSeeded(t, n, l, before)
			must(t, CheckSeeded(context.Background(), n, ""))
		})
	}
}

// TestSeedRefusals: the seed changes nothing when the ledger cannot move
// as it stands (a call up), another node runs on the cluster, or etcd
// already has a configuration.
func TestSeedRefusals(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	dir := t.TempDir()
	before := singleNode(t, dir)
	l := openPoolLedger(t, dir)
	defer l.Close()
	n := join(t, cli, "n0")

	c := testCall("beta")
	must(t, l.PutUser(ledger.User{Org: "beta", ID: "u1", Licenses: []string{"communications_credits"}}))
	if _, err := l.OpenCall(c, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := SeedCluster(context.Background(), n, l, "src"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("seed with a call up: %v, want ErrInvalid", err)
	}
	if st := mustCheck(t, n); len(st.Orgs) != 0 {
		t.Fatalf("a refused seed wrote %+v", st.Orgs)
	}
	if _, err := l.CloseCall(c.ID, ledger.CallEnd{At: time.Now(), Reason: ledger.ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	if o, _ := l.Org("acme"); !o.Balance.Equal(before["acme"]) {
		t.Fatalf("a refused seed moved acme's money: %s", o.Balance)
	}

	// A node joining between the seed's listing of the members and its
	// claim: the claim's comparison fails, the next listing names it.
	var late *Node
	seedListed = func() {
		if late == nil {
			late = join(t, cli, "late")
		}
	}
	_, err := SeedCluster(context.Background(), n, l, "src")
	seedListed = nil
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "late") {
		t.Fatalf("seed with a node joining after its listing: %v, want ErrInvalid naming it", err)
	}
	if st := mustCheck(t, n); len(st.Orgs) != 0 {
		t.Fatalf("a refused seed wrote %+v", st.Orgs)
	}
	must(t, late.Close(context.Background()))

	// A node running on the cluster, which is still empty.
	other := startReplica(t, cli, "other", t.TempDir())
	if _, err := SeedCluster(context.Background(), n, l, "src"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("seed with another node running: %v, want ErrInvalid", err)
	}
	// etcd with a configuration made by a node (not a seed), which left.
	if _, err := other.r.CreateOrg(ledger.Org{ID: "zeta", Country: "GB", Region: "eu"}); err != nil {
		t.Fatal(err)
	}
	other.stop()
	must(t, other.n.Close(context.Background()))
	if _, err := SeedCluster(context.Background(), n, l, "src"); !errors.Is(err, ErrConfigExists) {
		t.Fatalf("seed into a configured etcd: %v, want ErrConfigExists", err)
	}
	if o, _ := l.Org("acme"); !o.Balance.Equal(before["acme"]) {
		t.Fatalf("a refused seed moved acme's money: %s", o.Balance)
	}
}
