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
	"net/netip"
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
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
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
	// Catalog is the plan catalogue calls are decided by; nil is the
	// built-in one.
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
}

func (c *Config) defaults() {
	if c.RingTimeout == 0 {
		c.RingTimeout = 120 * time.Second
	}
	if c.ByeTimeout == 0 {
		c.ByeTimeout = 5 * time.Second
	}
	if c.MaxCalls == 0 {
		c.MaxCalls = 10000
	}
	if c.FailoverTimeout == 0 {
		c.FailoverTimeout = 3 * time.Second
	}
	if c.MaxPending == 0 {
		c.MaxPending = 1000
	}
	if c.Catalog == nil {
		cat := rating.DefaultCatalog()
		c.Catalog = &cat
	}
}

// Gateway is the B2BUA. Start it, then Close it; it owns every goroutine
// it starts.
type Gateway struct {
	cfg    Config
	ledger *ledger.Ledger
	clock  clock.Clock
	log    *slog.Logger
	m      *metrics

	digest *digestAuth
	perSrc *sourceLimiter
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
}

type netipAddr struct {
	host string
	port int
}

// New builds a gateway; Start makes it listen.
func New(cfg Config, l *ledger.Ledger, deck *rating.Deck, clk clock.Clock, reg prometheus.Registerer, log *slog.Logger) (*Gateway, error) {
	cfg.defaults()
	if log == nil {
		log = slog.Default()
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
	g := &Gateway{cfg: cfg, ledger: l, clock: clk, log: log, m: m,
		byID: map[string]*call{}, byIn: map[string]*call{}, inCalls: map[string]struct{}{}, byOut: map[string]*call{}, byTrunk: map[string]int{},
		bySource: map[string]int{}}
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
		"connection_idle_timeout", g.cfg.Conns.IdleTimeout, "nofile", nofile, "reserved_fds", g.cfg.Conns.ReservedFDs)
	return nil
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
	for _, c := range g.snapshot() {
		c.end(ledger.ReasonShutdown, 200, true, true)
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

// waitByes waits until no call is left; BYE goroutines are tracked by wg,
// which Close waits on after the listeners are closed.
func (g *Gateway) waitByes() {
	for i := 0; i < 100; i++ {
		g.mu.Lock()
		n := len(g.byID)
		g.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (g *Gateway) snapshot() []*call {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*call, 0, len(g.byID))
	for _, c := range g.byID {
		out = append(out, c)
	}
	return out
}

// Calls lists the calls up now.
func (g *Gateway) Calls() []CallInfo {
	now := g.clock.Now()
	cs := g.snapshot()
	out := make([]CallInfo, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.info(now))
	}
	return out
}

// ErrNoSuchCall is returned by EndCall for an id that is not up.
var ErrNoSuchCall = errors.New("no such call")

// EndCall ends a call on an operator's request.
func (g *Gateway) EndCall(id string) error {
	g.mu.Lock()
	c, ok := g.byID[id]
	g.mu.Unlock()
	// Two requests to end one call may both find it: the one whose end
	// finishes it succeeds, the other finds no call, as it would a moment
	// later.
	if !ok || !c.end(ledger.ReasonAdmin, 200, true, true) {
		return fmt.Errorf("%w: %s", ErrNoSuchCall, id)
	}
	return nil
}

// forgetIn drops the caller leg's dialog of an ended call.
func (g *Gateway) forgetIn(c *call, inID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.byIn[inID] == c {
		delete(g.byIn, inID)
	}
}

func (g *Gateway) forget(c *call, inID, outID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.releaseLocked(c)
	if _, ok := g.byID[c.id]; !ok {
		return
	}
	delete(g.byID, c.id)
	delete(g.inCalls, c.inCallID)
	if c.streamSrc != "" {
		if g.bySource[c.streamSrc]--; g.bySource[c.streamSrc] <= 0 {
			delete(g.bySource, c.streamSrc)
		}
	}
	if inID != "" {
		delete(g.byIn, inID)
	}
	if outID != "" {
		delete(g.byOut, outID)
	}
	g.m.active.Dec()
}

func (g *Gateway) refuse(req *sip.Request, tx sip.ServerTransaction, err error) {
	g.tripped(err)
	r := refusalFor(err)
	g.m.authorizations.WithLabelValues("refused", r.reason).Inc()
	res := sip.NewResponseFromRequest(req, r.status, r.phrase, nil)
	res.AppendHeader(sip.NewHeader("Warning", fmt.Sprintf("399 creditgate %q", r.warning)))
	if r.status == 503 {
		res.AppendHeader(sip.NewHeader("Retry-After", "5"))
	}
	var chal challengeError
	if errors.As(err, &chal) {
		res.AppendHeader(g.digest.challenge(chal.stale))
	}
	if r == internalRefusal {
		g.log.Error("INVITE refused on internal error", "call_id", req.CallID().Value(), "error", err)
	}
	_ = tx.Respond(res)
}

// highRisk returns the configured high-risk prefix number starts with, if
// any (the longest).
func (g *Gateway) highRisk(number string) string {
	best := ""
	for _, p := range g.cfg.HighRisk {
		if len(p) > len(best) && strings.HasPrefix(number, p) {
			best = p
		}
	}
	return best
}

// tripped counts a fraud-guard refusal and has the org's contacts told
// (the ledger keeps that to once an hour per guard).
func (g *Gateway) tripped(err error) {
	var tr *ledger.Trip
	if !errors.As(err, &tr) {
		return
	}
	g.m.fraudTrips.WithLabelValues(tr.Guard).Inc()
	g.log.Warn("fraud guard refused a call", "org", tr.Org, "user", tr.User, "guard", tr.Guard, "detail", tr.Detail)
	if err := g.ledger.FraudTripped(tr, g.clock.Now()); err != nil {
		g.log.Error("fraud-guard notification not queued", "org", tr.Org, "error", err)
	}
}

// callerNumber is the caller's number as sent: the P-Asserted-Identity user
// when present, else the From user.
func callerNumber(req *sip.Request) string {
	if h := req.GetHeader("P-Asserted-Identity"); h != nil {
		var u sip.Uri
		params := sip.NewParams()
		if _, err := sip.ParseAddressValue(h.Value(), &u, &params); err == nil && u.User != "" {
			return u.User
		}
	}
	if f := req.From(); f != nil {
		return f.Address.User
	}
	return ""
}

// looped reports an INVITE this gateway sent: its last hop's Via is one
// of the gateway's own listening addresses (sipgo writes the listening
// host and port into the Via of what it sends).
func (g *Gateway) looped(req *sip.Request) bool {
	v := req.Via()
	if v == nil || v.Host != g.addr.host {
		return false
	}
	return v.Port == g.addr.port || (g.tlsPort != 0 && v.Port == g.tlsPort)
}

// missingHeader names the first header every request must carry that req
// lacks, or is "".
func missingHeader(req *sip.Request) string {
	switch {
	case req.CallID() == nil:
		return "Call-ID"
	case req.From() == nil:
		return "From"
	case req.To() == nil:
		return "To"
	case req.CSeq() == nil:
		return "CSeq"
	case req.Via() == nil:
		return "Via"
	}
	return ""
}

func (g *Gateway) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	// RFC 3261 §8.1.1: without these an INVITE is no request at all; the
	// code below may rely on every one of them.
	if h := missingHeader(req); h != "" {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 400, "Missing "+h, nil))
		return
	}
	b := checkRequest(req)
	if b == nil {
		b = checkInvite(req)
	}
	if b != nil {
		g.refuseBadRequest(req, tx, b)
		return
	}
	if _, ok := req.To().Params.Get("tag"); ok {
		g.onInDialog(req, tx)
		return
	}
	if g.looped(req) {
		// A carrier route pointing at the gateway itself (or at a peer
		// that sends the call straight back) would otherwise make each
		// pass a new call holding credit of its own, until Max-Forwards
		// ran out 70 hops later.
		g.refuse(req, tx, ErrLoop)
		return
	}
	// A repeat of an INVITE whose transaction has been let go
	// (sip.transaction_linger) must not become a second call.
	g.mu.Lock()
	_, dup := g.inCalls[req.CallID().Value()]
	g.mu.Unlock()
	if dup {
		g.log.Debug("repeated INVITE of a call in progress dropped", "sip_call_id", req.CallID().Value())
		return
	}
	received := time.Now()
	// 100 Trying at once: authorization waits for the ledger's fsync, and
	// a caller that hears nothing for 500 ms retransmits the INVITE, which
	// under load only adds to the load (RFC 3261 §17.2.1).
	_ = tx.Respond(sip.NewResponseFromRequest(req, 100, "Trying", nil))
	// Shed before doing any work: an INVITE over the pending bound costs a
	// 503, not a place in a queue that slows every call behind it.
	// Emergency calls are let through; authorize tells them apart.
	n := g.pending.Add(1)
	c, err := g.authorize(req, n > int64(g.cfg.MaxPending))
	g.pending.Add(-1)
	if err != nil {
		g.refuse(req, tx, err)
		return
	}
	// A panic while the call is set up or up must not leave it holding
	// credit with nobody to end it: end it (failed), then answer 500.
	defer panics.Recover(g.log, panics.SIP, func() {
		c.end(ledger.ReasonFailed, 500, true, true)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 500, "Server Internal Error", nil))
	}, "call_id", c.id, "org", c.org)
	g.forward(req, tx, c, received)
}

// authorize decides an INVITE and, if allowed, returns the call with its
// first increment already held and the trunk it goes out on.
func (g *Gateway) authorize(req *sip.Request, overloaded bool) (*call, error) {
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		return nil, ErrTooManyHops
	}
	trunk, ok := g.routes.Load().source(req.Source())
	if !ok {
		return nil, ErrUnknownTrunk
	}
	if trunk.Kind == KindCarrier {
		if err := g.admissible(overloaded); err != nil {
			return nil, err
		}
		return g.authorizeInbound(req, trunk)
	}
	if trunk.Username != "" {
		// Before anything about the call is looked at, emergency calls
		// included: a trunk with a password accepts nothing unproven.
		if err := g.digest.check(req, trunk); err != nil {
			return nil, err
		}
	}
	org, err := g.ledger.Org(trunk.Org)
	if err != nil {
		return nil, err
	}
	now := g.clock.Now()
	dialled := req.Recipient.User

	// Emergency first: no caller check, license, balance or load limit may
	// keep it from connecting.
	if rating.IsEmergency(dialled, org.Country) {
		return g.emergency(req, org, dialled, now), nil
	}
	if err := g.admissible(overloaded); err != nil {
		return nil, err
	}
	if src, err := netip.ParseAddrPort(req.Source()); err == nil && !g.perSrc.allow(src.Addr().Unmap(), g.clock.Now()) {
		return nil, ErrRateLimited
	}
	user, from, ok := g.callerOf(req, org)
	if !ok {
		return nil, ErrUnknownCaller
	}
	licenses := make([]rating.License, 0, len(user.Licenses))
	for _, l := range user.Licenses {
		licenses = append(licenses, rating.License(l))
	}
	pools, err := g.ledger.PoolsLeft(org.ID, now)
	if err != nil {
		return nil, err
	}
	dec, err := rating.Decide(g.deck.Load(), g.cfg.Catalog, rating.Call{Trunk: trunk.Kind, Dialled: dialled,
		Org: rating.OrgTerms{Country: org.Country, BlockPremium: org.BlockPremium}, Licenses: licenses,
		PoolsLeft: pools, Available: org.Available(), Now: now})
	if err != nil {
		return nil, err
	}
	if p := g.highRisk(dec.Number); p != "" && !org.FraudGuard.AllowHighRisk {
		return nil, &ledger.Trip{Guard: ledger.GuardHighRisk, Org: org.ID, User: user.ID,
			Detail: fmt.Sprintf("+%s is in the high-risk range +%s (%s) and the org does not allow high-risk destinations", dec.Number, p, dec.Rate.Destination)}
	}
	routes := g.routes.Load().carriers(dec.Number)
	if len(routes) == 0 {
		return nil, ErrNoRoute
	}
	c := &call{g: g, id: uuid.NewString(), org: org.ID, user: user.ID, from: from, to: dec.Number,
		rate: dec.Rate, start: now, inCallID: req.CallID().Value(), routes: routes, direction: "outbound"}
	if err := g.admit(c, trunk); err != nil {
		return nil, err
	}
	if err := g.open(c, dec, org); err != nil {
		c.release()
		return nil, err
	}
	return c, nil
}

// authorizeInbound decides a carrier's INVITE to a toll-free number: the
// owning org pays at the catalogue's inbound rate, and the call goes to the
// org's trunk.
func (g *Gateway) authorizeInbound(req *sip.Request, carrier ledger.Trunk) (*call, error) {
	num, err := rating.Normalize("+"+strings.TrimPrefix(req.Recipient.User, "+"), "")
	if err != nil {
		return nil, err
	}
	tf, ok := g.ledger.TollFreeOwner(num)
	if !ok {
		return nil, ErrUnknownNumber
	}
	org, err := g.ledger.Org(tf.Org)
	if err != nil {
		return nil, err
	}
	route, ok := g.routes.Load().delivery(org.ID, tf.Trunk)
	if !ok {
		return nil, ErrNoDelivery
	}
	now := g.clock.Now()
	dec, err := rating.Decide(g.deck.Load(), g.cfg.Catalog, rating.Call{Trunk: rating.TrunkCarrier, Dialled: "+" + num,
		Org: rating.OrgTerms{Country: org.Country, BlockPremium: org.BlockPremium}, Available: org.Available(), Now: now})
	if err != nil {
		return nil, err
	}
	// Carriers present callers in E.164; anything else is kept as sent
	// (digits only) for the CDR.
	from, err := rating.Normalize(callerNumber(req), org.Country)
	if err != nil {
		from = ""
	}
	c := &call{g: g, id: uuid.NewString(), org: org.ID, from: from, to: dec.Number, rate: dec.Rate, start: now,
		inCallID: req.CallID().Value(), routes: []ledger.Trunk{route}, direction: "inbound"}
	if err := g.admit(c, carrier); err != nil {
		return nil, err
	}
	err = g.open(c, dec, org)
	if err != nil {
		c.release()
	}
	if errors.Is(err, ledger.ErrInsufficientCredit) {
		// Another call took the credit since the decision.
		err = fmt.Errorf("%w: %w", rating.ErrTollFreeNoCredit, err)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// admissible refuses new calls while draining or overloaded.
func (g *Gateway) admissible(overloaded bool) error {
	switch {
	case g.Draining():
		return ErrShuttingDown
	case overloaded:
		return ErrOverloaded
	case g.activeCalls() >= g.cfg.MaxCalls:
		return ErrOverloaded
	}
	return nil
}

// admit counts the call against its source trunk's max_calls; release
// (once, when the call is forgotten) gives the place back.
func (g *Gateway) admit(c *call, trunk ledger.Trunk) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if trunk.MaxCalls > 0 && g.byTrunk[trunk.ID] >= trunk.MaxCalls {
		return fmt.Errorf("%w: trunk %s has %d calls up", ErrTrunkFull, trunk.ID, trunk.MaxCalls)
	}
	g.byTrunk[trunk.ID]++
	c.trunk = trunk.ID
	return nil
}

func (c *call) release() {
	c.g.mu.Lock()
	defer c.g.mu.Unlock()
	c.g.releaseLocked(c)
}

func (g *Gateway) releaseLocked(c *call) {
	if c.trunk == "" {
		return
	}
	if g.byTrunk[c.trunk]--; g.byTrunk[c.trunk] <= 0 {
		delete(g.byTrunk, c.trunk)
	}
	c.trunk = ""
}

// open records a decided call in the ledger and holds its first increment.
func (g *Gateway) open(c *call, dec rating.Decision, org ledger.Org) error {
	rec := ledger.Call{ID: c.id, Details: ledger.Details{Org: org.ID, User: c.user, From: c.from, To: dec.Number,
		Destination: dec.Rate.Destination, Country: dec.Rate.Country, Type: string(dec.Rate.Type), Direction: c.direction,
		RatePerMinute: dec.Rate.PerMinute, Currency: org.Currency}, ConnectionFee: dec.Rate.ConnectionFee,
		FirstIncrement: int(dec.Rate.FirstIncrement / time.Second), NextIncrement: int(dec.Rate.NextIncrement / time.Second),
		Plan: dec.Plan, Spill: dec.Spill, Fresh: true, Unsynced: true}
	inc, err := g.ledger.OpenCall(rec, c.start)
	if err != nil {
		return err
	}
	c.hold = inc
	c.tracked = true
	g.m.authorizations.WithLabelValues("allowed", string(dec.Source)).Inc()
	return nil
}

// emergency lets an emergency call through: routed by the org's country
// code, recorded free, never refused for money, license or load.
func (g *Gateway) emergency(req *sip.Request, org ledger.Org, dialled string, now time.Time) *call {
	c := &call{g: g, id: uuid.NewString(), org: org.ID, free: true, to: dialled, start: now,
		inCallID: req.CallID().Value(), direction: "outbound"}
	c.routes = g.routes.Load().carriers(rating.CallingCode(org.Country) + dialled)
	var u ledger.User
	u, c.from, _ = g.callerOf(req, org)
	c.user = u.ID
	rec := ledger.Call{ID: c.id, Details: ledger.Details{Org: org.ID, User: c.user, From: c.from, To: dialled,
		Destination: "Emergency services", Country: org.Country, Type: string(rating.Special), Direction: "outbound",
		RatePerMinute: decimal.Zero, Currency: org.Currency}, Free: true, Fresh: true, Unsynced: true}
	if _, err := g.ledger.OpenCall(rec, now); err == nil {
		c.tracked = true
	} else {
		g.log.Error("emergency call connected without a ledger record", "call_id", c.id, "org", org.ID, "error", err)
	}
	g.m.authorizations.WithLabelValues("allowed", "emergency").Inc()
	return c
}

// callerOf finds the org's user calling, and the caller's number in E.164
// ("" if it is not a number) for the CDR and the carrier leg's From.
func (g *Gateway) callerOf(req *sip.Request, org ledger.Org) (u ledger.User, from string, ok bool) {
	from, err := rating.Normalize(callerNumber(req), org.Country)
	if err != nil {
		return ledger.User{}, "", false
	}
	u, ok = g.ledger.UserByNumber(from)
	if !ok || u.Org != org.ID {
		return ledger.User{}, from, false
	}
	return u, from, true
}

func (g *Gateway) activeCalls() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.byID)
}

// forward sends the authorized call to its carrier and relays what comes
// back until the call is answered, refused or cancelled.
func (g *Gateway) forward(req *sip.Request, tx sip.ServerTransaction, c *call, received time.Time) {
	if len(c.routes) == 0 {
		g.failBeforeAnswer(c, ErrNoRoute, 404)
		g.refuse(req, tx, ErrNoRoute)
		return
	}
	in, err := g.dialogUA(req.Transport()).ReadInvite(req, tx)
	if err != nil {
		// checkInvite let through only what a dialog can be made of; this
		// is a bug, and the caller still gets a final answer.
		g.failBeforeAnswer(c, err, 500)
		g.refuse(req, tx, fmt.Errorf("caller leg: %w", err))
		return
	}
	defer in.Close()
	c.in = in
	g.register(c, in.ID)

	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.RingTimeout)
	defer cancel()
	// A CANCEL from the caller ends the caller's dialog context; cancelling
	// ours makes WaitAnswer send CANCEL to the carrier.
	stop := context.AfterFunc(in.Context(), cancel)
	defer stop()

	var sess *sipgo.DialogClientSession
	for i, carrier := range c.routes {
		var target sip.Uri
		if err = sip.ParseUri(carrier.URI, &target); err != nil {
			err = fmt.Errorf("carrier %s uri %q: %w", carrier.ID, carrier.URI, err)
			continue
		}
		if i == 0 {
			g.m.setup.Observe(time.Since(received).Seconds())
		}
		sess, err = g.attempt(ctx, in, c, g.outboundInvite(req, c, target, i), carrier)
		if sess != nil {
			defer sess.Close()
		}
		if err == nil || !failover(err) || in.Context().Err() != nil || ctx.Err() != nil {
			break
		}
		if i+1 < len(c.routes) {
			g.log.Warn("carrier failed before answer; trying the next", "call_id", c.id, "carrier", carrier.ID,
				"next", c.routes[i+1].ID, "error", err)
		}
	}
	if sess == nil {
		g.log.Warn("no carrier took the call", "call_id", c.id, "org", c.org, "error", err)
		c.end(ledger.ReasonFailed, 503, false, false)
		_ = in.Respond(503, "Service Unavailable", nil, sip.NewHeader("Retry-After", "5"))
		return
	}
	c.out = sess
	if err != nil {
		g.notAnswered(c, in, sess, err)
		return
	}

	g.mu.Lock()
	c.mu.Lock()
	c.outID = sess.ID
	c.mu.Unlock()
	g.byOut[sess.ID] = c
	g.mu.Unlock()

	if err := c.answer(); err != nil {
		g.log.Error("could not start billing; ending call", "call_id", c.id, "org", c.org, "error", err)
		_ = sess.Ack(g.ctx)
		c.end(ledger.ReasonFailed, 503, false, false)
		g.goBye("carrier", c.id, sess.Bye)
		_ = in.Respond(503, "Service Unavailable", nil, sip.NewHeader("Retry-After", "5"))
		return
	}
	if err := sess.Ack(g.ctx); err != nil {
		g.log.Warn("ACK to carrier failed", "call_id", c.id, "error", err)
	}
	answer := sess.InviteResponse
	res := sip.NewResponseFromRequest(in.InviteRequest, 200, "OK", answer.Body())
	if ct := answer.ContentType(); ct != nil {
		res.AppendHeader(sip.HeaderClone(ct))
	}
	if err := in.WriteResponse(res); err != nil {
		// The caller cancelled as the carrier answered, or never ACKed.
		reason := ledger.ReasonFailed
		if errors.Is(err, sip.ErrTransactionCanceled) {
			reason = ledger.ReasonCanceled
		}
		g.log.Warn("caller leg did not confirm the answer", "call_id", c.id, "error", err)
		c.end(reason, 200, false, true)
	}
}

func (g *Gateway) register(c *call, inID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c.mu.Lock()
	c.inID = inID
	c.mu.Unlock()
	g.byID[c.id] = c
	g.byIn[inID] = c
	g.inCalls[c.inCallID] = struct{}{}
	if req := c.in.InviteRequest; req != nil && !strings.EqualFold(req.Transport(), "udp") {
		c.streamSrc = req.Source()
		g.bySource[c.streamSrc]++
	}
	g.m.active.Inc()
}

// carriesCall reports whether a call up came in over the TCP/TLS
// connection from remote (host:port).
func (g *Gateway) carriesCall(remote string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.bySource[remote] > 0
}

// failBeforeAnswer settles a call that never left the gateway.
func (g *Gateway) failBeforeAnswer(c *call, err error, status int) {
	g.log.Warn("call failed before it reached a carrier", "call_id", c.id, "org", c.org, "error", err)
	c.release()
	if c.tracked {
		if _, err := g.ledger.CloseCall(c.id, ledger.CallEnd{At: g.clock.Now(), Reason: ledger.ReasonFailed, SIPStatus: status}); err != nil {
			g.log.Error("settling call failed", "call_id", c.id, "error", err)
		}
	}
}

// notAnswered handles every way a call can end before answer: a failure
// response, the caller's CANCEL, the ring timeout, a transport error.
func (g *Gateway) notAnswered(c *call, in *sipgo.DialogServerSession, sess *sipgo.DialogClientSession, err error) {
	var dr *sipgo.ErrDialogResponse
	switch {
	case errors.As(err, &dr):
		status := dr.Res.StatusCode
		c.end(ledger.ReasonFailed, status, false, false)
		if status == 401 || status == 407 {
			// The carrier's challenge is for us, not for our customer.
			status = 502
		}
		_ = in.Respond(status, dr.Res.Reason, nil)
	case errors.Is(in.Context().Err(), context.Canceled):
		// The caller cancelled; the transaction layer answered 487.
		c.end(ledger.ReasonCanceled, 487, false, false)
		if r := sess.InviteResponse; r != nil && r.IsSuccess() {
			// The carrier answered as we cancelled: take and drop that call.
			_ = sess.Ack(g.ctx)
			g.goBye("carrier", c.id, sess.Bye)
		}
	default:
		status, phrase := 408, "Request Timeout"
		if g.ctx.Err() != nil {
			status, phrase = 503, "Service Unavailable"
		}
		c.end(ledger.ReasonFailed, status, false, false)
		_ = in.Respond(status, phrase, nil)
	}
}

// errNoResponse: a carrier sent nothing, not even 100 Trying, within
// FailoverTimeout.
var errNoResponse = errors.New("no response from the carrier")

// attempt sends the carrier leg's INVITE and waits for its final answer,
// relaying provisional responses (with early-media SDP) to the caller. It
// gives up on a carrier that has not answered at all within FailoverTimeout,
// so the next can be tried while the caller still waits.
// attempt sends the INVITE to one carrier and waits for its answer. A
// carrier trunk with a username and password answers a 401/407 challenge
// with digest credentials (sipgo resends the INVITE, retrying a stale
// nonce once); without them a challenge is a failure like any other.
func (g *Gateway) attempt(ctx context.Context, in *sipgo.DialogServerSession, c *call, out *sip.Request, carrier ledger.Trunk) (*sipgo.DialogClientSession, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// With nothing received there is nothing to CANCEL (RFC 3261 §9.1);
	// sipgo's force-cancel cause makes WaitAnswer return at once instead of
	// waiting out Timer B.
	var silent atomic.Bool
	timer := time.AfterFunc(g.cfg.FailoverTimeout, func() {
		silent.Store(true)
		cancel(sipgo.WaitAnswerForceCancelErr)
	})
	defer timer.Stop()
	sess, err := g.dialogUA(out.Transport()).WriteInvite(actx, out)
	if err != nil {
		return nil, err
	}
	err = sess.WaitAnswer(actx, sipgo.AnswerOptions{Username: carrier.Username, Password: carrier.Password, OnResponse: func(res *sip.Response) error {
		if !timer.Stop() && silent.Load() {
			return errNoResponse
		}
		if res.StatusCode > 100 && res.StatusCode < 200 {
			hdrs := []sip.Header{}
			if ct := res.ContentType(); ct != nil {
				hdrs = append(hdrs, sip.HeaderClone(ct))
			}
			_ = in.Respond(res.StatusCode, res.Reason, res.Body(), hdrs...)
		}
		return nil
	}})
	if err != nil && silent.Load() {
		err = fmt.Errorf("%w: %w", errNoResponse, err)
	}
	return sess, err
}

// failover reports whether a carrier's failure before answer lets the call
// try the next carrier: a timeout, a 408 or a 5xx. 4xx are about the call
// (the next carrier would say the same) and 6xx say so explicitly.
func failover(err error) bool {
	var dr *sipgo.ErrDialogResponse
	if errors.As(err, &dr) {
		code := dr.Res.StatusCode
		return code == 408 || (code >= 500 && code < 600)
	}
	return errors.Is(err, errNoResponse)
}

// outboundInvite builds the carrier leg's INVITE: a new dialog (Call-ID,
// tags, CSeq) that carries the caller's SDP untouched. Attempt n > 0 (a
// failover) gets a Call-ID of its own.
func (g *Gateway) outboundInvite(req *sip.Request, c *call, target sip.Uri, n int) *sip.Request {
	user := "+" + c.to
	if c.free {
		user = c.to
	}
	ruri := sip.Uri{Scheme: "sip", User: user, Host: target.Host, Port: target.Port, UriParams: target.UriParams}
	out := sip.NewRequest(sip.INVITE, ruri)
	if tr, ok := target.UriParams.Get("transport"); ok && tr != "" {
		out.SetTransport(sip.NetworkToLower(tr))
	}
	fromUser := "+" + c.from
	if c.from == "" {
		fromUser = "anonymous"
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: fromUser, Host: g.addr.host}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	out.AppendHeader(from)
	out.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: target.Host}, Params: sip.NewParams()})
	cid := sip.CallIDHeader(c.id)
	if n > 0 {
		cid = sip.CallIDHeader(fmt.Sprintf("%s-%d", c.id, n+1))
	}
	out.AppendHeader(&cid)
	out.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.INVITE})
	mf := sip.MaxForwardsHeader(70)
	if in := req.MaxForwards(); in != nil {
		mf = sip.MaxForwardsHeader(in.Val() - 1)
	}
	out.AppendHeader(&mf)
	if h := req.GetHeader("P-Asserted-Identity"); h != nil {
		out.AppendHeader(sip.HeaderClone(h))
	}
	if ct := req.ContentType(); ct != nil {
		out.AppendHeader(sip.HeaderClone(ct))
	}
	out.SetBody(req.Body())
	return out
}

func (g *Gateway) onAck(req *sip.Request, tx sip.ServerTransaction) {
	id, err := sip.DialogIDFromRequestUAS(req)
	if err != nil {
		return
	}
	g.mu.Lock()
	c := g.byIn[id]
	g.mu.Unlock()
	if c != nil && c.in != nil {
		_ = c.in.ReadAck(req, tx)
	}
}

func (g *Gateway) onBye(req *sip.Request, tx sip.ServerTransaction) {
	if b := checkRequest(req); b != nil {
		g.refuseBadRequest(req, tx, b)
		return
	}
	c, fromCaller := g.dialogOf(req)
	if c == nil {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
		return
	}
	var err error
	if fromCaller {
		err = c.in.ReadBye(req, tx)
	} else {
		err = c.out.ReadBye(req, tx)
	}
	if err != nil {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 400, "Bad Request", nil))
		return
	}
	if fromCaller {
		c.end(ledger.ReasonCallerHangup, 200, false, true)
	} else {
		c.end(ledger.ReasonCalleeHangup, 200, true, false)
	}
}
