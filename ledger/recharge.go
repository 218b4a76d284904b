package ledger

import (
	"crypto/rand"
	"fmt"
	"regexp"
	"time"

	"github.com/shopspring/decimal"
)

// Auto-recharge (README, Funding): when a debit
// takes an org's balance below its threshold, the org buys a fixed amount.
//
// The ledger owns the purchase's state, so that a purchase is started once
// and credited once whatever crashes in between:
//
//   - the debit that crosses the threshold writes a pending Purchase in the
//     same durable operation as the debit, so a purchase is neither lost nor
//     started twice, and an org has at most one pending at a time;
//   - a payer (package recharge) pays it with the purchase's ID as the
//     payment provider's idempotency key, so paying again after a crash
//     replays the first payment instead of charging the card twice;
//   - CompletePurchase credits the amount and closes the purchase in one
//     durable operation; a second call finds it closed and changes nothing;
//   - FailPurchase closes it on a hard decline and suspends auto-recharge
//     until the operator puts new settings, so a dead card is not retried
//     at every debit.
//
// Every outcome queues a notification in the outbox (outbox.go) in the same
// operation.
//
// One-time purchases (purchase.go) are Purchases of kind one_time on the
// same machinery: pending in Ledger.purchases, paid by the same payer,
// closed by CompletePurchase and FailPurchase. They are never an org's
// purchase (orgState.purchase), so they neither block nor replace its
// auto-recharge, and a failed one suspends nothing.

// Purchase states.
const (
	PurchasePending   = "pending"
	PurchaseSucceeded = "succeeded"
	PurchaseFailed    = "failed"
)

// AutoRecharge is an org's auto-recharge setting.
type AutoRecharge struct {
	Enabled   bool            `json:"enabled"`
	Threshold decimal.Decimal `json:"threshold"`
	Amount    decimal.Decimal `json:"amount"`
	// PaymentMethod and Customer are the payment provider's saved card and
	// its owner (Stripe: pm_…, cus_…); an off-session charge needs both.
	PaymentMethod string `json:"payment_method"`
	Customer      string `json:"customer"`
	// Incident is the support incident that allowed auto-recharge although
	// the org's region differs from its billing region.
	Incident string `json:"incident,omitempty"`
	// Suspended says why purchases stopped (a hard decline); putting the
	// setting again clears it.
	Suspended string    `json:"suspended,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Purchase kinds. A record written before kinds existed has none and is an
// auto-recharge purchase (Purchase.OneTime).
const (
	PurchaseAutoRecharge = "auto_recharge"
	PurchaseOneTime      = "one_time" // an admin's "buy credits" (purchase.go)
)

// Purchase is one purchase of credits the payer pays: an auto-recharge
// (below the threshold) or a one-time purchase an admin asked for.
type Purchase struct {
	ID            string          `json:"id"` // also the payment's idempotency key
	Kind          string          `json:"kind,omitempty"`
	Org           string          `json:"org"`
	Amount        decimal.Decimal `json:"amount"`
	Currency      string          `json:"currency"`
	PaymentMethod string          `json:"payment_method"`
	Customer      string          `json:"customer"`
	State         string          `json:"state"`
	Payment       string          `json:"payment,omitempty"` // the provider's id (pi_…)
	Reason        string          `json:"reason,omitempty"`  // why it failed
	Created       time.Time       `json:"created"`
	Closed        time.Time       `json:"closed,omitzero"`
	// Balance is the balance that triggered it (a one-time purchase: the
	// balance when it was asked for).
	Balance decimal.Decimal `json:"balance"`
	// Key and Incident are a one-time purchase's: the client's idempotency
	// key and the support incident that allowed it across regions.
	Key      string `json:"idempotency_key,omitempty"`
	Incident string `json:"incident,omitempty"`
	// Replayed is set, not stored, when a retried StartPurchase found the
	// purchase its key had started.
	Replayed bool `json:"-"`
}

// OneTime says whether p is a one-time purchase, which neither counts as
// the org's pending auto-recharge nor suspends auto-recharge when it fails.
func (p *Purchase) OneTime() bool { return p.Kind == PurchaseOneTime }

// Entry kinds of a completed purchase: an auto-recharge, a one-time
// purchase.
const (
	EntryRecharge = "recharge"
	EntryPurchase = "purchase"
)

var (
	paymentMethodRE = regexp.MustCompile(`^(pm|card|src)_[A-Za-z0-9_]{1,200}$`)
	customerRE      = regexp.MustCompile(`^cus_[A-Za-z0-9_]{1,200}$`)
)

// zeroDecimalCurrencies have no minor unit (Stripe's list).
var zeroDecimalCurrencies = map[string]bool{"BIF": true, "CLP": true, "DJF": true, "GNF": true, "JPY": true,
	"KMF": true, "KRW": true, "MGA": true, "PYG": true, "RWF": true, "UGX": true, "VND": true, "VUV": true,
	"XAF": true, "XOF": true, "XPF": true}

// MinorUnits is amount in the currency's smallest unit (cents for USD), as
// payment providers take it; ok is false when amount has more precision
// than the currency.
func MinorUnits(amount decimal.Decimal, currency string) (int64, bool) {
	places := int32(2)
	if zeroDecimalCurrencies[currency] {
		places = 0
	}
	m := amount.Shift(places)
	if !m.IsInteger() || !m.Shift(-places).Equal(amount) {
		return 0, false
	}
	return m.IntPart(), true
}

func keyPurchase(id string) []byte { return []byte("q/" + id) }

// SetAutoRecharge replaces the org's auto-recharge setting. Enabling it is
// refused for an org whose region differs from its billing region unless
// incident names the support incident that resolved it. If the balance is
// already below the threshold, a purchase starts at once.
func (l *Ledger) SetAutoRecharge(org string, ar AutoRecharge) (AutoRecharge, error) {
	ar, err := l.PrepareAutoRecharge(ar) // apply.go: the rules a cluster node checks too
	if err != nil {
		return AutoRecharge{}, err
	}
	var out AutoRecharge
	_, err = l.do(Op{Kind: "auto_recharge", Org: org}, ar.UpdatedAt, func(t *txn) error {
		st, ok := l.orgs[org]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownOrg, org)
		}
		if err := CheckAutoRechargeFor(st.Org, ar); err != nil {
			return err
		}
		if ar.Incident != "" && st.Region != st.BillingRegion {
			l.log.Warn("auto-recharge allowed across regions by a support incident", "org", org,
				"region", st.Region, "billing_region", st.BillingRegion, "incident", ar.Incident)
		}
		st.AutoRecharge = ar
		t.put(keyOrg(org), st.Org)
		l.maybeRecharge(t, st)
		out = ar
		return nil
	})
	return out, err
}

// maybeRecharge starts a purchase if the org's balance is below its
// threshold and none is pending. It runs inside the operation that moved the
// balance, so the purchase is durable exactly when that movement is.
func (l *Ledger) maybeRecharge(t *txn, st *orgState) {
	ar := st.AutoRecharge
	if l.sliceOnly || !ar.Enabled || ar.Suspended != "" || st.purchase != nil || !st.Balance.LessThan(ar.Threshold) {
		return
	}
	if st.Region != st.BillingRegion && ar.Incident == "" {
		return
	}
	// The ID is the payment's idempotency key, so it must never recur:
	// a ledger restored from a backup, or a second installation on the
	// same Stripe account, counts the same sequence numbers again, and a
	// reused key would make Stripe replay an old payment for a new
	// purchase — credit without a charge. Hence the random part.
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	p := &Purchase{ID: fmt.Sprintf("%s-r%d-%x", st.ID, t.entrySeq(), nonce), Kind: PurchaseAutoRecharge, Org: st.ID, Amount: ar.Amount, Currency: st.Currency,
		PaymentMethod: ar.PaymentMethod, Customer: ar.Customer, State: PurchasePending, Created: t.at.UTC(), Balance: st.Balance}
	st.purchase = p
	l.purchases[p.ID] = p
	t.put(keyPurchase(p.ID), *p)
	t.wakePayer = true
}

// PendingPurchases returns the purchases still to pay, each durable: it
// returns once everything before it is on disk, so a payer never pays for a
// purchase a crash could still undo.
func (l *Ledger) PendingPurchases() ([]Purchase, error) {
	var ps []Purchase
	_, err := l.do(Op{Kind: "pending_purchases"}, l.opts.Now(), func(*txn) error {
		for _, p := range l.purchases {
			ps = append(ps, *p)
		}
		return nil
	})
	return ps, err
}

// PendingPurchaseOf is the id of the org's pending purchase, if any.
func (l *Ledger) PendingPurchaseOf(org string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, ok := l.orgs[org]; ok && st.purchase != nil {
		return st.purchase.ID
	}
	return ""
}

// Purchase returns a purchase, pending or closed. A purchase being closed
// reads as pending until its close is durable: memory lets it go when the
// close applies, and the store has the closed record once it is written.
func (l *Ledger) Purchase(id string) (Purchase, bool, error) {
	l.mu.Lock()
	p, ok := l.purchases[id]
	var pending Purchase
	if ok {
		pending = *p // under mu: a close rewrites *p in place
	}
	l.mu.Unlock()
	if ok {
		return pending, true, nil
	}
	var stored Purchase
	found, err := getRecord(l.db, keyPurchase(id), &stored)
	return stored, found, err
}

// PayerWake is signalled, after the operation is durable, whenever a
// purchase starts.
func (l *Ledger) PayerWake() <-chan struct{} { return l.payerWake }

// CompletePurchase credits a paid purchase and closes it. Completing a
// purchase that is already closed changes nothing and returns the entry
// that credited it (zero if it failed).
func (l *Ledger) CompletePurchase(id, payment string) (Entry, error) {
	var en Entry
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "recharge", Key: id}, at, func(t *txn) error {
		p, ok := l.purchases[id]
		if !ok {
			return l.closedPurchase(id, &en)
		}
		st := l.orgs[p.Org]
		st.Balance = st.Balance.Add(p.Amount)
		st.Funded = st.Funded.Add(p.Amount)
		kind := EntryRecharge
		if p.OneTime() {
			kind = EntryPurchase
		}
		en = Entry{Seq: t.entrySeq(), At: at, Kind: kind, Amount: p.Amount, Balance: st.Balance, Key: id, Incident: p.Incident}
		p.State, p.Payment, p.Closed = PurchaseSucceeded, payment, at
		t.put(keyBalances(st.ID), st.Balances)
		t.put(keyEntry(st.ID, en.Seq), en)
		t.put(keyFunding(st.ID, id), en)
		t.put(keyPurchase(id), *p)
		delete(l.purchases, id)
		l.fundKeys[st.ID+"/"+id] = en
		if p.OneTime() {
			// The admin who bought it reads the outcome in the API
			// (GET …/purchases/{id}); only a failure is worth a message.
			return nil
		}
		st.purchase = nil
		l.notify(t, Notification{Org: st.ID, Kind: NotifyRechargeSucceeded, Amount: p.Amount, Balance: st.Balance,
			Currency: st.Currency, Purchase: id})
		return nil
	})
	return en, err
}

// closedPurchase answers a retried close of purchase id.
func (l *Ledger) closedPurchase(id string, en *Entry) error {
	var p Purchase
	found, err := getRecord(l.db, keyPurchase(id), &p)
	switch {
	case err != nil:
		return err
	case !found:
		return invalidf("no purchase %s", id)
	case p.State == PurchaseSucceeded:
		*en = l.fundKeys[p.Org+"/"+id]
	}
	return nil
}

// FailPurchase closes a purchase that cannot be paid (a hard decline:
// expired card, insufficient funds…). An auto-recharge purchase suspends the
// org's auto-recharge with reason until its setting is put again; a
// one-time purchase suspends nothing (the card that failed is the admin's
// choice of the moment, not the saved auto-recharge card) and queues a
// purchase_failed notification instead of recharge_failed.
func (l *Ledger) FailPurchase(id, reason string) error {
	at := l.opts.Now().UTC()
	_, err := l.do(Op{Kind: "recharge_failed", Key: id}, at, func(t *txn) error {
		p, ok := l.purchases[id]
		if !ok {
			var en Entry
			return l.closedPurchase(id, &en)
		}
		st := l.orgs[p.Org]
		p.State, p.Reason, p.Closed = PurchaseFailed, reason, at
		t.put(keyPurchase(id), *p)
		delete(l.purchases, id)
		if p.OneTime() {
			l.notify(t, Notification{Org: st.ID, Kind: NotifyPurchaseFailed, Amount: p.Amount, Balance: st.Balance,
				Currency: st.Currency, Purchase: id, Reason: reason})
			return nil
		}
		st.purchase = nil
		st.AutoRecharge.Suspended = reason
		t.put(keyOrg(st.ID), st.Org)
		l.notify(t, Notification{Org: st.ID, Kind: NotifyRechargeFailed, Amount: p.Amount, Balance: st.Balance,
			Currency: st.Currency, Purchase: id, Reason: reason})
		return nil
	})
	return err
}

// loadPurchases reads back the purchases still pending and the one-time
// purchases' idempotency keys.
func (l *Ledger) loadPurchases() error {
	return scan(l.db, []byte("q/"), func(_ []byte, p *Purchase) error {
		if p.OneTime() {
			l.purchaseKeys[p.Org+"/"+p.Key] = purchaseKey{ID: p.ID, Amount: p.Amount, PaymentMethod: p.PaymentMethod, Customer: p.Customer}
		}
		if p.State != PurchasePending {
			return nil
		}
		if st, ok := l.orgs[p.Org]; ok {
			if !p.OneTime() {
				st.purchase = p
			}
			l.purchases[p.ID] = p
		}
		return nil
	})
}
