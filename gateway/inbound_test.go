package gateway

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestJunkIsDroppedAndCounted: what is not SIP, is too large, or does not
// parse is dropped and counted by reason; the gateway goes on answering.
func TestJunkIsDroppedAndCounted(t *testing.T) {
	e := newEnv(t, testDeck)
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	defer conn.Close()
	gw, err := net.ResolveUDPAddr("udp", e.gw.Addr())
	must(t, err)
	send := func(b []byte) {
		_, err := conn.WriteTo(b, gw)
		must(t, err)
	}
	send([]byte("GET / HTTP/1.0\r\n\r\n"))
	send([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // a TLS hello on the UDP port
	send([]byte("\r\n\r\n"))                         // a keep-alive: not junk
	send([]byte("INVITE sip:x@127.0.0.1 SIP/2.0\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\r\n", 20) + "\r\n"))
	send([]byte("INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia SIP/2.0/UDP nowhere\r\n\r\n"))
	count := func(r string) float64 { return testutil.ToFloat64(e.gw.m.dropped.WithLabelValues(r)) }
	eventually(t, "junk counted", func() bool {
		// The HTTP request starts like a SIP request line: it fails in
		// the parser, with the INVITE whose Via has no colon.
		return count(dropNotSIP) == 1 && count(dropOversized) == 1 && count(dropMalformed) == 2
	})
	opts := sip.NewRequest(sip.OPTIONS, sip.Uri{Scheme: "sip", Host: "127.0.0.1", Port: e.gw.addr.port})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if res, err := e.caller.cli.Do(ctx, opts); err != nil || res.StatusCode != 200 {
		t.Fatalf("OPTIONS after junk: %v %v", res, err)
	}
}

func TestSIPStart(t *testing.T) {
	for s, want := range map[string]bool{"INVITE sip:a@b SIP/2.0": true, "SIP/2.0 200 OK": true, "ACK sip:x": true,
		"GET / HTTP/1.1": true, "invite sip:a": true, "\x16\x03\x01": false, "": false, "OK": false, "ABCDEFGHIJKLMNOPQRS x": true,
		"!interesting-Method0123456789_*+`.%indeed'~ sip:x": true, strings.Repeat("A", 65) + " x": false, "<html> x": false} {
		if got := sipStart([]byte(s)); got != want {
			t.Errorf("sipStart(%q) = %v, want %v", s, got, want)
		}
	}
}
