package api

import (
	"errors"
	"fmt"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// Refusals the API itself decides.
var (
	errUnauthorized = errors.New("missing or wrong bearer token")
	errBadJSON      = errors.New("request body is not the expected JSON")
	errBadAmount    = errors.New("invalid amount")
	errBadRequest   = errors.New("invalid request")
	errNotFound     = errors.New("no such resource")
	errMethod       = errors.New("method not allowed")
	errTooLarge     = errors.New("request body too large")
	errNoPayments   = errors.New("payments not configured")
	errBusy         = errors.New("too many exports at once")
	errInternal     = errors.New("internal error")
)

type apiError struct {
	status int
	code   string
}

// httpErrors is the one table mapping refusals to HTTP. The first errors.Is
// match wins.
var httpErrors = []struct {
	err error
	e   apiError
}{
	{errUnauthorized, apiError{401, "unauthorized"}},
	{errForbidden, apiError{403, "forbidden"}},
	{errBadJSON, apiError{400, "bad_json"}},
	{ledger.ErrTimeRange, apiError{400, "time_out_of_range"}},
	{errTooLarge, apiError{413, "body_too_large"}},
	{errBadAmount, apiError{422, "invalid_amount"}},
	{errBadRequest, apiError{422, "invalid_request"}},
	{errNotFound, apiError{404, "not_found"}},
	{errMethod, apiError{405, "method_not_allowed"}},
	{ledger.ErrUnknownOrg, apiError{404, "unknown_org"}},
	{ledger.ErrUnknownCall, apiError{404, "unknown_call"}},
	{ledger.ErrUnknownPurchase, apiError{404, "unknown_purchase"}},
	{ledger.ErrUnknownKey, apiError{404, "not_found"}},
	{ledger.ErrCallEnded, apiError{404, "call_ended"}},
	{ledger.ErrOrgExists, apiError{409, "org_exists"}},
	{ledger.ErrNumberTaken, apiError{409, "number_taken"}},
	{ledger.ErrInUse, apiError{409, "in_use"}},
	{ledger.ErrDuplicateFunding, apiError{409, "duplicate_idempotency_key"}},
	{ledger.ErrRegionMismatch, apiError{409, "region_mismatch"}},
	{errNoPayments, apiError{409, "payments_not_configured"}},
	{ledger.ErrTooManyPurchases, apiError{409, "too_many_purchases"}},
	{ledger.ErrBelowMinimum, apiError{422, "below_minimum"}},
	{ledger.ErrInvalid, apiError{422, "invalid_request"}},
	{gateway.ErrBadTrunk, apiError{422, "invalid_trunk"}},
	{rating.ErrDeck, apiError{422, "invalid_rate_deck"}},
	{rating.ErrNotDialable, apiError{422, "not_dialable"}},
	{rating.ErrNoRate, apiError{404, "no_rate"}},
	{ledger.ErrUnavailable, apiError{503, "ledger_unavailable"}},
	{errBusy, apiError{503, "busy"}},
}

func lookupError(err error) apiError {
	for _, x := range httpErrors {
		if errors.Is(err, x.err) {
			return x.e
		}
	}
	return apiError{500, "internal"}
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, args...))
}
