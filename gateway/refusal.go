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
	ErrOverloaded    = errors.New("gateway overloaded")
	ErrRateLimited   = errors.New("too many new calls from this source")
	ErrShuttingDown  = errors.New("gateway shutting down")
	ErrTrunkFull     = errors.New("trunk at its concurrent-call limit")
	ErrTooManyHops   = errors.New("too many hops")
	ErrLoop          = errors.New("the gateway's own INVITE came back to it")
	ErrUnknownNumber = errors.New("number is not a toll-free number of any org")
	ErrNoDelivery    = errors.New("org has no trunk to deliver inbound calls to")
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
	// Before no_credit: an inbound refusal for money wraps the ledger's.
	{rating.ErrTollFreeNoCredit, refusal{480, "Temporarily Unavailable", "toll_free_no_credit", "the toll-free number's org has no credit"}},
	{ErrUnknownTrunk, refusal{403, "Forbidden", "unknown_trunk", "unknown trunk"}},
	{ErrSourceHeaderUntrusted, refusal{403, "Forbidden", "source_header_untrusted", "source header from an address that is not a trusted front proxy"}},
	{ErrSourceNotVouched, refusal{403, "Forbidden", "source_not_vouched", "trusted front proxy sent no source header"}},
	{ErrBadSourceHeader, refusal{400, "Bad Request", "bad_source_header", "source header is not one IP or IP:port"}},
	{ErrAuthRequired, refusal{407, "Proxy Authentication Required", "auth_required", "this trunk needs digest credentials"}},
	{ErrAuthFailed, refusal{403, "Forbidden", "auth_failed", "wrong digest credentials"}},
	{ErrUnknownCaller, refusal{403, "Forbidden", "unknown_caller", "caller is not a known user"}},
	// The warning does not say which limit: a caller with stolen
	// credentials learns nothing from it.
	{ledger.ErrFraudGuard, refusal{403, "Forbidden", "fraud_guard", "refused by the org's fraud guard"}},
	{rating.ErrNoLicense, refusal{403, "Forbidden", "no_license", "no license covers this call"}},
	{rating.ErrPremiumBlocked, refusal{403, "Forbidden", "premium_blocked", "premium-rate numbers are blocked for this org"}},
	{ErrUnknownNumber, refusal{404, "Not Found", "unknown_number", "not a toll-free number served here"}},
	{ErrNoDelivery, refusal{404, "Not Found", "no_route", "no trunk to deliver this number to"}},
	{rating.ErrNoRate, refusal{404, "Not Found", "no_rate", "no rate for this destination"}},
	{ErrNoRoute, refusal{404, "Not Found", "no_route", "no carrier route for this destination"}},
	{rating.ErrNotDialable, refusal{484, "Address Incomplete", "not_dialable", "not a dialable number"}},
	{ledger.ErrInsufficientCredit, refusal{402, "Payment Required", "no_credit", "not enough Communications Credits"}},
	{ledger.ErrPoolExhausted, refusal{402, "Payment Required", "minutes_used_up", "included minutes used up and no communications_credits license"}},
	{ledger.ErrUnknownOrg, refusal{403, "Forbidden", "unknown_org", "trunk's org does not exist"}},
	{ErrSessionTooSmall, refusal{422, "Session Interval Too Small", "session_interval_too_small", "Session-Expires below the gateway's Min-SE"}},
	{ErrTooManyHops, refusal{483, "Too Many Hops", "too_many_hops", "Max-Forwards reached zero"}},
	{ErrLoop, refusal{482, "Loop Detected", "loop", "this INVITE was sent by this gateway: a carrier route points back at it"}},
	{ErrOverloaded, refusal{503, "Service Unavailable", "overloaded", "gateway is overloaded"}},
	{ErrRateLimited, refusal{503, "Service Unavailable", "rate_limited", "too many new calls from this address"}},
	{ErrShuttingDown, refusal{503, "Service Unavailable", "shutting_down", "gateway is shutting down"}},
	{ErrTrunkFull, refusal{503, "Service Unavailable", "trunk_full", "trunk at its concurrent-call limit"}},
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
