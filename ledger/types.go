package ledger

import (
	"errors"
	"fmt"
	"time"

	"github.com/creditgate/creditgate/rating"
	"github.com/shopspring/decimal"
)

// Refusals of the ledger. Callers check them with errors.Is; the gateway and
// the admin API each map them to their wire status in one table.
var (
	ErrInsufficientCredit = rating.ErrNoCredit
	ErrUnknownOrg         = errors.New("unknown org")
	ErrUnknownCall        = errors.New("unknown call")
	ErrOrgExists          = errors.New("org already exists")
	ErrNumberTaken        = errors.New("number already belongs to another user or org")
	ErrInUse              = errors.New("in use by a call up, or by another object")
	ErrDuplicateFunding   = errors.New("idempotency key already used")
	ErrBelowMinimum       = errors.New("amount below the minimum funding")
	ErrRegionMismatch     = errors.New("org region differs from its billing region")
	ErrPoolExhausted      = rating.ErrMinutesUsedUp
	ErrCallEnded          = errors.New("call already ended")
	ErrInvalid            = errors.New("invalid")
	ErrUnavailable        = errors.New("ledger unavailable")
	ErrTimeRange          = errors.New("time out of range") // timekey.go
)

// invalidf wraps ErrInvalid with what exactly is wrong.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Org is an organisation and its Communications Credits.
//
// Invariants (CheckInvariants): Held = Σ credit holds of the org's open
// calls; Available = Balance − Held ≥ 0 at every instant; Funded − Debited =
// Balance; Debited = Σ charges of its CDRs + Σ charges of its calls still up.
type Org struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	Country       string    `json:"country"`
	Region        string    `json:"region"`
	BillingRegion string    `json:"billing_region"`
	Currency      string    `json:"currency"`
	Timezone      string    `json:"timezone,omitempty"` // IANA; months of minute pools; empty is UTC
	BlockPremium  bool      `json:"block_premium"`      // refuse calls to premium-rate numbers
	CreatedAt     time.Time `json:"created_at"`
	// Contacts and AutoRecharge change rarely; they live in the org's
	// record, not in Balances, which every debit rewrites.
	Contacts     Contacts     `json:"contacts"`
	AutoRecharge AutoRecharge `json:"auto_recharge"`
	FraudGuard   FraudGuard   `json:"fraud_guard"`
	// LowBalanceWarned is when the last low-balance warning was queued.
	LowBalanceWarned time.Time `json:"low_balance_warned,omitzero"`
	Balances
}

// Balances are an org's money, the part of it every debit changes (and
// rewrites on disk: the org's other fields are written once).
type Balances struct {
	Balance decimal.Decimal `json:"balance"`
	Held    decimal.Decimal `json:"held"`
	Funded  decimal.Decimal `json:"funded"`  // Σ fundings, for the balance invariant
	Debited decimal.Decimal `json:"debited"` // Σ committed debits
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
	Kind      string   `json:"kind"` // rating.TrunkCustomer, TrunkConferencing or TrunkCarrier
	Org       string   `json:"org,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
	URI       string   `json:"uri,omitempty"`
	Prefixes  []string `json:"prefixes,omitempty"`
	MaxCalls  int      `json:"max_calls,omitempty"` // calls up at once from this trunk; 0: no limit
	Username  string   `json:"username,omitempty"`
	Password  string   `json:"password,omitempty"`
	// Keepalive turns in-dialog OPTIONS keepalives on this trunk's legs on
	// or off; unset is on (a dead PBX is as costly as a dead carrier; the
	// switch is for peers that answer OPTIONS badly).
	Keepalive *bool `json:"keepalive,omitempty"`
	// MaxCallDurationS overrides sip.max_call_duration for calls from or
	// to this trunk (seconds; 0: the default).
	MaxCallDurationS int `json:"max_call_duration_s,omitempty"`
}

// KeepaliveOn reports whether the trunk's legs get keepalives.
func (t Trunk) KeepaliveOn() bool { return t.Keepalive == nil || *t.Keepalive }

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
	Direction     Direction       `json:"direction"`
	RatePerMinute decimal.Decimal `json:"rate_per_minute"`
	Currency      string          `json:"currency"`
}

// Plan names: the minute pools of the README's step 4 (How a call is decided). rating decides which pool a call
// draws; the ledger keeps the minutes.
const (
	PlanDomestic      = rating.PlanDomestic
	PlanInternational = rating.PlanInternational
	PlanConferencing  = rating.PlanConferencing
)

// Plan is one kind of minute pool: each user of an org holding any of
// Licenses adds Minutes to the org's pool of that plan every month.
type Plan struct {
	Name     string
	Minutes  int
	Licenses []string
}

// DefaultPlans are the pools of rating's built-in catalogue (README, How a call is decided).
func DefaultPlans() []Plan {
	c := rating.DefaultCatalog()
	return PlansOf(&c)
}

// PlansOf are a plan catalogue's pools as the ledger keeps them.
func PlansOf(c *rating.Catalog) []Plan {
	out := make([]Plan, 0, len(c.Pools))
	for _, p := range c.Pools {
		ls := make([]string, 0, len(p.Licenses))
		for _, l := range p.Licenses {
			ls = append(ls, string(l))
		}
		out = append(out, Plan{Name: p.Name, Minutes: p.MinutesPerLicense, Licenses: ls})
	}
	return out
}

// TollFree is a toll-free number assigned to an org: calls from carriers to
// it are delivered to the org's trunk (Trunk, a customer trunk with a uri)
// and paid per minute from the org's credits.
type TollFree struct {
	Number string `json:"number"` // E.164 digits without '+'
	Org    string `json:"org"`
	Trunk  string `json:"trunk,omitempty"`
}

// Pool is an org's minutes of one plan for one calendar month (in the org's
// time zone). Minutes are whole: a call drawing a pool holds one minute at a
// time, and a started minute counts whole.
//
// Invariant: 0 ≤ Used + Held ≤ Total. Licensed is allotment × licensed users
// as last recomputed; Total = max(Licensed, Used + Held), so removing a
// license mid-month never makes minutes already spent or held exceed the
// pool — it only stops new ones.
type Pool struct {
	Org      string `json:"org"`
	Plan     string `json:"plan"`
	Month    string `json:"month"` // YYYY-MM
	Licensed int    `json:"licensed_minutes"`
	Total    int    `json:"total_minutes"`
	Used     int    `json:"used_minutes"`
	Held     int    `json:"held_minutes"`
}

// Available is how many minutes new holds may take.
func (p Pool) Available() int { return p.Total - p.Used - p.Held }

// Funding sources of one increment.
const (
	SourcePool    = "pool"
	SourceCredits = "credits"
	SourceFree    = "free"
)

// Increment is one two-phase transfer of a call: increment N (1-based) of
// the call, held from a pool (Minutes) or from credits (Credit) for Seconds
// of talk time. Its idempotent id is (call id, N).
type Increment struct {
	N       int             `json:"n"`
	Source  string          `json:"source"`
	Seconds int             `json:"seconds"`
	Minutes int             `json:"minutes,omitempty"`
	Month   string          `json:"month,omitempty"` // the pool's month
	Credit  decimal.Decimal `json:"credit,omitzero"`
	Open    bool            `json:"open"` // held and neither committed nor released
}

// Call is the money side of one call, from authorization until its CDR.
//
// Pricing is fixed at authorization: a call with a Plan draws that pool one
// minute at a time first, then — if Spill (the caller holds
// communications_credits) — credits at the rate, from the very increment where
// the pool runs out. Credit increments follow the rate: the call's first
// increment is FirstIncrement seconds and carries the connection fee, later
// ones are NextIncrement seconds.
//
// Invariant: at most one increment is open (Hold); Charge, PoolMinutes and
// BilledS are the sums over committed increments; a call that has ended holds
// nothing.
type Call struct {
	ID string `json:"id"`
	Details
	ConnectionFee  decimal.Decimal `json:"connection_fee,omitzero"`
	FirstIncrement int             `json:"first_increment_s"`
	NextIncrement  int             `json:"next_increment_s"`
	Plan           string          `json:"plan,omitempty"`
	Spill          bool            `json:"spill,omitempty"`
	Free           bool            `json:"free,omitempty"` // emergency: never held, never charged
	Start          time.Time       `json:"start"`
	CallState

	// Fresh says ID was generated just now from enough random bits (a
	// UUID v4) that it cannot name a call that already ended, so OpenCall
	// skips looking for one on disk — a read that costs more than the rest
	// of authorizing the call. Ids that come from outside leave it false.
	Fresh bool `json:"-"`

	// Unsynced lets OpenCall return once the call is held in memory and
	// queued for the disk, without waiting for the fsync. Safe for a call
	// that is not yet answered: it is charged nothing until Answer, a
	// durable operation the WAL orders after the open, so a crash either
	// keeps both or loses a call that cost nothing. The gateway sets it so
	// the INVITE reaches the carrier without an fsync in between; a disk
	// that fails meanwhile fails the answer (and every later operation).
	Unsynced bool `json:"-"`

	prices *[2]decimal.Decimal // first and next credit increment, once computed
}

// CallState is what changes while a call is up: the only part of it
// rewritten on disk at every increment.
type CallState struct {
	Answer      time.Time       `json:"answer,omitzero"`
	LastAt      time.Time       `json:"last_at"`
	Hold        Increment       `json:"hold"` // the latest increment (N = increments started)
	Charge      decimal.Decimal `json:"charge"`
	PoolMinutes int             `json:"pool_minutes,omitempty"`
	BilledS     int             `json:"billed_s,omitempty"`
	// HoldFrom is when the open increment started (the answer, or the
	// Step that held it); Alive and Expires are the last Step's Liveness;
	// Tail the committed increments that started after Alive (liveness.go).
	HoldFrom time.Time `json:"hold_from,omitzero"`
	Alive    time.Time `json:"alive,omitzero"`
	Expires  time.Time `json:"expires,omitzero"`
	Tail     []Run     `json:"tail,omitempty"`
}

// Answered reports whether the call reached 200 OK.
func (c Call) Answered() bool { return !c.Answer.IsZero() }

// Amount is part of an open increment to commit; the rest is released.
type Amount struct {
	Credit  decimal.Decimal
	Minutes int
	Seconds int
}

// Reason is why a call ended: a CDR's disconnect_reason (README, Admin
// API: CDR columns). The values below are all there are.
type Reason string

// Disconnect reasons written to CDRs.
const (
	ReasonCallerHangup    Reason = "caller_hangup"
	ReasonCalleeHangup    Reason = "callee_hangup"
	ReasonCreditExhausted Reason = "credit_exhausted"
	ReasonPoolExhausted   Reason = "included_minutes_exhausted"
	ReasonCanceled        Reason = "canceled"
	ReasonFailed          Reason = "failed"
	ReasonAdmin           Reason = "admin"
	ReasonRestart         Reason = "gateway_restart"
	ReasonShutdown        Reason = "gateway_shutdown"
	ReasonFraudGuard      Reason = "fraud_guard"
	// The call's session expired without a refresh (RFC 4028): billed to
	// the last proof of life.
	ReasonSessionExpired Reason = "session_expired"
	// A leg answered a keepalive 481/408 or not at all: billed to the last
	// proof of life.
	ReasonLegLost Reason = "leg_lost"
	// The call reached its maximum duration, or its maximum charge.
	ReasonMaxDuration Reason = "max_duration"
	ReasonMaxCharge   Reason = "max_charge"
	// The call's node died (cluster mode): a surviving node ended both
	// legs at the end of what the call had paid and wrote the CDR.
	ReasonNodeFailure Reason = "node_failure"
)

// Reasons lists every disconnect reason, in the README's order.
var Reasons = []Reason{ReasonCallerHangup, ReasonCalleeHangup, ReasonCreditExhausted, ReasonPoolExhausted,
	ReasonCanceled, ReasonFailed, ReasonAdmin, ReasonRestart, ReasonShutdown, ReasonFraudGuard,
	ReasonSessionExpired, ReasonLegLost, ReasonMaxDuration, ReasonMaxCharge, ReasonNodeFailure}

// Direction is which way a call went: a CDR's direction.
type Direction string

// Call directions.
const (
	DirectionOutbound Direction = "outbound" // from an org's trunk to a carrier
	DirectionInbound  Direction = "inbound"  // from a carrier to an org's toll-free number
)

// CDR is one call's record in the PSTN usage details report (README, Admin API: usage).
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
	DisconnectReason Reason          `json:"disconnect_reason"`
	SIPStatus        int             `json:"sip_status"`
}

// Entry kinds in an org's transaction list.
const (
	EntryFunding = "funding"
	EntryDebit   = "debit"
	// EntryRefund gives back committed increments of a call that were
	// used after its last proof of life (liveness.go): positive, with the
	// call and the first increment given back.
	EntryRefund = "refund"
)

// Entry is one movement of an org's balance.
type Entry struct {
	Seq     uint64          `json:"seq"`
	At      time.Time       `json:"at"`
	Kind    string          `json:"kind"`
	Amount  decimal.Decimal `json:"amount"` // positive for funding, negative for debits
	Balance decimal.Decimal `json:"balance"`
	CallID  string          `json:"call_id,omitempty"`
	N       int             `json:"n,omitempty"` // the call's increment
	Key     string          `json:"idempotency_key,omitempty"`
	// Incident is the support incident that allowed a funding across
	// regions.
	Incident string `json:"incident,omitempty"`
	// Replayed is set, not stored, when a retried funding found the entry
	// its key had made.
	Replayed bool `json:"-"`
}

// CallEnd is how a call ended, for its CDR.
type CallEnd struct {
	At        time.Time
	Reason    Reason
	SIPStatus int
	// BillTo, when set, is the call's last proof of life: increments that
	// started after it are not charged (liveness.go). It may not be before
	// the Alive of the call's latest Step.
	BillTo time.Time
}
