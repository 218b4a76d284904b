package gateway

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// ErrSessionTooSmall refuses an INVITE whose Session-Expires is below
// sip.min_se: 422 with the gateway's Min-SE, so the caller can retry with
// an interval it accepts (RFC 4028 §6, §8.1).
var ErrSessionTooSmall = errors.New("session interval too small")

// Session-timer negotiation (RFC 4028), the gateway being the B2BUA in the
// middle: the caller's INVITE may ask for an interval (Session-Expires, or
// its compact form x) and a floor (Min-SE). The gateway
//
//   - refuses an interval below its own sip.min_se with 422 and Min-SE;
//   - otherwise takes the caller's interval, never above its own
//     sip.session_expires (a shorter interval only costs refreshes; a
//     longer one would leave a dead call billed longer), and never below
//     the caller's Min-SE; no Session-Expires: its own;
//   - asks the carrier for that interval (Session-Expires, Min-SE,
//     Supported: timer) and takes a shorter one its 2xx answers with;
//   - tells the caller the result in the 200 with refresher=uas: the
//     gateway refreshes both legs itself (liveness.go), so no peer has to.
//
// The interval negotiated is the one the call's expiry runs on.

// negotiateSession is the session interval an INVITE asks for, bounded by
// the gateway's configuration, or ErrSessionTooSmall.
func (g *Gateway) negotiateSession(req *sip.Request) (time.Duration, error) {
	se := g.cfg.SessionExpires
	if asked, ok := deltaSeconds(req, "Session-Expires", "x"); ok {
		if asked < g.cfg.MinSE {
			return 0, ErrSessionTooSmall
		}
		se = min(asked, se)
	}
	if floor, ok := deltaSeconds(req, "Min-SE", ""); ok && floor > se {
		// The caller will not go below floor; the gateway's own
		// interval is only an upper bound of preference.
		se = floor
	}
	return se, nil
}

// deltaSeconds reads a header whose value is delta-seconds followed by
// parameters (Session-Expires, Min-SE). ok is false when the header is
// absent or its value is no number of seconds (then it is ignored, as an
// unknown extension would be).
func deltaSeconds(m headers, name, compact string) (d time.Duration, ok bool) {
	h := m.GetHeader(name)
	if h == nil && compact != "" {
		h = m.GetHeader(compact)
	}
	if h == nil {
		return 0, false
	}
	v, _, _ := strings.Cut(h.Value(), ";")
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// supportsTimer reports whether a message lists the timer option in
// Supported (or its compact form k) or Require.
func supportsTimer(m headers) bool {
	for _, name := range []string{"Supported", "k", "Require"} {
		for _, h := range m.GetHeaders(name) {
			for _, opt := range strings.Split(h.Value(), ",") {
				if strings.EqualFold(strings.TrimSpace(opt), "timer") {
					return true
				}
			}
		}
	}
	return false
}

// headers is what of a request or a response these read.
type headers interface {
	GetHeader(name string) sip.Header
	GetHeaders(name string) []sip.Header
}

// secondsValue is a duration as delta-seconds.
func secondsValue(d time.Duration) string { return strconv.Itoa(int(d / time.Second)) }
