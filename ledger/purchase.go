package ledger

import (
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/shopspring/decimal"
)

// One-time purchases (README, Funding: "buy credits"): an org's admin buys
// credits with a card, paid through the payment provider. They ride on the
// auto-recharge machinery (recharge.go) — a pending Purchase the payer pays
// with the purchase's ID as the provider's idempotency key, credited once by
// CompletePurchase, closed by FailPurchase — with these differences:
//
//   - the client starts one with StartPurchase, idempotent per (org, key)
//     like Fund: a retry with the same key, amount, payment method and
//     customer answers the purchase the first made (Replayed set), whatever
//     state it has reached; the same key with anything else is
//     ErrDuplicateFunding. The keys are their own namespace: a purchase's key
//     and a manual funding's (POST …/credits) never meet;
//   - the same rules as a manual funding: at least Options.MinFunding
//     (ErrBelowMinimum), and an org whose region differs from its billing
//     region needs the support incident that resolved it
//     (ErrRegionMismatch);
//   - an org may have several pending, at most MaxPendingPurchases (a limit
//     on what a client can make the payer do), beside its one pending
//     auto-recharge, which they neither replace nor block;
//   - a failure does not suspend auto-recharge and queues purchase_failed;
//     a success queues nothing (the buyer reads the state) and its entry is
//     a "purchase".

// MaxPendingPurchases bounds an org's one-time purchases not yet paid or
// failed; one more is ErrTooManyPurchases until the payer closes one.
const MaxPendingPurchases = 10

// Refusals of one-time purchases.
var (
	ErrUnknownPurchase  = errors.New("unknown purchase")
	ErrTooManyPurchases = errors.New("too many purchases pending")
)

// purchaseKey is what a one-time purchase's idempotency key must match for
// a retry to be the same request, and the purchase it started.
type purchaseKey struct {
	ID            string
	Amount        decimal.Decimal
	PaymentMethod string
	Customer      string
}

// StartPurchase starts a one-time purchase of amount on the org's currency,
// paid with paymentMethod (the provider's pm_… id; customer, cus_…, when
// the method is saved to one, else ""). It is durable when it returns and
// wakes the payer; the returned purchase is pending until the payer closes
// it. incident, when the org's region differs from its billing region,
// names the support incident that allows it (kept on the purchase and its
// entry, and logged). Refusals change nothing: ErrInvalid, ErrBelowMinimum,
// ErrUnknownOrg, ErrRegionMismatch, ErrDuplicateFunding,
// ErrTooManyPurchases.
func (l *Ledger) StartPurchase(org string, amount decimal.Decimal, key, paymentMethod, customer, incident string) (Purchase, error) {
	if key == "" || len(key) > MaxFundingKey {
		return Purchase{}, invalidf("idempotency_key: want 1 to %d characters", MaxFundingKey)
	}
	if len(incident) > 128 {
		return Purchase{}, invalidf("incident: at most 128 characters")
	}
	if !amount.IsPositive() || amount.LessThan(l.opts.MinFunding) {
		return Purchase{}, fmt.Errorf("%w: %s is below the minimum funding of %s", ErrBelowMinimum, amount.StringFixed(2), l.opts.MinFunding.StringFixed(2))
	}
	if !paymentMethodRE.MatchString(paymentMethod) {
		return Purchase{}, invalidf("payment_method %q: want the provider's payment method id (pm_…)", paymentMethod)
	}
	if customer != "" && !customerRE.MatchString(customer) {
		return Purchase{}, invalidf("customer %q: want the provider's customer id (cus_…) that owns the payment method, or none", customer)
	}
	var out Purchase
	replay := ""
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "purchase", Org: org, Key: key, Amount: amount}, at, func(t *txn) error {
		st, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		pk := org + "/" + key
		if prev, ok := l.purchaseKeys[pk]; ok {
			if prev.Amount.Equal(amount) && prev.PaymentMethod == paymentMethod && prev.Customer == customer {
				// Nothing to write: do still waits for everything
				// before it, so the purchase read below is durable.
				replay = prev.ID
				return nil
			}
			return fmt.Errorf("%w: %q started purchase %s of %s with %s already; nothing changed", ErrDuplicateFunding, key,
				prev.ID, prev.Amount.StringFixed(2), prev.PaymentMethod)
		}
		if _, ok := MinorUnits(amount, st.Currency); !ok {
			return invalidf("amount %s: more precision than %s has", amount, st.Currency)
		}
		if st.Region != st.BillingRegion {
			if incident == "" {
				return fmt.Errorf("%w: org %s is in region %q but bills in %q; open a support incident to purchase Communications Credits, then pass its id as incident",
					ErrRegionMismatch, st.ID, st.Region, st.BillingRegion)
			}
			l.log.Warn("purchase allowed across regions by a support incident", "org", org, "region", st.Region,
				"billing_region", st.BillingRegion, "incident", incident, "amount", amount.String(), "idempotency_key", key)
		} else {
			incident = ""
		}
		// l.purchases holds only what is pending, a handful at a time,
		// so counting the org's there is cheaper than keeping a count
		// that every close would have to keep right.
		pending := 0
		for _, p := range l.purchases {
			if p.Org == org && p.OneTime() {
				pending++
			}
		}
		if pending >= MaxPendingPurchases {
			return fmt.Errorf("%w: org %s has %d one-time purchases being paid, the most it may; wait for one to succeed or fail",
				ErrTooManyPurchases, org, pending)
		}
		// A random part, as for auto-recharge (maybeRecharge): the ID is
		// the provider's idempotency key and must never recur.
		var nonce [6]byte
		_, _ = rand.Read(nonce[:])
		p := &Purchase{ID: fmt.Sprintf("%s-p%d-%x", org, t.entrySeq(), nonce), Kind: PurchaseOneTime, Org: org, Amount: amount,
			Currency: st.Currency, PaymentMethod: paymentMethod, Customer: customer, State: PurchasePending, Created: at,
			Balance: st.Balance, Key: key, Incident: incident}
		l.purchases[p.ID] = p
		l.purchaseKeys[pk] = purchaseKey{ID: p.ID, Amount: amount, PaymentMethod: paymentMethod, Customer: customer}
		t.put(keyPurchase(p.ID), *p)
		t.wakePayer = true
		out = *p
		return nil
	})
	if err != nil || replay == "" {
		return out, err
	}
	p, found, err := l.Purchase(replay)
	if err != nil {
		return Purchase{}, err
	}
	if !found {
		return Purchase{}, fmt.Errorf("purchase %s of key %q: not in the store", replay, key)
	}
	p.Replayed = true
	return p, nil
}

// OrgPurchase returns one of the org's purchases, one-time or
// auto-recharge, pending or closed. Another org's purchase is
// ErrUnknownPurchase, as is one that does not exist: an org cannot learn
// which ids others have.
func (l *Ledger) OrgPurchase(org, id string) (Purchase, error) {
	if _, err := l.Org(org); err != nil {
		return Purchase{}, err
	}
	if id == "" || len(id) > 256 {
		return Purchase{}, fmt.Errorf("%w: %q", ErrUnknownPurchase, id)
	}
	p, found, err := l.Purchase(id)
	if err != nil {
		return Purchase{}, err
	}
	if !found || p.Org != org {
		return Purchase{}, fmt.Errorf("%w: org %s has no purchase %q", ErrUnknownPurchase, org, id)
	}
	return p, nil
}

// checkPurchasesLocked asserts, under mu, what holds of the pending
// purchases:
//   - each is pending, of a known kind, of an org that exists;
//   - an auto-recharge one is its org's purchase, and an org's purchase is
//     in purchases (so an org has at most one auto-recharge pending);
//   - a one-time one is what its idempotency key names, and an org has at
//     most MaxPendingPurchases of them.
func (l *Ledger) checkPurchasesLocked() error {
	oneTime := map[string]int{}
	for id, p := range l.purchases {
		st, ok := l.orgs[p.Org]
		switch {
		case id != p.ID || p.State != PurchasePending || !ok:
			return fmt.Errorf("purchase %s: pending as %+v", id, *p)
		case p.OneTime():
			oneTime[p.Org]++
			if k := l.purchaseKeys[p.Org+"/"+p.Key]; k.ID != id || !k.Amount.Equal(p.Amount) {
				return fmt.Errorf("purchase %s: its key %q names %+v", id, p.Key, k)
			}
		case p.Kind == PurchaseAutoRecharge || p.Kind == "":
			if st.purchase != p {
				return fmt.Errorf("auto-recharge purchase %s is pending but not its org's", id)
			}
		default:
			return fmt.Errorf("purchase %s of kind %q", id, p.Kind)
		}
	}
	for org, st := range l.orgs {
		if st.purchase != nil && l.purchases[st.purchase.ID] != st.purchase {
			return fmt.Errorf("org %s: its auto-recharge purchase %s is not pending", org, st.purchase.ID)
		}
		if oneTime[org] > MaxPendingPurchases {
			return fmt.Errorf("org %s: %d one-time purchases pending, over %d", org, oneTime[org], MaxPendingPurchases)
		}
	}
	return nil
}
