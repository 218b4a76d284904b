package payments

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/creditgate/creditgate/ledger"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stripe/stripe-go/v85"
)

// Charger is the Stripe side of paying a purchase, shared by the
// single-node Payer (purchases in the node's ledger) and the cluster's
// payer (purchases in etcd, package cluster): one confirmed PaymentIntent
// per attempt with the purchase's ID as the idempotency key, so any number
// of attempts at one purchase — after a crash, a lost response, or by
// another node that took over — charges the card at most once. It keeps no
// state but the client and the attempts' counter; what a purchase's
// outcome changes is its payer's business.
type Charger struct {
	sc      *stripe.Client
	cfg     Config
	results *prometheus.CounterVec
}

// NewCharger checks cfg and builds the Stripe client. reg receives
// creditgate_recharges_total; nil registers nothing.
func NewCharger(cfg Config, reg prometheus.Registerer) (*Charger, error) {
	// No defaults here: configs.Default() has them, and a zero is a caller
	// that forgot to pass one.
	if cfg.APIKey == "" {
		return nil, errors.New("recharge: no payment provider API key")
	}
	if !strings.HasPrefix(cfg.BaseURL, "https://") && !strings.HasPrefix(cfg.BaseURL, "http://") {
		return nil, fmt.Errorf("recharge: base URL %q: want http(s)://", cfg.BaseURL)
	}
	if cfg.Backoff <= 0 || cfg.MaxBackoff < cfg.Backoff {
		return nil, fmt.Errorf("recharge: backoff %s up to %s: want 0 < Backoff ≤ MaxBackoff", cfg.Backoff, cfg.MaxBackoff)
	}
	if cfg.MaxAttempts < 1 {
		return nil, fmt.Errorf("recharge: MaxAttempts %d: want at least 1", cfg.MaxAttempts)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	// The SDK's own retries are off: the payer retries, with its backoff,
	// the same idempotency key, and counts every attempt.
	retries := int64(0)
	backends := stripe.NewBackendsWithConfig(&stripe.BackendConfig{
		URL:               stripe.String(strings.TrimSuffix(cfg.BaseURL, "/")),
		MaxNetworkRetries: &retries,
		HTTPClient:        &http.Client{Timeout: cfg.Timeout},
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	c := &Charger{sc: stripe.NewClient(cfg.APIKey, stripe.WithBackends(backends)), cfg: cfg,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_recharges_total",
			Help: "Payment attempts of purchases (auto-recharge and one-time) by result: succeeded, declined (card), failed (other hard failure), retry (transient)."},
			[]string{"result"})}
	for _, r := range []string{ResultSucceeded, ResultDeclined, ResultFailed, ResultRetry} {
		c.results.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(c.results); err != nil {
			return nil, fmt.Errorf("register recharge metrics: %w", err)
		}
	}
	return c, nil
}

// Config is the configuration the charger was built with, Timeout
// defaulted.
func (c *Charger) Config() Config { return c.cfg }

// Charge makes one payment attempt at pu and classifies it: result is one
// of the Result constants, reason (when not a success) what an operator
// reads in the notification, and pi the payment when Stripe answered one.
// It counts nothing: the caller counts the attempt (Count) once it knows
// what became of it (a retry given up is counted failed).
func (c *Charger) Charge(ctx context.Context, pu ledger.Purchase) (pi *stripe.PaymentIntent, result, reason string) {
	pi, err := c.create(ctx, pu)
	result, reason = classify(pi, err)
	return pi, result, reason
}

// Count counts one attempt's result in creditgate_recharges_total.
func (c *Charger) Count(result string) { c.results.WithLabelValues(result).Inc() }

func (c *Charger) create(ctx context.Context, pu ledger.Purchase) (*stripe.PaymentIntent, error) {
	minor, ok := ledger.MinorUnits(pu.Amount, pu.Currency)
	if !ok {
		return nil, fmt.Errorf("amount %s has more precision than %s", pu.Amount, pu.Currency)
	}
	params := &stripe.PaymentIntentCreateParams{
		Amount:        stripe.Int64(minor),
		Currency:      stripe.String(strings.ToLower(pu.Currency)),
		PaymentMethod: stripe.String(pu.PaymentMethod),
		Confirm:       stripe.Bool(true),
		Metadata:      map[string]string{"org": pu.Org, "purchase": pu.ID, "kind": firstOf(pu.Kind, ledger.PurchaseAutoRecharge)},
	}
	if pu.OneTime() {
		// The admin asked for it just now, with a payment method of the
		// moment that need not be saved to a customer: an on-session
		// payment, so Stripe applies the rules of one the holder is
		// present for.
		params.Description = stripe.String("Communications Credits purchase")
		if pu.Customer != "" {
			params.Customer = stripe.String(pu.Customer)
		}
	} else {
		// Nobody is there when the balance crosses the threshold: an
		// off-session charge of the saved card, which needs its customer.
		params.Description = stripe.String("Communications Credits auto-recharge")
		params.Customer = stripe.String(pu.Customer)
		params.OffSession = stripe.Bool(true)
	}
	params.SetIdempotencyKey(pu.ID)
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	return c.sc.V1PaymentIntents.Create(ctx, params)
}

// classify turns a payment's outcome into a result and, when it is not a
// success, the reason an operator reads in the notification.
func classify(pi *stripe.PaymentIntent, err error) (result, reason string) {
	var se *stripe.Error
	switch {
	case err == nil && pi != nil && pi.Status == stripe.PaymentIntentStatusSucceeded:
		return ResultSucceeded, ""
	case err == nil && pi != nil && pi.Status == stripe.PaymentIntentStatusProcessing:
		return ResultRetry, "payment processing"
	case err == nil && pi != nil && pi.Status == stripe.PaymentIntentStatusRequiresAction:
		return ResultDeclined, "authentication_required: the card needs its holder to authenticate, which a payment creditgate makes on its own cannot do"
	case err == nil && pi != nil:
		return ResultDeclined, fmt.Sprintf("payment %s: %s", pi.ID, pi.Status)
	case errors.As(err, &se):
		switch {
		case se.Type == stripe.ErrorTypeCard:
			// The decline code says why (expired_card, insufficient_funds,
			// generic_decline); the error code is the fallback.
			code := firstOf(string(se.DeclineCode), firstOf(string(se.Code), "card_declined"))
			return ResultDeclined, fmt.Sprintf("%s: %s", code, se.Msg)
		case se.Type == stripe.ErrorTypeRateLimit || se.HTTPStatusCode == http.StatusTooManyRequests ||
			se.HTTPStatusCode >= 500 || se.Type == stripe.ErrorTypeAPI:
			return ResultRetry, fmt.Sprintf("%s (HTTP %d): %s", se.Type, se.HTTPStatusCode, se.Msg)
		default:
			// invalid_request_error and the like: settings no retry fixes
			// (no such customer, a detached card).
			return ResultFailed, fmt.Sprintf("%s: %s", firstOf(string(se.Code), string(se.Type)), se.Msg)
		}
	default:
		return ResultRetry, err.Error() // the network, a timeout
	}
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
