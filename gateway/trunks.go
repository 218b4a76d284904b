package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo/sip"
)

// ErrBadTrunk is wrapped by every trunk validation error.
var ErrBadTrunk = errors.New("invalid trunk")

// MaxTrunkAddresses and MaxTrunkPrefixes bound one trunk's definition.
const (
	MaxTrunkAddresses = 64
	MaxTrunkPrefixes  = 1024
)

// ValidateTrunk checks a trunk before it is stored, so the router never
// meets one it cannot use.
func ValidateTrunk(t ledger.Trunk) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadTrunk, fmt.Sprintf(format, args...))
	}
	switch t.Kind {
	case rating.TrunkCustomer, rating.TrunkConferencing:
		if t.Org == "" {
			return bad("a %s trunk needs an org", t.Kind)
		}
		if len(t.Addresses) == 0 {
			return bad("a %s trunk needs at least one source address", t.Kind)
		}
		if len(t.Prefixes) > 0 {
			return bad("prefixes are carrier routes; a %s trunk has none", t.Kind)
		}
		if t.URI != "" {
			// Where the org's toll-free numbers are delivered.
			var u sip.Uri
			if err := sip.ParseUri(t.URI, &u); err != nil || u.Host == "" {
				return bad("uri %q is not a SIP URI", t.URI)
			}
		}
	case rating.TrunkCarrier:
		if t.URI == "" {
			return bad("a carrier trunk needs a uri, e.g. sip:203.0.113.5:5060")
		}
		var u sip.Uri
		if err := sip.ParseUri(t.URI, &u); err != nil || u.Host == "" {
			return bad("uri %q is not a SIP URI", t.URI)
		}
		if t.Org != "" {
			return bad("a carrier trunk belongs to no org")
		}
	default:
		return bad("kind %q: want customer, conferencing or carrier", t.Kind)
	}
	if t.MaxCalls < 0 || t.MaxCalls > 1_000_000 {
		return bad("max_calls %d: want 0 (no limit) to 1000000", t.MaxCalls)
	}
	if t.MaxCallDurationS < 0 || t.MaxCallDurationS > 7*24*3600 {
		return bad("max_call_duration_s %d: want 0 (sip.max_call_duration) to 604800 (one week)", t.MaxCallDurationS)
	}
	if len(t.Addresses) > MaxTrunkAddresses || len(t.Prefixes) > MaxTrunkPrefixes {
		return bad("at most %d addresses and %d prefixes", MaxTrunkAddresses, MaxTrunkPrefixes)
	}
	for _, a := range t.Addresses {
		if _, err := parseSource(a); err != nil {
			return bad("address %q: %v", a, err)
		}
	}
	for _, p := range t.Prefixes {
		if len(p) > 15 || strings.Trim(p, "0123456789") != "" {
			return bad("prefix %q: want E.164 digits without +, or \"\" for the default route", p)
		}
	}
	return nil
}

// source is one trunk address: a CIDR, or an exact host:port.
type source struct {
	prefix netip.Prefix
	port   uint16 // 0: any port
}

// specificity orders matches: an exact host:port beats its bare host, which
// beats any wider CIDR.
func (s source) specificity() int {
	n := s.prefix.Bits() * 2
	if s.port != 0 {
		n++
	}
	return n
}

func parseSource(a string) (source, error) {
	if p, err := netip.ParsePrefix(a); err == nil {
		return source{prefix: p.Masked()}, nil
	}
	if ip, err := netip.ParseAddr(a); err == nil {
		return source{prefix: netip.PrefixFrom(ip, ip.BitLen())}, nil
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return source{}, errors.New("want a CIDR (10.0.0.0/24), an IP, or IP:port")
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return source{}, errors.New("host must be an IP address")
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil || pn == 0 {
		return source{}, errors.New("port must be 1 to 65535")
	}
	return source{prefix: netip.PrefixFrom(ip, ip.BitLen()), port: uint16(pn)}, nil
}

// router answers "which trunk sent this", "which carrier takes this
// number" and "where do this org's inbound calls go". It is rebuilt whole on
// every trunk change and swapped in atomically, so lookups take no lock.
type router struct {
	sources  []routedSource
	byPrefix map[string][]ledger.Trunk // by prefix ("" is the default route), sorted by id
	maxLen   int
	// inbound holds, per org, its trunks with a uri, sorted by id.
	inbound map[string][]ledger.Trunk
}

type routedSource struct {
	src   source
	trunk ledger.Trunk
}

func newRouter(trunks []ledger.Trunk) *router {
	r := &router{byPrefix: map[string][]ledger.Trunk{}, inbound: map[string][]ledger.Trunk{}}
	for _, t := range trunks {
		// A carrier's addresses identify the calls it sends us (inbound,
		// to toll-free numbers); a customer's, the calls its PBX sends.
		for _, a := range t.Addresses {
			if s, err := parseSource(a); err == nil {
				r.sources = append(r.sources, routedSource{src: s, trunk: t})
			}
		}
		switch t.Kind {
		case rating.TrunkCarrier:
			// A carrier with no prefixes only sends us calls; "" in its
			// prefixes makes it the default route.
			for _, p := range t.Prefixes {
				r.byPrefix[p] = append(r.byPrefix[p], t) // trunks come sorted by id
				if len(p) > r.maxLen {
					r.maxLen = len(p)
				}
			}
		default:
			if t.URI != "" {
				r.inbound[t.Org] = append(r.inbound[t.Org], t) // trunks come sorted by id
			}
		}
	}
	return r
}

// delivery is the trunk an org's inbound call goes to: the one its
// toll-free number names, else the org's first trunk with a uri.
func (r *router) delivery(org, trunk string) (ledger.Trunk, bool) {
	for _, t := range r.inbound[org] {
		if trunk == "" || t.ID == trunk {
			return t, true
		}
	}
	return ledger.Trunk{}, false
}

// source finds the most specific trunk for a packet's source address
// ("ip:port").
func (r *router) source(hostport string) (ledger.Trunk, bool) {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return ledger.Trunk{}, false
	}
	return r.sourceAddr(ap)
}

// sourceAddr is source for a parsed address; port 0 (a front proxy that
// vouched for an IP only, front.go) matches only trunks listed by IP or
// CIDR.
func (r *router) sourceAddr(ap netip.AddrPort) (ledger.Trunk, bool) {
	ip := ap.Addr().Unmap()
	best, bestSpec := -1, -1
	for i, rs := range r.sources {
		if !rs.src.prefix.Contains(ip) || (rs.src.port != 0 && rs.src.port != ap.Port()) {
			continue
		}
		if s := rs.src.specificity(); s > bestSpec {
			best, bestSpec = i, s
		}
	}
	if best < 0 {
		return ledger.Trunk{}, false
	}
	return r.sources[best].trunk, true
}

// MaxAttempts bounds how many carriers one call is offered to.
const MaxAttempts = 4

// carriers lists the carriers for E.164 digits in failover order: those of
// the longest matching prefix first (by trunk id), then those of shorter
// prefixes down to the default route, each carrier once.
func (r *router) carriers(digits string) []ledger.Trunk {
	var out []ledger.Trunk
	for n := min(len(digits), r.maxLen); n >= 0 && len(out) < MaxAttempts; n-- {
		for _, t := range r.byPrefix[digits[:n]] {
			if !slices.ContainsFunc(out, func(o ledger.Trunk) bool { return o.ID == t.ID }) && len(out) < MaxAttempts {
				out = append(out, t)
			}
		}
	}
	return out
}
