package rating

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/shopspring/decimal"
)

// License is what a user may be assigned (README, How a call is decided and billed).
type License string

const (
	DomesticCallingPlan      License = "domestic_calling_plan"
	InternationalCallingPlan License = "international_calling_plan"
	AudioConferencing        License = "audio_conferencing"
	CommunicationsCredits    License = "communications_credits"
)

// ParseLicense refuses names that are not licenses, so a typo in the admin
// API does not silently leave a user unable to call.
func ParseLicense(s string) (License, error) {
	switch l := License(s); l {
	case DomesticCallingPlan, InternationalCallingPlan, AudioConferencing, CommunicationsCredits:
		return l, nil
	}
	return "", fmt.Errorf("unknown license %q: want domestic_calling_plan, international_calling_plan, audio_conferencing or communications_credits", s)
}

// Refusals of the decision. The gateway maps each to a SIP status in one
// table and the admin API to an HTTP status in another. The ledger refuses
// holds with ErrNoCredit and ErrMinutesUsedUp too: it decides them again,
// atomically, against every other call of the org.
var (
	ErrNoRate           = errors.New("no rate for this destination")
	ErrNoLicense        = errors.New("caller holds no license that pays for this call")
	ErrPremiumBlocked   = errors.New("premium-rate numbers are blocked for this org")
	ErrNoCredit         = errors.New("not enough credit")
	ErrMinutesUsedUp    = errors.New("included minutes used up and no communications_credits license")
	ErrTollFreeNoCredit = errors.New("the toll-free number's org has no credit")
)

// Plans: the default catalogue's minute pools (README, How a call is decided and billed). A catalogue may
// name others; these are the built-in catalogue's.
const (
	PlanDomestic      = "domestic"
	PlanInternational = "international"
	PlanConferencing  = "conferencing"
)

// OrgTerms is what the decision needs to know about the paying org.
type OrgTerms struct {
	Country      string `yaml:"country"`       // ISO alpha-2: national dialling, domestic vs international
	BlockPremium bool   `yaml:"block_premium"` // the org refuses premium-rate numbers
}

// Call is one call attempt as the decision sees it.
type Call struct {
	// Trunk is the kind of trunk it came in on: TrunkCustomer,
	// TrunkConferencing (a dial-out from a meeting) or TrunkCarrier (an
	// inbound call to one of the org's toll-free numbers).
	Trunk    string
	Dialled  string // the Request-URI user part as received
	Org      OrgTerms
	Licenses []License // the caller's; none for inbound calls
	// PoolsLeft is the minutes each of the org's pools has left this month;
	// Available the org's credits not yet held by other calls.
	PoolsLeft map[string]int
	Available decimal.Decimal
	Now       time.Time
}

// Source says which funds pay for an allowed call.
type Source string

const (
	SourceFree            Source = "free"              // emergency calls
	SourcePool            Source = "pool"              // a minute pool; the call ends when it runs out
	SourcePoolThenCredits Source = "pool_then_credits" // a minute pool, then credits at the rate
	SourceCredits         Source = "credits"
)

// Decision is the outcome of Decide for an allowed call.
type Decision struct {
	Number    string // E.164 digits without '+' (as dialled for emergency calls)
	Emergency bool
	Inbound   bool // a carrier's call to the org's toll-free number
	Domestic  bool
	Source    Source
	Rate      Rate
	// Plan is the minute pool the call draws first ("" for none); Spill says
	// it may go on on credits when the pool runs out, also mid-call.
	Plan  string
	Spill bool
	// First is the talk time the first hold buys: a minute of a pool, else
	// the rate's first increment. Later increments are a minute while the
	// pool lasts, then the rate's next increment.
	First time.Duration
}

// Decide says whether a call may go ahead, on what money and at what rate.
// It is a pure function of its arguments. The gateway then asks the ledger
// to hold the first increment, which decides "no credit" and "minutes used
// up" again under the org's lock, so that two calls racing for the last
// minute cannot both win; Decide's answer is the same whenever its snapshot
// of pools and credit is current.
//
// In order: an emergency number connects, free, whatever else is true; a
// number that cannot be dialled is refused (484); an inbound toll-free call
// is priced by the catalogue and paid by the org if it can pay the first
// increment; otherwise the deck's longest prefix prices the call (or there
// is no rate), premium numbers are refused if the org blocks them, the first
// catalogue pool that includes the call is drawn while it has minutes, and
// credits pay for the rest if the caller holds communications_credits.
func Decide(deck *Deck, cat *Catalog, c Call) (Decision, error) {
	if d, ok := emergencyFirst(c.Trunk, c.Dialled, c.Org); ok {
		return Decision{Number: d, Emergency: true, Domestic: true, Source: SourceFree}, nil
	}
	num, err := Normalize(c.Dialled, c.Org.Country)
	if err != nil {
		return Decision{}, err
	}
	if c.Trunk == TrunkCarrier {
		return decideTollFree(cat, c, num)
	}
	rate, err := deck.price(num, c.Now)
	if err != nil {
		return Decision{Number: num}, err
	}
	dec := Decision{Number: num, Domestic: c.Org.domestic(rate), Rate: rate,
		Spill: slices.Contains(c.Licenses, CommunicationsCredits)}
	if rate.Type == Premium && c.Org.BlockPremium {
		return dec, fmt.Errorf("%w: +%s is %s", ErrPremiumBlocked, num, rate.Destination)
	}
	dec.Plan = cat.pool(c.Trunk, c.Org.Country, c.Licenses, rate)
	switch {
	case dec.Plan != "" && c.PoolsLeft[dec.Plan] >= 1:
		dec.Source, dec.First = SourcePool, time.Minute
		if dec.Spill {
			dec.Source = SourcePoolThenCredits
		}
		return dec, nil
	case dec.Plan != "" && !dec.Spill:
		return dec, fmt.Errorf("%w: the %s pool has no minutes left this month", ErrMinutesUsedUp, dec.Plan)
	case !dec.Spill:
		return dec, fmt.Errorf("%w: no plan includes %s (%s) and the caller holds no communications_credits", ErrNoLicense, rate.Destination, rate.Type)
	}
	dec.Source, dec.First = SourceCredits, rate.FirstIncrement
	if dec.Plan != "" {
		dec.Source = SourcePoolThenCredits
	}
	if first := rate.FirstCharge(); c.Available.LessThan(first) {
		return dec, fmt.Errorf("%w: %s available, the first increment costs %s", ErrNoCredit, c.Available, first)
	}
	return dec, nil
}

// emergencyFirst reports whether a call connects as an emergency call,
// free, before anything else is looked at, and the number as dialled
// (cleaned of spaces and dashes). Only calls out (from a PBX or a meeting)
// are emergency calls; a carrier's call in is a call to a toll-free number.
func emergencyFirst(trunk, dialled string, org OrgTerms) (string, bool) {
	if trunk == TrunkCarrier || !IsEmergency(dialled, org.Country) {
		return "", false
	}
	d, _ := cleanDialled(dialled)
	return d, true
}

// price is the deck's rate in effect for E.164 digits num at now: its
// longest prefix with a row in effect, or ErrNoRate.
func (d *Deck) price(num string, now time.Time) (Rate, error) {
	rate, ok := d.Lookup(num, now)
	if !ok {
		return Rate{}, fmt.Errorf("%w: +%s", ErrNoRate, num)
	}
	return rate, nil
}

// domestic says whether a call priced at rate stays in the org's country:
// the deck row's country against the org's.
func (o OrgTerms) domestic(rate Rate) bool { return rate.Country == o.Country }

// decideTollFree prices an inbound call to an org's toll-free number: the
// org pays per minute at its country's inbound rate, and only while its
// balance is positive — it must cover the first increment.
func decideTollFree(cat *Catalog, c Call, num string) (Decision, error) {
	cc := CountryOf(num)
	rate, ok := cat.TollFreeRate(cc)
	if !ok {
		return Decision{Number: num, Inbound: true}, fmt.Errorf("%w: no inbound toll-free rate for %q", ErrNoRate, cc)
	}
	rate.Prefix = num
	dec := Decision{Number: num, Inbound: true, Domestic: cc == c.Org.Country, Rate: rate,
		Source: SourceCredits, Spill: true, First: rate.FirstIncrement}
	if first := rate.FirstCharge(); !c.Available.IsPositive() || c.Available.LessThan(first) {
		return dec, fmt.Errorf("%w: %s available, the first increment costs %s", ErrTollFreeNoCredit, c.Available, first)
	}
	return dec, nil
}
