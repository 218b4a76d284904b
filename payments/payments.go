// Package payments pays the ledger's pending purchases — auto-recharges
// and one-time purchases an admin asked for — with Stripe's PaymentIntents
// API: one confirmed payment per purchase, the purchase's ID as the
// idempotency key, so paying again after a crash or a lost response replays
// the first payment instead of charging the card twice. The ledger credits
// a paid purchase once (see ledger.CompletePurchase); a hard decline closes
// it (and, for an auto-recharge, suspends the org's auto-recharge); anything
// transient is retried with capped exponential backoff.
package payments

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/creditgate/creditgate/internal/backoff"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stripe/stripe-go/v85"
)

// Config is how the payer reaches Stripe.
type Config struct {
	// APIKey is the secret key (sk_live_… or sk_test_…).
	APIKey string
	// BaseURL is Stripe's API address; tests point it at stripe-mock.
	BaseURL string
	// Backoff is the first retry's delay after a transient failure; it
	// doubles up to MaxBackoff. MaxAttempts bounds the tries of one
	// purchase before it is failed as "payment provider unavailable", so
	// the operator hears of it instead of waiting forever.
	Backoff     time.Duration
	MaxBackoff  time.Duration
	MaxAttempts int
	// Timeout bounds one API request; 0 is defaultTimeout.
	Timeout time.Duration
}

// defaultTimeout bounds one API request when Config.Timeout is 0. It is
// not a setting of the config file, so configs.Default() does not carry it.
const defaultTimeout = 30 * time.Second

// Results of a payment attempt, the label values of
// creditgate_recharges_total.
const (
	ResultSucceeded = "succeeded"
	ResultDeclined  = "declined"
	ResultFailed    = "failed"
	ResultRetry     = "retry"
)

// Payer pays pending purchases. Run it once; it stops when its context ends.
type Payer struct {
	l   *ledger.Ledger
	sc  *stripe.Client
	cfg Config
	clk clock.Clock
	log *slog.Logger

	results *prometheus.CounterVec

	retry *backoff.Schedule // purchase → when to try again

	// beforeCredit, set by tests, runs between a successful payment and
	// its credit; an error stops there, as a crash would.
	beforeCredit func(ledger.Purchase, *stripe.PaymentIntent) error
}

// New builds a payer. reg receives creditgate_recharges_total; nil
// registers nothing.
func New(l *ledger.Ledger, cfg Config, clk clock.Clock, reg prometheus.Registerer, log *slog.Logger) (*Payer, error) {
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
	if log == nil {
		log = slog.Default()
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
	p := &Payer{l: l, sc: stripe.NewClient(cfg.APIKey, stripe.WithBackends(backends)), cfg: cfg, clk: clk, log: log,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_recharges_total",
			Help: "Payment attempts of purchases (auto-recharge and one-time) by result: succeeded, declined (card), failed (other hard failure), retry (transient)."},
			[]string{"result"}),
		retry: backoff.New(clk, cfg.Backoff, cfg.MaxBackoff)}
	for _, r := range []string{ResultSucceeded, ResultDeclined, ResultFailed, ResultRetry} {
		p.results.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(p.results); err != nil {
			return nil, fmt.Errorf("register recharge metrics: %w", err)
		}
	}
	return p, nil
}

// Run pays what is pending now and whatever becomes pending, until ctx
// ends.
func (p *Payer) Run(ctx context.Context) { backoff.Run(ctx, p.clk, p.l.PayerWake(), p.PayDue) }

// PayDue tries every pending purchase whose backoff has passed and returns
// when the earliest of the others is due (zero: none waits).
func (p *Payer) PayDue(ctx context.Context) time.Time {
	ps, err := p.l.PendingPurchases()
	if err != nil {
		p.log.Error("payer: cannot read pending purchases", "err", err)
		return p.clk.Now().Add(p.cfg.Backoff)
	}
	var next time.Time
	for _, pu := range ps {
		if ctx.Err() != nil {
			return time.Time{}
		}
		if due, at := p.retry.Due(pu.ID); !due {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		if at := p.payContained(ctx, pu); !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	return next
}

// payContained is Pay with a panic turned into a transient failure, retried
// with backoff: one odd purchase must stop neither the payer (every org's
// purchases) nor the process. The purchase stays pending in the ledger, so
// nothing is lost or paid twice (the retry uses the same idempotency key).
func (p *Payer) payContained(ctx context.Context, pu ledger.Purchase) (next time.Time) {
	defer panics.Recover(p.log, panics.Payer, func() { _, next = p.retry.Failed(pu.ID) }, "org", pu.Org, "purchase", pu.ID)
	return p.Pay(ctx, pu)
}

// Pay makes one attempt at purchase pu and settles it in the ledger when the
// outcome is final. It returns when to try again after a transient
// failure, zero otherwise.
func (p *Payer) Pay(ctx context.Context, pu ledger.Purchase) time.Time {
	pi, err := p.charge(ctx, pu)
	result, reason := classify(pi, err)
	what := "auto-recharge"
	if pu.OneTime() {
		what = "one-time purchase"
	}
	log := p.log.With("org", pu.Org, "purchase", pu.ID, "amount", pu.Amount.String(), "currency", pu.Currency)
	switch result {
	case ResultSucceeded:
		if p.beforeCredit != nil {
			if err := p.beforeCredit(pu, pi); err != nil {
				return time.Time{}
			}
		}
		if _, err := p.l.CompletePurchase(pu.ID, pi.ID); err != nil {
			// Paid but not credited: the purchase stays pending, and
			// the next attempt replays the payment and credits it.
			log.Error(what+" paid but not yet credited; will retry", "payment", pi.ID, "err", err)
			return p.later(pu.ID)
		}
		p.retry.Forget(pu.ID)
		log.Info(what+" paid and credited", "payment", pi.ID)
	case ResultDeclined, ResultFailed:
		if err := p.l.FailPurchase(pu.ID, reason); err != nil {
			log.Error(what+" failed but not yet recorded; will retry", "reason", reason, "err", err)
			return p.later(pu.ID)
		}
		p.retry.Forget(pu.ID)
		if pu.OneTime() {
			log.Warn("one-time purchase failed", "reason", reason)
		} else {
			log.Warn("auto-recharge failed; auto-recharge suspended until its settings are put again", "reason", reason)
		}
	case ResultRetry:
		at := p.later(pu.ID)
		if at.IsZero() {
			reason = "payment provider unavailable: " + reason
			if err := p.l.FailPurchase(pu.ID, reason); err == nil {
				p.retry.Forget(pu.ID)
				result = ResultFailed
			}
			log.Error(what+" gave up after repeated transient failures", "attempts", p.cfg.MaxAttempts, "reason", reason)
		} else {
			log.Warn(what+" attempt failed; retrying", "reason", reason, "at", at)
		}
		p.results.WithLabelValues(result).Inc()
		return at
	}
	p.results.WithLabelValues(result).Inc()
	return time.Time{}
}

func (p *Payer) charge(ctx context.Context, pu ledger.Purchase) (*stripe.PaymentIntent, error) {
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
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	return p.sc.V1PaymentIntents.Create(ctx, params)
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

// later records one more failed attempt and returns when to try again, or
// zero when the attempts are used up.
func (p *Payer) later(id string) time.Time {
	failures, next := p.retry.Failed(id)
	if failures >= p.cfg.MaxAttempts {
		return time.Time{}
	}
	return next
}
