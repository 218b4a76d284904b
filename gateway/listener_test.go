package gateway

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeConn is the server side of a connection from remote: Read returns at
// once as if bytes had come in; Close is recorded.
type fakeConn struct {
	net.Conn // nil: the guard uses only what is below
	remote   *net.TCPAddr
	closed   atomic.Bool
}

func newFakeConn(t *testing.T, remote string) *fakeConn {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", remote)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeConn{remote: a}
}

func (c *fakeConn) Read(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return copy(b, "\r\n\r\n"), nil
}
func (c *fakeConn) Close() error         { c.closed.Store(true); return nil }
func (c *fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c *fakeConn) LocalAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060} }

// fakeListener hands out what the test queues, in order: a connection or
// an error; with nothing queued Accept blocks until Close, or returns
// errEmpty at once if the test says so.
type fakeListener struct {
	next    chan accepted
	closed  chan struct{}
	once    sync.Once
	noBlock bool
}

var errEmpty = errors.New("nothing queued")

type accepted struct {
	c   net.Conn
	err error
}

func newFakeListener(queue ...accepted) *fakeListener {
	l := &fakeListener{next: make(chan accepted, len(queue)+16), closed: make(chan struct{})}
	for _, a := range queue {
		l.next <- a
	}
	return l
}

func (l *fakeListener) Accept() (net.Conn, error) {
	if l.noBlock {
		select {
		case a := <-l.next:
			return a.c, a.err
		default:
			return nil, errEmpty
		}
	}
	select {
	case a := <-l.next:
		return a.c, a.err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}
func (l *fakeListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060} }

func testGuard(t *testing.T, lim ConnLimits, nofile uint64, clk clock.Clock, carries func(string) bool) (*connGuard, *metrics) {
	t.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := newConnGuard(lim, nofile, clk, m, quietLog(), carries)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.stop)
	return g, m
}

// TestConnCaps: connections over a cap are closed as soon as accepted and
// counted by reason; Accept goes on to the next one, and a connection that
// closes makes room.
func TestConnCaps(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	for _, tc := range []struct {
		name   string
		lim    ConnLimits
		nofile uint64
		from   []string // remote of each connection, in accept order
		want   []bool   // admitted?
		reason string   // of the refusals
	}{
		{name: "per source", lim: ConnLimits{MaxConns: 10, MaxPerSource: 2},
			from:   []string{"192.0.2.1:1000", "192.0.2.1:1001", "192.0.2.1:1002", "192.0.2.2:1000", "192.0.2.1:1003"},
			want:   []bool{true, true, false, true, false},
			reason: refusedPerSource},
		{name: "total", lim: ConnLimits{MaxConns: 3, MaxPerSource: 2},
			from:   []string{"192.0.2.1:1000", "192.0.2.2:1000", "192.0.2.3:1000", "192.0.2.4:1000", "192.0.2.5:1000"},
			want:   []bool{true, true, true, false, false},
			reason: refusedMaxConns},
		{name: "file descriptors", lim: ConnLimits{MaxConns: 2048, ReservedFDs: 100}, nofile: 102,
			from:   []string{"192.0.2.1:1000", "192.0.2.2:1000", "192.0.2.3:1000"},
			want:   []bool{true, true, false},
			reason: refusedFDLimit},
		{name: "max_connections under the fd cap", lim: ConnLimits{MaxConns: 1, ReservedFDs: 100}, nofile: 1 << 20,
			from:   []string{"192.0.2.1:1000", "192.0.2.2:1000"},
			want:   []bool{true, false},
			reason: refusedMaxConns},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, m := testGuard(t, tc.lim, tc.nofile, clk, nil)
			var conns []*fakeConn
			fl := newFakeListener()
			fl.noBlock = true
			for _, r := range tc.from {
				c := newFakeConn(t, r)
				conns = append(conns, c)
				fl.next <- accepted{c: c}
			}
			ln := &limitListener{Listener: fl, name: ListenerSIPTCP, g: g}
			admitted := 0
			for _, w := range tc.want {
				if w {
					admitted++
				}
			}
			var got []net.Conn
			for {
				c, err := ln.Accept()
				if errors.Is(err, errEmpty) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, c)
			}
			if len(got) != admitted {
				t.Fatalf("%d admitted, want %d", len(got), admitted)
			}
			refusedN := 0
			for i, c := range conns {
				if c.closed.Load() == tc.want[i] {
					t.Errorf("connection %d from %s: closed %v, want admitted %v", i, tc.from[i], c.closed.Load(), tc.want[i])
				}
				if !tc.want[i] {
					refusedN++
				}
			}
			if n := testutil.ToFloat64(m.connsRefused.WithLabelValues(tc.reason)); int(n) != refusedN {
				t.Errorf("refused{reason=%s} = %v, want %d", tc.reason, n, refusedN)
			}
			if n := testutil.ToFloat64(m.connsOpen.WithLabelValues(ListenerSIPTCP)); int(n) != admitted {
				t.Errorf("open = %v, want %d", n, admitted)
			}
			// Closing one (twice, as sipgo may) makes room for one more
			// from a new source.
			_ = got[0].Close()
			_ = got[0].Close()
			c := newFakeConn(t, "198.51.100.9:1000")
			fl.next <- accepted{c: c}
			if _, err := ln.Accept(); err != nil || c.closed.Load() {
				t.Fatalf("after a close: err %v, closed %v", err, c.closed.Load())
			}
			if n := testutil.ToFloat64(m.connsOpen.WithLabelValues(ListenerSIPTCP)); int(n) != admitted {
				t.Errorf("open after one closed and one admitted = %v, want %d", n, admitted)
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			sum := 0
			for _, n := range g.perSrc {
				sum += n
			}
			if g.total != len(g.conns) || g.total != sum {
				t.Errorf("invariant: total %d, conns %d, Σ perSrc %d", g.total, len(g.conns), sum)
			}
		})
	}
}

// TestConnGuardReservedFDs: a reserve that leaves no descriptor for SIP is
// refused at start, naming the key.
func TestConnGuardReservedFDs(t *testing.T) {
	m, _ := newMetrics(nil)
	_, err := newConnGuard(ConnLimits{MaxConns: 10, ReservedFDs: 256}, 256, clock.Real{}, m, quietLog(), nil)
	if err == nil || !strings.Contains(err.Error(), "sip.reserved_fds") {
		t.Fatalf("err = %v, want one naming sip.reserved_fds", err)
	}
}

// TestConnIdleClose: a connection that has sent nothing for IdleTimeout is
// closed; one that reads bytes is not, until it falls quiet; one a call up
// came in on is kept however quiet, and closed once the call has ended.
func TestConnIdleClose(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	var callUp atomic.Bool
	callUp.Store(true)
	carries := func(remote string) bool { return remote == "192.0.2.10:5060" && callUp.Load() }
	g, m := testGuard(t, ConnLimits{IdleTimeout: 60 * time.Second}, 0, clk, carries)
	g.start()

	idle, chatty, inCall := newFakeConn(t, "192.0.2.1:1000"), newFakeConn(t, "192.0.2.2:1000"), newFakeConn(t, "192.0.2.10:5060")
	ln := &limitListener{Listener: newFakeListener(accepted{c: idle}, accepted{c: chatty}, accepted{c: inCall}), name: ListenerSIPTCP, g: g}
	var chattyConn net.Conn
	for i := range 3 {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			chattyConn = c
		}
	}
	state := func() string {
		return fmt.Sprintf("idle closed %v, chatty closed %v, in-call closed %v", idle.closed.Load(), chatty.closed.Load(), inCall.closed.Load())
	}
	steps := []struct {
		advance time.Duration
		read    bool // the chatty one reads bytes first
		callUp  bool
		want    string
	}{
		{advance: 45 * time.Second, callUp: true, want: "idle closed false, chatty closed false, in-call closed false"},
		// t=75s: the idle one has been quiet 75 s; the chatty one read at 45 s.
		{advance: 30 * time.Second, read: true, callUp: true, want: "idle closed true, chatty closed false, in-call closed false"},
		// t=135s: the chatty one quiet since the 60 s sweep saw its read.
		{advance: 60 * time.Second, callUp: true, want: "idle closed true, chatty closed true, in-call closed false"},
		{advance: time.Hour, callUp: true, want: "idle closed true, chatty closed true, in-call closed false"},
		// The call ends: the next sweep closes its quiet connection.
		{advance: 15 * time.Second, callUp: false, want: "idle closed true, chatty closed true, in-call closed true"},
	}
	for i, s := range steps {
		if s.read {
			if _, err := chattyConn.Read(make([]byte, 16)); err != nil {
				t.Fatal(err)
			}
		}
		callUp.Store(s.callUp)
		clk.Advance(s.advance)
		if got := state(); got != s.want {
			t.Fatalf("step %d: %s, want %s", i, got, s.want)
		}
	}
	if n := testutil.ToFloat64(m.connsIdleClosed); n != 3 {
		t.Errorf("idle closed = %v, want 3", n)
	}
	if n := testutil.ToFloat64(m.connsOpen.WithLabelValues(ListenerSIPTCP)); n != 0 {
		t.Errorf("open = %v, want 0", n)
	}
	g.stop()
	if n := clk.Pending(); n != 0 {
		t.Errorf("%d timers left after stop", n)
	}
}

func TestAcceptBackoff(t *testing.T) {
	var got []time.Duration
	d := time.Duration(0)
	for range 10 {
		d = acceptBackoff(d)
		got = append(got, d)
	}
	want := "[5ms 10ms 20ms 40ms 80ms 160ms 320ms 640ms 1s 1s]"
	if fmt.Sprint(got) != want {
		t.Fatalf("backoff %v, want %s", got, want)
	}
}

// TestAcceptRetriesTemporaryErrors: EMFILE (and its kin) from Accept is
// retried with backoff on the clock and counted, never returned; the
// connection after it is returned; Close ends a backoff; other errors are
// returned as they are.
func TestAcceptRetriesTemporaryErrors(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	t.Run("retried until a connection", func(t *testing.T) {
		clk := clock.NewFake(time.Unix(0, 0))
		m, _ := newMetrics(nil)
		conn := newFakeConn(t, "192.0.2.1:1000")
		fl := newFakeListener(accepted{err: emfile}, accepted{err: emfile}, accepted{err: emfile},
			accepted{err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}, accepted{c: conn})
		ln := newRetryListener(fl, ListenerSIPTCP, clk, m.acceptErrors, quietLog())
		got := make(chan accepted, 1)
		go func() { c, err := ln.Accept(); got <- accepted{c, err} }()
		for waited := 0; ; waited++ {
			select {
			case a := <-got:
				if a.err != nil || a.c != conn {
					t.Fatalf("Accept = %v, %v; want the connection", a.c, a.err)
				}
				if n := testutil.ToFloat64(m.acceptErrors.WithLabelValues(ListenerSIPTCP)); n != 4 {
					t.Errorf("accept errors = %v, want 4", n)
				}
				return
			default:
			}
			if waited > 10000 {
				t.Fatal("Accept neither returned nor waited on the clock")
			}
			if clk.Pending() == 1 {
				clk.Advance(acceptBackoffMax)
				continue
			}
			time.Sleep(time.Millisecond)
		}
	})
	t.Run("close ends the backoff", func(t *testing.T) {
		clk := clock.NewFake(time.Unix(0, 0))
		m, _ := newMetrics(nil)
		fl := newFakeListener(accepted{err: emfile})
		ln := newRetryListener(fl, ListenerHTTP, clk, m.acceptErrors, quietLog())
		got := make(chan error, 1)
		go func() { _, err := ln.Accept(); got <- err }()
		for i := 0; clk.Pending() == 0; i++ {
			if i > 10000 {
				t.Fatal("Accept never backed off")
			}
			time.Sleep(time.Millisecond)
		}
		_ = ln.Close()
		if err := <-got; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
		}
		if clk.Pending() != 0 {
			t.Error("the backoff timer was left behind")
		}
	})
	t.Run("a permanent error is returned", func(t *testing.T) {
		m, _ := newMetrics(nil)
		perm := errors.New("listener broken")
		ln := newRetryListener(newFakeListener(accepted{err: perm}), ListenerSIPTLS, clock.NewFake(time.Unix(0, 0)), m.acceptErrors, quietLog())
		if _, err := ln.Accept(); !errors.Is(err, perm) {
			t.Fatalf("Accept = %v, want %v", err, perm)
		}
		if n := testutil.ToFloat64(m.acceptErrors.WithLabelValues(ListenerSIPTLS)); n != 0 {
			t.Errorf("accept errors = %v, want 0", n)
		}
	})
}
