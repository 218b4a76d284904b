package gateway

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// A SIP front proxy (Kamailio's dispatcher, configs/kamailio/) spreads
// calls over several creditgate nodes. Every request it relays then comes
// from the proxy's address, and trunks are matched by source address: the
// PBX behind the proxy would be unknown, or — worse — every customer would
// look like one. So a proxy the operator trusts vouches for the address it
// received the request from, in one header it adds (and strips when a
// client sent it), and creditgate takes that address instead of the
// packet's for what is decided per customer source:
//
//   - trunk matching (authorize): the vouched address;
//   - the per-source call rate (sip.rate_per_source): the vouched address,
//     or every customer behind the proxy would share one bucket and one
//     flooding PBX would shed everybody's calls;
//   - the TCP/TLS connection guard (listener.go) and the stream a call
//     keeps open (registry.go's bySource): the packet's — those are
//     sockets on this host, and the socket really is the proxy's;
//   - the stateless 400 of an unparsable datagram, the loop check (Via)
//     and everything in a dialog (matched by Call-ID and tags, not by
//     address): unchanged.
//
// The header is only believed from a trusted proxy. From anybody else an
// INVITE carrying it is refused (403) rather than served on the packet's
// address: it is either a spoofing attempt or a PBX that bypasses the
// proxy with a proxy's config, and both are better told than billed. A
// trusted proxy's INVITE without it is refused too (403): the proxy's own
// address names no customer, and falling back to it would bill whatever a
// misconfigured proxy relays to any trunk that happens to list the proxy.
// With no trusted proxy configured the feature is off and the header means
// nothing (no refusal either: nothing reads it, so it cannot spoof). Like
// the digest check, the rule comes before the emergency check: it decides
// who is calling, and an emergency call needs a known trunk as any other.
//
// The header's name defaults to X-AUTH-IP (configs.Default): the header
// Kamailio fronts already add for FreeSWITCH's proxy ACLs and Kazoo, so
// an operator's existing dispatcher config works unchanged. Its value is
// one IP (FreeSWITCH's form: then only trunks listed by IP or CIDR match)
// or IP:port ([v6]:port for IPv6; Kamailio's $siz:$sp), which trunks
// listed by exact address need.

// Refusals of the front-proxy rule.
var (
	ErrSourceHeaderUntrusted = errors.New("source header from an address that is not a trusted front proxy")
	ErrSourceNotVouched      = errors.New("trusted front proxy sent no source header")
	ErrBadSourceHeader       = errors.New("source header is not one IP or IP:port")
)

// MaxTrustedProxies bounds sip.trusted_proxies: every INVITE is checked
// against each entry.
const MaxTrustedProxies = 256

// FrontConfig is the trusted front proxies. An empty TrustedProxies turns
// the rule off.
type FrontConfig struct {
	// TrustedProxies are CIDRs, IPs or IP:ports (as trunk addresses).
	TrustedProxies []string
	// SourceHeader is the header a trusted proxy puts the request's real
	// source in.
	SourceHeader string
}

// front is FrontConfig parsed; read-only after New.
type front struct {
	trusted []source
	header  string
}

func newFront(cfg FrontConfig) (*front, error) {
	if len(cfg.TrustedProxies) == 0 {
		return &front{}, nil
	}
	if len(cfg.TrustedProxies) > MaxTrustedProxies {
		return nil, fmt.Errorf("gateway config: Front.TrustedProxies: %d entries, at most %d", len(cfg.TrustedProxies), MaxTrustedProxies)
	}
	if !isToken(cfg.SourceHeader) {
		return nil, fmt.Errorf("gateway config: Front.SourceHeader %q is not a SIP header name", cfg.SourceHeader)
	}
	f := &front{header: cfg.SourceHeader}
	for _, a := range cfg.TrustedProxies {
		s, err := parseSource(a)
		if err != nil {
			return nil, fmt.Errorf("gateway config: Front.TrustedProxies %q: %w", a, err)
		}
		f.trusted = append(f.trusted, s)
	}
	return f, nil
}

// isToken: a header name is an RFC 3261 token.
func isToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

func (f *front) trusts(ap netip.AddrPort) bool {
	ip := ap.Addr().Unmap()
	for _, s := range f.trusted {
		if s.prefix.Contains(ip) && (s.port == 0 || s.port == ap.Port()) {
			return true
		}
	}
	return false
}

// source is the address an INVITE counts as coming from for trunk
// matching and the per-source rate: the packet's, or the one a trusted
// proxy vouches for (port 0 when it gave none). The errors are refusals.
func (f *front) source(req *sip.Request) (netip.AddrPort, error) {
	packet, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		// No address a trunk could have: unknown, as before the front.
		return netip.AddrPort{}, ErrUnknownTrunk
	}
	packet = netip.AddrPortFrom(packet.Addr().Unmap(), packet.Port())
	if len(f.trusted) == 0 {
		return packet, nil
	}
	hs := req.GetHeaders(f.header)
	if !f.trusts(packet) {
		if len(hs) > 0 {
			return netip.AddrPort{}, ErrSourceHeaderUntrusted
		}
		return packet, nil
	}
	switch len(hs) {
	case 0:
		return netip.AddrPort{}, ErrSourceNotVouched
	case 1:
	default:
		// Two would mean the proxy appended one after a client's it failed
		// to strip: which is the proxy's cannot be told.
		return netip.AddrPort{}, fmt.Errorf("%w: %d %s headers", ErrBadSourceHeader, len(hs), f.header)
	}
	return parseVouched(hs[0].Value())
}

// parseVouched reads a vouched source: "IP", "IP:port" or "[IPv6]:port";
// a bare IPv6 address has no port (its colons are the address's).
func parseVouched(v string) (netip.AddrPort, error) {
	v = strings.TrimSpace(v)
	if ap, err := netip.ParseAddrPort(v); err == nil {
		if ap.Port() == 0 || ap.Addr().Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrBadSourceHeader, v)
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if ip, err := netip.ParseAddr(v); err == nil && ip.Zone() == "" {
		return netip.AddrPortFrom(ip.Unmap(), 0), nil
	}
	// A bracketed IPv6 without a port ("[::1]") is a common way to write
	// one too.
	if len(v) > 2 && v[0] == '[' && v[len(v)-1] == ']' {
		if ip, err := netip.ParseAddr(v[1 : len(v)-1]); err == nil && ip.Is6() && ip.Zone() == "" {
			return netip.AddrPortFrom(ip, 0), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrBadSourceHeader, truncate(v, 64))
}

// truncate bounds untrusted text quoted in an error.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
