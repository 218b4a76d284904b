package gateway

import (
	"github.com/creditgate/creditgate/ledger"
	"github.com/prometheus/client_golang/prometheus"
)

// orgCollector exposes each org's money at scrape time, which is what a
// low-balance alert needs. Its org label is bounded by the orgs an operator
// created, never by calls or numbers. Prometheus has only floats; money
// becomes one here, for display and alerting, and nowhere else.
type orgCollector struct {
	l                                              ledger.Books
	balance, available, held, threshold, suspended *prometheus.Desc
}

func newOrgCollector(l ledger.Books) *orgCollector {
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

func (c *orgCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.l.Money() {
		ch <- prometheus.MustNewConstMetric(c.balance, prometheus.GaugeValue, m.Balance.InexactFloat64(), m.Org, m.Currency)
		ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, m.Available.InexactFloat64(), m.Org, m.Currency)
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, m.Held.InexactFloat64(), m.Org, m.Currency)
		if m.AutoRecharge {
			ch <- prometheus.MustNewConstMetric(c.threshold, prometheus.GaugeValue, m.Threshold.InexactFloat64(), m.Org, m.Currency)
			s := 0.0
			if m.Suspended {
				s = 1
			}
			ch <- prometheus.MustNewConstMetric(c.suspended, prometheus.GaugeValue, s, m.Org, m.Currency)
		}
	}
}
