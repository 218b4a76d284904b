package ledger

import "github.com/shopspring/decimal"

// OrgMoney is one org's money at a moment, for the per-org gauges the
// gateway exposes (the conversion to Prometheus's floats happens there, not
// here).
type OrgMoney struct {
	Org, Currency           string
	Balance, Available      decimal.Decimal
	Held                    decimal.Decimal
	AutoRecharge, Suspended bool
	Threshold               decimal.Decimal
}

// Money returns every org's money. It copies under the lock and nothing
// more, so a scrape does not hold calls up.
func (l *Ledger) Money() []OrgMoney {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]OrgMoney, 0, len(l.orgs))
	for _, st := range l.orgs {
		out = append(out, OrgMoney{Org: st.ID, Currency: st.Currency, Balance: st.Balance,
			Available: st.Balance.Sub(st.Held), Held: st.Held, AutoRecharge: st.AutoRecharge.Enabled,
			Suspended: st.AutoRecharge.Suspended != "", Threshold: st.AutoRecharge.Threshold})
	}
	return out
}
