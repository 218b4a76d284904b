package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo/sip"
)

// outcome is what a torture message gets on one transport: the final
// statuses of the responses to it (in order; a TCP stream can carry two
// requests), or none of them and what became of the connection.
type outcome struct {
	finals []int
	// UDP: no response (a probe sent after it is answered). TCP: the
	// connection stays open with nothing answered (a partial message
	// waiting for its missing bytes), or is closed by the gateway.
	silent, closed bool
	// skip: the message is not sent on this transport (see the README).
	skip bool
	// or is another outcome the RFC accepts as well, where which one
	// happens depends on how the stream's bytes arrive.
	or *outcome
}

func finals(codes ...int) outcome { return outcome{finals: codes} }

// either is a or b.
func either(a, b outcome) outcome { a.or = &b; return a }

// is reports whether got is the outcome o, or its alternative.
func (o outcome) is(got outcome) bool {
	if slices.Equal(got.finals, o.finals) && got.silent == o.silent && got.closed == o.closed {
		return true
	}
	return o.or != nil && o.or.is(got)
}

var (
	silent = outcome{silent: true}
	closed = outcome{closed: true}
	skip   = outcome{skip: true}
)

func (o outcome) String() string {
	switch {
	case o.or != nil:
		o2 := o
		o2.or = nil
		return o2.String() + " or " + o.or.String()
	case o.closed:
		return "connection closed"
	case o.silent:
		return "no response"
	}
	return fmt.Sprint(o.finals)
}

// rfc4475 is testdata/rfc4475/README.md as a table: every message of RFC
// 4475 and what the gateway gives it over UDP and over TCP. The README
// says why for each.
var rfc4475 = []struct {
	name     string
	udp, tcp outcome
}{
	// 3.1.1 valid messages
	{"wsinv", finals(400), finals(400)},
	{"intmeth", finals(501), finals(501)},
	{"esc01", finals(403), finals(403)},
	{"escnull", finals(405), finals(405)},
	{"esc02", finals(501), finals(501)},
	{"lwsdisp", finals(200), finals(200)},
	{"longreq", skip, finals(403)},
	{"dblreq", finals(405), skip},
	{"semiuri", finals(200), finals(200)},
	{"transports", finals(200), finals(200)},
	{"mpart01", finals(405), finals(405)},
	{"unreason", silent, silent},
	{"noreason", silent, silent},
	// 3.1.2 invalid messages
	{"badinv01", finals(400), closed},
	{"clerr", finals(400), silent},
	{"ncl", finals(400), closed},
	{"scalar02", finals(400), closed},
	{"scalarlg", silent, closed},
	{"quotbal", finals(400), closed},
	{"ltgtruri", finals(400), closed},
	{"lwsruri", finals(400), closed},
	{"lwsstart", finals(400), closed},
	{"trws", finals(400), closed},
	{"escruri", finals(403), finals(403)},
	{"baddate", finals(403), finals(403)},
	{"regbadct", finals(405), finals(405)},
	{"badaspec", finals(400), closed},
	{"baddn", finals(400), silent},
	{"badvers", finals(505), finals(505)},
	{"mismatch01", finals(400), finals(400)},
	{"mismatch02", finals(501), finals(501)},
	{"bigcode", silent, closed},
	// 3.2 transaction layer
	{"badbranch", finals(200), finals(200)},
	// 3.3 application layer
	{"insuf", finals(400), finals(400)},
	{"unkscm", finals(416), finals(416)},
	{"novelsc", finals(400), closed},
	{"unksm2", finals(405), finals(405)},
	{"bext01", finals(200), finals(200)},
	{"invut", finals(415), finals(415)},
	{"regaut01", finals(405), finals(405)},
	{"multi01", finals(400), finals(400)},
	// On a stream, two Content-Lengths either break the framing (closed) or
	// frame by one of them and reach checkRequest (400): both are right.
	{"mcl01", finals(400), either(closed, finals(400))},
	{"bcast", silent, silent},
	{"zeromf", finals(200), finals(200)},
	{"cparam01", finals(405), finals(405)},
	{"cparam02", finals(405), finals(405)},
	{"regescrt", finals(405), finals(405)},
	{"sdp01", finals(406), finals(406)},
	// 3.4 backward compatibility
	{"inv2543", finals(400), closed},
}

// TestRFC4475 sends each RFC 4475 torture message, byte for byte as the
// RFC has it (only the top Via's sent-by is pointed at the sender, so a
// UDP answer can find it), from a funded customer trunk's address to a
// running gateway over UDP and over TCP, and checks what it gets. None may
// crash the gateway, leave it silent for a well-formed probe, reach the
// carrier, or move money.
func TestRFC4475(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	// Every port of 127.0.0.1 is the PBX: UDP sockets and TCP connections
	// of the test come from ports of their own.
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "pbx-any-port", Kind: rating.TrunkCustomer, Org: "acme", Addresses: []string{"127.0.0.1"}}))
	e.gw.ReloadTrunks()

	files, err := filepath.Glob("testdata/rfc4475/*.dat")
	must(t, err)
	if len(files) != 49 || len(rfc4475) != 49 {
		t.Fatalf("%d message files and %d table rows; RFC 4475 has 49 messages", len(files), len(rfc4475))
	}
	for _, tc := range rfc4475 {
		// RFC4475_ONLY=name runs one message, for a look with GW_TEST_LOG=1.
		if only := os.Getenv("RFC4475_ONLY"); only != "" && only != tc.name {
			continue
		}
		msg, err := os.ReadFile(filepath.Join("testdata/rfc4475", tc.name+".dat"))
		must(t, err)
		t.Run(tc.name+"/udp", func(t *testing.T) {
			if tc.udp.skip {
				t.Skip("not a UDP message: see testdata/rfc4475/README.md")
			}
			if got := sendUDP(t, e.gw.Addr(), msg); !tc.udp.is(got) {
				t.Errorf("%s over UDP: %v, want %v", tc.name, got, tc.udp)
			}
		})
		t.Run(tc.name+"/tcp", func(t *testing.T) {
			if tc.tcp.skip {
				t.Skip("not a TCP message: see testdata/rfc4475/README.md")
			}
			if got := sendTCP(t, e.gw.Addr(), msg, tc.tcp); !tc.tcp.is(got) {
				t.Errorf("%s over TCP: %v, want %v", tc.name, got, tc.tcp)
			}
		})
	}

	// Nothing reached the carrier, nothing was held or charged, no call is
	// up, and the gateway still answers a well-formed request.
	if n := e.carrier.invites.Load(); n != 0 {
		t.Errorf("%d torture INVITEs reached the carrier", n)
	}
	o, err := e.ledger.Org("acme")
	must(t, err)
	if !o.Balance.Equal(d("50.00")) || !o.Held.IsZero() {
		t.Errorf("balance %s held %s; want 50.00 and nothing held", o.Balance, o.Held)
	}
	if n := len(e.cdrs("acme")); n != 0 {
		t.Errorf("%d CDRs", n)
	}
	if n := len(e.gw.Calls()); n != 0 {
		t.Errorf("%d calls up", n)
	}
	must(t, e.ledger.CheckInvariants())
	opts := sip.NewRequest(sip.OPTIONS, sip.Uri{Scheme: "sip", Host: "127.0.0.1", Port: e.gw.addr.port})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if res, err := e.caller.cli.Do(ctx, opts); err != nil || res.StatusCode != 200 {
		t.Fatalf("OPTIONS after the torture messages: %v %v", res, err)
	}
}

// answerWait bounds how long a response may take; it is a correctness
// bound (an answer within one transaction), not a timing.
const answerWait = 5 * time.Second

// silenceWait is how long a TCP connection is watched for an answer that
// should not come. A stream carrying half a message gives the test nothing
// to order a probe after.
const silenceWait = 300 * time.Millisecond

var statusLine = regexp.MustCompile(`(?m)^SIP/2\.0 (\d{3}) `)

// sendUDP sends msg from a socket of its own and reports the final
// answers to it. A probe OPTIONS follows it from the same socket: the
// gateway reads a socket's datagrams in order and parses (or drops) each
// before the next, so once the probe is answered a dropped message is
// known to be dropped.
func sendUDP(t *testing.T, gw string, msg []byte) outcome {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	defer conn.Close()
	port := conn.LocalAddr().(*net.UDPAddr).Port
	to, err := net.ResolveUDPAddr("udp", gw)
	must(t, err)
	_, err = conn.WriteTo(pointVia(msg, "UDP", port), to)
	must(t, err)
	probeID := fmt.Sprintf("probe-%d", port)
	_, err = conn.WriteTo([]byte(probe(gw, port, probeID)), to)
	must(t, err)

	var got outcome
	probed := false
	buf := make([]byte, 65536)
	deadline := time.Now().Add(answerWait)
	for {
		must(t, conn.SetReadDeadline(deadline))
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			break
		}
		res := buf[:n]
		m := statusLine.FindSubmatch(res)
		if m == nil {
			t.Fatalf("not a response: %q", res)
		}
		code, _ := strconv.Atoi(string(m[1]))
		if bytes.Contains(res, []byte(probeID)) {
			if code != 200 {
				t.Fatalf("probe answered %d", code)
			}
			probed = true
		} else if code >= 200 {
			got.finals = append(got.finals, code)
		}
		if probed && len(got.finals) > 0 {
			break
		}
		if probed && len(got.finals) == 0 {
			// Whatever the message started has had the time the probe
			// took; a handler's answer still on its way gets a little
			// more.
			deadline = time.Now().Add(silenceWait)
		}
	}
	if !probed {
		t.Fatal("the gateway did not answer a well-formed OPTIONS after the message")
	}
	got.silent = len(got.finals) == 0
	return got
}

// sendTCP sends msg on a connection of its own and reports the answers
// to it, and whether the gateway closed the connection. A message that
// should stay unanswered is watched for silenceWait: a stream left
// holding half a message gives nothing to order a probe after.
func sendTCP(t *testing.T, gw string, msg []byte, want outcome) outcome {
	t.Helper()
	conn, err := net.Dial("tcp", gw)
	must(t, err)
	defer conn.Close()
	port := conn.LocalAddr().(*net.TCPAddr).Port
	_, err = conn.Write(pointVia(msg, "TCP", port))
	must(t, err)
	var got outcome
	var stream []byte
	buf := make([]byte, 65536)
	// Until a first answer: answerWait. After one, a stream may carry a
	// second request (dblreq): its answer gets silenceWait more.
	deadline := time.Now().Add(answerWait)
	if want.silent {
		deadline = time.Now().Add(silenceWait)
	}
	for {
		must(t, conn.SetReadDeadline(deadline))
		n, err := conn.Read(buf)
		stream = append(stream, buf[:n]...)
		got.finals = got.finals[:0]
		for _, m := range statusLine.FindAllSubmatch(stream, -1) {
			if code, _ := strconv.Atoi(string(m[1])); code >= 200 {
				got.finals = append(got.finals, code)
			}
		}
		if err != nil {
			got.closed = err == io.EOF && len(got.finals) == 0
			break
		}
		if len(got.finals) > 0 {
			deadline = time.Now().Add(silenceWait)
		}
	}
	got.silent = len(got.finals) == 0 && !got.closed
	return got
}

// probe is a well-formed OPTIONS from port with Call-ID id.
func probe(gw string, port int, id string) string {
	return "OPTIONS sip:" + gw + " SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:" + strconv.Itoa(port) + ";branch=z9hG4bK-" + id + "\r\n" +
		"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:" + gw + ">\r\n" +
		"Call-ID: " + id + "\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
}

// pointVia rewrites the sent-by (host and port) of msg's first Via to
// 127.0.0.1:port and its transport to the one msg is sent on, so that an
// answer, which goes to the source address and the Via's port over UDP
// (RFC 3261 §18.2.2) and by the Via's transport, reaches the sender.
// Nothing else of the RFC's bytes changes; a message whose first Via
// cannot be read that far is sent as it is.
func pointVia(msg []byte, transport string, port int) []byte {
	s := string(msg)
	lower := strings.ToLower(s)
	at := -1
	for _, name := range []string{"\r\nvia", "\r\nv "} {
		if i := strings.Index(lower, name); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	if i := strings.Index(lower, "\r\nv:"); i >= 0 && (at < 0 || i < at) {
		at = i
	}
	if at < 0 {
		return msg
	}
	i := strings.IndexByte(s[at+2:], ':')
	if i < 0 {
		return msg
	}
	i += at + 3
	lws := func() {
		for i < len(s) {
			switch {
			case s[i] == ' ' || s[i] == '\t':
				i++
			case strings.HasPrefix(s[i:], "\r\n ") || strings.HasPrefix(s[i:], "\r\n\t"):
				i += 3
			default:
				return
			}
		}
	}
	expect := func(tok string) bool {
		lws()
		if !strings.HasPrefix(strings.ToUpper(s[i:]), tok) {
			return false
		}
		i += len(tok)
		return true
	}
	if !expect("SIP") || !expect("/") {
		return msg
	}
	lws()
	for i < len(s) && strings.ContainsRune("0123456789.", rune(s[i])) {
		i++ // the version, as sent (badvers has 7.0)
	}
	if !expect("/") {
		return msg
	}
	lws()
	tp := i
	for i < len(s) && !strings.ContainsRune(" \t\r\n", rune(s[i])) {
		i++ // the transport: the one the message is sent on
	}
	s = s[:tp] + transport + s[i:]
	i = tp + len(transport)
	lws()
	start := i
	for i < len(s) && !strings.ContainsRune(";, \t\r\n", rune(s[i])) {
		i++ // host[:port]
	}
	if i == start {
		return msg
	}
	return []byte(s[:start] + "127.0.0.1:" + strconv.Itoa(port) + s[i:])
}
