package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/prometheus/client_golang/prometheus"
)

// The listeners' side of the gateway: what sipgo's transport cannot say
// about the connections it accepts, said by wrapping the net.Listener (and
// the net.Conn it returns) handed to ServeTCP/ServeTLS — and to the admin
// API's Serve, whose Accept must survive a bad moment just the same.
//
// sipgo's TransportTCP.Serve returns on the first Accept error, and so does
// fasthttp's Serve on any error that is not a timeout: one EMFILE and the
// listener is gone for good. sipgo keeps every accepted connection in its
// pool, reading it until the peer closes it, with no bound on how many and
// no idle timeout. Kamailio bounds the same thing with tcp_max_connections
// (2048 by default; past it a connection is closed as soon as accepted) and
// tcp_connection_lifetime (120 s without traffic; reads and writes refresh
// it), which is what ConnLimits copies, adding a cap per source address and
// one derived from the process's file-descriptor limit.

// Listener names, the label values of creditgate_accept_errors_total.
const (
	ListenerHTTP   = "http"
	ListenerSIPTCP = "sip_tcp"
	ListenerSIPTLS = "sip_tls"
)

// Reasons a SIP connection is refused (closed as soon as accepted).
const (
	refusedMaxConns  = "max_connections" // sip.max_connections
	refusedFDLimit   = "fd_limit"        // NOFILE − sip.reserved_fds, when lower than max_connections
	refusedPerSource = "per_source"      // sip.max_connections_per_source
)

// ConnLimits bound the SIP connections the gateway accepts over TCP and TLS
// (counted together). A zero field is no limit.
type ConnLimits struct {
	// MaxConns caps connections open at once.
	MaxConns int
	// MaxPerSource caps connections open at once from one IP address.
	MaxPerSource int
	// IdleTimeout closes a connection that has sent nothing for this long,
	// unless a call up came in on it.
	IdleTimeout time.Duration
	// ReservedFDs, when set, lowers MaxConns to the process's soft NOFILE
	// limit minus this many, kept for the admin API, the store and the
	// gateway's own outbound connections.
	ReservedFDs int
}

// Accept backoff after a temporary error: from 5 ms, doubling, up to 1 s
// (net/http's Server does the same).
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	// acceptLogEvery spaces the log lines of a listener's Accept errors;
	// each is counted in creditgate_accept_errors_total.
	acceptLogEvery = 10 * time.Second
)

// acceptBackoff is the wait after prev (0 at the first error).
func acceptBackoff(prev time.Duration) time.Duration {
	return min(max(2*prev, acceptBackoffMin), acceptBackoffMax)
}

// temporaryAccept reports whether an Accept error passes by itself: out of
// file descriptors (process or system), a connection reset before it was
// accepted, no buffer memory, or a timeout.
func temporaryAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED,
		syscall.ECONNRESET, syscall.ENOBUFS, syscall.ENOMEM, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// retryListener retries a temporary Accept error with backoff instead of
// returning it, so the server above it (sipgo, fasthttp) never sees it and
// never stops. Close ends a backoff in progress.
type retryListener struct {
	net.Listener
	name    string
	clk     clock.Clock
	errs    prometheus.Counter
	log     *slog.Logger
	done    chan struct{}
	once    sync.Once
	lastLog atomic.Int64 // clock unix ns of the last log line
	missed  atomic.Int64 // errors since that line
}

func newRetryListener(ln net.Listener, name string, clk clock.Clock, errs *prometheus.CounterVec, log *slog.Logger) *retryListener {
	return &retryListener{Listener: ln, name: name, clk: clk, errs: errs.WithLabelValues(name), log: log,
		done: make(chan struct{})}
}

func (l *retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		if !temporaryAccept(err) {
			return nil, err
		}
		l.errs.Inc()
		delay = acceptBackoff(delay)
		l.logError(err, delay)
		if !l.sleep(delay) {
			return nil, net.ErrClosed
		}
	}
}

// logError logs at most one line every acceptLogEvery, saying how many
// errors it stands for.
func (l *retryListener) logError(err error, delay time.Duration) {
	n := l.missed.Add(1)
	now := l.clk.Now().UnixNano()
	last := l.lastLog.Load()
	if last != 0 && now-last < int64(acceptLogEvery) || !l.lastLog.CompareAndSwap(last, now) {
		return
	}
	l.missed.Add(-n)
	l.log.Warn("accept failed; retrying (counted in creditgate_accept_errors_total, logged at most every 10 s)",
		"listener", l.name, "error", err, "errors", n, "retry_in", delay)
}

// sleep waits d on the clock; false if the listener was closed meanwhile.
func (l *retryListener) sleep(d time.Duration) bool {
	woke := make(chan struct{})
	t := l.clk.AfterFunc(d, func() { close(woke) })
	select {
	case <-woke:
		return true
	case <-l.done:
		t.Stop()
		return false
	}
}

func (l *retryListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// connGuard admits the SIP connections of every stream listener (TCP and
// TLS share its counts), counts them, and closes those idle past
// IdleTimeout that carry no call. Its sweep is a chain of clock timers,
// stopped by stop.
//
// Invariant (under mu): total == len(conns) == Σ perSrc; perSrc holds no
// zero; total ≤ maxConns and perSrc[a] ≤ MaxPerSource when those are set.
type connGuard struct {
	lim      ConnLimits
	maxConns int    // MaxConns, or lower from the fd limit
	capBy    string // the refusal reason when maxConns is hit
	clk      clock.Clock
	m        *metrics
	log      *slog.Logger
	// carriesCall reports whether a call up came in from this remote
	// address (host:port as the connection gives it). Called without mu.
	carriesCall func(remote string) bool

	mu      sync.Mutex
	total   int
	perSrc  map[netip.Addr]int
	conns   map[*guardedConn]struct{}
	timer   clock.Timer
	stopped bool
	sweeps  sync.WaitGroup // a sweep in progress (Real clock: in the timer's goroutine)

	lastLog atomic.Int64 // clock unix ns of the last refusal log line
}

// newConnGuard sets the caps; nofile is the process's soft NOFILE limit
// (0: unknown, no fd cap).
func newConnGuard(lim ConnLimits, nofile uint64, clk clock.Clock, m *metrics, log *slog.Logger, carriesCall func(string) bool) (*connGuard, error) {
	g := &connGuard{lim: lim, maxConns: lim.MaxConns, capBy: refusedMaxConns, clk: clk, m: m, log: log,
		carriesCall: carriesCall, perSrc: map[netip.Addr]int{}, conns: map[*guardedConn]struct{}{}}
	if lim.ReservedFDs > 0 && nofile > 0 {
		left := int64(min(nofile, 1<<31)) - int64(lim.ReservedFDs)
		if left < 1 {
			return nil, fmt.Errorf("sip.reserved_fds %d leaves no file descriptor for SIP connections under the NOFILE limit %d: raise the limit or lower sip.reserved_fds",
				lim.ReservedFDs, nofile)
		}
		if g.maxConns == 0 || int(left) < g.maxConns {
			g.maxConns, g.capBy = int(left), refusedFDLimit
		}
	}
	return g, nil
}

// start begins the idle sweeps.
func (g *connGuard) start() {
	if g.lim.IdleTimeout <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.scheduleLocked()
}

// sweepEvery is how often idle connections are looked for: a connection
// is closed between IdleTimeout and 1¼ IdleTimeout after its last byte.
func (g *connGuard) sweepEvery() time.Duration { return max(g.lim.IdleTimeout/4, 10*time.Millisecond) }

func (g *connGuard) scheduleLocked() {
	if !g.stopped {
		g.timer = g.clk.AfterFunc(g.sweepEvery(), g.sweep)
	}
}

// stop ends the sweeps and waits for one in progress. Connections stay
// open: sipgo closes its own.
func (g *connGuard) stop() {
	g.mu.Lock()
	g.stopped = true
	if g.timer != nil {
		g.timer.Stop()
	}
	g.mu.Unlock()
	g.sweeps.Wait()
}

// sweep closes the connections quiet for IdleTimeout that carry no call.
func (g *connGuard) sweep() {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return
	}
	g.sweeps.Add(1)
	defer g.sweeps.Done()
	var quiet []*guardedConn
	for c := range g.conns {
		if r := c.reads.Load(); r != c.seenReads {
			c.seenReads, c.quietSince = r, g.clk.Now()
		} else if g.clk.Since(c.quietSince) >= g.lim.IdleTimeout {
			quiet = append(quiet, c)
		}
	}
	g.mu.Unlock()
	for _, c := range quiet {
		if g.carriesCall != nil && g.carriesCall(c.remote) {
			continue
		}
		g.m.connsIdleClosed.Inc()
		_ = c.Close()
	}
	g.mu.Lock()
	g.scheduleLocked()
	g.mu.Unlock()
}

// admit counts c in, or says why not.
func (g *connGuard) admit(c net.Conn, listener string) (*guardedConn, string) {
	src := remoteIP(c)
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.maxConns > 0 && g.total >= g.maxConns:
		return nil, g.capBy
	case g.lim.MaxPerSource > 0 && g.perSrc[src] >= g.lim.MaxPerSource:
		return nil, refusedPerSource
	}
	gc := &guardedConn{Conn: c, g: g, src: src, remote: c.RemoteAddr().String(), open: g.m.connsOpen.WithLabelValues(listener),
		quietSince: g.clk.Now()}
	g.total++
	g.perSrc[src]++
	g.conns[gc] = struct{}{}
	gc.open.Inc()
	return gc, ""
}

func (g *connGuard) release(c *guardedConn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.conns[c]; !ok {
		return
	}
	delete(g.conns, c)
	g.total--
	if g.perSrc[c.src]--; g.perSrc[c.src] == 0 {
		delete(g.perSrc, c.src)
	}
	c.open.Dec()
}

// refused counts a refusal and logs at most one line every acceptLogEvery.
func (g *connGuard) refused(reason, listener string, c net.Conn) {
	g.m.connsRefused.WithLabelValues(reason).Inc()
	now := g.clk.Now().UnixNano()
	last := g.lastLog.Load()
	if last != 0 && now-last < int64(acceptLogEvery) || !g.lastLog.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn("SIP connection refused (counted in creditgate_sip_connections_refused_total, logged at most every 10 s)",
		"listener", listener, "reason", reason, "from", c.RemoteAddr().String(), "max_connections", g.maxConns,
		"max_connections_per_source", g.lim.MaxPerSource)
}

func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// limitListener hands sipgo only the connections its guard admits; the
// others are closed as soon as accepted, so none waits in the backlog.
type limitListener struct {
	net.Listener
	name string
	g    *connGuard
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		gc, reason := l.g.admit(c, l.name)
		if gc != nil {
			return gc, nil
		}
		l.g.refused(reason, l.name, c)
		_ = c.Close()
	}
}

// guardedConn counts its reads, for the idle sweep, and leaves the guard's
// counts when closed (by sipgo, the peer's EOF, or the sweep).
type guardedConn struct {
	net.Conn
	g      *connGuard
	src    netip.Addr
	remote string
	open   prometheus.Gauge
	reads  atomic.Uint64 // reads that returned bytes
	once   sync.Once

	// Under g.mu, for the sweep: the reads count last seen and since when
	// it has not moved.
	seenReads  uint64
	quietSince time.Time
}

func (c *guardedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.reads.Add(1)
	}
	return n, err
}

func (c *guardedConn) Close() error {
	c.once.Do(func() { c.g.release(c) })
	return c.Conn.Close()
}

// fileLimit is the process's soft NOFILE limit; 0 if it cannot be read.
func fileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	return r.Cur
}

// KeepAccepting wraps ln (the admin API's) so that a temporary Accept error
// is retried with backoff, counted in creditgate_accept_errors_total{listener}
// and logged, instead of ending the server that serves it.
func (g *Gateway) KeepAccepting(ln net.Listener, name string) net.Listener {
	return newRetryListener(ln, name, g.clock, g.m.acceptErrors, g.log)
}

// streamListener is ln as sipgo gets it: Accept errors retried, then the
// guard's caps; TLS, if any, goes on top of it.
func (g *Gateway) streamListener(ln net.Listener, name string) net.Listener {
	return &limitListener{Listener: newRetryListener(ln, name, g.clock, g.m.acceptErrors, g.log), name: name, g: g.conns}
}
