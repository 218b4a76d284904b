package rating

import (
	"time"

	"github.com/shopspring/decimal"
)

// MaxRateDecimals bounds the precision of rates in a deck.
const MaxRateDecimals = 6

// ChargeDecimals is the precision every charge is rounded to.
const ChargeDecimals = 6

// RoundCharge is the one rounding rule of creditgate, applied once per
// billing increment and nowhere else: the exact price of the increment
// (rate × seconds / 60) is rounded UP (toward +∞) to 6 decimal places.
//
// Why up and why 6: a per-second increment at a per-minute rate is rarely a
// whole number of cents (0.0125/min is 0.000208333…/s). Rounding each
// increment to cents would overcharge short increments by up to a cent each;
// 6 places keeps the error under 0.000001 per increment, and rounding up means
// the operator never sells below the rate it published. Sums of rounded
// increments are exact decimals, so a CDR's charge is exactly the sum of its
// debits and a balance never drifts.
func RoundCharge(exact decimal.Decimal) decimal.Decimal {
	return exact.RoundCeil(ChargeDecimals)
}

var sixty = decimal.NewFromInt(60)

// IncrementCharge is what one increment of the given length costs at this
// rate, by RoundCharge.
func (r Rate) IncrementCharge(inc time.Duration) decimal.Decimal {
	secs := int64(inc / time.Second)
	// The same rule in integers when the rate has at most 6 places (every
	// deck rate does): in millionths, ceil(rate × secs / 60). A decimal
	// division costs microseconds of big.Int work, and this runs for every
	// call authorized.
	if m, ok := millionths(r.PerMinute); ok && secs >= 0 && secs <= 1<<20 {
		return decimal.New((m*secs+59)/60, -ChargeDecimals)
	}
	return RoundCharge(r.PerMinute.Mul(decimal.NewFromInt(secs)).Div(sixty))
}

// millionths is d × 10⁶ when that is a whole number below 10¹² — small
// enough that times an increment's seconds it cannot overflow an int64.
func millionths(d decimal.Decimal) (int64, bool) {
	exp := d.Exponent()
	// coefficient × 10^(exp+6) < 10¹² ⇔ the coefficient has at most 6−exp digits.
	if d.IsNegative() || exp < -ChargeDecimals || exp > 0 || d.NumDigits() > ChargeDecimals-int(exp) {
		return 0, false
	}
	m := d.CoefficientInt64()
	for ; exp > -ChargeDecimals; exp-- {
		m *= 10
	}
	return m, true
}

// FirstCharge is the price of answering a call: the connection fee plus the
// first increment. A call is only connected if this much can be held.
func (r Rate) FirstCharge() decimal.Decimal {
	return r.ConnectionFee.Add(r.IncrementCharge(r.FirstIncrement))
}

// NextCharge is the price of each increment after the first.
func (r Rate) NextCharge() decimal.Decimal {
	return r.IncrementCharge(r.NextIncrement)
}

// Increment is the length of increment n (1-based) of a call at this rate.
func (r Rate) Increment(n int) time.Duration {
	if n <= 1 {
		return r.FirstIncrement
	}
	return r.NextIncrement
}

// Billed is the billed length and price of an answered call that lasted d:
// every started increment counts whole, and an answered call pays at least
// its first increment.
func (r Rate) Billed(d time.Duration) (billed time.Duration, increments int, charge decimal.Decimal) {
	billed = r.FirstIncrement
	increments = 1
	for billed < d {
		billed += r.NextIncrement
		increments++
	}
	charge = r.FirstCharge().Add(r.NextCharge().Mul(decimal.NewFromInt(int64(increments - 1))))
	return billed, increments, charge
}
