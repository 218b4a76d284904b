// Package notify delivers the ledger's outbox: each notification (recharge
// succeeded, recharge failed and why, balance reached zero) by email over
// SMTP to the org's contacts, and as a signed JSON webhook where the org has
// one. Each channel's delivery is recorded in the ledger as it succeeds, so
// a restart or a retry sends again only what did not go out; failures are
// retried with capped exponential backoff and counted.
//
// Exactly once is not possible over SMTP or HTTP (a crash after the server
// accepted and before the ledger recorded it means one resend), so every
// message carries a stable identifier a receiver can deduplicate on: the
// email's Message-ID and the webhook's Creditgate-Notification header.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/creditgate/creditgate/internal/backoff"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/wneessen/go-mail"
)

// SMTP is the mail server notifications go through.
type SMTP struct {
	Host     string
	Port     int
	Username string
	Password string
	From     string // the sender address, e.g. billing@operator.example
	// TLS is "starttls" (configs' default; required), "tls" (implicit TLS,
	// port 465) or "none" (a relay on loopback).
	TLS string
}

// Config configures a Sender.
type Config struct {
	SMTP SMTP
	// Backoff is the first retry's delay; it doubles up to MaxBackoff.
	Backoff    time.Duration
	MaxBackoff time.Duration
	Timeout    time.Duration // one SMTP conversation or webhook POST
	// Low-balance warnings: every SweepEvery, each org whose forecast
	// (ledger.Advise) reaches zero within LowBalanceHorizon, and that has
	// no working auto-recharge, is warned — at most once per
	// LowBalanceEvery.
	SweepEvery        time.Duration
	LowBalanceHorizon time.Duration
	LowBalanceEvery   time.Duration
}

// Not settings of the config file, so configs.Default() does not carry
// them: what Config.Timeout and Config.SweepEvery are when 0.
const (
	defaultTimeout    = 30 * time.Second
	defaultSweepEvery = time.Hour
)

// smtpPort is the port of the TLS mode when Config.SMTP.Port is 0 (the
// config file documents 0 as "the TLS mode's default").
func smtpPort(tls string) int {
	switch tls {
	case "tls":
		return 465
	case "none":
		return 25
	}
	return 587
}

// Results, the label values of creditgate_notifications_total.
const (
	ResultSent        = "sent"
	ResultFailed      = "failed" // will be retried
	ResultNoRecipient = "no_recipient"
)

// SignatureHeader carries the webhook's HMAC: "t=UNIX,v1=HEX", where HEX is
// HMAC-SHA256 with the org's webhook secret over "UNIX." + body.
const SignatureHeader = "Creditgate-Signature"

// Outbox is where a Sender finds what to deliver and records what went
// out: the single node's *ledger.Ledger, or a cluster's outbox in etcd
// (package cluster). Org gives the contacts and name of a notification's
// org. The contracts are the ledger's (ledger/outbox.go): Outbox lists
// what is not yet delivered, oldest first, each durable; Delivered records
// the channels n went out on (Emailed, Posted), done removes it.
type Outbox interface {
	Outbox() ([]ledger.Notification, error)
	OutboxWake() <-chan struct{}
	Delivered(n ledger.Notification, done bool) error
	Org(id string) (ledger.Org, error)
}

// Sender delivers the outbox. Run it once; it stops when its context ends.
type Sender struct {
	box  Outbox
	l    *ledger.Ledger // the low-balance sweep's; nil for a sender built by NewFor
	cfg  Config
	clk  clock.Clock
	log  *slog.Logger
	http *http.Client

	results *prometheus.CounterVec

	retry *backoff.Schedule // notification → when to try again
}

// New builds a sender. reg receives creditgate_notifications_total; nil
// registers nothing.
func New(l *ledger.Ledger, cfg Config, clk clock.Clock, reg prometheus.Registerer, log *slog.Logger) (*Sender, error) {
	s, err := NewFor(l, cfg, clk, reg, log)
	if err != nil {
		return nil, err
	}
	s.l = l
	return s, nil
}

// NewFor builds a sender of another outbox than a ledger's (a cluster's,
// in etcd). It delivers only: it runs no low-balance sweep (whoever fills
// box decides those) and LowBalanceHorizon and LowBalanceEvery are not
// needed.
func NewFor(box Outbox, cfg Config, clk clock.Clock, reg prometheus.Registerer, log *slog.Logger) (*Sender, error) {
	_, sweeps := box.(*ledger.Ledger)
	// No defaults for what the config file sets: configs.Default() has
	// them, and a zero is a caller that forgot to pass one.
	switch {
	case cfg.Backoff <= 0 || cfg.MaxBackoff < cfg.Backoff:
		return nil, fmt.Errorf("notify: backoff %s up to %s: want 0 < Backoff ≤ MaxBackoff", cfg.Backoff, cfg.MaxBackoff)
	case sweeps && (cfg.LowBalanceHorizon <= 0 || cfg.LowBalanceEvery <= 0):
		return nil, fmt.Errorf("notify: low balance horizon %s, every %s: want both positive", cfg.LowBalanceHorizon, cfg.LowBalanceEvery)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = defaultSweepEvery
	}
	if cfg.SMTP.Port == 0 {
		cfg.SMTP.Port = smtpPort(cfg.SMTP.TLS)
	}
	if cfg.SMTP.Host != "" {
		if _, err := mailAddress(cfg.SMTP.From); err != nil {
			return nil, fmt.Errorf("notify: smtp from %q: %w", cfg.SMTP.From, err)
		}
		switch cfg.SMTP.TLS {
		case "starttls", "tls", "none":
		default:
			return nil, fmt.Errorf("notify: smtp tls %q: want starttls, tls or none", cfg.SMTP.TLS)
		}
		if cfg.SMTP.Port < 1 || cfg.SMTP.Port > 65535 {
			return nil, fmt.Errorf("notify: smtp port %d", cfg.SMTP.Port)
		}
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Sender{box: box, cfg: cfg, clk: clk, log: log, http: &http.Client{Timeout: cfg.Timeout},
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_notifications_total",
			Help: "Notification deliveries by kind and result: sent, failed (retried), no_recipient (the org has no contact)."},
			[]string{"kind", "result"}),
		retry: backoff.New(clk, cfg.Backoff, cfg.MaxBackoff)}
	for _, k := range ledger.NotificationKinds {
		for _, r := range []string{ResultSent, ResultFailed, ResultNoRecipient} {
			s.results.WithLabelValues(k, r)
		}
	}
	if reg != nil {
		if err := reg.Register(s.results); err != nil {
			return nil, fmt.Errorf("register notification metrics: %w", err)
		}
	}
	return s, nil
}

// Run delivers what is in the outbox now and whatever is queued later,
// and sweeps for low balances every SweepEvery, until ctx ends.
func (s *Sender) Run(ctx context.Context) {
	nextSweep := s.clk.Now()
	backoff.Run(ctx, s.clk, s.box.OutboxWake(), func(ctx context.Context) time.Time {
		if s.l == nil {
			return s.DeliverDue(ctx)
		}
		if !s.clk.Now().Before(nextSweep) {
			func() {
				defer panics.Recover(s.log, panics.Notify, nil, "job", "low_balance_sweep")
				s.SweepLowBalance(s.clk.Now())
			}()
			nextSweep = s.clk.Now().Add(s.cfg.SweepEvery)
		}
		if next := s.DeliverDue(ctx); !next.IsZero() && next.Before(nextSweep) {
			return next
		}
		return nextSweep
	})
}

// SweepLowBalance queues a low-balance warning for every org whose
// balance the forecast says runs out within the horizon and that has no
// working auto-recharge to prevent it. It returns how many it queued.
func (s *Sender) SweepLowBalance(now time.Time) int {
	n := 0
	if s.l == nil {
		return 0 // NewFor: the outbox's owner decides low balances
	}
	for _, id := range s.l.OrgIDs() {
		o, err := s.l.Org(id)
		if err != nil {
			continue
		}
		if o.AutoRecharge.Enabled && o.AutoRecharge.Suspended == "" {
			continue // a purchase will come before zero
		}
		a, err := s.l.Advise(id, now)
		if err != nil {
			s.log.Error("low-balance check failed", "org", id, "err", err)
			continue
		}
		zero := a.ZeroAfter(o.Available(), now)
		if zero.IsZero() || zero.Sub(now) > s.cfg.LowBalanceHorizon || !o.Available().IsPositive() {
			continue // not spending, far from zero, or at zero (balance_zero said so)
		}
		warned, err := s.l.WarnLowBalance(id, a, now, s.cfg.LowBalanceEvery)
		if err != nil {
			s.log.Error("low-balance warning not queued", "org", id, "err", err)
			continue
		}
		if warned {
			n++
		}
	}
	return n
}

// DeliverDue tries every notification whose backoff has passed and returns
// when the earliest of the others is due (zero: none waits).
func (s *Sender) DeliverDue(ctx context.Context) time.Time {
	ns, err := s.box.Outbox()
	if err != nil {
		s.log.Error("notifications: cannot read the outbox", "err", err)
		return s.clk.Now().Add(s.cfg.Backoff)
	}
	var next time.Time
	for _, n := range ns {
		if ctx.Err() != nil {
			return time.Time{}
		}
		due, at := s.retry.Due(n.ID)
		if due {
			err := s.deliverContained(ctx, n)
			if err == nil {
				s.retry.Forget(n.ID)
				continue
			}
			s.log.Warn("notification not delivered; will retry", "id", n.ID, "org", n.Org, "kind", n.Kind, "err", err)
			_, at = s.retry.Failed(n.ID)
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// errPanicked is a delivery attempt that ended in a contained panic.
var errPanicked = errors.New("internal error (panic contained, see the log)")

// deliverContained is deliver with a panic turned into a failed attempt,
// retried with backoff like any other: one bad notification must stop
// neither the sender (and every org's notifications with it) nor the
// process.
func (s *Sender) deliverContained(ctx context.Context, n ledger.Notification) (err error) {
	defer panics.Recover(s.log, panics.Notify, func() { err = errPanicked }, "id", n.ID, "org", n.Org, "kind", n.Kind)
	return s.deliver(ctx, n)
}

// deliver sends n on each channel it has not gone out on yet, recording
// each success at once.
func (s *Sender) deliver(ctx context.Context, n ledger.Notification) error {
	o, err := s.box.Org(n.Org)
	if err != nil {
		return err
	}
	c := o.Contacts
	emails := len(c.Emails) > 0 && s.cfg.SMTP.Host != ""
	if !emails && c.Webhook == "" {
		s.results.WithLabelValues(n.Kind, ResultNoRecipient).Inc()
		s.log.Warn("notification has no recipient: the org has no contacts (or no SMTP server is configured)",
			"id", n.ID, "org", n.Org, "kind", n.Kind)
		return s.box.Delivered(n, true)
	}
	var errs []error
	if emails && !n.Emailed {
		if err := s.email(ctx, o, n); err != nil {
			s.results.WithLabelValues(n.Kind, ResultFailed).Inc()
			errs = append(errs, fmt.Errorf("email: %w", err))
		} else {
			s.results.WithLabelValues(n.Kind, ResultSent).Inc()
			n.Emailed = true
			if err := s.box.Delivered(n, false); err != nil {
				return err
			}
		}
	}
	if c.Webhook != "" && !n.Posted {
		if err := s.post(ctx, o, n); err != nil {
			s.results.WithLabelValues(n.Kind, ResultFailed).Inc()
			errs = append(errs, fmt.Errorf("webhook: %w", err))
		} else {
			s.results.WithLabelValues(n.Kind, ResultSent).Inc()
			n.Posted = true
			if err := s.box.Delivered(n, false); err != nil {
				return err
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return s.box.Delivered(n, true)
}

// Subject and text of each kind; the operator's contacts read these.
func message(o ledger.Org, n ledger.Notification) (subject, body string) {
	money := func(d interface{ StringFixed(int32) string }) string { return d.StringFixed(2) + " " + n.Currency }
	switch n.Kind {
	case ledger.NotifyRechargeSucceeded:
		subject = fmt.Sprintf("Communications Credits recharged: %s added for %s", money(n.Amount), o.Name)
		body = fmt.Sprintf("Auto-recharge bought %s of Communications Credits for %s (%s).\n\nBalance now: %s\nPurchase: %s\n",
			money(n.Amount), o.Name, o.ID, money(n.Balance), n.Purchase)
	case ledger.NotifyRechargeFailed:
		subject = fmt.Sprintf("Communications Credits auto-recharge FAILED for %s", o.Name)
		body = fmt.Sprintf("Auto-recharge could not buy %s of Communications Credits for %s (%s).\n\nReason: %s\nBalance: %s\nPurchase: %s\n\n"+
			"Auto-recharge is suspended until its settings are saved again (PUT /v1/orgs/%s/auto-recharge), e.g. with a card that works.\n"+
			"Calls that no plan includes will be refused once the balance is used up.\n",
			money(n.Amount), o.Name, o.ID, n.Reason, money(n.Balance), n.Purchase, o.ID)
	case ledger.NotifyPurchaseFailed:
		subject = fmt.Sprintf("Communications Credits purchase FAILED for %s", o.Name)
		body = fmt.Sprintf("A purchase of %s of Communications Credits for %s (%s) could not be paid; nothing was charged or credited.\n\n"+
			"Reason: %s\nBalance: %s\nPurchase: %s\n\nBuy again with a card that works (POST /v1/orgs/%s/purchases with a new idempotency_key).\n",
			money(n.Amount), o.Name, o.ID, n.Reason, money(n.Balance), n.Purchase, o.ID)
	case ledger.NotifyBalanceZero:
		subject = fmt.Sprintf("Communications Credits used up for %s: paid calls are refused", o.Name)
		body = fmt.Sprintf("The Communications Credits balance of %s (%s) reached %s.\n\n"+
			"Calls that no calling plan includes (international beyond the plan, premium numbers, toll-free inbound) are refused until the org is funded.\n"+
			"Emergency calls still connect.\n", o.Name, o.ID, money(n.Balance))
	case ledger.NotifyLowBalance:
		left := n.ZeroAt.Sub(n.At)
		subject = fmt.Sprintf("Communications Credits running low for %s: about %s left", o.Name, roughly(left))
		body = fmt.Sprintf("At the last 30 days' average of %s a day, the Communications Credits of %s (%s) run out around %s.\n\n"+
			"Available now: %s\n\nFund the org (POST /v1/orgs/%s/credits), or turn on auto-recharge; a recharge of %s covers about a week.\n",
			money(n.BurnPerDay), o.Name, o.ID, n.ZeroAt.UTC().Format("2006-01-02 15:04 MST"), money(n.Balance), o.ID, money(n.Amount))
	case ledger.NotifyFraudGuard:
		subject = fmt.Sprintf("Fraud guard refused calls of %s", o.Name)
		body = fmt.Sprintf("The fraud guard of %s (%s) refused or ended calls: %s.\n\n"+
			"If these calls are not yours, the trunk's credentials or a user's phone may be in the wrong hands: change them and check the usage report.\n"+
			"If they are, raise the limits (PUT /v1/orgs/%s/fraud-guard). Further trips of the same guard within the hour are not mailed.\n",
			o.Name, o.ID, n.Reason, o.ID)
	default:
		subject = fmt.Sprintf("creditgate: %s for %s", n.Kind, o.Name)
		body = fmt.Sprintf("%s for %s (%s).\n", n.Kind, o.Name, o.ID)
	}
	return subject, body + fmt.Sprintf("\nAt: %s\nNotification: %s\n", n.At.UTC().Format(time.RFC3339), n.ID)
}

func (s *Sender) email(ctx context.Context, o ledger.Org, n ledger.Notification) error {
	m := mail.NewMsg()
	if err := m.From(s.cfg.SMTP.From); err != nil {
		return err
	}
	if err := m.To(o.Contacts.Emails...); err != nil {
		return err
	}
	subject, body := message(o, n)
	m.Subject(subject)
	m.SetBodyString(mail.TypeTextPlain, body)
	m.SetDate()
	// The same Message-ID on a resend lets mail systems drop the copy.
	m.SetMessageIDWithValue(n.ID + "." + n.Org + "@creditgate")
	m.SetGenHeader("Auto-Submitted", "auto-generated")
	m.SetGenHeader(mail.HeaderXAutoResponseSuppress, "All")
	opts := []mail.Option{mail.WithPort(s.cfg.SMTP.Port), mail.WithTimeout(s.cfg.Timeout)}
	switch s.cfg.SMTP.TLS {
	case "none":
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	case "tls":
		opts = append(opts, mail.WithSSL())
	default:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	}
	if s.cfg.SMTP.Username != "" {
		auth := mail.SMTPAuthAutoDiscover
		if s.cfg.SMTP.TLS == "none" {
			// Without TLS the library rightly offers no mechanism on its
			// own; "none" is for a relay on loopback or a private link,
			// where the operator chose plaintext.
			auth = mail.SMTPAuthPlainNoEnc
		}
		opts = append(opts, mail.WithSMTPAuth(auth),
			mail.WithUsername(s.cfg.SMTP.Username), mail.WithPassword(s.cfg.SMTP.Password))
	}
	c, err := mail.NewClient(s.cfg.SMTP.Host, opts...)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	return c.DialAndSendWithContext(ctx, m)
}

// roughly says a duration the way a person would.
func roughly(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	default:
		return fmt.Sprintf("%d minutes", max(int(d.Minutes()), 1))
	}
}

// Webhook is the JSON body of a webhook delivery.
type Webhook struct {
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	Org      string `json:"org"`
	At       string `json:"at"`
	Amount   string `json:"amount"`
	Balance  string `json:"balance"`
	Currency string `json:"currency"`
	Purchase string `json:"purchase,omitempty"`
	Reason   string `json:"reason,omitempty"`
	ZeroAt   string `json:"zero_at,omitempty"` // low_balance
}

func (s *Sender) post(ctx context.Context, o ledger.Org, n ledger.Notification) error {
	w := Webhook{ID: n.ID, Kind: n.Kind, Org: n.Org, At: n.At.UTC().Format(time.RFC3339), Amount: n.Amount.StringFixed(2),
		Balance: n.Balance.StringFixed(2), Currency: n.Currency, Purchase: n.Purchase, Reason: n.Reason}
	if !n.ZeroAt.IsZero() {
		w.ZeroAt = n.ZeroAt.UTC().Format(time.RFC3339)
	}
	body, err := json.Marshal(w)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.Contacts.Webhook, bytes.NewReader(body))
	if err != nil {
		return err
	}
	ts := strconv.FormatInt(s.clk.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "creditgate")
	req.Header.Set("Creditgate-Notification", n.ID)
	req.Header.Set(SignatureHeader, "t="+ts+",v1="+Sign(o.Contacts.WebhookSecret, ts, body))
	res, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", o.Contacts.Webhook, res.Status)
	}
	return nil
}

// Sign is the webhook signature of body sent at ts (Unix seconds).
func Sign(secret, ts string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Verify checks a Creditgate-Signature header against body, as a receiver
// should: the HMAC in constant time, and the timestamp within tolerance of
// now, so a captured delivery cannot be replayed later.
func Verify(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return errors.New("malformed signature header")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("signature timestamp outside tolerance")
	}
	want := Sign(secret, ts, body)
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return errors.New("signature mismatch")
	}
	return nil
}

func mailAddress(s string) (string, error) {
	m := mail.NewMsg()
	if err := m.From(s); err != nil {
		return "", err
	}
	return s, nil
}
