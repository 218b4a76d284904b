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
	"log/slog"
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
	c   *Charger
	cfg Config
	clk clock.Clock
	log *slog.Logger

	retry *backoff.Schedule // purchase → when to try again

	// beforeCredit, set by tests, runs between a successful payment and
	// its credit; an error stops there, as a crash would.
	beforeCredit func(ledger.Purchase, *stripe.PaymentIntent) error
}

// New builds a payer. reg receives creditgate_recharges_total; nil
// registers nothing.
func New(l *ledger.Ledger, cfg Config, clk clock.Clock, reg prometheus.Registerer, log *slog.Logger) (*Payer, error) {
	c, err := NewCharger(cfg, reg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Payer{l: l, c: c, cfg: c.cfg, clk: clk, log: log, retry: backoff.New(clk, cfg.Backoff, cfg.MaxBackoff)}, nil
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
	pi, result, reason := p.c.Charge(ctx, pu)
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
		p.c.Count(result)
		return at
	}
	p.c.Count(result)
	return time.Time{}
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
