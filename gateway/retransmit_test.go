package gateway

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// rawCarrier is a carrier on a bare UDP socket, so a test controls every
// datagram: what sipgo would retransmit by itself, it sends when told.
type rawCarrier struct {
	t    *testing.T
	conn net.PacketConn
	gw   net.Addr // where the gateway's requests came from
}

func (c *rawCarrier) read(method sip.RequestMethod) *sip.Request {
	c.t.Helper()
	buf := make([]byte, 65535)
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.conn.ReadFrom(buf)
		if err != nil {
			c.t.Fatalf("carrier waiting for %s: %v", method, err)
		}
		msg, err := sip.ParseMessage(buf[:n])
		if err != nil {
			c.t.Fatalf("carrier got unparsable %q: %v", buf[:n], err)
		}
		if req, ok := msg.(*sip.Request); ok && req.Method == method {
			c.gw = from
			return req
		}
	}
}

func (c *rawCarrier) send(m sip.Message) {
	c.t.Helper()
	if _, err := c.conn.WriteTo([]byte(m.String()), c.gw); err != nil {
		c.t.Fatal(err)
	}
}

// TestAnswerRetransmissionsAreACKed: a carrier whose 200 OK goes out again
// (its first ACK lost or late, RFC 3261 §13.3.1.4) gets an ACK for every
// copy (§13.2.2.4), the call stays up and is billed once.
func TestAnswerRetransmissionsAreACKed(t *testing.T) {
	e := newEnv(t, testDeck)
	conn, addr, _ := listenUDP(t)
	defer conn.Close()
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "carrier", Kind: rating.TrunkCarrier, URI: "sip:" + addr, Prefixes: []string{""}}))
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	c := &rawCarrier{t: t, conn: conn}

	dialled := make(chan *sipgo.DialogClientSession, 1)
	go func() {
		sess, _, _, err := e.caller.tryDial(e.gw.Addr(), "+12125550100", "+442079460018")
		if err != nil {
			t.Error(err)
		}
		dialled <- sess
	}()
	inv := c.read(sip.INVITE)
	ok := sip.NewResponseFromRequest(inv, 200, "OK", []byte(testSDP))
	ok.To().Params.Add("tag", "carrier-tag")
	ok.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", Host: "127.0.0.1", Port: conn.LocalAddr().(*net.UDPAddr).Port}})
	ok.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	c.send(ok)
	first := c.read(sip.ACK)
	sess := <-dialled
	if sess == nil {
		t.Fatal("the caller's call was not answered")
	}
	for i := 0; i < 3; i++ {
		c.send(ok)
		ack := c.read(sip.ACK)
		if ack.CallID().Value() != first.CallID().Value() || ack.CSeq().SeqNo != inv.CSeq().SeqNo {
			t.Fatalf("ACK %d of the retransmitted 200 is not in the call's dialog:\n%s", i+2, ack)
		}
		if tag, _ := ack.To().Params.Get("tag"); tag != "carrier-tag" {
			t.Fatalf("ACK %d To tag %q", i+2, tag)
		}
	}
	if n := e.answeredCalls(); n != 1 {
		t.Fatalf("%d calls answered, want the one", n)
	}
	e.clock.Advance(10 * time.Second)
	eventually(t, "ten seconds metered", func() bool {
		cs := e.gw.Calls()
		return len(cs) == 1 && cs[0].Increment >= 11
	})

	hungUp := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hungUp <- sess.Bye(ctx)
	}()
	bye := c.read(sip.BYE)
	c.send(sip.NewResponseFromRequest(bye, 200, "OK", nil))
	must(t, <-hungUp)
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	if cdr := e.cdrs("acme")[0]; cdr.BilledS != 11 || cdr.DisconnectReason != ledger.ReasonCallerHangup {
		t.Fatalf("CDR %+v, want 11 s billed once (10 s and the one started)", cdr)
	}
}
