// Package loadtest is a SIP load generator that plays both ends of a call
// through a gateway: the caller (a customer PBX) and the carrier that
// answers. Calls start on an open-loop schedule — call i is due at
// start + i/rate whether or not earlier calls are done — and setup latency
// is measured from when a call was due, not from when it was sent, so a
// stalled gateway shows up in the percentiles instead of slowing the load
// down (no coordinated omission).
package loadtest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// Config is one load run.
type Config struct {
	Target  string // the gateway, host:port
	Caller  string // where the caller side sends from, host:port (port 0: any)
	Carrier string // where the carrier side answers, host:port (port 0: any)

	Rate        float64       // calls started per second
	Calls       int           // calls in the run
	Hold        time.Duration // talk time after the answer; then the caller hangs up
	MaxInFlight int           // calls up or being set up at once; 0 = no cap
	Dialled     string        // the number called
	From        []string      // caller numbers, used in turn
	CallsPer    int           // calls placed from each From number before the next; 0 = 1
	Transport   string        // the caller's leg: "udp" (default), "tcp" or "tls"
	// CarrierTransport is the carrier side's: the Transport unless set, so
	// mixed legs (UDP in, TCP out) can be driven.
	CarrierTransport string
	// TLS is for "tls" legs: its certificate is what the carrier side
	// presents, its RootCAs what the caller side trusts.
	TLS *tls.Config

	// SetupTimeout bounds waiting for an answer; HangupTimeout for the
	// BYE's answer and for the call to drain at the end.
	SetupTimeout  time.Duration
	HangupTimeout time.Duration

	Log *slog.Logger

	// Legs, if set, gets every leg's answer and BYE times and addresses
	// (legs.go); nil records nothing.
	Legs *Legs
}

func (c *Config) defaults() error {
	if c.Rate <= 0 || c.Calls <= 0 {
		return errors.New("loadtest: rate and calls must be positive")
	}
	if c.Target == "" || c.Dialled == "" || len(c.From) == 0 {
		return errors.New("loadtest: target, dialled number and at least one caller number are required")
	}
	if c.Caller == "" {
		c.Caller = "127.0.0.1:0"
	}
	if c.Carrier == "" {
		c.Carrier = "127.0.0.1:0"
	}
	if c.Transport == "" {
		c.Transport = "udp"
	}
	if c.CarrierTransport == "" {
		c.CarrierTransport = c.Transport
	}
	for _, t := range []string{c.Transport, c.CarrierTransport} {
		if t != "udp" && t != "tcp" && t != "tls" {
			return fmt.Errorf("loadtest: transport %q: want udp, tcp or tls", t)
		}
		if t == "tls" && c.TLS == nil {
			return errors.New("loadtest: a tls leg needs a TLS configuration")
		}
	}
	if c.CallsPer <= 0 {
		c.CallsPer = 1
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = 32 * time.Second
	}
	if c.HangupTimeout <= 0 {
		c.HangupTimeout = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Report is what a run measured.
type Report struct {
	Attempted int `json:"attempted"`
	Answered  int `json:"answered"`
	Failed    int `json:"failed"`
	// ByStatus counts final responses to INVITE; "timeout" is no final
	// answer within SetupTimeout, "error" a transport error, "capped" a
	// call not started because MaxInFlight calls were up.
	ByStatus map[string]int `json:"by_status"`
	// EndedByGateway counts answered calls the gateway hung up (credit
	// ran out) before the caller did.
	EndedByGateway int `json:"ended_by_gateway"`
	// CarrierInvites is how many INVITEs reached the carrier side.
	CarrierInvites int64 `json:"carrier_invites"`

	Elapsed      time.Duration `json:"-"`
	ElapsedS     float64       `json:"elapsed_s"`
	OfferedCPS   float64       `json:"offered_cps"`
	AchievedCPS  float64       `json:"achieved_cps"` // answers per second over the time calls were being started
	SetupMS      Percentiles   `json:"setup_ms"`     // due → 200 OK
	MaxInFlightN int           `json:"max_in_flight"`
}

// Percentiles of setup latency in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// JSON is the report as one JSON object.
func (r Report) JSON() []byte {
	b, _ := json.MarshalIndent(r, "", "  ")
	return b
}

func (r Report) String() string {
	keys := make([]string, 0, len(r.ByStatus))
	for k := range r.ByStatus {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := fmt.Sprintf("attempted %d  answered %d  failed %d  in %.1f s\noffered %.0f calls/s  achieved %.0f calls/s  max in flight %d\nsetup ms  p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n",
		r.Attempted, r.Answered, r.Failed, r.ElapsedS, r.OfferedCPS, r.AchievedCPS, r.MaxInFlightN,
		r.SetupMS.P50, r.SetupMS.P90, r.SetupMS.P99, r.SetupMS.Max)
	s += "final status:"
	for _, k := range keys {
		s += fmt.Sprintf("  %s %d", k, r.ByStatus[k])
	}
	return s + fmt.Sprintf("\nended by the gateway %d  INVITEs at the carrier %d\n", r.EndedByGateway, r.CarrierInvites)
}

const sdp = "v=0\r\no=loadtest 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"

// endpoint is one sipgo user agent on its own socket, sending from the
// address it listens on, as a PBX or a carrier does.
type endpoint struct {
	ua      *sipgo.UserAgent
	srv     *sipgo.Server
	cli     *sipgo.Client
	contact sip.ContactHeader
	addr    string
	start   func() error
	close   func()
}

// newEndpoint is one side's sipgo user agent on its transport. Over 80
// lines because UDP, TCP and TLS each need their own listen-and-serve
// wiring, side by side so their differences show.
func newEndpoint(ctx context.Context, name, transport, addr string, tlsCfg *tls.Config, log *slog.Logger, wg *sync.WaitGroup) (*endpoint, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%s address %q: %w", name, addr, err)
	}
	uaOpts := []sipgo.UserAgentOption{sipgo.WithUserAgent(name), sipgo.WithUserAgentHostname(host)}
	if tlsCfg != nil {
		uaOpts = append(uaOpts, sipgo.WithUserAgenTLSConfig(tlsCfg))
	}
	ua, err := sipgo.NewUA(uaOpts...)
	if err != nil {
		return nil, err
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(log))
	if err != nil {
		return nil, err
	}
	e := &endpoint{ua: ua, srv: srv}
	var serve func() error
	var closer io.Closer
	switch transport {
	case "tcp":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		e.addr, closer = l.Addr().String(), l
		serve = func() error { return srv.ServeTCP(l) }
	case "tls":
		l, err := tls.Listen("tcp", addr, tlsCfg)
		if err != nil {
			return nil, err
		}
		e.addr, closer = l.Addr().String(), l
		serve = func() error { return srv.ServeTLS(l) }
	default:
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		if uc, ok := c.(*net.UDPConn); ok {
			_ = uc.SetReadBuffer(4 << 20)
			_ = uc.SetWriteBuffer(4 << 20)
		}
		e.addr, closer = c.LocalAddr().String(), c
		serve = func() error { return srv.ServeUDP(c) }
	}
	_, portS, _ := net.SplitHostPort(e.addr)
	port, _ := strconv.Atoi(portS)
	opts := []sipgo.ClientOption{sipgo.WithClientLogger(log)}
	if transport == "udp" {
		opts = append(opts, sipgo.WithClientConnectionAddr(e.addr))
	}
	e.cli, err = sipgo.NewClient(ua, opts...)
	if err != nil {
		closer.Close()
		return nil, err
	}
	e.contact = sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: name, Host: host, Port: port}}
	if transport != "udp" {
		e.contact.Address.UriParams = sip.NewParams()
		e.contact.Address.UriParams.Add("transport", transport)
	}
	e.close = func() { ua.Close(); closer.Close() }
	// Serving starts only once the handlers are in: sipgo's handler map is
	// not safe to change while requests arrive.
	e.start = func() error {
		wg.Add(1)
		go func() { defer wg.Done(); _ = serve() }()
		if transport != "udp" {
			return nil
		}
		// ServeUDP registers the socket on its own goroutine; a request
		// sent before that would make sipgo bind the port a second time.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			if c, _ := ua.TransportLayer().GetConnection("udp", e.addr); c != nil {
				return nil
			}
			if time.Now().After(deadline) {
				e.close()
				return fmt.Errorf("%s: UDP socket %s not serving after 5 s", name, e.addr)
			}
		}
	}
	return e, nil
}

// carrier answers every INVITE with 180 then 200 with SDP, and every BYE.
type carrier struct {
	*endpoint
	dialogs *sipgo.DialogServerCache
	invites atomic.Int64
	// up is the carrier legs answered and not yet ended (legs.go's
	// drain waits for it).
	up atomic.Int64
}

func newCarrier(ctx context.Context, cfg Config, wg *sync.WaitGroup) (*carrier, error) {
	ep, err := newEndpoint(ctx, "carrier", cfg.CarrierTransport, cfg.Carrier, cfg.TLS, cfg.Log, wg)
	if err != nil {
		return nil, err
	}
	c := &carrier{endpoint: ep, dialogs: sipgo.NewDialogServerCache(ep.cli, ep.contact)}
	ep.srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		if _, inDialog := req.To().Params.Get("tag"); inDialog {
			res := sip.NewResponseFromRequest(req, 200, "OK", []byte(sdp))
			res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
			res.AppendHeader(&c.contact)
			_ = tx.Respond(res)
			return
		}
		c.invites.Add(1)
		dlg, err := c.dialogs.ReadInvite(req, tx)
		if err != nil {
			return
		}
		defer dlg.Close()
		_ = dlg.Respond(180, "Ringing", nil)
		// Answered once the 200 leaves, as a carrier bills it: RespondSDP
		// returns only when the ACK came, which a gateway that died
		// meanwhile never sends.
		cfg.Legs.answered(CarrierSide, req.CallID().Value(), req.Source(), time.Now())
		if err := dlg.RespondSDP([]byte(sdp)); err != nil {
			return
		}
		c.up.Add(1)
		defer c.up.Add(-1)
		select {
		case <-dlg.Context().Done():
		case <-ctx.Done():
		}
	})
	ep.srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) { _ = c.dialogs.ReadAck(req, tx) })
	ep.srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		at := time.Now()
		err := c.dialogs.ReadBye(req, tx)
		if err != nil {
			_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
		}
		cfg.Legs.bye(CarrierSide, req, at, err == nil)
	})
	return c, ep.start()
}

// caller places the calls.
type caller struct {
	*endpoint
	dialogs *sipgo.DialogClientCache
}

func newCaller(ctx context.Context, cfg Config, wg *sync.WaitGroup) (*caller, error) {
	ep, err := newEndpoint(ctx, "pbx", cfg.Transport, cfg.Caller, cfg.TLS, cfg.Log, wg)
	if err != nil {
		return nil, err
	}
	c := &caller{endpoint: ep, dialogs: sipgo.NewDialogClientCache(ep.cli, ep.contact)}
	ep.srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		at := time.Now()
		err := c.dialogs.ReadBye(req, tx)
		if err != nil {
			_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
		}
		cfg.Legs.bye(CallerSide, req, at, err == nil)
	})
	// Mid-call requests from the gateway (UPDATE, re-INVITE) are accepted.
	ok := func(req *sip.Request, tx sip.ServerTransaction) {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	}
	ep.srv.OnUpdate(ok)
	ep.srv.OnInfo(ok)
	ep.srv.OnOptions(ok)
	return c, ep.start()
}

// outcome of one call.
type outcome struct {
	status     string // "200", "402", "timeout", …
	callID     string // the caller leg's, "" if the INVITE was never sent
	setup      time.Duration
	endedByGW  bool
	answered   bool
	capped     bool
	hangupFail bool
}

func (c *caller) call(ctx context.Context, cfg Config, due time.Time, from string) outcome {
	host, portS, _ := net.SplitHostPort(cfg.Target)
	port, _ := strconv.Atoi(portS)
	recipient := sip.Uri{Scheme: "sip", User: cfg.Dialled, Host: host, Port: port}
	if cfg.Transport != "udp" {
		recipient.UriParams = sip.NewParams()
		recipient.UriParams.Add("transport", cfg.Transport)
	}
	req := sip.NewRequest(sip.INVITE, recipient)
	fromHdr := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: from, Host: c.contact.Address.Host}, Params: sip.NewParams()}
	fromHdr.Params.Add("tag", sip.GenerateTagN(10))
	req.AppendHeader(fromHdr)
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody([]byte(sdp))

	setupCtx, cancel := context.WithTimeout(ctx, cfg.SetupTimeout)
	defer cancel()
	sess, err := c.dialogs.WriteInvite(setupCtx, req)
	if err != nil {
		return outcome{status: "error"}
	}
	defer sess.Close()
	callID := ""
	if h := req.CallID(); h != nil {
		callID = h.Value()
	}
	if err := sess.WaitAnswer(setupCtx, sipgo.AnswerOptions{}); err != nil {
		var dr *sipgo.ErrDialogResponse
		if errors.As(err, &dr) {
			return outcome{status: strconv.Itoa(dr.Res.StatusCode), callID: callID}
		}
		if setupCtx.Err() != nil {
			return outcome{status: "timeout", callID: callID}
		}
		return outcome{status: "error", callID: callID}
	}
	answered := time.Now()
	o := outcome{status: "200", callID: callID, answered: true, setup: answered.Sub(due)}
	cfg.Legs.answered(CallerSide, callID, contactHostPort(sess.InviteResponse), answered)
	if err := sess.Ack(setupCtx); err != nil {
		o.hangupFail = true
		return o
	}
	hold := time.NewTimer(cfg.Hold)
	defer hold.Stop()
	select {
	case <-sess.Context().Done(): // the gateway hung up first
		o.endedByGW = true
		return o
	case <-hold.C:
	case <-ctx.Done():
	}
	byeCtx, cancelBye := context.WithTimeout(context.Background(), cfg.HangupTimeout)
	defer cancelBye()
	cfg.Legs.hungUp(CallerSide, callID, time.Now())
	if err := sess.Bye(byeCtx); err != nil {
		if sess.Context().Err() != nil {
			o.endedByGW = true // crossed with the gateway's BYE
		} else {
			o.hangupFail = true
		}
	}
	return o
}

// Run places cfg.Calls calls through cfg.Target and reports. progress, if
// not nil, gets a status line every second while the run lasts.
func Run(ctx context.Context, cfg Config, progress io.Writer) (Report, error) {
	if err := cfg.defaults(); err != nil {
		return Report{}, err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	carr, err := newCarrier(runCtx, cfg, &wg)
	if err != nil {
		return Report{}, err
	}
	defer carr.close()
	call, err := newCaller(runCtx, cfg, &wg)
	if err != nil {
		return Report{}, err
	}
	defer call.close()
	r, err := run(runCtx, cfg, call, carr, progress)
	if cfg.Legs != nil {
		carr.drain(cfg.HangupTimeout)
	}
	return r, err
}

// run is the open-loop schedule: start each call when it is due, count its
// outcome, print progress once a second, then drain and report. Kept in
// one piece (over 80 lines) because the counters it shares with the
// per-call goroutines and the progress ticker are clearest as one
// closure's locals.
func run(ctx context.Context, cfg Config, c *caller, carr *carrier, progress io.Writer) (Report, error) {
	hist := hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3) // µs, 3 significant digits
	var (
		mu        sync.Mutex
		rep       = Report{ByStatus: map[string]int{}}
		inFlight  atomic.Int64
		answered  atomic.Int64
		attempted atomic.Int64
		calls     sync.WaitGroup
	)
	record := func(o outcome) {
		mu.Lock()
		defer mu.Unlock()
		rep.ByStatus[o.status]++
		if o.answered {
			rep.Answered++
			_ = hist.RecordValue(o.setup.Microseconds())
			if o.endedByGW {
				rep.EndedByGateway++
			}
			if o.hangupFail {
				rep.Failed++
			}
		} else {
			rep.Failed++
		}
	}

	start := time.Now()
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	done := make(chan struct{})
	if progress != nil {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					mu.Lock()
					failed := rep.Failed
					p99 := float64(hist.ValueAtQuantile(99)) / 1000
					mu.Unlock()
					fmt.Fprintf(progress, "%5.1fs  started %d/%d  answered %d  failed %d  in flight %d  setup p99 %.1f ms\n",
						time.Since(start).Seconds(), attempted.Load(), cfg.Calls, answered.Load(), failed, inFlight.Load(), p99)
				}
			}
		}()
	}
	maxInFlight := int64(0)
	var startedAll time.Duration
	for i := 0; i < cfg.Calls; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		attempted.Add(1)
		if cfg.MaxInFlight > 0 && inFlight.Load() >= int64(cfg.MaxInFlight) {
			record(outcome{status: "capped"})
			continue
		}
		if n := inFlight.Add(1); n > maxInFlight {
			maxInFlight = n
		}
		from := cfg.From[(i/cfg.CallsPer)%len(cfg.From)]
		calls.Add(1)
		go func() {
			defer calls.Done()
			defer inFlight.Add(-1)
			o := c.call(ctx, cfg, due, from)
			cfg.Legs.attempted(o.callID, due, o.status)
			if o.answered {
				answered.Add(1)
			}
			record(o)
		}()
	}
	startedAll = time.Since(start)
	calls.Wait()
	close(done)
	elapsed := time.Since(start)

	mu.Lock()
	defer mu.Unlock()
	rep.Attempted = int(attempted.Load())
	rep.CarrierInvites = carr.invites.Load()
	rep.Elapsed, rep.ElapsedS = elapsed, elapsed.Seconds()
	rep.OfferedCPS = cfg.Rate
	if window := startedAll + interval; window > 0 {
		rep.AchievedCPS = float64(rep.Answered) / window.Seconds()
	}
	rep.MaxInFlightN = int(maxInFlight)
	ms := func(q float64) float64 { return float64(hist.ValueAtQuantile(q)) / 1000 }
	rep.SetupMS = Percentiles{P50: ms(50), P90: ms(90), P99: ms(99), Max: float64(hist.Max()) / 1000}
	return rep, ctx.Err()
}
