package cluster

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
)

// Health and metrics of a cluster node (issue 17, item 5).
//
// Every series carries a constant label node = the node's id (Config.NodeID,
// the name in etcd's members/ and slices/ keys and in the logs). Prometheus'
// instance label would tell the nodes apart too, but it is the scrape
// address: the node id is what an operator finds in etcd and in the
// cluster's log lines, it stays the same when a node moves address, and it
// lets an alert say which member lost its lease. A dashboard sums nodes with
// sum(...) or sum by (node); single-node metrics keep relying on instance.
//
// The collector reads the Node, Books and Replica at scrape time, each
// through its own lock for a copy: nothing is counted twice (the etcd
// operations are Books.Ops' counters) and the hot path pays nothing.

// Holding is what a node's Books hold from the cluster's money, as etcd
// has it after the node's last operation on each org.
type Holding struct {
	// Slices is the number of orgs the node holds a slice of.
	Slices int
	// Unspent is Σ (granted − spent) of those slices, by the orgs'
	// currency; every currency of the local ledger's orgs is present
	// (zero when no slice is held), so the series exist from the start.
	Unspent map[string]decimal.Decimal
	// Direct is the number of orgs in direct mode on this node.
	Direct int
}

// Holding copies what the Books hold. The local ledger is read first
// (currencies), then Books.mu is taken alone: never both at once.
func (b *Books) Holding() Holding {
	currency := map[string]string{}
	h := Holding{Unspent: map[string]decimal.Decimal{}}
	for _, m := range b.local.Money() {
		currency[m.Org] = m.Currency
		h.Unspent[m.Currency] = decimal.Zero
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, o := range b.orgs {
		if o.direct {
			h.Direct++
		}
		if o.slice != nil {
			h.Slices++
			c := currency[id]
			h.Unspent[c] = h.Unspent[c].Add(o.slice.Unspent())
		}
	}
	return h
}

// Ready is nil while the node may take calls: its Books have not failed
// (fenced, or the local ledger failed: Err) and the node may sell
// (Node.Sellable): before its local lease deadline, which lapses when etcd
// stops acknowledging keepalives (etcd out of reach, or too slow), and not
// fenced. The admin API's /readyz answers 503 with this error otherwise;
// it asks Ready of any ledger.Books that has it, Err of the others.
func (b *Books) Ready() error {
	if err := b.Err(); err != nil {
		return err
	}
	err := b.n.Sellable()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrLeaseDeadline):
		return fmt.Errorf("cluster node %s (epoch %d): %w %s ago: etcd has not acknowledged a keepalive in time",
			b.n.ID(), b.n.Epoch(), err, b.n.clk.Now().Sub(b.n.Deadline()).Round(time.Millisecond))
	default:
		return fmt.Errorf("cluster node %s (epoch %d): %w", b.n.ID(), b.n.Epoch(), err)
	}
}

// opKinds are creditgate_cluster_etcd_ops_total's kind values, in
// OpCounts' order.
var opKinds = []string{"grants", "returns", "reports", "reads", "charges"}

// collector is the prometheus.Collector of one cluster node.
type collector struct {
	n *Node
	b *Books
	r *Replica

	sellable, remaining, fenced, epoch *prometheus.Desc
	ops, direct, slices, unspent       *prometheus.Desc
	applied, resyncs                   *prometheus.Desc
	records, reaps, reapedCalls        *prometheus.Desc
}

// NewCollector is the Prometheus collector of node n, its Books and its
// Replica; cmd/creditgate registers it in cluster mode only.
func NewCollector(n *Node, b *Books, r *Replica) prometheus.Collector {
	node := prometheus.Labels{"node": n.ID()}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("creditgate_cluster_"+name, help, labels, node)
	}
	return &collector{n: n, b: b, r: r,
		sellable:    d("lease_sellable", "1 while the node may sell (hold new increments): before its local lease deadline and not fenced; 0 otherwise (then /readyz answers 503)."),
		remaining:   d("lease_remaining_seconds", "Seconds left to the node's local lease deadline (last acknowledged keepalive's send time + TTL − margin); negative once it passed."),
		fenced:      d("fenced", "1 once the node knows its etcd lease is gone (revoked or expired): every write it makes is refused until it rejoins."),
		epoch:       d("epoch", "The node's incarnation number, taken when it joined; larger than every earlier incarnation's of any node."),
		ops:         d("etcd_ops_total", "etcd operations the node's Books made, by kind: grants (money taken from unallocated), returns (given back), reports (report transactions, up to 60 orgs each), reads (account reads for the cluster balance), charges (restart settlements and fundings).", "kind"),
		direct:      d("direct_orgs", "Orgs in direct mode on this node: each hold is taken from etcd, no slice kept."),
		slices:      d("slices", "Orgs this node holds a slice of."),
		unspent:     d("slice_unspent", "Money in the node's slices as etcd has it (granted − spent at the last report), by currency.", "currency"),
		applied:     d("replica_applied_revision", "The etcd revision of the shared configuration the node's ledger has applied."),
		resyncs:     d("replica_resyncs_total", "Full re-reads of the shared configuration after the first (compacted or cancelled watch, failed deck fetch)."),
		records:     d("takeover_records", "Takeover records this node keeps in etcd: its answered calls up, and closed ones until a report covers them."),
		reaps:       d("reaps_total", "Dead node incarnations this node reaped (claimed, ended their calls, settled their money)."),
		reapedCalls: d("reaped_calls_total", "Calls of dead nodes this node ended (BYE to both legs) and wrote the CDR of, reason node_failure."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sellable, c.remaining, c.fenced, c.epoch, c.ops, c.direct, c.slices, c.unspent, c.applied, c.resyncs,
		c.records, c.reaps, c.reapedCalls} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	err := c.n.Sellable()
	gauge(c.sellable, bit(err == nil))
	gauge(c.fenced, bit(errors.Is(err, ErrFenced)))
	gauge(c.remaining, c.n.Deadline().Sub(c.n.clk.Now()).Seconds())
	gauge(c.epoch, float64(c.n.Epoch()))
	ops := c.b.Ops()
	for i, v := range []int64{ops.Grants, ops.Returns, ops.Reports, ops.Reads, ops.Charges} {
		counter(c.ops, float64(v), opKinds[i])
	}
	h := c.b.Holding()
	gauge(c.direct, float64(h.Direct))
	gauge(c.slices, float64(h.Slices))
	for cur, m := range h.Unspent {
		gauge(c.unspent, m.InexactFloat64(), cur) // a gauge for a dashboard; the money of record stays decimal
	}
	gauge(c.applied, float64(c.r.Applied()))
	counter(c.resyncs, float64(c.r.Resyncs()))
	gauge(c.records, float64(c.b.RecordStats().Live))
	reaps, calls := c.b.Reaped()
	counter(c.reaps, float64(reaps))
	counter(c.reapedCalls, float64(calls))
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
