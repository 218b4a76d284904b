package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// healthNode is one cluster node wired as cmd/creditgate wires it: Node,
// Replica and Books over a Pebble ledger, the collector registered, and the
// admin API serving /readyz and /metrics over loopback HTTP. The node runs
// on nodeClk (a fake clock: its keepalives and deadline move only when the
// test advances it); the Books' report tick never fires by itself.
type healthNode struct {
	n     *Node
	local *ledger.Ledger
	r     *Replica
	b     *Books
	reg   *prometheus.Registry
	clk   *clock.Fake
	base  string // the admin API
}

func startHealthNode(t *testing.T, cli *clientv3.Client, cfg Config) *healthNode {
	t.Helper()
	h := &healthNode{clk: clock.NewFake(time.Unix(1_700_000_000, 0)), reg: prometheus.NewRegistry()}
	var err error
	if h.n, err = Join(context.Background(), cli, cfg, h.clk); err != nil {
		t.Fatal(err)
	}
	h.local = openSpendLedger(t, t.TempDir())
	if h.r, err = NewReplica(context.Background(), h.n, h.local, quiet()); err != nil {
		t.Fatal(err)
	}
	booksClk := manualTicks{clock.NewFake(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))}
	if h.b, err = NewBooks(h.n, h.local, h.r, DefaultSlicePolicy(), booksClk, quiet()); err != nil {
		t.Fatal(err)
	}
	h.reg.MustRegister(NewCollector(h.n, h.b, h.r))
	d := configs.Default()
	gw, err := gateway.New(gateway.Config{Listen: "127.0.0.1:0", RingTimeout: d.SIP.RingTimeout, ByeTimeout: d.SIP.ByeTimeout,
		MaxCalls: d.SIP.MaxCalls, MaxPending: d.SIP.MaxPending, FailoverTimeout: d.SIP.FailoverTimeout, Catalog: &d.Catalog,
		SessionExpires: d.SIP.SessionExpires, MinSE: d.SIP.MinSE, KeepaliveInterval: d.SIP.KeepaliveInterval,
		KeepaliveTimeout: d.SIP.KeepaliveTimeout, MaxCallDuration: d.SIP.MaxCallDuration}, h.b, rating.SampleDeck(), clock.Real{}, h.reg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	srv := api.New(h.b, gw, "token-0123456789abcdef", h.reg, time.Now, quiet())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	h.base = "http://" + ln.Addr().String()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		_ = gw.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.b.Close(ctx); err != nil && h.b.Err() == nil {
			t.Errorf("close books: %v", err)
		}
		_ = h.r.Close()
		_ = h.n.Close(ctx) // fails once etcd is gone; the lease then ends by itself
		_ = h.local.Close()
	})
	return h
}

// metrics scrapes the registry: value by name and labels, as
// `name{label="value",…}` with the labels sorted (node included).
func (h *healthNode) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "creditgate_cluster_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+`="`+lp.GetValue()+`"`)
			}
			sort.Strings(ls)
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[mf.GetName()+"{"+strings.Join(ls, ",")+"}"] = v
		}
	}
	return out
}

// want fails unless each named series has its value.
func (h *healthNode) want(t *testing.T, step string, want map[string]float64) {
	t.Helper()
	got := h.metrics(t)
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: no series %s (have %v)", step, k, got)
			continue
		}
		if g != v {
			t.Errorf("%s: %s = %v, want %v", step, k, g, v)
		}
	}
}

// readyz is the admin API's answer to GET /readyz.
func (h *healthNode) readyz(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get(h.base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// nodeLabel is a series name with only the node label.
func nodeLabel(name, node string) string { return name + `{node="` + node + `"}` }

// TestMetricsFollowNode: a node's collector and /readyz through join →
// selling (a slice, direct mode, back to normal) → lease revoked: lease
// state 1 → 0, fenced 0 → 1, /readyz 200 → 503 naming the node and the
// fencing; the etcd operation counters are Books.Ops', the slice money is
// etcd's, the replica's revision is Replica.Applied.
func TestMetricsFollowNode(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	cfg := testConfig("n1")
	// TTL 10 s − margin 2 s: the deadline is 8 s after each acknowledged
	// keepalive's send time on the fake clock; keepalives every 1 s.
	cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery = 10*time.Second, 2*time.Second, time.Second
	h := startHealthNode(t, cli, cfg)
	m := func(name string) string { return nodeLabel("creditgate_cluster_"+name, "n1") }
	ops := func(kind string) string {
		return `creditgate_cluster_etcd_ops_total{kind="` + kind + `",node="n1"}`
	}
	opsNow := func() map[string]float64 {
		o := h.b.Ops()
		return map[string]float64{ops("grants"): float64(o.Grants), ops("returns"): float64(o.Returns),
			ops("reports"): float64(o.Reports), ops("reads"): float64(o.Reads), ops("charges"): float64(o.Charges)}
	}

	// Joined: may sell, 8 s left exactly, its epoch; nothing held.
	if h.n.Epoch() < 1 {
		t.Fatalf("epoch %d", h.n.Epoch())
	}
	h.want(t, "joined", map[string]float64{m("lease_sellable"): 1, m("fenced"): 0, m("lease_remaining_seconds"): 8,
		m("epoch"): float64(h.n.Epoch()), m("slices"): 0, m("direct_orgs"): 0,
		m("replica_applied_revision"): float64(h.r.Applied()), m("replica_resyncs_total"): 0})
	h.want(t, "joined", opsNow())
	if code, body := h.readyz(t); code != 200 || body != "ready\n" {
		t.Fatalf("/readyz after join: %d %q", code, body)
	}

	// Selling: an org funded 1.50 in etcd; the first call's grant takes
	// 0.75 (half of unallocated), which leaves the org below MinSlice:
	// direct mode (as in TestDirectMode).
	applied := h.r.Applied()
	if _, err := h.b.CreateOrg(ledger.Org{ID: "acme", Name: "acme", Country: "GB", Region: "eu", BillingRegion: "eu"}); err != nil {
		t.Fatal(err)
	}
	org, err := h.local.Org("acme")
	if err != nil {
		t.Fatal(err)
	}
	unspent := `creditgate_cluster_slice_unspent{currency="` + org.Currency + `",node="n1"}`
	if _, err := h.b.FundAcrossRegions("acme", dec("1.50"), "f1", ""); err != nil {
		t.Fatal(err)
	}
	c := testCall("acme")
	if _, err := h.b.OpenCall(c, time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	st := mustCheck(t, h.n).Orgs["acme"]
	if !h.b.Direct("acme") || st.Outstanding.IsZero() {
		t.Fatalf("after the first call: direct %v, etcd %+v", h.b.Direct("acme"), st)
	}
	if h.r.Applied() <= applied {
		t.Fatalf("replica applied revision %d after creating an org, was %d", h.r.Applied(), applied)
	}
	h.want(t, "selling, direct", map[string]float64{m("lease_sellable"): 1, m("fenced"): 0, m("slices"): 1,
		m("direct_orgs"): 1, unspent: st.Outstanding.InexactFloat64(), m("replica_applied_revision"): float64(h.r.Applied())})
	h.want(t, "selling, direct", opsNow())
	if h.b.Ops().Grants < 1 || h.b.Ops().Charges < 1 {
		t.Fatalf("ops after a funding and a grant: %+v", h.b.Ops())
	}
	// Funded again: back to normal mode.
	if _, err := h.b.FundAcrossRegions("acme", dec("20.00"), "f2", ""); err != nil {
		t.Fatal(err)
	}
	st = mustCheck(t, h.n).Orgs["acme"]
	h.want(t, "funded again", map[string]float64{m("direct_orgs"): 0, m("slices"): 1, unspent: st.Outstanding.InexactFloat64()})
	h.want(t, "funded again", opsNow())

	// Half a second on the node's clock, no keepalive due yet: 7.5 s left.
	waitTimer(t, h.clk)
	h.clk.Advance(500 * time.Millisecond)
	h.want(t, "0.5 s on", map[string]float64{m("lease_remaining_seconds"): 7.5, m("lease_sellable"): 1})

	// The lease revoked behind the node's back (what etcd does to a node
	// it stopped hearing from). The next keepalive, due in 0.5 s, learns
	// it: fenced.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, h.n.Lease()); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(500 * time.Millisecond)
	for wait := time.Now(); !errors.Is(h.n.Sellable(), ErrFenced); time.Sleep(time.Millisecond) {
		if time.Since(wait) > 10*time.Second {
			t.Fatalf("not fenced after the keepalive on a revoked lease: %v", h.n.Sellable())
		}
	}
	h.want(t, "revoked", map[string]float64{m("lease_sellable"): 0, m("fenced"): 1, m("epoch"): float64(h.n.Epoch())})
	code, body := h.readyz(t)
	if code != 503 || !strings.Contains(body, "fenced") || !strings.Contains(body, "n1") {
		t.Fatalf("/readyz once fenced: %d %q", code, body)
	}
	t.Logf("/readyz once fenced: %d %s", code, strings.TrimSpace(body))
	if _, err := h.b.OpenCall(testCall("acme"), time.Date(2026, 12, 3, 12, 0, 1, 0, time.UTC)); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("a hold on a fenced node: %v", err)
	}
	if code, body := h.readyz(t); code != 503 || !strings.Contains(body, "fenced") {
		t.Fatalf("/readyz after a refused hold: %d %q", code, body)
	}
}

// TestReadyzFollowsLeaseDeadline: etcd out of reach (its only member
// killed), the node's keepalives go unacknowledged and its local deadline
// passes on its clock: lease state 0 while not fenced (nobody has told it
// the lease is gone), 0 s left, /readyz 503 naming the lease deadline.
func TestReadyzFollowsLeaseDeadline(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	defer cli.Close()
	cfg := testConfig("n1")
	cfg.LeaseTTL, cfg.Margin, cfg.KeepAliveEvery, cfg.OpTimeout = 10*time.Second, 2*time.Second, time.Second, time.Second
	h := startHealthNode(t, cli, cfg)
	m := func(name string) string { return nodeLabel("creditgate_cluster_"+name, "n1") }
	if code, _ := h.readyz(t); code != 200 {
		t.Fatalf("/readyz after join: %d", code)
	}
	ec.Kill(ec.Members[0])
	waitTimer(t, h.clk)
	h.clk.Advance(time.Second) // a keepalive to the dead member: never acknowledged
	h.want(t, "7 s left", map[string]float64{m("lease_sellable"): 1, m("lease_remaining_seconds"): 7})
	if code, _ := h.readyz(t); code != 200 {
		t.Fatalf("/readyz before the deadline: %d", code)
	}
	h.clk.Advance(7 * time.Second) // at the deadline
	h.want(t, "at the deadline", map[string]float64{m("lease_sellable"): 0, m("fenced"): 0, m("lease_remaining_seconds"): 0})
	code, body := h.readyz(t)
	if code != 503 || !strings.Contains(body, ErrLeaseDeadline.Error()) || !strings.Contains(body, "n1") {
		t.Fatalf("/readyz at the deadline: %d %q", code, body)
	}
	t.Logf("/readyz at the deadline: %d %s", code, strings.TrimSpace(body))
	if err := h.b.Ready(); !errors.Is(err, ErrLeaseDeadline) {
		t.Fatalf("Ready at the deadline: %v", err)
	}
}
