package gateway

import (
	"context"
	"errors"
	"fmt"
	"github.com/cockroachdb/pebble/v2/vfs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
)

var epoch = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

const testSDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"

// env is one gateway with its ledger, a fake clock, a carrier and a caller
// on a known customer trunk, all on loopback.
type env struct {
	t       testing.TB
	clock   *clock.Fake
	ledger  *ledger.Ledger
	gw      *Gateway
	reg     *prometheus.Registry
	carrier *carrier
	caller  *phone
}

func quietLog() *slog.Logger {
	if os.Getenv("GW_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(&strings.Builder{}, &slog.HandlerOptions{Level: slog.LevelError + 4}))
}

func newEnv(t testing.TB, deckCSV string) *env {
	t.Helper()
	return newEnvPlans(t, deckCSV, nil)
}

// newEnvPlans is newEnv with the ledger's minute pools set to plans.
func newEnvPlans(t testing.TB, deckCSV string, plans []ledger.Plan) *env {
	t.Helper()
	return newEnvClock(t, deckCSV, plans, clock.NewFake(epoch))
}

// newEnvClock is newEnvPlans on the given clock; a real clock measures
// what a fake one cannot, such as how late a teardown leaves.
func newEnvClock(t testing.TB, deckCSV string, plans []ledger.Plan, clk clock.Clock) *env {
	t.Helper()
	return newEnvFS(t, deckCSV, plans, clk, nil, nil)
}

// newEnvConfig is newEnv with the gateway's configuration changed by set
// before it starts (changing it after would race with its handlers).
func newEnvConfig(t testing.TB, deckCSV string, set func(*Config)) *env {
	t.Helper()
	return newEnvFS(t, deckCSV, nil, clock.NewFake(epoch), nil, set)
}

// newEnvFS is newEnvClock with the ledger on fs (nil: the real one) and
// the gateway's configuration changed by set (nil: none).
func newEnvFS(t testing.TB, deckCSV string, plans []ledger.Plan, clk clock.Clock, fs vfs.FS, set func(*Config)) *env {
	t.Helper()
	e := &env{t: t, reg: prometheus.NewRegistry()}
	if f, ok := clk.(*clock.Fake); ok {
		e.clock = f
	}
	var err error
	e.ledger, err = ledger.Open(t.TempDir(), ledger.Options{Now: clk.Now, Registerer: e.reg, Plans: plans, FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	deck, err := rating.ParseDeck(strings.NewReader(deckCSV))
	if err != nil {
		t.Fatal(err)
	}
	e.carrier = newCarrier(t)
	e.caller = newPhone(t)
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "carrier", Kind: rating.TrunkCarrier, URI: "sip:" + e.carrier.addr, Prefixes: []string{""}}))
	cfg := testConfig()
	if set != nil {
		set(&cfg)
	}
	e.gw, err = New(cfg, e.ledger, deck, clk, e.reg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	must(t, e.gw.Start())
	t.Cleanup(func() {
		e.gw.Close()
		e.caller.close()
		e.carrier.close()
		e.ledger.Close()
	})
	return e
}

// testConfig is the gateway's configuration on creditgate's defaults
// (configs.Default(), mapped as cmd/creditgate maps it), listening on a
// free loopback port. The high-risk prefixes and the connection caps stay
// empty, as these tests have always run: the tests of those set them.
func testConfig() Config {
	d := configs.Default()
	return Config{Listen: "127.0.0.1:0", RingTimeout: d.SIP.RingTimeout, ByeTimeout: d.SIP.ByeTimeout,
		MaxCalls: d.SIP.MaxCalls, MaxPending: d.SIP.MaxPending, FailoverTimeout: d.SIP.FailoverTimeout,
		Catalog: &d.Catalog, RatePerSource: d.SIP.RatePerSource, BurstPerSource: d.SIP.BurstPerSource,
		SessionExpires: d.SIP.SessionExpires, MinSE: d.SIP.MinSE, KeepaliveInterval: d.SIP.KeepaliveInterval,
		KeepaliveTimeout: d.SIP.KeepaliveTimeout, MaxCallDuration: d.SIP.MaxCallDuration}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// org creates an org funded with amount ("" for none), a customer trunk on
// the caller's exact address, and a user owning number with licenses.
func (e *env) org(id, country, amount, number string, licenses ...string) {
	e.t.Helper()
	_, err := e.ledger.CreateOrg(ledger.Org{ID: id, Country: country, Region: "r", BillingRegion: "r"})
	must(e.t, err)
	if amount != "" {
		_, err = e.ledger.Fund(id, decimal.RequireFromString(amount), "fund-"+id)
		must(e.t, err)
	}
	must(e.t, e.ledger.PutTrunk(ledger.Trunk{ID: "pbx-" + id, Kind: rating.TrunkCustomer, Org: id, Addresses: []string{e.caller.addr}}))
	must(e.t, e.ledger.PutUser(ledger.User{Org: id, ID: "alice", Numbers: []string{number}, Licenses: licenses}))
	e.gw.ReloadTrunks()
}

func (e *env) balance(org string) decimal.Decimal {
	o, err := e.ledger.Org(org)
	must(e.t, err)
	return o.Balance
}

func (e *env) cdrs(org string) []ledger.CDR {
	cs, err := e.ledger.CDRs(org, time.Time{}, time.Time{})
	must(e.t, err)
	return cs
}

// eventually waits for cond, which the gateway makes true asynchronously;
// it bounds a wait, it does not time anything.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) answeredCalls() int {
	n := 0
	for _, c := range e.gw.Calls() {
		if c.State == "answered" {
			n++
		}
	}
	return n
}

// carrier is a sipgo UAS that answers every INVITE with 180 then 200+SDP.
type carrier struct {
	*peer
	dialogs   *sipgo.DialogServerCache
	invites   atomic.Int32
	byes      atomic.Int32
	lastURI   atomic.Value
	mu        sync.Mutex
	open      []*sipgo.DialogServerSession
	reject    atomic.Int32 // non-zero: answer INVITEs with this status
	ringOnly  atomic.Bool  // ring and never answer
	cancels   atomic.Int32 // INVITEs the caller side cancelled
	reinvites atomic.Int32
	byeAt     sync.Map // Call-ID → time.Time the BYE arrived
	// auth, when set, makes the carrier demand digest credentials for this
	// trunk (the gateway's own digest code plays the carrier's part).
	auth       atomic.Pointer[ledger.Trunk]
	challenged atomic.Int32
	// dead: the carrier has dropped its dialogs and answers in-dialog
	// OPTIONS and UPDATE with 481.
	dead    atomic.Bool
	options atomic.Int32 // in-dialog OPTIONS and UPDATE answered 200
	// updateStatus, non-zero: answer in-dialog UPDATEs with it (405: a
	// peer without UPDATE); silent: answer no in-dialog OPTIONS/UPDATE.
	updateStatus atomic.Int32
	silent       atomic.Bool
	updates      atomic.Int32 // in-dialog UPDATEs received
	// updateGate, when set, holds every in-dialog UPDATE's answer until
	// the channel is closed (a refresh in flight).
	updateGate atomic.Pointer[chan struct{}]
	lastInvite atomic.Pointer[sip.Request] // the last initial INVITE
}

func listenUDP(t testing.TB) (net.PacketConn, string, int) {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	port := conn.LocalAddr().(*net.UDPAddr).Port
	return conn, fmt.Sprintf("127.0.0.1:%d", port), port
}

// peer is a sipgo user agent on its own loopback UDP socket, sending from
// the socket it listens on, as a real PBX or carrier does.
type peer struct {
	t       testing.TB
	addr    string
	conn    net.PacketConn
	ua      *sipgo.UserAgent
	srv     *sipgo.Server
	cli     *sipgo.Client
	contact sip.ContactHeader
	wg      sync.WaitGroup
}

func newPeer(t testing.TB, name string) *peer {
	conn, addr, port := listenUDP(t)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(name))
	must(t, err)
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(quietLog()))
	must(t, err)
	cli, err := sipgo.NewClient(ua, sipgo.WithClientConnectionAddr(addr))
	must(t, err)
	return &peer{t: t, addr: addr, conn: conn, ua: ua, srv: srv, cli: cli,
		contact: sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: name, Host: "127.0.0.1", Port: port}}}
}

// serve starts answering; call it after registering handlers. It returns
// once sipgo's transport layer holds the socket: until then the client,
// asked to send from addr, would try to bind addr itself and fail with
// "address already in use" (a flake of any test that dials at once).
func (p *peer) serve() {
	p.wg.Add(1)
	go func() { defer p.wg.Done(); _ = p.srv.ServeUDP(p.conn) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if c, err := p.ua.TransportLayer().GetConnection("udp", p.addr); err == nil && c != nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("peer %s: the transport layer never took its socket", p.addr)
		}
	}
}

func (p *peer) close() {
	p.ua.Close()
	p.conn.Close()
	p.wg.Wait()
}

var carrierDigest = newDigestAuth("carrier.example", time.Now)

func newCarrier(t testing.TB) *carrier {
	c := &carrier{peer: newPeer(t, "carrier")}
	c.dialogs = sipgo.NewDialogServerCache(c.cli, c.contact)
	srv := c.srv
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		if _, inDialog := req.To().Params.Get("tag"); inDialog {
			c.reinvites.Add(1)
			res := sip.NewResponseFromRequest(req, 200, "OK", []byte(testSDP))
			res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
			res.AppendHeader(&c.contact)
			_ = tx.Respond(res)
			return
		}
		if want := c.auth.Load(); want != nil {
			var chal challengeError
			switch err := carrierDigest.check(req, *want); {
			case errors.As(err, &chal):
				c.challenged.Add(1)
				res := sip.NewResponseFromRequest(req, 407, "Proxy Authentication Required", nil)
				res.AppendHeader(carrierDigest.challenge(chal.stale))
				_ = tx.Respond(res)
				return
			case err != nil:
				_ = tx.Respond(sip.NewResponseFromRequest(req, 403, "Forbidden", nil))
				return
			}
		}
		c.invites.Add(1)
		c.lastInvite.Store(req)
		c.lastURI.Store(req.Recipient.User)
		dlg, err := c.dialogs.ReadInvite(req, tx)
		if err != nil {
			return
		}
		defer dlg.Close()
		if code := c.reject.Load(); code != 0 {
			_ = dlg.Respond(int(code), "Rejected", nil)
			return
		}
		_ = dlg.Respond(180, "Ringing", nil)
		if c.ringOnly.Load() {
			<-dlg.Context().Done()
			if errors.Is(context.Cause(dlg.Context()), sip.ErrTransactionCanceled) {
				c.cancels.Add(1)
			}
			return
		}
		c.mu.Lock()
		c.open = append(c.open, dlg)
		c.mu.Unlock()
		if err := dlg.RespondSDP([]byte(testSDP)); err != nil {
			return
		}
		<-dlg.Context().Done()
	})
	srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) { _ = c.dialogs.ReadAck(req, tx) })
	inDialog := func(req *sip.Request, tx sip.ServerTransaction) {
		if req.Method == sip.UPDATE {
			c.updates.Add(1)
			if gate := c.updateGate.Load(); gate != nil {
				<-*gate
			}
		}
		if c.silent.Load() {
			return
		}
		if st := c.updateStatus.Load(); st != 0 && req.Method == sip.UPDATE {
			_ = tx.Respond(sip.NewResponseFromRequest(req, int(st), "Method Not Allowed", nil))
			return
		}
		if c.dead.Load() {
			_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
			return
		}
		c.options.Add(1)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	}
	srv.OnOptions(inDialog)
	srv.OnUpdate(inDialog)
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		at := time.Now()
		if err := c.dialogs.ReadBye(req, tx); err == nil {
			c.byeAt.Store(req.CallID().Value(), at)
			c.byes.Add(1)
		}
	})
	c.serve()
	return c
}

// hangup sends BYE from the carrier on its oldest answered call.
func (c *carrier) hangup() error {
	c.mu.Lock()
	dlg := c.open[0]
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return dlg.Bye(ctx)
}

// phone is a sipgo UAC on a fixed address: the customer's PBX.
type phone struct {
	*peer
	updates atomic.Int32
	dialogs *sipgo.DialogClientCache
	byes    atomic.Int32
}

func newPhone(t testing.TB) *phone {
	p := &phone{peer: newPeer(t, "pbx")}
	p.dialogs = sipgo.NewDialogClientCache(p.cli, p.contact)
	p.srv.OnUpdate(func(req *sip.Request, tx sip.ServerTransaction) {
		p.updates.Add(1)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	p.srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		if err := p.dialogs.ReadBye(req, tx); err == nil {
			p.byes.Add(1)
		}
	})
	p.serve()
	return p
}

// dial calls to through the gateway as from; it returns the answered
// session, or the final status of a refusal.
func (p *phone) dial(gw, from, to string, hdrs ...sip.Header) (*sipgo.DialogClientSession, int, *sip.Response) {
	p.t.Helper()
	sess, status, res, err := p.tryDial(gw, from, to, hdrs...)
	if err != nil {
		p.t.Fatal(err)
	}
	return sess, status, res
}

// tryDial is dial for goroutines other than the test's: it reports errors
// instead of failing the test.
func (p *phone) tryDial(gw, from, to string, hdrs ...sip.Header) (*sipgo.DialogClientSession, int, *sip.Response, error) {
	req := newInvite(gw, from, to)
	for _, h := range hdrs {
		req.AppendHeader(h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := p.dialogs.WriteInvite(ctx, req)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("INVITE: %w", err)
	}
	if err := sess.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		var dr *sipgo.ErrDialogResponse
		if ok := asDialogResponse(err, &dr); ok {
			return nil, dr.Res.StatusCode, dr.Res, nil
		}
		return nil, 0, nil, fmt.Errorf("waiting for answer: %w", err)
	}
	if err := sess.Ack(ctx); err != nil {
		return nil, 0, nil, fmt.Errorf("ACK: %w", err)
	}
	return sess, 200, sess.InviteResponse, nil
}

// newInvite is the PBX's INVITE from from to to through the gateway at gw,
// with SDP.
func newInvite(gw, from, to string) *sip.Request {
	host, port, _ := net.SplitHostPort(gw)
	var pn int
	fmt.Sscan(port, &pn)
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: to, Host: host, Port: pn})
	fromHdr := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: from, Host: "pbx.example"}, Params: sip.NewParams()}
	fromHdr.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(fromHdr)
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody([]byte(testSDP))
	return req
}

func asDialogResponse(err error, target **sipgo.ErrDialogResponse) bool {
	for err != nil {
		if dr, ok := err.(*sipgo.ErrDialogResponse); ok {
			*target = dr
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// sipgoAnswer reports every response status to f while waiting.
func sipgoAnswer(f func(code int)) sipgo.AnswerOptions {
	return sipgo.AnswerOptions{OnResponse: func(res *sip.Response) error { f(res.StatusCode); return nil }}
}
