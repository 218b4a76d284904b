package gateway

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/google/uuid"
)

// A request the gateway cannot handle gets a final response naming the
// problem at once — before anything about a call is looked at and before
// any money is held — never silence: a caller that hears nothing
// retransmits for 32 s and then sees a timeout, and a call half set up
// would have to be undone. Three layers:
//
//   - checkRequest: what RFC 3261 requires of every request sipgo parsed
//     (the version, one CSeq naming the method, one of each single-value
//     header, a Request-URI scheme the gateway routes);
//   - checkInvite: what an INVITE needs on top to become a call;
//   - answerUnparsable: a UDP request sipgo's parser would drop silently
//     gets a stateless 400 from the read filter instead.
//
// The RFC 4475 torture messages (testdata/rfc4475) exercise all three.

// badRequest is why a request cannot be handled: the final response it
// gets, with a Warning saying what is wrong.
type badRequest struct {
	status  int
	phrase  string
	warning string
}

// singleValued are the headers a request carries at most once (RFC 3261
// §7.3.1, §20); two of them leave the request ambiguous. Compact forms are
// counted with their long names.
var singleValued = [][2]string{{"Call-ID", "i"}, {"From", "f"}, {"To", "t"}, {"CSeq", ""},
	{"Content-Length", "l"}, {"Max-Forwards", ""}, {"Content-Type", "c"}}

// checkRequest returns what is wrong with a parsed request, or nil. The
// headers missingHeader asks for may still be absent.
func checkRequest(req *sip.Request) *badRequest {
	// RFC 3261 §8.2.2 / RFC 4475 §3.1.2.16.
	if req.SipVersion != "SIP/2.0" {
		return &badRequest{505, "Version Not Supported", "only SIP/2.0 is spoken here"}
	}
	for _, h := range singleValued {
		n := len(req.GetHeaders(h[0]))
		if h[1] != "" {
			n += len(req.GetHeaders(h[1]))
		}
		if n > 1 {
			return &badRequest{400, "Duplicate " + h[0], fmt.Sprintf("%d %s headers; a request carries one", n, h[0])}
		}
	}
	// RFC 3261 §8.1.1.5: the CSeq method matches the request's.
	if cs := req.CSeq(); cs != nil && cs.MethodName != req.Method {
		return &badRequest{400, "CSeq Method Mismatch", "the CSeq method is not the request's"}
	}
	// RFC 3261 §8.2.2.1: a Request-URI scheme the UAS does not understand
	// gets 416. The gateway routes sip: and sips: only; sipgo keeps any
	// other URI opaque, with no user part to dial.
	if s := req.Recipient.Scheme; s != "sip" && s != "sips" {
		return &badRequest{416, "Unsupported URI Scheme", "the Request-URI must be a sip: or sips: URI"}
	}
	return nil
}

// checkInvite returns what is wrong with an INVITE that carries every
// header missingHeader asks for and passed checkRequest, or nil.
func checkInvite(req *sip.Request) *badRequest {
	// RFC 3261 §8.1.1.8: an INVITE carries one SIP or SIPS Contact, the
	// caller's remote target for every later request of the dialog. sipgo
	// parses Contact with the message (one that does not parse never gets
	// here, see answerUnparsable) and returns nil for a missing one.
	ct := req.Contact()
	switch {
	case ct == nil:
		return &badRequest{400, "Missing Contact", "an INVITE needs a Contact header"}
	case ct.Address.Wildcard || (ct.Address.Scheme != "sip" && ct.Address.Scheme != "sips") || ct.Address.Host == "":
		return &badRequest{400, "Invalid Contact", "the Contact must be a sip: or sips: URI with a host"}
	}
	// The caller's dialog is identified by the From tag (RFC 3261 §12.1.1);
	// an RFC 2543 INVITE without one cannot become a dialog here.
	if tag, _ := req.From().Params.Get("tag"); strings.TrimSpace(tag) == "" {
		return &badRequest{400, "Missing From tag", "the From header needs a tag"}
	}
	// The body goes to the carrier untouched: an SDP offer, or a
	// multipart body carrying one (SIP-I). RFC 3261 §21.4.13.
	if ct := req.ContentType(); ct != nil && len(req.Body()) > 0 {
		mt := strings.ToLower(strings.TrimSpace(strings.SplitN(ct.Value(), ";", 2)[0]))
		if mt != "application/sdp" && !strings.HasPrefix(mt, "multipart/") {
			return &badRequest{415, "Unsupported Media Type", "the body must be application/sdp"}
		}
	}
	// The answer carries the carrier's SDP: a caller that accepts no SDP
	// cannot be answered (RFC 3261 §21.4.7, RFC 4475 §3.3.15).
	if accepts := req.GetHeaders("Accept"); len(accepts) > 0 && !acceptsSDP(accepts) {
		return &badRequest{406, "Not Acceptable", "the answer is application/sdp, which Accept does not list"}
	}
	return nil
}

func acceptsSDP(accepts []sip.Header) bool {
	for _, h := range accepts {
		for _, r := range strings.Split(h.Value(), ",") {
			mt := strings.ToLower(strings.TrimSpace(strings.SplitN(r, ";", 2)[0]))
			if mt == "application/sdp" || mt == "application/*" || mt == "*/*" || mt == "" {
				return true
			}
		}
	}
	return false
}

// refuseBadRequest answers a request checkRequest or checkInvite found
// wrong.
func (g *Gateway) refuseBadRequest(req *sip.Request, tx sip.ServerTransaction, b *badRequest) {
	res := sip.NewResponseFromRequest(req, b.status, b.phrase, nil)
	res.SipVersion = "SIP/2.0" // sipgo copies the request's, SIP/7.0 included
	res.AppendHeader(sip.NewHeader("Warning", fmt.Sprintf("399 creditgate %q", b.warning)))
	if b.status == 415 {
		res.AppendHeader(sip.NewHeader("Accept", "application/sdp"))
	}
	_ = tx.Respond(res)
}

// trialParser parses UDP requests in the read filter to find those
// sipgo's own parse would drop. Parsing is stateless: one is enough.
var trialParser = sip.NewParser()

// answerUnparsable is the read filter's part for a UDP request: if sipgo
// cannot parse it, the sender gets a stateless 400 (RFC 3261 §8.2.6,
// RFC 4475 §3.1.2) built from the raw Via, From, To, Call-ID and CSeq
// lines, and the datagram is dropped before sipgo logs it whole. It
// reports whether the datagram was handled here. It costs a second parse
// of each request (about 6 µs for an INVITE with SDP); responses and ACKs
// (which get no answer) are not parsed twice.
func (g *Gateway) answerUnparsable(info sip.TransportReadProps, data []byte) bool {
	if bytes.HasPrefix(data, []byte("SIP/2.0 ")) || bytes.HasPrefix(data, []byte("ACK ")) {
		return false
	}
	if _, err := trialParser.ParseSIP(data); err == nil {
		return false
	}
	g.dropped(dropMalformed, info)
	res, ok := statelessBadRequest(data)
	if !ok || info.RemoteAddr == nil || g.udp == nil {
		return true // no way to match an answer to it: dropped, counted
	}
	_, _ = g.udp.WriteTo(res, info.RemoteAddr)
	return true
}

// statelessBadRequest builds the 400 for a request that does not parse:
// the raw Via, From, To, Call-ID and CSeq lines (with their continuation
// lines) copied as RFC 3261 §8.2.6.2 asks, a To tag added. A request
// without every one of them cannot be matched by its sender, and gets
// nothing.
func statelessBadRequest(data []byte) ([]byte, bool) {
	head, _, _ := bytes.Cut(data, []byte("\r\n\r\n"))
	lines := strings.Split(string(head), "\r\n")
	copied := map[string][]string{}
	phrase, warning := "Bad Request", "the request does not parse"
	var last string
	for _, l := range lines[1:] {
		if l != "" && (l[0] == ' ' || l[0] == '\t') {
			if last != "" {
				copied[last] = append(copied[last], l)
			}
			continue
		}
		last = ""
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch n := strings.ToLower(strings.TrimSpace(name)); n {
		case "via", "v", "from", "f", "to", "t", "call-id", "i", "cseq":
			last = map[string]string{"v": "via", "f": "from", "t": "to", "i": "call-id"}[n]
			if last == "" {
				last = n
			}
			copied[last] = append(copied[last], l)
		case "contact", "m":
			var u sip.Uri
			params := sip.NewParams()
			if strings.TrimSpace(value) != "*" {
				if _, err := sip.ParseAddressValue(strings.TrimSpace(value), &u, &params); err != nil {
					phrase, warning = "Invalid Contact", "the Contact header does not parse"
				}
			}
		}
	}
	for _, h := range []string{"via", "from", "to", "call-id", "cseq"} {
		if len(copied[h]) == 0 {
			return nil, false
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "SIP/2.0 400 %s\r\n", phrase)
	for _, h := range []string{"via", "from", "to", "call-id", "cseq"} {
		for i, l := range copied[h] {
			b.WriteString(l)
			if h == "to" && i == len(copied[h])-1 && !strings.Contains(strings.ToLower(strings.Join(copied[h], "")), "tag=") {
				b.WriteString(";tag=" + uuid.NewString()[:8])
			}
			b.WriteString("\r\n")
		}
	}
	fmt.Fprintf(&b, "Warning: 399 creditgate %q\r\nContent-Length: 0\r\n\r\n", warning)
	return b.Bytes(), true
}
