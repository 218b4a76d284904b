// Package stripetest is a Stripe API for tests: every request is first
// validated by stripe-mock (Stripe's own mock server, run as a child
// process), so what the payer sends is what Stripe's API accepts; then this
// server answers as Stripe's live service would where stripe-mock cannot,
// because stripe-mock keeps no state:
//
//   - a confirmed off-session PaymentIntent succeeds, unless its payment
//     method is one of Stripe's test cards that decline
//     (pm_card_chargeDeclined, …ExpiredCard, …InsufficientFunds), which
//     get a 402 card_error in Stripe's error format;
//   - a request with an Idempotency-Key seen before gets the first
//     response again, with Idempotent-Replayed: true, so a retried
//     payment charges once;
//   - FailNext makes the next requests fail with 500 api_error, as an
//     outage would, before anything is recorded.
package stripetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Declining test payment methods, as Stripe's test mode names them.
var declines = map[string]struct{ code, decline, msg string }{
	"pm_card_chargeDeclined":                  {"card_declined", "generic_decline", "Your card was declined."},
	"pm_card_chargeDeclinedExpiredCard":       {"expired_card", "expired_card", "Your card has expired."},
	"pm_card_chargeDeclinedInsufficientFunds": {"card_declined", "insufficient_funds", "Your card has insufficient funds."},
}

// Server is a running fake.
type Server struct {
	URL string

	mu       sync.Mutex
	seen     map[string]response // idempotency key → first response
	charges  map[string]int64    // idempotency key → amount charged
	requests int
	failNext int
}

type response struct {
	status int
	body   []byte
}

// Binary finds stripe-mock: on PATH, else in Go's bin directory (where
// `go install github.com/stripe/stripe-mock` puts it).
func Binary() (string, error) {
	if p, err := exec.LookPath("stripe-mock"); err == nil {
		return p, nil
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(goPath(), "bin")} {
		p := filepath.Join(dir, "stripe-mock")
		if st, err := os.Stat(p); dir != "" && err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", errors.New("stripe-mock not found: go install github.com/stripe/stripe-mock@v0.203.0")
}

func goPath() string {
	if p := os.Getenv("GOPATH"); p != "" {
		return filepath.SplitList(p)[0]
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, "go")
}

// Start runs stripe-mock and the fake in front of it until the test ends.
// Without stripe-mock the test fails under CI and is skipped elsewhere.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	sock := filepath.Join(t.TempDir(), "stripe-mock.sock")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-http-unix", sock)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start stripe-mock: %v", err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock did not listen on %s: %s", sock, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	mock := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	s := &Server{seen: map[string]response{}, charges: map[string]int64{}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serve(w, r, mock) }))
	t.Cleanup(hs.Close)
	s.URL = hs.URL
	return s
}

// FailNext makes the next n requests fail with a 500 api_error.
func (s *Server) FailNext(n int) {
	s.mu.Lock()
	s.failNext = n
	s.mu.Unlock()
}

// Charges returns how many distinct payments were charged and their sum in
// minor units.
func (s *Server) Charges() (n int, total int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.charges {
		n++
		total += a
	}
	return n, total
}

// Requests is how many requests reached the server.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, mock *http.Client) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	s.mu.Lock()
	s.requests++
	if s.failNext > 0 {
		s.failNext--
		s.mu.Unlock()
		writeError(w, 500, map[string]any{"type": "api_error", "message": "An unknown error occurred (stripetest outage)."})
		return
	}
	if prev, ok := s.seen[key]; ok && key != "" {
		s.mu.Unlock()
		w.Header().Set("Idempotent-Replayed", "true")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(prev.status)
		_, _ = w.Write(prev.body)
		return
	}
	s.mu.Unlock()

	status, out := s.answer(r, body, mock)
	s.mu.Lock()
	if key != "" {
		s.seen[key] = response{status, out}
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

// answer asks stripe-mock, then plays the live outcome of a payment.
func (s *Server) answer(r *http.Request, body []byte, mock *http.Client) (int, []byte) {
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://stripe-mock"+r.URL.RequestURI(), bytes.NewReader(body))
	req.Header = r.Header.Clone()
	req.Header.Del("Idempotency-Key") // stripe-mock only validates; replay is ours
	res, err := mock.Do(req)
	if err != nil {
		return 502, errorBody(map[string]any{"type": "api_error", "message": "stripe-mock: " + err.Error()})
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || r.Method != http.MethodPost || r.URL.Path != "/v1/payment_intents" {
		return res.StatusCode, out
	}
	var pi map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber() // amounts stay integers of minor units
	if err := dec.Decode(&pi); err != nil {
		return 502, errorBody(map[string]any{"type": "api_error", "message": "stripe-mock answered no JSON"})
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return 400, errorBody(map[string]any{"type": "invalid_request_error", "message": err.Error()})
	}
	if form.Get("confirm") != "true" {
		return 200, out
	}
	if d, ok := declines[form.Get("payment_method")]; ok {
		pi["status"] = "requires_payment_method"
		return 402, errorBody(map[string]any{"type": "card_error", "code": d.code, "decline_code": d.decline,
			"message": d.msg, "payment_intent": pi, "doc_url": "https://stripe.com/docs/error-codes/" + d.code})
	}
	pi["status"] = "succeeded"
	pi["amount_received"] = pi["amount"]
	amount, _ := pi["amount"].(json.Number).Int64()
	s.mu.Lock()
	s.charges[r.Header.Get("Idempotency-Key")] = amount
	s.mu.Unlock()
	b, _ := json.Marshal(pi)
	return 200, b
}

func errorBody(e map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"error": e})
	return b
}

func writeError(w http.ResponseWriter, status int, e map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(errorBody(e))
}
