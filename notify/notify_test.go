package notify

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/ledgertest"
	"github.com/creditgate/creditgate/notify/notifytest"
	"github.com/creditgate/creditgate/payments"
	"github.com/creditgate/creditgate/payments/stripetest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shopspring/decimal"
)

var t0 = time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

var quiet = slog.New(slog.DiscardHandler)

// The SMTP server is notifytest's: a real one on loopback (go-smtp) that
// wants PLAIN authentication and can refuse messages with 451.
type mailServer = notifytest.Mail

func startMail(t *testing.T) *mailServer { return notifytest.Start(t) }

func smtpConfig(ms *mailServer) SMTP {
	return SMTP{Host: ms.Host, Port: ms.Port, Username: notifytest.Username, Password: notifytest.Password,
		From: "billing@operator.example", TLS: "none"}
}

func openLedger(t *testing.T, dir string) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(dir, ledger.Options{Now: func() time.Time { return t0 }, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newOrg(t *testing.T, l *ledger.Ledger, c ledger.Contacts) {
	t.Helper()
	if _, err := l.CreateOrg(ledger.Org{ID: "acme", Name: "Acme Corp", Country: "US", Region: "us"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fund("acme", d("50"), "initial"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SetContacts("acme", c); err != nil {
		t.Fatal(err)
	}
}

// spend runs one answered call on credits costing n × 1.00.
func spend(t *testing.T, l *ledger.Ledger, id string, n int) {
	ledgertest.Spend(t, l, "acme", id, n, t0)
}

func newSender(t *testing.T, l *ledger.Ledger, ms *mailServer, clk clock.Clock) *Sender {
	t.Helper()
	cfg := testConfig()
	cfg.Backoff, cfg.MaxBackoff, cfg.Timeout = time.Second, time.Minute, 5*time.Second
	if ms != nil {
		cfg.SMTP = smtpConfig(ms)
	}
	s, err := New(l, cfg, clk, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func outboxLen(t *testing.T, l *ledger.Ledger) int {
	t.Helper()
	ns, err := l.Outbox()
	if err != nil {
		t.Fatal(err)
	}
	return len(ns)
}

// An expired card: Stripe (stripe-mock behind stripetest) declines, the
// purchase fails, one email says why, and neither the payment nor the
// email is tried again.
func TestExpiredCardSendsOneEmailAndStops(t *testing.T) {
	srv := stripetest.Start(t)
	ms := startMail(t)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, ledger.Contacts{Emails: []string{"ap@acme.example", "cfo@acme.example"}})
	if _, err := l.SetAutoRecharge("acme", ledger.AutoRecharge{Enabled: true, Threshold: d("10"), Amount: d("100"),
		PaymentMethod: "pm_card_chargeDeclinedExpiredCard", Customer: "cus_acme"}); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(t0)
	d := configs.Default().Payments
	payer, err := payments.New(l, payments.Config{APIKey: "sk_test_x", BaseURL: srv.URL, Backoff: d.RetryBackoff,
		MaxBackoff: d.MaxBackoff, MaxAttempts: d.MaxAttempts}, clk, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	s := newSender(t, l, ms, clk)
	spend(t, l, "c1", 45)
	for range 3 {
		payer.PayDue(context.Background())
		s.DeliverDue(context.Background())
		clk.Advance(time.Hour)
		spend(t, l, "c"+clk.Now().Format("150405"), 1)
	}
	msgs, bodies, rcpts := ms.ReceivedTo()
	if len(msgs) != 1 {
		t.Fatalf("%d emails, want 1", len(msgs))
	}
	subj := msgs[0].Header.Get("Subject")
	if !strings.Contains(subj, "FAILED") || !strings.Contains(bodies[0], "expired_card: Your card has expired.") ||
		!strings.Contains(bodies[0], "100.00 USD") || !strings.Contains(bodies[0], "suspended") {
		t.Fatalf("email does not say why:\nSubject: %s\n%s", subj, bodies[0])
	}
	if strings.Join(rcpts[0], ",") != "ap@acme.example,cfo@acme.example" || msgs[0].Header.Get("From") != "<billing@operator.example>" {
		t.Fatalf("to %v from %q", rcpts[0], msgs[0].Header.Get("From"))
	}
	if srv.Requests() != 1 {
		t.Fatalf("%d payment attempts, want 1", srv.Requests())
	}
	if n := outboxLen(t, l); n != 0 {
		t.Fatalf("outbox still holds %d", n)
	}
	if got := testutil.ToFloat64(s.results.WithLabelValues(ledger.NotifyRechargeFailed, ResultSent)); got != 1 {
		t.Fatalf("notifications_total{recharge_failed,sent} = %v", got)
	}
}

func TestBalanceZeroSendsOneEmail(t *testing.T) {
	ms := startMail(t)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, ledger.Contacts{Emails: []string{"ap@acme.example"}})
	s := newSender(t, l, ms, clock.Real{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	spend(t, l, "c1", 50)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if msgs, _, _ := ms.ReceivedTo(); len(msgs) > 0 && outboxLen(t, l) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no email for the balance reaching zero")
		}
		time.Sleep(5 * time.Millisecond)
	}
	msgs, bodies, _ := ms.ReceivedTo()
	if len(msgs) != 1 || !strings.Contains(msgs[0].Header.Get("Subject"), "used up") || !strings.Contains(bodies[0], "reached 0.00 USD") ||
		!strings.Contains(msgs[0].Header.Get("Message-Id"), "@creditgate") || msgs[0].Header.Get("Auto-Submitted") != "auto-generated" {
		t.Fatalf("emails %d: %v\n%s", len(msgs), msgs[0].Header, bodies[0])
	}
}

// The relay refuses for a while (451): the email is retried with backoff
// and goes out once.
func TestSMTPFailureRetriesThenSendsOnce(t *testing.T) {
	ms := startMail(t)
	ms.FailNext(2)
	l := openLedger(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, ledger.Contacts{Emails: []string{"ap@acme.example"}})
	clk := clock.NewFake(t0)
	s := newSender(t, l, ms, clk)
	spend(t, l, "c1", 50)
	var gaps []time.Duration
	for range 2 {
		next := s.DeliverDue(context.Background())
		if next.IsZero() {
			t.Fatal("a refused email was not scheduled again")
		}
		gaps = append(gaps, next.Sub(clk.Now()))
		clk.Advance(next.Sub(clk.Now()))
	}
	if next := s.DeliverDue(context.Background()); !next.IsZero() {
		t.Fatal("still retrying")
	}
	s.DeliverDue(context.Background())
	if msgs, _, _ := ms.ReceivedTo(); len(msgs) != 1 {
		t.Fatalf("%d emails, want 1", len(msgs))
	}
	if gaps[0] != time.Second || gaps[1] != 2*time.Second {
		t.Fatalf("backoff %v", gaps)
	}
	if got := testutil.ToFloat64(s.results.WithLabelValues(ledger.NotifyBalanceZero, ResultFailed)); got != 2 {
		t.Fatalf("failed = %v", got)
	}
}

func TestSMTPUnreachableKeepsTheNotification(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there now
	l := openLedger(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, ledger.Contacts{Emails: []string{"ap@acme.example"}})
	s := newSender(t, l, &mailServer{Host: "127.0.0.1", Port: port}, clock.NewFake(t0))
	spend(t, l, "c1", 50)
	if next := s.DeliverDue(context.Background()); next.IsZero() {
		t.Fatal("no retry scheduled")
	}
	if n := outboxLen(t, l); n != 1 {
		t.Fatalf("outbox %d, want the notification kept", n)
	}
}

// Email and webhook: the webhook fails, the process restarts, and only the
// webhook is sent again — signed, and verifiable by the receiver.
func TestWebhookSignedAndRetriedAloneAfterRestart(t *testing.T) {
	ms := startMail(t)
	const secret = "whsec_0123456789abcdef"
	var mu sync.Mutex
	var posts []string
	fail := true
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := Verify(secret, r.Header.Get(SignatureHeader), body, t0, 5*time.Minute); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if fail {
			http.Error(w, "down", 503)
			return
		}
		posts = append(posts, r.Header.Get("Creditgate-Notification")+" "+string(body))
	}))
	defer hook.Close()

	dir := t.TempDir()
	l := openLedger(t, dir)
	newOrg(t, l, ledger.Contacts{Emails: []string{"ap@acme.example"}, Webhook: hook.URL, WebhookSecret: secret})
	spend(t, l, "c1", 50)
	if next := newSender(t, l, ms, clock.NewFake(t0)).DeliverDue(context.Background()); next.IsZero() {
		t.Fatal("failed webhook not scheduled again")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	fail = false
	mu.Unlock()

	l = openLedger(t, dir)
	defer l.Close()
	if next := newSender(t, l, ms, clock.NewFake(t0)).DeliverDue(context.Background()); !next.IsZero() {
		t.Fatal("still failing")
	}
	if msgs, _, _ := ms.ReceivedTo(); len(msgs) != 1 {
		t.Fatalf("%d emails, want 1: the restart must not resend it", len(msgs))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(posts) != 1 || !strings.Contains(posts[0], `"kind":"balance_zero"`) || !strings.Contains(posts[0], `"balance":"0.00"`) {
		t.Fatalf("webhook posts %q", posts)
	}
}

func TestVerifyRefuses(t *testing.T) {
	body := []byte(`{"id":"n1"}`)
	ts := "1795770000"
	now := time.Unix(1795770000, 0)
	good := "t=" + ts + ",v1=" + Sign("secret-0123456789", ts, body)
	if err := Verify("secret-0123456789", good, body, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		header string
		body   []byte
		now    time.Time
	}{
		"tampered body": {good, []byte(`{"id":"n2"}`), now},
		"old":           {good, body, now.Add(time.Hour)},
		"no v1":         {"t=" + ts, body, now},
		"garbage":       {"v1=zz,t=x", body, now},
		"other secret":  {"t=" + ts + ",v1=" + Sign("other-secret-0123", ts, body), body, now},
	} {
		if err := Verify("secret-0123456789", tc.header, tc.body, tc.now, time.Minute); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestNewRefusesBadSMTP(t *testing.T) {
	l := openLedger(t, t.TempDir())
	defer l.Close()
	// Each case is a configuration New accepts but for its SMTP part.
	ok := testConfig()
	ok.SMTP = SMTP{Host: "mail.example", From: "a@b.example", TLS: "starttls"}
	if _, err := New(l, ok, clock.Real{}, nil, quiet); err != nil {
		t.Fatalf("New refused a good config: %v", err)
	}
	for _, c := range []SMTP{
		{Host: "mail.example", From: "not an address"},
		{Host: "mail.example", From: "a@b.example", TLS: "maybe"},
		{Host: "mail.example", From: "a@b.example", Port: 70000},
	} {
		cfg := testConfig()
		cfg.SMTP = c
		if _, err := New(l, cfg, clock.Real{}, nil, quiet); err == nil {
			t.Errorf("New accepted %+v", c)
		}
	}
}

// TestNewRefusesConfigWithoutDefaults: the sender does not default what the
// config file sets (configs.Default() does); a zero is an error from New.
func TestNewRefusesConfigWithoutDefaults(t *testing.T) {
	l := openLedger(t, t.TempDir())
	defer l.Close()
	for name, clear := range map[string]func(*Config){
		"Backoff":           func(c *Config) { c.Backoff = 0 },
		"MaxBackoff":        func(c *Config) { c.MaxBackoff = 0 },
		"LowBalanceHorizon": func(c *Config) { c.LowBalanceHorizon = 0 },
		"LowBalanceEvery":   func(c *Config) { c.LowBalanceEvery = 0 },
	} {
		cfg := testConfig()
		clear(&cfg)
		if _, err := New(l, cfg, clock.Real{}, nil, quiet); err == nil {
			t.Errorf("New accepted a config without %s", name)
		}
	}
}

// testConfig is the sender's configuration on creditgate's defaults
// (configs.Default(), mapped as cmd/creditgate maps it), without SMTP.
func testConfig() Config {
	n := configs.Default().Notify
	return Config{SMTP: SMTP{TLS: n.SMTP.TLS}, Backoff: n.RetryBackoff, MaxBackoff: n.MaxBackoff,
		LowBalanceHorizon: n.LowBalanceHorizon, LowBalanceEvery: n.LowBalanceEvery}
}

func TestContactsRefused(t *testing.T) {
	l := openLedger(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, ledger.Contacts{})
	for _, c := range []ledger.Contacts{
		{Emails: []string{"not-an-address"}},
		{Emails: []string{"Name <a@b.example>"}},
		{Webhook: "ftp://x.example/hook", WebhookSecret: "0123456789abcdef"},
		{Webhook: "https://x.example/hook"}, // no secret
		{Webhook: "https://x.example/hook", WebhookSecret: "short"},
	} {
		if _, err := l.SetContacts("acme", c); !errors.Is(err, ledger.ErrInvalid) {
			t.Errorf("SetContacts(%+v) = %v", c, err)
		}
	}
}

// An org spending 5.00 a day with 10.00 left, no auto-recharge: one
// low-balance email, not repeated within a day, repeated after; an org
// with working auto-recharge is not warned.
func TestLowBalanceWarning(t *testing.T) {
	ms := startMail(t)
	now := t0
	l, err := ledger.Open(t.TempDir(), ledger.Options{Now: func() time.Time { return now }, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	newOrg(t, l, ledger.Contacts{Emails: []string{"ap@acme.example"}})
	// 40.00 spent on the org's first day: burn 40/day over 1 day, 10.00 left.
	spend(t, l, "c1", 40)
	now = t0.Add(2 * time.Hour)
	clk := clock.NewFake(now)
	s := newSender(t, l, ms, clk)
	if n := s.SweepLowBalance(now); n != 1 {
		t.Fatalf("queued %d warnings, want 1", n)
	}
	if n := s.SweepLowBalance(now.Add(time.Hour)); n != 0 {
		t.Fatalf("warned again within a day: %d", n)
	}
	s.DeliverDue(context.Background())
	msgs, bodies, _ := ms.ReceivedTo()
	if len(msgs) != 1 || !strings.Contains(msgs[0].Header.Get("Subject"), "running low") ||
		!strings.Contains(bodies[0], "40.00 USD a day") || !strings.Contains(bodies[0], "Available now: 10.00 USD") {
		t.Fatalf("%d emails: %v\n%v", len(msgs), msgs, bodies)
	}
	if n := s.SweepLowBalance(now.Add(25 * time.Hour)); n != 1 {
		t.Fatalf("a day later: %d warnings, want 1", n)
	}
	// With auto-recharge working, a purchase will come: no warning.
	now = now.Add(50 * time.Hour)
	if _, err := l.SetAutoRecharge("acme", ledger.AutoRecharge{Enabled: true, Threshold: d("5"), Amount: d("50"),
		PaymentMethod: "pm_card_visa", Customer: "cus_acme"}); err != nil {
		t.Fatal(err)
	}
	if n := s.SweepLowBalance(now); n != 0 {
		t.Fatalf("warned an org whose auto-recharge works: %d", n)
	}
}
