package api

import (
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Limits bound what a slow, stalled or idle client can hold: a connection,
// a goroutine, a store iterator, memory. Their defaults are in
// configs.Default (http.*); the zero value of a field means no limit, which
// only tests use.
type Limits struct {
	// ReadTimeout: the whole request, headers and body, must arrive
	// within it (a slow-body client is cut).
	ReadTimeout time.Duration
	// WriteTimeout: every write of a response must be taken by the
	// client within it. It is not a cap on the whole response: a large
	// export to a slow client that keeps reading goes on, one that stops
	// reading is cut after WriteTimeout. (fasthttp's own WriteTimeout is
	// one deadline for the whole response, which would cut a million-row
	// export on an ordinary link; see stallConn.)
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request.
	IdleTimeout time.Duration
	// MaxConns and MaxConnsPerIP bound connections at once; past them a
	// new connection gets 503 and is closed (fasthttp's Concurrency and
	// MaxConnsPerIP).
	MaxConns, MaxConnsPerIP int
	// MaxExports bounds streamed exports at once: each holds a store
	// iterator and a goroutine, an XLSX one up to 16 MiB of sheet. Past it
	// a new export gets 503 busy with Retry-After.
	MaxExports int
}

// SetLimits applies l; call it before Serve.
func (s *Server) SetLimits(l Limits) {
	s.limits = l
	s.srv.ReadTimeout = l.ReadTimeout
	s.srv.IdleTimeout = l.IdleTimeout
	s.srv.Concurrency = l.MaxConns
	s.srv.MaxConnsPerIP = l.MaxConnsPerIP
	if l.MaxExports > 0 {
		s.exports = make(chan struct{}, l.MaxExports)
	} else {
		s.exports = nil
	}
}

// stallListener hands out stallConns.
type stallListener struct {
	net.Listener
	timeout time.Duration
}

func (l stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil || l.timeout <= 0 {
		return c, err
	}
	return &stallConn{Conn: c, timeout: l.timeout}, nil
}

// stallConn gives every write its own deadline: a client must take each
// piece of a response within timeout, however long the whole takes. Large
// writes go in pieces of stallChunk so that a slow but steady reader of a
// big buffer is not cut for the size of the buffer.
type stallConn struct {
	net.Conn
	timeout time.Duration
}

const stallChunk = 64 << 10

func (c *stallConn) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		end := min(len(b), n+stallChunk)
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
			return n, err
		}
		m, err := c.Conn.Write(b[n:end])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// NetConn is the connection underneath, for code that needs the socket.
func (c *stallConn) NetConn() net.Conn { return c.Conn }

// fasthttpLogger sends fasthttp's own messages (accept errors, a
// connection over MaxConnsPerIP) to the structured log at warning level.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Warn("admin API: "+fmt.Sprintf(format, args...), "component", "fasthttp")
}
