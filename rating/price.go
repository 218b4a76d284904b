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
	secs := decimal.NewFromInt(int64(inc / time.Second))
	return RoundCharge(r.PerMinute.Mul(secs).Div(sixty))
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
