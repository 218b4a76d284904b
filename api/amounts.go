// Money on the wire: amounts out as decimal strings, amounts in parsed strictly.

package api

import (
	"encoding/json"
	"fmt"
	"regexp"

	"github.com/shopspring/decimal"
)

// Money is formatted with at least the currency's two places and never
// loses a digit (sub-cent charges show in full).
func money(d decimal.Decimal) string {
	if d.Equal(d.Round(2)) {
		return d.StringFixed(2)
	}
	return d.String()
}

var amountRE = regexp.MustCompile(`^[0-9]{1,12}(\.[0-9]{1,2})?$`)

// parseAmount accepts a funding amount: a plain decimal string with at most
// two decimal places. JSON numbers, signs, exponents and more precision than
// the currency has are refused.
func parseAmount(raw json.RawMessage) (decimal.Decimal, error) {
	var s string
	if len(raw) == 0 {
		return decimal.Zero, fmt.Errorf("%w: amount is required, as a string like \"50.00\"", errBadAmount)
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return decimal.Zero, fmt.Errorf("%w: amount must be a decimal string like \"50.00\", not %s", errBadAmount, raw)
	}
	if !amountRE.MatchString(s) {
		return decimal.Zero, fmt.Errorf("%w: %q is not a positive amount with at most 2 decimal places", errBadAmount, s)
	}
	return decimal.RequireFromString(s), nil
}

// parseAmountOrZero is parseAmount that also takes "0" (a threshold of
// zero recharges only once the balance is gone).
func parseAmountOrZero(raw json.RawMessage) (decimal.Decimal, error) {
	if string(raw) == `"0"` || string(raw) == `"0.00"` {
		return decimal.Zero, nil
	}
	return parseAmount(raw)
}

// optionalAmount is parseAmountOrZero for a field that may be left out
// (then zero); an error names the field.
func optionalAmount(field string, raw json.RawMessage) (decimal.Decimal, error) {
	if len(raw) == 0 {
		return decimal.Zero, nil
	}
	d, err := parseAmountOrZero(raw)
	if err != nil {
		return decimal.Zero, fmt.Errorf("%s: %w", field, err)
	}
	return d, nil
}
