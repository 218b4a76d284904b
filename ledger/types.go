package ledger

import (
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// Refusals of the ledger. Callers check them with errors.Is; the gateway and
// the admin API each map them to their wire status in one table.
var (
	ErrInsufficientCredit = errors.New("not enough credit")
	ErrUnknownOrg         = errors.New("unknown org")
	ErrUnknownCall        = errors.New("unknown call")
	ErrOrgExists          = errors.New("org already exists")
	ErrNumberTaken        = errors.New("number already belongs to another user")
	ErrDuplicateFunding   = errors.New("idempotency key already used")
	ErrBelowMinimum       = errors.New("amount below the minimum funding")
	ErrRegionMismatch     = errors.New("org region differs from its billing region")
	ErrInvalid            = errors.New("invalid")
	ErrUnavailable        = errors.New("ledger unavailable")
)

// invalidf wraps ErrInvalid with what exactly is wrong.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Org is an organisation and its Communications Credits.
//
// Invariant: Held = Σ holds of the org's open calls, and
// Available = Balance − Held ≥ 0 at every instant (CheckInvariants).
type Org struct {
	ID            string          `json:"id"`
	Name          string          `json:"name"`
	Country       string          `json:"country"`
	Region        string          `json:"region"`
	BillingRegion string          `json:"billing_region"`
	Currency      string          `json:"currency"`
	Balance       decimal.Decimal `json:"balance"`
	Held          decimal.Decimal `json:"held"`
	Funded        decimal.Decimal `json:"funded"`  // Σ fundings, for the balance invariant
	Debited       decimal.Decimal `json:"debited"` // Σ committed debits
	CreatedAt     time.Time       `json:"created_at"`
}

// Available is what new holds may take.
func (o Org) Available() decimal.Decimal { return o.Balance.Sub(o.Held) }

// User belongs to one org and owns E.164 numbers (digits without '+').
type User struct {
	Org      string   `json:"org"`
	ID       string   `json:"id"`
	Numbers  []string `json:"numbers"`
	Licenses []string `json:"licenses"`
}

// Trunk is a SIP peer: where calls come from (customer, conferencing) or go
// to (carrier). The gateway interprets it; the ledger only keeps it durable.
type Trunk struct {
	ID        string   `json:"id"`
	Kind      string   `json:"kind"`
	Org       string   `json:"org,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
	URI       string   `json:"uri,omitempty"`
	Prefixes  []string `json:"prefixes,omitempty"`
	Username  string   `json:"username,omitempty"`
	Password  string   `json:"password,omitempty"`
}

// Details describe a call the way its CDR reports it; they are fixed when
// the call is authorized. Numbers are E.164 digits without '+'.
type Details struct {
	Org           string          `json:"org"`
	User          string          `json:"user"`
	From          string          `json:"from"`
	To            string          `json:"to"`
	Destination   string          `json:"destination"`
	Country       string          `json:"country"`
	Type          string          `json:"type"`
	Direction     string          `json:"direction"`
	RatePerMinute decimal.Decimal `json:"rate_per_minute"`
	Currency      string          `json:"currency"`
}

// Call is the money side of one call, from authorization until its CDR.
//
// Invariant: Hold is what the call has held and not yet committed; Charge is
// Σ of its committed debits; a call that has ended holds nothing.
type Call struct {
	ID string `json:"id"`
	Details
	FirstIncrement int             `json:"first_increment_s"`
	NextIncrement  int             `json:"next_increment_s"`
	Start          time.Time       `json:"start"`
	Answer         time.Time       `json:"answer,omitzero"`
	LastAt         time.Time       `json:"last_at"`
	Increments     int             `json:"increments"` // increments started (held or committed)
	Hold           decimal.Decimal `json:"hold"`
	Charge         decimal.Decimal `json:"charge"`
}

// Answered reports whether the call reached 200 OK.
func (c Call) Answered() bool { return !c.Answer.IsZero() }

// BilledSeconds is the length paid for by the increments started so far.
func (c Call) BilledSeconds() int {
	if c.Increments == 0 {
		return 0
	}
	return c.FirstIncrement + (c.Increments-1)*c.NextIncrement
}

// Disconnect reasons written to CDRs.
const (
	ReasonCallerHangup    = "caller_hangup"
	ReasonCalleeHangup    = "callee_hangup"
	ReasonCreditExhausted = "credit_exhausted"
	ReasonCanceled        = "canceled"
	ReasonFailed          = "failed"
	ReasonAdmin           = "admin"
	ReasonRestart         = "gateway_restart"
	ReasonShutdown        = "gateway_shutdown"
)

// CDR is one call's record in the PSTN usage details report (SPEC §5).
type CDR struct {
	CallID string `json:"call_id"`
	Details
	Start            time.Time       `json:"start"`
	Answer           time.Time       `json:"answer,omitzero"`
	End              time.Time       `json:"end"`
	DurationS        int             `json:"duration_s"`
	BilledS          int             `json:"billed_s"`
	Pool             string          `json:"pool"`
	PoolMinutes      int             `json:"pool_minutes"`
	Charge           decimal.Decimal `json:"charge"`
	DisconnectReason string          `json:"disconnect_reason"`
	SIPStatus        int             `json:"sip_status"`
}

// Entry kinds in an org's transaction list.
const (
	EntryFunding = "funding"
	EntryDebit   = "debit"
)

// Entry is one movement of an org's balance.
type Entry struct {
	Seq     uint64          `json:"seq"`
	At      time.Time       `json:"at"`
	Kind    string          `json:"kind"`
	Amount  decimal.Decimal `json:"amount"` // positive for funding, negative for debits
	Balance decimal.Decimal `json:"balance"`
	CallID  string          `json:"call_id,omitempty"`
	Key     string          `json:"idempotency_key,omitempty"`
}

// CallEnd is how a call ended, for its CDR.
type CallEnd struct {
	At        time.Time
	Reason    string
	SIPStatus int
}
