package gateway

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// TestEndLegsFromAnotherGateway: a call up on one gateway is ended by a
// second gateway (another address, another ledger) from the dialog record
// the first stored with the answer, as a surviving cluster node ends a
// dead node's call: the caller and the carrier each get a BYE in their
// dialog, from the second gateway. A record that does not parse is an
// error and sends nothing.
func TestEndLegsFromAnotherGateway(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	cs := e.gw.snapshot()
	if len(cs) != 1 {
		t.Fatalf("%d calls up", len(cs))
	}
	c := cs[0]
	c.mu.Lock()
	rec, id := c.dialogRecord(), c.id
	c.mu.Unlock()
	if rec == nil {
		t.Fatal("no dialog record for an answered call")
	}

	// The survivor: another gateway on another port, its own ledger.
	l2, err := ledger.Open(t.TempDir(), ledger.Options{Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	deck, err := rating.ParseDeck(strings.NewReader(testDeck))
	if err != nil {
		t.Fatal(err)
	}
	g2, err := New(testConfig(), l2, deck, e.clock, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	must(t, g2.Start())
	t.Cleanup(func() { g2.Close(); l2.Close() })
	if g2.Addr() == e.gw.Addr() {
		t.Fatalf("both gateways on %s", g2.Addr())
	}

	if err := g2.EndLegs(context.Background(), id, []byte(`{"in":`)); err == nil {
		t.Fatal("a broken record was accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g2.EndLegs(ctx, id, rec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	var st dialogState
	must(t, json.Unmarshal(rec, &st))
	if _, ok := e.carrier.byeAt.Load(st.Out.CallID); !ok {
		t.Errorf("the carrier's BYE was not in the call's dialog %s", st.Out.CallID)
	}
}

// byeSink is a SIP user agent that answers BYE 200 on one transport and
// counts them by Call-ID; on TCP it also counts the connections it took.
type byeSink struct {
	addr  string
	byes  sync.Map // Call-ID → struct{}
	conns atomic.Int32
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newByeSink(t *testing.T, transport string) *byeSink {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("sink-" + transport))
	must(t, err)
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(quietLog()))
	must(t, err)
	s := &byeSink{}
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		s.byes.Store(req.CallID().Value(), struct{}{})
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	done := make(chan struct{})
	switch transport {
	case "udp":
		conn, addr, _ := listenUDP(t)
		s.addr = addr
		go func() { defer close(done); _ = srv.ServeUDP(conn) }()
		t.Cleanup(func() { ua.Close(); conn.Close(); <-done })
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(t, err)
		s.addr = ln.Addr().String()
		go func() { defer close(done); _ = srv.ServeTCP(countingListener{ln, &s.conns}) }()
		t.Cleanup(func() { ua.Close(); ln.Close(); <-done })
	}
	return s
}

func (s *byeSink) got(callID string) bool { _, ok := s.byes.Load(callID); return ok }

// TestEndLegsUDPAndTCP: a survivor ends a dead node's call whose caller
// leg is on TCP and carrier leg on UDP, from the dialog record alone: the
// TCP leg gets its BYE over a new connection from the survivor (the dead
// node's connection died with it), the UDP leg from the survivor's socket.
func TestEndLegsUDPAndTCP(t *testing.T) {
	e := newEnv(t, testDeck)
	tcp, udp := newByeSink(t, "tcp"), newByeSink(t, "udp")
	st := dialogState{
		In: legState{CallID: "in-leg@pbx", From: "<sip:+33142278186@gw>;tag=gw-in", To: "<sip:+12125550100@pbx>;tag=pbx",
			Target: "sip:pbx@" + tcp.addr + ";transport=tcp", CSeq: 1, Transport: "TCP"},
		Out: legState{CallID: "out-leg@gw", From: "<sip:+12125550100@gw>;tag=gw-out", To: "<sip:+33142278186@carrier>;tag=carrier",
			Target: "sip:carrier@" + udp.addr, CSeq: 2, Transport: "UDP"},
	}
	rec, err := json.Marshal(st)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must(t, e.gw.EndLegs(ctx, "dead-call", rec))
	eventually(t, "the TCP leg gets its BYE", func() bool { return tcp.got("in-leg@pbx") })
	eventually(t, "the UDP leg gets its BYE", func() bool { return udp.got("out-leg@gw") })
	if n := tcp.conns.Load(); n != 1 {
		t.Errorf("the TCP leg took %d connections, want the survivor's one new connection", n)
	}
}
