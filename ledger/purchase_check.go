package ledger

import (
	"fmt"

	"github.com/shopspring/decimal"
)

// CheckPurchase is StartPurchase's check of its own arguments, in the same
// order with the same refusals (ErrInvalid, ErrBelowMinimum), for a cluster
// node that keeps one-time purchases in etcd rather than in this ledger.
// The org's rules (it exists, its currency's precision, its regions) are
// the caller's: CheckFunding and MinorUnits.
func (l *Ledger) CheckPurchase(amount decimal.Decimal, key, paymentMethod, customer, incident string) error {
	if key == "" || len(key) > MaxFundingKey {
		return invalidf("idempotency_key: want 1 to %d characters", MaxFundingKey)
	}
	if len(incident) > 128 {
		return invalidf("incident: at most 128 characters")
	}
	if !amount.IsPositive() || amount.LessThan(l.opts.MinFunding) {
		return fmt.Errorf("%w: %s is below the minimum funding of %s", ErrBelowMinimum, amount.StringFixed(2), l.opts.MinFunding.StringFixed(2))
	}
	if !paymentMethodRE.MatchString(paymentMethod) {
		return invalidf("payment_method %q: want the provider's payment method id (pm_…)", paymentMethod)
	}
	if customer != "" && !customerRE.MatchString(customer) {
		return invalidf("customer %q: want the provider's customer id (cus_…) that owns the payment method, or none", customer)
	}
	return nil
}
