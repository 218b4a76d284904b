package e2e_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/loadtest"
)

// seed runs "creditgate cluster seed" with args and returns its output and
// whether it exited 0.
func seed(t *testing.T, bin string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append([]string{"cluster", "seed"}, args...)...).CombinedOutput()
	if err != nil {
		if _, exited := err.(*exec.ExitError); !exited {
			t.Fatalf("cluster seed: %v\n%s", err, out)
		}
	}
	return string(out), err == nil
}

// oneCall places one call of hold through g's SIP port to the load tool's
// carrier on carrierPort, from alice to France, and returns the report.
func oneCall(t *testing.T, g *gateway, carrierPort int, hold time.Duration) loadtest.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := loadtest.Run(ctx, loadtest.Config{
		Target: fmt.Sprintf("127.0.0.1:%d", g.sipPort), Carrier: fmt.Sprintf("127.0.0.1:%d", carrierPort),
		Rate: 1, Calls: 1, Hold: hold, Dialled: "+33142278181",
		From: []string{"+12125550100"}, SetupTimeout: 10 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Answered != 1 {
		t.Fatalf("the call through %s: %s", g.httpAddr, rep)
	}
	return rep
}

// TestClusterSeedFromSingleNode: an operator's single node — org acme
// funded 50.00, a call made (its CDR), an org key — is stopped and moved
// into a new cluster with "creditgate cluster seed" (refused while the node
// runs), then serves as node 1 of the cluster next to a fresh node 2. etcd
// holds acme's balance to the cent, node 1's ledger 0 with the seed entry
// and its old CDR still readable; the old key works on node 2; a call
// through node 2 is billed from the moved money, and both nodes and etcd
// agree on what is left. A second seed is refused while node 1 runs, and
// a seed into the cluster from another data directory is refused.
func TestClusterSeedFromSingleNode(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	bin := buildBinary(t)
	dir := t.TempDir()
	carrier := freePort(t)

	// The command line's mistakes, before anything is touched.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--data-dir", dir}, "no cluster to seed"},
		{[]string{"--data-dir", t.TempDir(), "--cluster-etcd", strings.Join(etcd.Endpoints(), ",")}, "no single node's ledger"},
		{[]string{"--data-dir", dir, "extra"}, "unexpected arguments"},
	} {
		if out, ok := seed(t, bin, c.args...); ok || !strings.Contains(out, c.want) {
			t.Fatalf("seed %q: ok=%v, want %q in:\n%s", c.args, ok, c.want, out)
		}
	}

	single := startGateway(t, bin, dir)
	single.setupAcme("127.0.0.1", "6.00") // 50.00; 0.10 a second
	single.api("PUT", "/v1/trunks/carrier", "", fmt.Sprintf(`{"kind":"carrier","uri":"sip:127.0.0.1:%d","prefixes":[""]}`, carrier), 200, nil)
	_, secret := single.orgKey("desk", "org_admin", "acme")
	oneCall(t, single, carrier, 2*time.Second)
	before := single.cdrs(1)
	var org struct{ Balance, Held string }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		single.api("GET", "/v1/orgs/acme", "", "", 200, &org)
		if org.Held == "0.00" || time.Now().After(deadline) {
			break
		}
	}
	balance := decimal.RequireFromString(org.Balance)
	if len(before) != 1 || !balance.Equal(decimal.RequireFromString("50.00").Sub(decimal.RequireFromString(before[0]["charge"]))) {
		t.Fatalf("single node: CDRs %v, balance %s", before, org.Balance)
	}

	conf := configFile(t, "cluster:\n  prefix: "+clusterPrefix+"\n")
	args := append(append([]string{}, conf...), "--data-dir", dir, "--cluster-etcd", strings.Join(etcd.Endpoints(), ","), "--node-id", "n1")
	out, ok := seed(t, bin, args...)
	if ok || !strings.Contains(out, "in use") {
		t.Fatalf("seed while the single node runs: ok=%v\n%s", ok, out)
	}
	cli := etcd.Client()
	defer cli.Close()
	if st, err := cluster.Check(context.Background(), cli, clusterPrefix, 5*time.Second); err != nil || len(st.Orgs) != 0 {
		t.Fatalf("a refused seed wrote to etcd: %+v, %v", st, err)
	}
	single.stop()

	out, ok = seed(t, bin, args...)
	t.Logf("creditgate cluster seed:\n%s", out)
	if !ok || !strings.Contains(out, "acme "+balance.StringFixed(2)) || !strings.Contains(out, "1 of them API keys") {
		t.Fatalf("seed: ok=%v, want acme %s and 1 key moved:\n%s", ok, balance.StringFixed(2), out)
	}
	st, err := cluster.Check(context.Background(), cli, clusterPrefix, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if a := st.Orgs["acme"]; !a.Funded.Equal(balance) || !a.Unallocated.Equal(balance) || !a.Spent.IsZero() {
		t.Fatalf("etcd acme after the seed %+v, want funded = unallocated = %s", a, balance)
	}

	// Node 1 on the seeded data directory, node 2 fresh.
	extra := func(id string) []string {
		return append(append([]string{}, conf...), "--cluster-etcd", strings.Join(etcd.Endpoints(), ","), "--node-id", id)
	}
	// Served as another node id than it was seeded as: refused (the
	// month's used pool minutes are node n1's).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out2, err := exec.CommandContext(ctx, bin, append([]string{"serve", "--data-dir", dir, "--admin-token", token,
		"--sip-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, extra("n7")...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "seeded as node n1") {
		t.Fatalf("the seeded data directory served as n7: %v\n%s", err, out2)
	}
	// Served alone again (no --cluster-etcd): refused, its money is in
	// etcd now (every org would show 0.00).
	out3, err := exec.CommandContext(ctx, bin, append([]string{"serve", "--data-dir", dir, "--admin-token", token,
		"--sip-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, conf...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out3), "belongs to a cluster") {
		t.Fatalf("the seeded data directory served as a single node: %v\n%s", err, out3)
	}
	n1 := startGateway(t, bin, dir, extra("n1")...)
	n2 := startGateway(t, bin, t.TempDir(), extra("n2")...)
	nodes := []*gateway{n1, n2}
	visibleWithin(t, nodes, time.Now(), "seeded configuration", func(g *gateway) bool {
		return g.status("GET", "/v1/orgs/acme") == 200 && g.hasTrunk("carrier")
	})
	if out, ok := seed(t, bin, args...); ok || !strings.Contains(out, "in use") {
		t.Fatalf("seed while node 1 serves the data directory: ok=%v\n%s", ok, out)
	}
	for i, g := range nodes {
		g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
		if !decimal.RequireFromString(org.Balance).Equal(balance) {
			t.Fatalf("node %d shows acme's balance %s, want the moved %s", i+1, org.Balance, balance)
		}
	}
	// History stays on node 1: the single node's CDR, and the entry that
	// moved the money.
	var usage struct{ CDRs []cdr }
	n1.api("GET", "/v1/orgs/acme/usage?scope=local", "", "", 200, &usage)
	if len(usage.CDRs) != 1 || usage.CDRs[0]["call_id"] != before[0]["call_id"] {
		t.Fatalf("node 1's own CDRs %v, want the single node's %v", usage.CDRs, before)
	}
	var txs struct {
		Transactions []struct {
			Kind, Amount, Balance string
			Key                   string `json:"idempotency_key"`
		}
	}
	n1.api("GET", "/v1/orgs/acme/transactions?scope=local", "", "", 200, &txs)
	last := txs.Transactions[len(txs.Transactions)-1]
	if last.Kind != "return" || last.Key != "cluster-seed/1" || !decimal.RequireFromString(last.Amount).Equal(balance.Neg()) {
		t.Fatalf("node 1's last transaction %+v, want the seed's return of %s", last, balance)
	}

	// The single node's key works on node 2.
	if code, body := n2.as(secret, "GET", "/v1/orgs/acme", ""); code != 200 {
		t.Fatalf("the single node's key on node 2: %d %s", code, body)
	}

	// A call through node 2, billed from the moved money.
	oneCall(t, n2, carrier, 3*time.Second)
	var own struct{ CDRs []cdr }
	for deadline := time.Now().Add(10 * time.Second); len(own.CDRs) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		n2.api("GET", "/v1/orgs/acme/usage?scope=local", "", "", 200, &own)
	}
	if len(own.CDRs) != 1 {
		t.Fatalf("node 2's own CDRs %v, want its one call", own.CDRs)
	}
	charge := decimal.RequireFromString(own.CDRs[0]["charge"])
	if !charge.IsPositive() {
		t.Fatalf("node 2's CDR %v", own.CDRs[0])
	}
	// The cluster-wide report merges node 1's history (the single node's
	// call) with node 2's.
	if all := n2.cdrs(2); len(all) != 2 {
		t.Fatalf("cluster-wide usage through node 2: %v, want the single node's call and node 2's", all)
	}
	want := balance.Sub(charge)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, err = cluster.Check(context.Background(), cli, clusterPrefix, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if st.Orgs["acme"].Spent.Equal(charge) || time.Now().After(deadline) {
			break
		}
	}
	if a := st.Orgs["acme"]; !a.Funded.Equal(balance) || !a.Spent.Equal(charge) {
		t.Fatalf("etcd acme %+v after node 2's call of %s, want funded %s, spent %s", a, charge, balance, charge)
	}
	for i, g := range nodes {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			g.api("GET", "/v1/orgs/acme", "", "", 200, &org)
			if decimal.RequireFromString(org.Balance).Equal(want) || time.Now().After(deadline) {
				break
			}
		}
		if !decimal.RequireFromString(org.Balance).Equal(want) {
			t.Fatalf("node %d shows acme's balance %s after node 2's call of %s, want %s", i+1, org.Balance, charge, want)
		}
	}
	t.Logf("moved %s; node 2's call charged %s; etcd at the end %+v", balance, charge, st.Orgs["acme"])

	// Another single node's data directory cannot seed this cluster.
	other := t.TempDir()
	g := startGateway(t, bin, other)
	g.api("POST", "/v1/orgs", "", `{"id":"zeta","name":"Zeta","country":"US","region":"us"}`, 201, nil)
	g.stop()
	otherArgs := append(append([]string{}, conf...), "--data-dir", other, "--cluster-etcd", strings.Join(etcd.Endpoints(), ","), "--node-id", "n3")
	if out, ok := seed(t, bin, otherArgs...); ok || !strings.Contains(out, "not empty") {
		t.Fatalf("seed of a configured cluster from another data directory: ok=%v\n%s", ok, out)
	}
}

// TestClusterServeRefusesUnfinishedSeed: etcd as a seed killed after its
// claim leaves it (the seed key, not done): serve refuses to start a node
// on that cluster, saying to finish the seed, and writes nothing.
func TestClusterServeRefusesUnfinishedSeed(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	bin := buildBinary(t)
	cli := etcd.Client()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, clusterPrefix+"seed", `{"source":"0123","node":"n1","done":false}`); err != nil {
		t.Fatal(err)
	}
	conf := configFile(t, "cluster:\n  prefix: "+clusterPrefix+"\n")
	out, err := exec.CommandContext(ctx, bin, append(append([]string{"serve", "--data-dir", t.TempDir(), "--admin-token", token,
		"--sip-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, conf...),
		"--cluster-etcd", strings.Join(etcd.Endpoints(), ","), "--node-id", "n2")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "has not finished") {
		t.Fatalf("serve on a cluster whose seed has not finished: %v\n%s", err, out)
	}
	t.Logf("serve refused: %s", strings.TrimSpace(string(out)))
	if st, err := cluster.Check(ctx, cli, clusterPrefix, 5*time.Second); err != nil || len(st.Orgs) != 0 {
		t.Fatalf("etcd after the refusal: %+v, %v", st, err)
	}
}
