package gateway

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// What reaches the SIP port from the public edge is mostly not SIP at all
// (scanners, amplification probes, garbage) or SIP that does not parse.
// Both are dropped before they cost a parse or a transaction, and counted
// in creditgate_sip_dropped_total{reason}; the log gets one line every
// droppedLogEvery at most, never the bytes themselves (sipgo would log
// every bad datagram whole, at error level: a log flood and a way to put
// arbitrary bytes in the operator's logs).

// MaxDatagram is the largest UDP message taken. A SIP request over UDP
// should fit a path's MTU (RFC 3261 §18.1.1); 16 KiB leaves room for the
// largest real INVITE with its SDP, and a flood of 64 KiB datagrams is not
// parsed.
const MaxDatagram = 16 << 10

const droppedLogEvery = 10 * time.Second

// Reasons for creditgate_sip_dropped_total.
const (
	dropNotSIP    = "not_sip"
	dropOversized = "oversized"
	dropMalformed = "malformed"
)

// sipStart reports whether a datagram starts like a SIP message: a status
// line, or a request line "METHOD uri" whose method is an RFC 3261 token
// of at most maxMethod characters. Methods are case-sensitive tokens, not
// capital letters: RFC 4475 §3.1.1.2 and §3.1.1.5 send the well-formed
// "!interesting-Method0123456789_*+`.%indeed'~" and "RE%47IST%45R", which
// deserve a 405, not silence.
func sipStart(b []byte) bool {
	if bytes.HasPrefix(b, []byte("SIP/2.0 ")) {
		return true
	}
	i := 0
	for i < len(b) && i <= maxMethod && isTokenChar(b[i]) {
		i++
	}
	return i >= 1 && i <= maxMethod && i < len(b) && b[i] == ' '
}

// maxMethod bounds a request method's length; the longest in RFC 4475
// has 43 characters.
const maxMethod = 64

// isTokenChar: RFC 3261 §25.1 token = 1*(alphanum / "-" / "." / "!" /
// "%" / "*" / "_" / "+" / "`" / "'" / "~").
func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-.!%*_+`'~", c) >= 0
}

// readFilter runs on every UDP datagram before sipgo parses it.
func (g *Gateway) readFilter(info sip.TransportReadProps, data []byte) ([]byte, error) {
	if !strings.EqualFold(info.Transport, "udp") {
		return data, nil // a stream's chunks are not messages
	}
	// Keep-alives: a CRLF or two (RFC 5626).
	if len(data) <= 4 && len(bytes.Trim(data, "\r\n")) == 0 {
		return data, nil
	}
	switch {
	case len(data) > MaxDatagram:
		g.dropped(dropOversized, info)
		return nil, nil
	case !sipStart(data):
		g.dropped(dropNotSIP, info)
		return nil, nil
	case g.answerUnparsable(info, data):
		return nil, nil
	}
	return data, nil
}

func (g *Gateway) dropped(reason string, info sip.TransportReadProps) {
	g.m.dropped.WithLabelValues(reason).Inc()
	now := time.Now().UnixNano()
	last := g.lastDropLog.Load()
	if now-last >= int64(droppedLogEvery) && g.lastDropLog.CompareAndSwap(last, now) {
		from := ""
		if info.RemoteAddr != nil {
			from = info.RemoteAddr.String()
		}
		g.log.Warn("dropping what is not SIP or does not parse (counted in creditgate_sip_dropped_total; logged at most every 10 s)",
			"reason", reason, "from", from)
	}
}

// sipgoLog is the handler sipgo's transports log through: their "failed
// to parse" (with the whole message) becomes a count; the rest goes on to
// the gateway's log.
type sipgoLog struct {
	slog.Handler
	g *Gateway
}

// Enabled lets errors through even when the log is quieter, so parse
// failures are counted whatever the level.
func (h sipgoLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.Handler.Enabled(ctx, l)
}

func (h sipgoLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "failed to parse" {
		h.g.dropped(dropMalformed, sip.TransportReadProps{})
		return nil
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h sipgoLog) WithAttrs(as []slog.Attr) slog.Handler {
	return sipgoLog{h.Handler.WithAttrs(as), h.g}
}

func (h sipgoLog) WithGroup(name string) slog.Handler {
	return sipgoLog{h.Handler.WithGroup(name), h.g}
}
