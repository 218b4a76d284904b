package gateway

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo/sip"
)

const fuzzInvite = "INVITE sip:+442079460018@127.0.0.1 SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-fuzz-1\r\n" +
	"Max-Forwards: 70\r\n" +
	"From: <sip:+12125550100@pbx.example>;tag=fz1\r\n" +
	"To: <sip:+442079460018@127.0.0.1>\r\n" +
	"Call-ID: fuzz-1@pbx.example\r\n" +
	"CSeq: 1 INVITE\r\n" +
	"Contact: <sip:pbx@127.0.0.1:5099>\r\n" +
	"P-Asserted-Identity: <sip:+12125550100@pbx.example>\r\n" +
	"Content-Type: application/sdp\r\n" +
	"Content-Length: 0\r\n\r\n"

// FuzzSIPDatagram sends arbitrary datagrams to a running gateway from an
// address of a funded customer trunk — what anyone who can spoof or own a
// PBX's address can do. Nothing may crash it, and it must keep answering
// and keep the money consistent.
func FuzzSIPDatagram(f *testing.F) {
	for _, s := range []string{fuzzInvite,
		"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-o\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
		"BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-b\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: b1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
		"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-r\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
		"\r\n\r\n", "INVITE", ""} {
		f.Add([]byte(s))
	}
	e := newEnv(f, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	// Any port of 127.0.0.1 is the PBX, so the datagrams below reach
	// authorization, not just the trunk check.
	must(f, e.ledger.PutTrunk(ledger.Trunk{ID: "pbx-any-port", Kind: rating.TrunkCustomer, Org: "acme", Addresses: []string{"127.0.0.1"}}))
	e.gw.ReloadTrunks()
	conn, err := net.Dial("udp", e.gw.Addr())
	must(f, err)
	f.Cleanup(func() { conn.Close() })
	var n atomic.Int64

	f.Fuzz(func(t *testing.T, datagram []byte) {
		if len(datagram) > 65000 {
			return
		}
		_, _ = conn.Write(datagram)
		if k := n.Add(1); k != 1 && k%500 != 0 {
			return
		}
		// After the first datagram and every 500th: still answering, money
		// still consistent.
		opts := sip.NewRequest(sip.OPTIONS, sip.Uri{Scheme: "sip", Host: "127.0.0.1", Port: e.gw.addr.port})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := e.caller.cli.Do(ctx, opts)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("gateway stopped answering OPTIONS after %d datagrams: %v %v", n.Load(), res, err)
		}
		if err := e.ledger.CheckInvariants(); err != nil {
			t.Fatalf("after %d datagrams: %v", n.Load(), err)
		}
	})
}

// An INVITE without one of the headers every request must carry gets 400
// naming it — found by FuzzSIPDatagram: one without Call-ID crashed the
// gateway.
func TestInviteMissingHeaderGets400(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "pbx-any-port", Kind: rating.TrunkCustomer, Org: "acme", Addresses: []string{"127.0.0.1"}}))
	e.gw.ReloadTrunks()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	defer conn.Close()
	gw, err := net.ResolveUDPAddr("udp", e.gw.Addr())
	must(t, err)
	for i, h := range []string{"Call-ID", "From", "To"} {
		var b strings.Builder
		for _, line := range strings.Split(fuzzInvite, "\r\n") {
			if !strings.HasPrefix(line, h+":") {
				b.WriteString(strings.Replace(line, "z9hG4bK-fuzz-1", fmt.Sprintf("z9hG4bK-missing-%d", i), 1) + "\r\n")
			}
		}
		// Responses go to the Via's address: this socket's.
		msg := strings.ReplaceAll(strings.TrimSuffix(b.String(), "\r\n"), "127.0.0.1:5099", conn.LocalAddr().String())
		_, err := conn.WriteTo([]byte(msg), gw)
		must(t, err)
		buf := make([]byte, 4096)
		for {
			must(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				t.Fatalf("INVITE without %s: no final answer: %v", h, err)
			}
			if strings.HasPrefix(string(buf[:n]), "SIP/2.0 100") {
				continue
			}
			if want := "SIP/2.0 400 Missing " + h; !strings.HasPrefix(string(buf[:n]), want) {
				t.Fatalf("INVITE without %s answered %q; want %q", h, strings.SplitN(string(buf[:n]), "\r\n", 2)[0], want)
			}
			break
		}
	}
	if n := e.carrier.invites.Load(); n != 0 {
		t.Fatalf("%d malformed INVITEs reached the carrier", n)
	}
}
