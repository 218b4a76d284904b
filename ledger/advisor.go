package ledger

import (
	"fmt"
	"sort"
	"time"

	"github.com/shopspring/decimal"
)

// The funding advisor (README, Funding; an addition to the original
// brief, which only told the operator to size funding from the usage report): from the org's spend on credits over
// the last 30 days it forecasts when the balance runs out and suggests an
// auto-recharge threshold and amount.
//
//	days      = the last 30 days, or fewer if the org is younger (at least 1)
//	spend[d]  = Σ charge of the CDRs that ended on day d (UTC), every day
//	            counted, idle ones as 0
//	burn      = Σ spend / days                                (per day)
//	zero_at   = now + available / burn                        (none if burn = 0)
//	threshold = ceil(p95(spend) × LeadDays × (1 + Margin))
//	amount    = max(minimum funding, ceil10(burn × CoverDays))
//
// The threshold is what the org can spend on a bad day (its 95th percentile
// day) while a recharge is not yet in: normally seconds, but a declined card
// needs a person to fix it, and LeadDays (2) covers that across a weekend
// day; Margin (25 %) absorbs growth. The amount buys about CoverDays (7) of
// average spend, so a busy org is not charged many small amounts; it is
// rounded up to tens and never below the minimum funding.

// Advisor parameters.
const (
	AdviceWindowDays = 30
	AdviceLeadDays   = 2
	AdviceCoverDays  = 7
)

var adviceMargin = decimal.RequireFromString("1.25")

// Advice is the advisor's answer for one org.
type Advice struct {
	Days          int             `json:"days"`  // days observed
	Spend         decimal.Decimal `json:"spend"` // on credits, over those days
	BurnPerDay    decimal.Decimal `json:"burn_per_day"`
	P95Day        decimal.Decimal `json:"p95_day"`
	ZeroAt        time.Time       `json:"zero_at,omitzero"` // zero when nothing is spent
	Threshold     decimal.Decimal `json:"suggested_threshold"`
	Amount        decimal.Decimal `json:"suggested_amount"`
	ComputedAt    time.Time       `json:"computed_at"`
	CDRsConsulted int             `json:"cdrs"`
}

// Advise computes the org's advice at now from its CDRs.
func (l *Ledger) Advise(org string, now time.Time) (Advice, error) {
	o, err := l.Org(org)
	if err != nil {
		return Advice{}, err
	}
	in, err := l.AdviceInputs(org, now)
	if err != nil {
		return Advice{}, err
	}
	return l.AdviceFrom(in, o.Available()), nil
}

// AdviceInputs is what the advice is computed from: the org's spend on
// credits on each day of the window that ends at At, from the CDRs of one
// ledger. In cluster mode each node has its own calls' CDRs: the
// cluster's advice adds the nodes' inputs over one window (Add), then
// computes once (AdviceFrom). The inputs add up, the advice does not
// (its p95 day is of the summed days).
type AdviceInputs struct {
	At    time.Time         `json:"at"`
	Days  int               `json:"days"`
	Spend []decimal.Decimal `json:"spend"` // per day, the oldest first
	CDRs  int               `json:"cdrs"`  // CDRs consulted
}

// AdviceInputs reads the org's inputs for the window that ends at now.
// The window's length depends on now and the org's creation time only, so
// every node of a cluster (which share the org) reads the same window for
// the same now.
func (l *Ledger) AdviceInputs(org string, now time.Time) (AdviceInputs, error) {
	o, err := l.Org(org)
	if err != nil {
		return AdviceInputs{}, err
	}
	now = now.UTC()
	days := AdviceWindowDays
	if age := int(now.Sub(o.CreatedAt) / (24 * time.Hour)); age+1 < days {
		days = max(age+1, 1)
	}
	from := now.Add(-time.Duration(days) * 24 * time.Hour)
	in := AdviceInputs{At: now, Days: days, Spend: make([]decimal.Decimal, days)}
	for i := range in.Spend {
		in.Spend[i] = decimal.Zero
	}
	// CDRs are keyed by start; a call that started before the window and
	// ended in it is left out, which moves at most a call's worth.
	err = l.EachCDR(org, from, time.Time{}, func(c *CDR) error {
		in.CDRs++
		if !c.Charge.IsPositive() || c.End.Before(from) || c.End.After(now) {
			return nil
		}
		d := min(int(c.End.Sub(from)/(24*time.Hour)), days-1)
		in.Spend[d] = in.Spend[d].Add(c.Charge)
		return nil
	})
	if err != nil {
		return AdviceInputs{}, err
	}
	return in, nil
}

// Add is the inputs of two ledgers' CDRs over one window: the days' spend
// summed. Inputs of different windows do not add (ErrInvalid).
func (in AdviceInputs) Add(other AdviceInputs) (AdviceInputs, error) {
	if !in.At.Equal(other.At) || in.Days != other.Days || len(in.Spend) != in.Days || len(other.Spend) != other.Days {
		return in, fmt.Errorf("%w: advice inputs of %d days to %s and of %d days to %s do not add", ErrInvalid,
			in.Days, in.At.Format(time.RFC3339Nano), other.Days, other.At.Format(time.RFC3339Nano))
	}
	sum := AdviceInputs{At: in.At, Days: in.Days, Spend: make([]decimal.Decimal, in.Days), CDRs: in.CDRs + other.CDRs}
	for i := range sum.Spend {
		sum.Spend[i] = in.Spend[i].Add(other.Spend[i])
	}
	return sum, nil
}

// AdviceFrom computes the advice from its inputs (the formula above):
// available is the org's money now, for ZeroAt; the suggested amount is
// never below this ledger's minimum funding.
func (l *Ledger) AdviceFrom(in AdviceInputs, available decimal.Decimal) Advice {
	a := Advice{Days: in.Days, Spend: decimal.Zero, ComputedAt: in.At, CDRsConsulted: in.CDRs}
	spend := append([]decimal.Decimal(nil), in.Spend...)
	for _, d := range spend {
		a.Spend = a.Spend.Add(d)
	}
	a.BurnPerDay = a.Spend.DivRound(decimal.NewFromInt(int64(max(in.Days, 1))), 4)
	a.P95Day = decimal.Zero
	if len(spend) > 0 {
		sort.Slice(spend, func(i, j int) bool { return spend[i].LessThan(spend[j]) })
		// Nearest rank: the smallest day at or above 95 % of days.
		rank := (95*len(spend) + 99) / 100
		a.P95Day = spend[max(rank, 1)-1]
	}
	a.ZeroAt = a.ZeroAfter(available, in.At)
	a.Threshold = a.P95Day.Mul(decimal.NewFromInt(AdviceLeadDays)).Mul(adviceMargin).Ceil()
	amount := a.BurnPerDay.Mul(decimal.NewFromInt(AdviceCoverDays)).Div(decimal.NewFromInt(10)).Ceil().Mul(decimal.NewFromInt(10))
	a.Amount = decimal.Max(amount, l.opts.MinFunding)
	return a
}

// ZeroAfter is when available runs out at the advice's burn rate, from now;
// zero when nothing is being spent. The burn rate changes slowly, the
// balance with every call, so callers that keep advice for a while
// recompute this part.
func (a Advice) ZeroAfter(available decimal.Decimal, now time.Time) time.Time {
	if !a.BurnPerDay.IsPositive() {
		return time.Time{}
	}
	left := available.DivRound(a.BurnPerDay, 6) // days
	secs := left.Mul(decimal.NewFromInt(86400)).IntPart()
	return now.Add(time.Duration(min(secs, int64(100*365*86400))) * time.Second)
}
