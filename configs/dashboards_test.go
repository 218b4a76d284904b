package configs

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/notify"
	"github.com/creditgate/creditgate/payments"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"
)

// exposed builds every part that registers metrics, as main does, and
// returns the metric families a scrape would see, by name.
func exposed(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	d := Default() // as cmd/creditgate passes it: no package defaults its own config
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	panics.Register(reg)
	l, err := ledger.Open(t.TempDir(), ledger.Options{Registerer: reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	joinCluster(t, l, reg, quiet)
	gw, err := gateway.New(gateway.Config{Listen: "127.0.0.1:0", RingTimeout: d.SIP.RingTimeout, ByeTimeout: d.SIP.ByeTimeout,
		MaxCalls: d.SIP.MaxCalls, MaxPending: d.SIP.MaxPending, FailoverTimeout: d.SIP.FailoverTimeout, Catalog: &d.Catalog,
		HighRisk: d.Fraud.HighRiskPrefixes, SessionExpires: d.SIP.SessionExpires, MinSE: d.SIP.MinSE,
		KeepaliveInterval: d.SIP.KeepaliveInterval, KeepaliveTimeout: d.SIP.KeepaliveTimeout, MaxCallDuration: d.SIP.MaxCallDuration}, l, rating.SampleDeck(), clock.Real{}, reg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	api.New(l, gw, "token-0123456789abcdef", reg, time.Now, quiet)
	if _, err := payments.New(l, payments.Config{APIKey: "sk_test_x", BaseURL: "http://127.0.0.1:9", Backoff: d.Payments.RetryBackoff,
		MaxBackoff: d.Payments.MaxBackoff, MaxAttempts: d.Payments.MaxAttempts}, clock.Real{}, reg, quiet); err != nil {
		t.Fatal(err)
	}
	if _, err := notify.New(l, notify.Config{SMTP: notify.SMTP{TLS: d.Notify.SMTP.TLS}, Backoff: d.Notify.RetryBackoff,
		MaxBackoff: d.Notify.MaxBackoff, LowBalanceHorizon: d.Notify.LowBalanceHorizon, LowBalanceEvery: d.Notify.LowBalanceEvery},
		clock.Real{}, reg, quiet); err != nil {
		t.Fatal(err)
	}
	// An org with auto-recharge on, so its per-org series exist.
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Country: "US", Region: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SetAutoRecharge("acme", ledger.AutoRecharge{Enabled: true, Threshold: decimal.NewFromInt(10),
		Amount: decimal.NewFromInt(50), PaymentMethod: "pm_card_visa", Customer: "cus_acme"}); err != nil {
		t.Fatal(err)
	}
	// The ledger commit histogram has samples only once something commits.
	time.Sleep(10 * time.Millisecond)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// joinCluster makes the process a cluster node on a real one-member etcd,
// as cmd/creditgate does in cluster mode (Node, Replica, Books over the
// ledger), and registers the cluster's collector: its metrics exist only
// there.
func joinCluster(t *testing.T, l *ledger.Ledger, reg prometheus.Registerer, log *slog.Logger) {
	t.Helper()
	ec := etcdtest.Start(t, 1)
	cli := ec.Client()
	c := Default().Cluster
	ctx := context.Background()
	n, err := cluster.Join(ctx, cli, cluster.Config{Prefix: c.Prefix, NodeID: "n1", LeaseTTL: c.LeaseTTL,
		Margin: c.LeaseMargin, KeepAliveEvery: c.KeepaliveEvery, OpTimeout: c.OpTimeout}, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := cluster.NewReplica(ctx, n, l, log)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cluster.NewBooks(n, l, r, cluster.DefaultSlicePolicy(), clock.Real{}, log)
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(cluster.NewCollector(n, b, r))
	// The payer's and notifier's leadership (cmd/creditgate/singletons.go).
	var ss []*cluster.Singleton
	for _, name := range []string{"payer", "notifier"} {
		s, err := n.RunSingleton(name, clock.Real{}, log, func(ctx context.Context) { <-ctx.Done() })
		if err != nil {
			t.Fatal(err)
		}
		ss = append(ss, s)
	}
	reg.MustRegister(cluster.NewSingletonCollector(n, ss...))
	t.Cleanup(func() {
		for _, s := range ss {
			s.Close()
		}
		_ = b.Close(ctx)
		_ = r.Close()
		_ = n.Close(ctx)
		_ = cli.Close()
	})
}

var (
	metricRE  = regexp.MustCompile(`\b((?:creditgate|process|go)_[a-z_]+|up)\b`)
	selectRE  = regexp.MustCompile(`\b((?:creditgate|process|go)_[a-z_]+)\{([^}]*)\}`)
	matcherRE = regexp.MustCompile(`(\w+)\s*(=~|!=|=)\s*"([^"]*)"`)
)

// family finds the family behind a name as PromQL uses it: a histogram's
// _bucket, _sum and _count series belong to its family.
func family(fams map[string]*dto.MetricFamily, name string) *dto.MetricFamily {
	if mf, ok := fams[name]; ok {
		return mf
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if mf, ok := fams[strings.TrimSuffix(name, suf)]; ok && strings.HasSuffix(name, suf) && mf.GetType() == dto.MetricType_HISTOGRAM {
			return mf
		}
	}
	return nil
}

// checkExpr fails if expr names a metric nobody exposes, or selects a
// label value the metric never has.
func checkExpr(t *testing.T, where, expr string, fams map[string]*dto.MetricFamily) {
	t.Helper()
	for _, m := range metricRE.FindAllStringSubmatch(expr, -1) {
		if m[1] == "up" { // Prometheus's own, per scrape job
			continue
		}
		if family(fams, m[1]) == nil {
			t.Errorf("%s: %s is not a metric creditgate exposes", where, m[1])
		}
	}
	for _, sel := range selectRE.FindAllStringSubmatch(expr, -1) {
		mf := family(fams, sel[1])
		if mf == nil {
			continue
		}
		for _, mt := range matcherRE.FindAllStringSubmatch(sel[2], -1) {
			label, op, value := mt[1], mt[2], mt[3]
			if label == "job" || label == "instance" || op == "!=" {
				continue
			}
			have := map[string]bool{}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == label {
						have[lp.GetValue()] = true
					}
				}
			}
			want := []string{value}
			if op == "=~" {
				want = strings.Split(value, "|")
			}
			for _, v := range want {
				if !have[v] {
					t.Errorf("%s: %s{%s=%q}: no such label value (has %v)", where, sel[1], label, v, keys(have))
				}
			}
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestAlertRulesUseRealMetrics(t *testing.T) {
	fams := exposed(t)
	b, err := os.ReadFile("../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert       string
				Expr        string
				For         string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v: want alert, expr, a severity and a summary", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
				}
			}
			checkExpr(t, r.Alert, r.Expr, fams)
		}
	}
	// The four: low balance, recharge failures, refusal spike,
	// ledger commit latency.
	for _, want := range []string{"CreditgateOrgBalanceLow", "CreditgateRechargeFailures", "CreditgateAuthorizationRefusalsSpike", "CreditgateLedgerCommitSlow"} {
		if !strings.Contains(string(b), "alert: "+want+"\n") {
			t.Errorf("no %s rule", want)
		}
	}
	if n < 4 {
		t.Fatalf("%d rules", n)
	}
}

func TestDashboardUsesRealMetrics(t *testing.T) {
	fams := exposed(t)
	b, err := os.ReadFile("../deploy/grafana/creditgate-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string
		UID    string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) < 8 {
		t.Fatalf("dashboard %q %q with %d panels", d.Title, d.UID, len(d.Panels))
	}
	used := map[string]bool{}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			checkExpr(t, "panel "+p.Title, tg.Expr, fams)
			for _, m := range metricRE.FindAllStringSubmatch(tg.Expr, -1) {
				if mf := family(fams, m[1]); mf != nil {
					used[mf.GetName()] = true
				}
			}
		}
	}
	// Every creditgate metric is on the dashboard and in the README.
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range fams {
		if !strings.HasPrefix(name, "creditgate_") {
			continue
		}
		if !used[name] {
			t.Errorf("%s is on no dashboard panel", name)
		}
		if !strings.Contains(string(readme), name) {
			t.Errorf("%s is not documented in the README", name)
		}
	}
}
