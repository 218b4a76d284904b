package ledger

import (
	"github.com/prometheus/client_golang/prometheus"
)

// orgCollector exposes each org's money at scrape time, which is what a
// low-balance alert needs. Its org label is bounded by the orgs an operator
// created, never by calls or numbers.
type orgCollector struct {
	l                                   *Ledger
	balance, available, held, threshold *prometheus.Desc
	suspended                           *prometheus.Desc
}

func newOrgCollector(l *Ledger) *orgCollector {
	org := []string{"org", "currency"}
	return &orgCollector{l: l,
		balance: prometheus.NewDesc("creditgate_org_balance", "The org's Communications Credits balance.", org, nil),
		available: prometheus.NewDesc("creditgate_org_available",
			"Balance minus what calls up hold: what new calls can take.", org, nil),
		held: prometheus.NewDesc("creditgate_org_held", "Credit held by the org's calls up.", org, nil),
		threshold: prometheus.NewDesc("creditgate_org_auto_recharge_threshold",
			"The balance below which auto-recharge buys; absent when auto-recharge is off.", org, nil),
		suspended: prometheus.NewDesc("creditgate_org_auto_recharge_suspended",
			"1 when auto-recharge is on but stopped by a failed purchase, until its settings are put again.", org, nil),
	}
}

func (c *orgCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.balance, c.available, c.held, c.threshold, c.suspended} {
		ch <- d
	}
}

// Collect copies what it needs under the lock and builds the metrics
// outside it, so a scrape does not hold calls up.
func (c *orgCollector) Collect(ch chan<- prometheus.Metric) {
	type row struct {
		org, cur                            string
		balance, available, held, threshold float64
		recharge, suspended                 bool
	}
	c.l.mu.Lock()
	rows := make([]row, 0, len(c.l.orgs))
	for _, os := range c.l.orgs {
		// Float only here, for Prometheus, which has no other number.
		r := row{org: os.ID, cur: os.Currency, balance: os.Balance.InexactFloat64(),
			available: os.Balance.Sub(os.Held).InexactFloat64(), held: os.Held.InexactFloat64(),
			recharge: os.AutoRecharge.Enabled, suspended: os.AutoRecharge.Suspended != ""}
		if r.recharge {
			r.threshold = os.AutoRecharge.Threshold.InexactFloat64()
		}
		rows = append(rows, r)
	}
	c.l.mu.Unlock()
	for _, r := range rows {
		ch <- prometheus.MustNewConstMetric(c.balance, prometheus.GaugeValue, r.balance, r.org, r.cur)
		ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, r.available, r.org, r.cur)
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, r.held, r.org, r.cur)
		if r.recharge {
			ch <- prometheus.MustNewConstMetric(c.threshold, prometheus.GaugeValue, r.threshold, r.org, r.cur)
			s := 0.0
			if r.suspended {
				s = 1
			}
			ch <- prometheus.MustNewConstMetric(c.suspended, prometheus.GaugeValue, s, r.org, r.cur)
		}
	}
}
