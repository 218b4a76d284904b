// Package gateway is creditgate's SIP side: a signalling-only B2BUA on
// sipgo. For each INVITE from a known trunk it asks rating what the call
// costs and the ledger to hold the first increment, forwards it to the
// carrier, relays the answer, meters the call per increment and ends it —
// BYE to both legs — when the money runs out. SDP is passed through
// untouched; media never crosses the gateway.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/internal/panics"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
)

// Config of the SIP side.
type Config struct {
	// Listen is host:port for both UDP and TCP. Port 0 picks a free port.
	Listen string
	// RingTimeout bounds how long a call may ring before it is cancelled.
	RingTimeout time.Duration
	// ByeTimeout bounds each BYE transaction the gateway sends.
	ByeTimeout time.Duration
	// MaxCalls caps calls in progress; beyond it INVITEs get 503 (emergency
	// calls are still let through).
	MaxCalls int
	// FailoverTimeout is how long a carrier may stay silent (not even 100
	// Trying) before the next carrier for the number is tried.
	FailoverTimeout time.Duration
	// MaxPending caps INVITEs being authorized at once (waiting on the
	// ledger). Beyond it new INVITEs are shed at once with 503 and
	// Retry-After rather than queued behind the others, so that overload
	// slows no one's setup; emergency calls are never shed.
	MaxPending int
	// Catalog is the plan catalogue calls are decided by.
	Catalog *rating.Catalog
	// HighRisk are E.164 digit prefixes of destinations known for
	// revenue-share fraud; an org calls them only if its fraud guard
	// allows high-risk destinations.
	HighRisk []string
	// RatePerSource limits new calls per source IP address (calls a
	// second, with BurstPerSource at once); 0 is no limit. Emergency calls
	// are not limited.
	RatePerSource  float64
	BurstPerSource int
	// TLSListen, when set, is a host:port to accept SIP over TLS on, with
	// TLS's certificates. TLS also verifies carriers reached over TLS.
	TLSListen string
	TLS       *tls.Config
	// Conns bounds the SIP TCP/TLS connections accepted (see ConnLimits);
	// the zero value bounds nothing.
	Conns ConnLimits
	// SessionExpires is the session interval (RFC 4028) of every call the
	// gateway meters: it refreshes each leg at half of it and ends a call
	// not refreshed for a whole one. MinSE is the smallest it accepts from
	// a caller (422 below it). liveness.go says why.
	SessionExpires time.Duration
	MinSE          time.Duration
	// KeepaliveInterval is how often an OPTIONS goes in each leg's dialog
	// (on trunks with keepalive on); KeepaliveTimeout how long a leg may
	// take to answer it, or a refresh.
	KeepaliveInterval time.Duration
	KeepaliveTimeout  time.Duration
	// MaxCallDuration ends a call this long after its answer unless its
	// trunk or org says otherwise; 0 is no limit.
	MaxCallDuration time.Duration
	// Front is the trusted front proxies whose vouched source address
	// stands for the packet's (front.go); the zero value trusts none.
	Front FrontConfig
}

// validate refuses a configuration the gateway cannot run on. It does not
// default anything: configs.Default() is the one home of the defaults, and
// a zero here is a caller that forgot to pass one.
func (c *Config) validate() error {
	bad := func(field, want string) error {
		return fmt.Errorf("gateway config: %s %s (configs.Default() has the defaults)", field, want)
	}
	switch {
	case c.RingTimeout <= 0:
		return bad("RingTimeout", "must be positive")
	case c.ByeTimeout <= 0:
		return bad("ByeTimeout", "must be positive")
	case c.MaxCalls <= 0:
		return bad("MaxCalls", "must be positive")
	case c.FailoverTimeout <= 0:
		return bad("FailoverTimeout", "must be positive")
	case c.MaxPending <= 0:
		return bad("MaxPending", "must be positive")
	case c.Catalog == nil:
		return bad("Catalog", "is missing")
	case c.MinSE < time.Second || c.SessionExpires < c.MinSE:
		return bad("SessionExpires/MinSE", "must be at least 1 s, SessionExpires ≥ MinSE")
	case c.KeepaliveInterval <= 0 || c.KeepaliveTimeout <= 0:
		return bad("KeepaliveInterval/KeepaliveTimeout", "must be positive")
	case c.MaxCallDuration < 0:
		return bad("MaxCallDuration", "must not be negative")
	}
	return nil
}

// Gateway is the B2BUA. Start it, then Close it; it owns every goroutine
// it starts.
//
// Lock order: g.mu before c.mu (a call's own mutex); never the other way.
// register and forward take c.mu inside g.mu to set a leg's dialog id;
// nothing that holds c.mu takes g.mu (call.end lets c.mu go before it
// forgets the call). c.mu may be held across a ledger call (call.answer:
// AnswerDialog; call.step: Step), which takes only the ledger's own locks
// and never calls back into the gateway. Never hold g.mu across a ledger
// call or network I/O: every section under it is a few map operations.
// The connection guard's mutex (listener.go) is never held with g.mu: its
// sweep asks carriesCall after letting go of its own.
//
// Invariants of the call registry (under g.mu): a call is in byID, and its
// inbound Call-ID in inCalls, from register until forget, so len(byID) is
// creditgate_calls_active; byIn holds its caller leg's dialog as long,
// or, when the gateway BYEs the caller, until that BYE is done; byOut its
// carrier leg's dialog from the answer until forget. byTrunk[t] counts the
// calls admitted on trunk t and not yet released, bySource[a] the
// registered calls whose INVITE came over the TCP/TLS connection from a.
type Gateway struct {
	cfg    Config
	ledger ledger.Books
	// later is ledger when it can return a step or a dialog update
	// before its takeover record is durable (cluster.Books), nil otherwise
	// (call.go).
	later pendingBooks
	clock clock.Clock
	log   *slog.Logger
	m     *metrics

	digest *digestAuth
	perSrc *sourceLimiter
	front  *front // read-only after New
	deck   atomic.Pointer[rating.Deck]
	routes atomic.Pointer[router]

	ua       *sipgo.UserAgent
	srv      *sipgo.Server
	client   *sipgo.Client // UDP: sends from the listening socket
	tcpCli   *sipgo.Client // TCP: finds or opens a connection by the peer's address
	udpUA    *sipgo.DialogUA
	tcpUA    *sipgo.DialogUA
	udp      net.PacketConn
	tcp      net.Listener
	tls      net.Listener
	tlsUA    *sipgo.DialogUA
	tlsPort  int // the TLS listener's port, 0 without TLS
	addr     netipAddr
	closing  atomic.Bool  // Close: end everything
	draining atomic.Bool  // Drain: take no new calls, let those up finish
	pending  atomic.Int64 // INVITEs in authorization

	lastDropLog atomic.Int64 // unix ns of the last "dropping" log line

	// One lock over the call maps: each access is a map operation, far
	// cheaper than the SIP and ledger work around it.
	mu      sync.Mutex
	byID    map[string]*call
	byIn    map[string]*call
	inCalls map[string]struct{} // inbound Call-IDs of the calls registered
	byOut   map[string]*call
	byTrunk map[string]int // calls up per source trunk, for its max_calls
	// Calls up per remote address of the TCP/TLS connection their INVITE
	// came in on: those connections are never closed as idle.
	bySource map[string]int

	conns *connGuard // SIP TCP/TLS connection caps and idle sweep

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// jobMu guards jobsClosed: once set (Close), no call's liveness job
	// starts (liveness.go, job).
	jobMu      sync.Mutex
	jobsClosed bool
}

type netipAddr struct {
	host string
	port int
}

// New builds a gateway; Start makes it listen.
func New(cfg Config, l ledger.Books, deck *rating.Deck, clk clock.Clock, reg prometheus.Registerer, log *slog.Logger) (*Gateway, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	fr, err := newFront(cfg.Front)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("gateway metrics: %w", err)
	}
	if reg != nil {
		if err := reg.Register(newOrgCollector(l)); err != nil {
			return nil, fmt.Errorf("gateway metrics: %w", err)
		}
	}
	g := &Gateway{cfg: cfg, ledger: l, clock: clk, log: log, m: m, front: fr,
		byID: map[string]*call{}, byIn: map[string]*call{}, inCalls: map[string]struct{}{}, byOut: map[string]*call{}, byTrunk: map[string]int{},
		bySource: map[string]int{}}
	g.later, _ = l.(pendingBooks)
	g.deck.Store(deck)
	g.digest = newDigestAuth("creditgate", clk.Now)
	g.perSrc = newSourceLimiter(cfg.RatePerSource, cfg.BurstPerSource)
	g.ReloadTrunks()
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g, nil
}

// SetDeck swaps in a new rate deck for calls authorized from now on.
func (g *Gateway) SetDeck(d *rating.Deck) { g.deck.Store(d) }

// Deck is the rate deck in force.
func (g *Gateway) Deck() *rating.Deck { return g.deck.Load() }

// ReloadTrunks rebuilds routing from the trunks in the ledger.
func (g *Gateway) ReloadTrunks() { g.routes.Store(newRouter(g.ledger.Trunks())) }

// TLSAddr is the host:port SIP over TLS is accepted on; "" without TLS.
func (g *Gateway) TLSAddr() string {
	if g.tls == nil {
		return ""
	}
	return g.tls.Addr().String()
}

// Addr is the host:port the gateway listens on (UDP and TCP).
func (g *Gateway) Addr() string { return net.JoinHostPort(g.addr.host, strconv.Itoa(g.addr.port)) }

// listenPair binds UDP and TCP on the same port. With port 0 the kernel
// picks the UDP port, which some other program may hold on TCP (an
// outgoing connection's ephemeral port, say): then it tries another.
func listenPair(listen string) (net.PacketConn, net.Listener, error) {
	host, portS, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, nil, fmt.Errorf("sip listen address %q: %w", listen, err)
	}
	for try := 0; ; try++ {
		udp, err := net.ListenPacket("udp", listen)
		if err != nil {
			return nil, nil, fmt.Errorf("sip listen udp: %w", err)
		}
		port := udp.LocalAddr().(*net.UDPAddr).Port
		tcp, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if portS != "0" || !errors.Is(err, syscall.EADDRINUSE) || try == 20 {
			return nil, nil, fmt.Errorf("sip listen tcp: %w", err)
		}
	}
}

// Start listens on UDP and TCP and serves until Close.
func (g *Gateway) Start() error {
	host, _, err := net.SplitHostPort(g.cfg.Listen)
	if err != nil {
		return fmt.Errorf("sip listen address %q: %w", g.cfg.Listen, err)
	}
	var tcp net.Listener
	g.udp, tcp, err = listenPair(g.cfg.Listen)
	if err != nil {
		return err
	}
	port := g.udp.LocalAddr().(*net.UDPAddr).Port
	// At a few thousand calls/s the kernel's default receive buffer
	// (~200 KiB) overflows during a GC pause and drops INVITEs, which the
	// callers then retransmit; a larger one rides out the pause. The kernel
	// caps this at net.core.rmem_max, which is why the error is ignored.
	if uc, ok := g.udp.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(udpBuffer)
		_ = uc.SetWriteBuffer(udpBuffer)
	}
	nofile := fileLimit()
	if g.conns, err = newConnGuard(g.cfg.Conns, nofile, g.clock, g.m, g.log, g.carriesCall); err != nil {
		g.udp.Close()
		tcp.Close()
		return err
	}
	g.tcp = g.streamListener(tcp, ListenerSIPTCP)
	g.addr = netipAddr{host: host, port: port}

	if err := g.newUA(host, port); err != nil {
		return err
	}
	g.handle()

	g.conns.start()
	g.wg.Add(2)
	go func() { defer g.wg.Done(); _ = g.srv.ServeUDP(g.udp) }()
	go func() { defer g.wg.Done(); _ = g.srv.ServeTCP(g.tcp) }()
	if g.tls != nil {
		g.wg.Add(1)
		go func() { defer g.wg.Done(); _ = g.srv.ServeTLS(g.tls) }()
	}
	if err := g.waitServing(); err != nil {
		return err
	}
	g.wg.Add(1)
	go func() { defer g.wg.Done(); g.endLeftCalls() }()
	g.log.Info("SIP listening", "udp", g.udp.LocalAddr().String(), "tcp", g.tcp.Addr().String(),
		"max_connections", g.conns.maxConns, "capped_by", g.conns.capBy, "max_connections_per_source", g.cfg.Conns.MaxPerSource,
		"connection_idle_timeout", g.cfg.Conns.IdleTimeout, "nofile", nofile, "reserved_fds", g.cfg.Conns.ReservedFDs,
		"trusted_proxies", g.cfg.Front.TrustedProxies, "source_header", g.front.header)
	return nil
}

// newUA builds the SIP user agent, its server and clients, and the dialog
// sides of UDP, TCP and (with TLSListen) TLS, whose listener it opens.
func (g *Gateway) newUA(host string, port int) error {
	var err error
	uaOpts := []sipgo.UserAgentOption{sipgo.WithUserAgent("creditgate"), sipgo.WithUserAgentHostname(host),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerReadFilter(g.readFilter),
			sip.WithTransportLayerLogger(slog.New(sipgoLog{sip.DefaultLogger().Handler(), g})))}
	if g.cfg.TLS != nil {
		uaOpts = append(uaOpts, sipgo.WithUserAgenTLSConfig(g.cfg.TLS))
	}
	g.ua, err = sipgo.NewUA(uaOpts...)
	if err != nil {
		return err
	}
	g.srv, err = sipgo.NewServer(g.ua, sipgo.WithServerLogger(g.log.With("component", "sip")))
	if err != nil {
		return err
	}
	// Sending from the listening socket (not an ephemeral one) means
	// carriers see our INVITEs come from the address they allow.
	g.client, err = sipgo.NewClient(g.ua, sipgo.WithClientConnectionAddr(g.udp.LocalAddr().String()))
	if err != nil {
		return err
	}
	// A fixed local address must not apply to TCP: sipgo would look the
	// connection up by it and send a carrier's INVITE down whichever TCP
	// connection a caller opened to that address.
	g.tcpCli, err = sipgo.NewClient(g.ua)
	if err != nil {
		return err
	}
	contact := sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "creditgate", Host: host, Port: port}}
	tcpContact := contact
	tcpContact.Address.UriParams = sip.NewParams()
	tcpContact.Address.UriParams.Add("transport", "tcp")
	g.udpUA = &sipgo.DialogUA{Client: g.client, ContactHDR: contact}
	g.tcpUA = &sipgo.DialogUA{Client: g.tcpCli, ContactHDR: tcpContact}
	if g.cfg.TLSListen != "" {
		if g.cfg.TLS == nil {
			return errors.New("sip: TLS listen address without a TLS configuration")
		}
		raw, err := net.Listen("tcp", g.cfg.TLSListen)
		if err != nil {
			return fmt.Errorf("sip listen tls: %w", err)
		}
		// The caps count TCP connections, handshaken or not: one that
		// never finishes its handshake is idle like any other.
		g.tls = tls.NewListener(g.streamListener(raw, ListenerSIPTLS), g.cfg.TLS)
		tlsHost, tlsPortS, _ := net.SplitHostPort(g.tls.Addr().String())
		tlsPort, _ := strconv.Atoi(tlsPortS)
		g.tlsPort = tlsPort
		tlsContact := sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "creditgate", Host: tlsHost, Port: tlsPort}}
		tlsContact.Address.UriParams = sip.NewParams()
		tlsContact.Address.UriParams.Add("transport", "tls")
		g.tlsUA = &sipgo.DialogUA{Client: g.tcpCli, ContactHDR: tlsContact}
	}
	return nil
}

// handle registers the SIP request handlers, each behind contain.
func (g *Gateway) handle() {
	g.srv.OnInvite(g.contain(g.onInvite))
	g.srv.OnAck(g.contain(g.onAck))
	g.srv.OnBye(g.contain(g.onBye))
	g.srv.OnCancel(g.contain(func(req *sip.Request, tx sip.ServerTransaction) {
		// A CANCEL that matched a pending INVITE was answered by the
		// transaction layer; this one matched nothing.
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
	}))
	g.srv.OnUpdate(g.contain(g.onInDialog))
	g.srv.OnInfo(g.contain(g.onInDialog))
	g.srv.OnOptions(g.contain(func(req *sip.Request, tx sip.ServerTransaction) {
		if b := checkRequest(req); b != nil {
			g.refuseBadRequest(req, tx, b)
			return
		}
		if to := req.To(); g.Draining() && (to == nil || !to.Params.Has("tag")) {
			// A front proxy's probe (front.go): a draining node is taken
			// out of rotation, so new calls go to the others instead of
			// each being refused here first; OPTIONS in a dialog (a
			// keepalive of a call still up) is answered as always.
			res := sip.NewResponseFromRequest(req, 503, "Service Unavailable", nil)
			res.AppendHeader(sip.NewHeader("Retry-After", "5"))
			_ = tx.Respond(res)
			return
		}
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		res.AppendHeader(sip.NewHeader("Allow", allowed))
		_ = tx.Respond(res)
	}))

	// Any other method: RFC 3261 §8.2.1 wants 405 with Allow for a method
	// the gateway knows and does not take (REGISTER: it is no registrar),
	// 501 for one it does not know. sipgo's default answers 405 without
	// Allow and logs a warning per request, a log flood for anyone who
	// sends junk methods.
	g.srv.OnNoRoute(g.contain(func(req *sip.Request, tx sip.ServerTransaction) {
		res := sip.NewResponseFromRequest(req, 501, "Not Implemented", nil)
		if knownMethods[req.Method] {
			res = sip.NewResponseFromRequest(req, 405, "Method Not Allowed", nil)
		}
		res.AppendHeader(sip.NewHeader("Allow", allowed))
		_ = tx.Respond(res)
	}))
}

// allowed is the methods the gateway takes, for Allow headers.
const allowed = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"

// knownMethods are the SIP methods of the IETF's registry that the gateway
// does not take: 405, not 501.
var knownMethods = map[sip.RequestMethod]bool{"REGISTER": true, "MESSAGE": true, "SUBSCRIBE": true, "NOTIFY": true,
	"REFER": true, "PRACK": true, "PUBLISH": true}

// contain wraps a SIP request handler so that a panic in it costs that
// request only: sipgo recovers nothing, and a panic in its handler
// goroutine would end the process and every call with it. The request gets
// 500 if its transaction can still answer (an ACK has none).
func (g *Gateway) contain(h sipgo.RequestHandler) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		defer panics.Recover(g.log, panics.SIP, func() {
			g.log.Error("SIP request failed on a contained panic", "method", req.Method.String(), "sip_call_id", callIDOf(req))
			if req.IsAck() || tx == nil {
				return
			}
			_ = tx.Respond(sip.NewResponseFromRequest(req, 500, "Server Internal Error", nil))
		})
		h(req, tx)
	}
}

func callIDOf(req *sip.Request) string {
	if id := req.CallID(); id != nil {
		return id.Value()
	}
	return ""
}

// dialogUA is the dialog side for a leg on transport: the same user agent,
// with the client and Contact of that transport.
func (g *Gateway) dialogUA(transport string) *sipgo.DialogUA {
	switch {
	case strings.EqualFold(transport, "tcp"):
		return g.tcpUA
	case strings.EqualFold(transport, "tls") && g.tlsUA != nil:
		return g.tlsUA
	case strings.EqualFold(transport, "tls"):
		return g.tcpUA // without a TLS listener of our own: Contact by TCP
	}
	return g.udpUA
}

// udpBuffer is the SIP socket's receive and send buffer size.
const udpBuffer = 4 << 20

// waitServing returns once sipgo has put the listening UDP socket in its
// connection pool. ServeUDP does that on its own goroutine; a request sent
// before it (the BYEs of endLeftCalls, right after a restart) would make
// sipgo bind a second socket to the same port and fail with "address
// already in use".
func (g *Gateway) waitServing() error {
	addr := g.udp.LocalAddr().String()
	tl := g.ua.TransportLayer()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, _ := tl.GetConnection("udp", addr); c != nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sip: UDP listener %s not serving after 5s", addr)
		}
		time.Sleep(time.Millisecond)
	}
}

// Drain stops taking calls — new INVITEs get 503 with Retry-After, while
// emergency calls still connect — and waits until every call up has ended on
// its own or ctx is done. It returns how many calls are still up; Close ends
// those (BYE to both legs, settled in the ledger).
func (g *Gateway) Drain(ctx context.Context) int {
	g.draining.Store(true)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		n := g.activeCalls()
		if n == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return n
		case <-t.C:
		}
	}
}

// Draining reports whether the gateway has stopped taking calls.
func (g *Gateway) Draining() bool { return g.draining.Load() || g.closing.Load() }

// Close stops taking calls, ends those up (BYE to both legs, settled in the
// ledger) and waits for every goroutine it started.
func (g *Gateway) Close() error {
	g.closing.Store(true)
	g.closeJobs()
	for _, c := range g.snapshot() {
		c.end(ledger.ReasonShutdown, 200, byeBoth)
	}
	g.cancel()
	done := make(chan struct{})
	go func() { g.waitByes(); close(done) }()
	select {
	case <-done:
	case <-time.After(g.cfg.ByeTimeout + time.Second):
	}
	var err error
	if g.ua != nil {
		err = g.ua.Close()
	}
	if g.udp != nil {
		g.udp.Close()
	}
	if g.tcp != nil {
		g.tcp.Close()
	}
	if g.tls != nil {
		g.tls.Close()
	}
	if g.conns != nil {
		g.conns.stop()
	}
	g.wg.Wait()
	return err
}
