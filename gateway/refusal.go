package gateway

import (
	"errors"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// Refusals the gateway itself decides.
var (
	ErrUnknownTrunk  = errors.New("unknown trunk")
	ErrUnknownCaller = errors.New("caller is not a user of this trunk's org")
	ErrNoRoute       = errors.New("no carrier route for this destination")
	ErrOverloaded    = errors.New("gateway overloaded or shutting down")
	ErrTooManyHops   = errors.New("too many hops")
	ErrInboundNotYet = errors.New("inbound calls from carriers are not routed yet")
)

// refusal is how one refusal looks on the wire and in metrics.
type refusal struct {
	status  int
	phrase  string
	reason  string // the metric label: a small closed set
	warning string
}

// refusals is the one table that maps refusal reasons to SIP. Order matters
// only in that the first errors.Is match wins.
var refusals = []struct {
	err error
	r   refusal
}{
	{ErrUnknownTrunk, refusal{403, "Forbidden", "unknown_trunk", "unknown trunk"}},
	{ErrUnknownCaller, refusal{403, "Forbidden", "unknown_caller", "caller is not a known user"}},
	{rating.ErrNoLicense, refusal{403, "Forbidden", "no_license", "no license covers this call"}},
	{ErrInboundNotYet, refusal{403, "Forbidden", "inbound_not_routed", "inbound routing is not configured"}},
	{rating.ErrNoRate, refusal{404, "Not Found", "no_rate", "no rate for this destination"}},
	{ErrNoRoute, refusal{404, "Not Found", "no_route", "no carrier route for this destination"}},
	{rating.ErrNotDialable, refusal{484, "Address Incomplete", "not_dialable", "not a dialable number"}},
	{ledger.ErrInsufficientCredit, refusal{402, "Payment Required", "no_credit", "not enough Communications Credits"}},
	{ledger.ErrPoolExhausted, refusal{402, "Payment Required", "minutes_used_up", "included minutes used up and no communications_credits license"}},
	{ledger.ErrUnknownOrg, refusal{403, "Forbidden", "unknown_org", "trunk's org does not exist"}},
	{ErrTooManyHops, refusal{483, "Too Many Hops", "too_many_hops", "Max-Forwards reached zero"}},
	{ErrOverloaded, refusal{503, "Service Unavailable", "overloaded", "gateway is overloaded or shutting down"}},
	{ledger.ErrUnavailable, refusal{503, "Service Unavailable", "ledger_unavailable", "ledger unavailable, failing closed"}},
}

var internalRefusal = refusal{500, "Server Internal Error", "internal", "internal error"}

func refusalFor(err error) refusal {
	for _, x := range refusals {
		if errors.Is(err, x.err) {
			return x.r
		}
	}
	return internalRefusal
}
