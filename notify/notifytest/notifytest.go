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

	mu     sync.Mutex
	msgs   []*mail.Message
	bodies []string
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

type session struct {
	m    *Mail
	auth bool
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

func (s *session) Rcpt(string, *smtp.RcptOptions) error { return nil }

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
	s.m.msgs = append(s.m.msgs, msg)
	s.m.bodies = append(s.m.bodies, string(body))
	return nil
}

func (s *session) Reset()        {}
func (s *session) Logout() error { return nil }
