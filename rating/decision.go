package rating

import (
	"errors"
	"fmt"
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

// Call is what the decision needs to know about one call attempt.
type Call struct {
	Dialled    string    // the Request-URI user part as received
	OrgCountry string    // ISO alpha-2 of the paying org
	Licenses   []License // the caller's licenses
	Now        time.Time
}

// Source says which funds pay for an allowed call.
type Source string

const (
	SourceFree    Source = "free" // emergency calls
	SourceCredits Source = "credits"
)

// Decision is the outcome of Decide for an allowed call.
type Decision struct {
	Number    string // E.164 digits without '+'
	Emergency bool
	Domestic  bool
	Source    Source
	Rate      Rate
}

// Decide says whether a call may go ahead and on what money. It is a pure
// function of its arguments: the gateway asks the ledger to hold the first
// charge afterwards, which is where "not enough credit" is decided, because
// only the ledger can decide that without racing other calls.
//
// Plan minutes (issue #4) are not decided yet: every non-emergency call is
// paid from Communications Credits, so the caller needs that license.
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
	if !hasLicense(c.Licenses, CommunicationsCredits) {
		return Decision{Number: num, Rate: rate}, ErrNoLicense
	}
	return Decision{
		Number:   num,
		Domestic: rate.Country == c.OrgCountry,
		Source:   SourceCredits,
		Rate:     rate,
	}, nil
}

func hasLicense(ls []License, want License) bool {
	for _, l := range ls {
		if l == want {
			return true
		}
	}
	return false
}
