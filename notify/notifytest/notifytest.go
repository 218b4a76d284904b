// Package notifytest is a real SMTP server on loopback (go-smtp) for the
// tests of packages that send notifications: it speaks the whole SMTP
// conversation (PLAIN authentication, MAIL, RCPT, DATA) and keeps what it
// was sent.
package notifytest

import (
	"errors"
	"io"
	"net"
	"net/mail"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Credentials the server accepts.
const (
	Username = "creditgate"
	Password = "s3cret"
)

// Mail is a running server.
type Mail struct {
	Host string
	Port int

	mu       sync.Mutex
	msgs     []*mail.Message
	bodies   []string
	rcpts    [][]string // each message's RCPT TO addresses
	tempFail int        // messages still to refuse with 451
}

// Start runs the server until the test ends.
func Start(t testing.TB) *Mail {
	t.Helper()
	m := &Mail{}
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &session{m: m}, nil }))
	s.Domain = "localhost"
	s.AllowInsecureAuth = true // loopback, no TLS in the test
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	m.Host = host
	m.Port, _ = strconv.Atoi(port)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close(); <-done })
	return m
}

// Received returns the messages accepted so far and their bodies.
func (m *Mail) Received() ([]*mail.Message, []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*mail.Message(nil), m.msgs...), append([]string(nil), m.bodies...)
}

// ReceivedTo is Received with each message's recipients (RCPT TO).
func (m *Mail) ReceivedTo() ([]*mail.Message, []string, [][]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*mail.Message(nil), m.msgs...), append([]string(nil), m.bodies...), append([][]string(nil), m.rcpts...)
}

// FailNext makes the server refuse the next n messages with 451, as a busy
// relay does.
func (m *Mail) FailNext(n int) {
	m.mu.Lock()
	m.tempFail = n
	m.mu.Unlock()
}

type session struct {
	m     *Mail
	auth  bool
	rcpts []string
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != Username || pass != Password {
			return errors.New("bad credentials")
		}
		s.auth = true
		return nil
	}), nil
}

func (s *session) Mail(string, *smtp.MailOptions) error {
	if !s.auth {
		return smtp.ErrAuthRequired
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	msg, err := mail.ReadMessage(r)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(msg.Body)
	if err != nil {
		return err
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.m.tempFail > 0 {
		s.m.tempFail--
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
	}
	s.m.msgs = append(s.m.msgs, msg)
	s.m.bodies = append(s.m.bodies, string(body))
	s.m.rcpts = append(s.m.rcpts, s.rcpts)
	return nil
}

func (s *session) Reset()        { s.rcpts = nil }
func (s *session) Logout() error { return nil }
