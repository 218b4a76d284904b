package rating

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// License is what a user may be assigned (SPEC §2).
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
// table and the admin API to an HTTP status in another.
var (
	ErrNoRate    = errors.New("no rate for this destination")
	ErrNoLicense = errors.New("caller holds no license that pays for this call")
)

// Plans: the minute pools a call may draw (SPEC §2). The ledger keeps the
// minutes under the same names.
const (
	PlanDomestic      = "domestic"
	PlanInternational = "international"
	PlanConferencing  = "conferencing"
)

// DefaultZoneA is where a dial-out from a meeting is included with
// audio_conferencing unless the operator configures its own list.
var DefaultZoneA = []string{"AT", "AU", "BE", "CA", "CH", "DE", "DK", "ES", "FI", "FR", "GB", "IE", "IT", "JP",
	"NL", "NO", "NZ", "PT", "SE", "US"}

// Call is what the decision needs to know about one call attempt.
type Call struct {
	Dialled    string    // the Request-URI user part as received
	OrgCountry string    // ISO alpha-2 of the paying org
	Licenses   []License // the caller's licenses
	Now        time.Time
	// Conferencing is a dial-out from a meeting (the call came in on a
	// conferencing trunk); ZoneA lists the countries such dial-outs include.
	Conferencing bool
	ZoneA        []string
}

// Source says which funds pay for an allowed call.
type Source string

const (
	SourceFree    Source = "free" // emergency calls
	SourceCredits Source = "credits"
	SourcePlan    Source = "plan" // a minute pool first, then credits if Spill
)

// Decision is the outcome of Decide for an allowed call.
type Decision struct {
	Number    string // E.164 digits without '+'
	Emergency bool
	Domestic  bool
	Source    Source
	Rate      Rate
	// Plan is the minute pool the call draws first ("" for none); Spill says
	// it may go on on credits when the pool runs out, also mid-call.
	Plan  string
	Spill bool
}

// Decide says whether a call may go ahead and on what money. It is a pure
// function of its arguments: the gateway asks the ledger to hold the first
// increment afterwards, which is where "not enough credit" and "pool used
// up" are decided, because only the ledger can decide them without racing
// other calls.
//
// Which pool covers a call (SPEC §2): premium-rate numbers never come from a
// plan; a dial-out from a meeting draws the conferencing pool if the user
// holds audio_conferencing and the destination is in zone A; otherwise a call
// to the org's own country draws the domestic pool (both calling plans
// include domestic minutes), and a call abroad the international pool (the
// Domestic and International Calling Plan only). What no plan covers, and
// what is left when a pool runs out, is paid from credits if the user holds
// communications_credits.
func Decide(deck *Deck, c Call) (Decision, error) {
	if IsEmergency(c.Dialled, c.OrgCountry) {
		d, _ := cleanDialled(c.Dialled)
		return Decision{Number: d, Emergency: true, Domestic: true, Source: SourceFree}, nil
	}
	num, err := Normalize(c.Dialled, c.OrgCountry)
	if err != nil {
		return Decision{}, err
	}
	rate, ok := deck.Lookup(num, c.Now)
	if !ok {
		return Decision{Number: num}, ErrNoRate
	}
	dec := Decision{Number: num, Domestic: rate.Country == c.OrgCountry, Rate: rate,
		Spill: hasLicense(c.Licenses, CommunicationsCredits)}
	switch {
	case rate.Type == Premium:
	case c.Conferencing:
		if hasLicense(c.Licenses, AudioConferencing) && slices.Contains(c.ZoneA, rate.Country) {
			dec.Plan = PlanConferencing
		}
	case dec.Domestic:
		if hasLicense(c.Licenses, DomesticCallingPlan) || hasLicense(c.Licenses, InternationalCallingPlan) {
			dec.Plan = PlanDomestic
		}
	default:
		if hasLicense(c.Licenses, InternationalCallingPlan) {
			dec.Plan = PlanInternational
		}
	}
	switch {
	case dec.Plan != "":
		dec.Source = SourcePlan
	case dec.Spill:
		dec.Source = SourceCredits
	default:
		return dec, ErrNoLicense
	}
	return dec, nil
}

func hasLicense(ls []License, want License) bool {
	for _, l := range ls {
		if l == want {
			return true
		}
	}
	return false
}
