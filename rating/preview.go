package rating

import "time"

// Scope says whether a priced number is in the org's own country.
type Scope string

const (
	ScopeNone          Scope = "" // no org was given: nothing to compare with
	ScopeDomestic      Scope = "domestic"
	ScopeInternational Scope = "international"
)

// Quote is what a number would be priced at, before any call: the answer
// of the admin API's rate preview (GET /v1/rates?number=…&org=…).
type Quote struct {
	// Number is E.164 digits without '+'; for an emergency number, the
	// number as dialled (cleaned of spaces and dashes).
	Number    string
	Emergency bool // connects free, before any rating; Rate is then zero
	Rate      Rate
	Scope     Scope
}

// Preview says what dialling a number would be priced at, by the same
// steps as Decide: with an org, an emergency number of its country
// connects free before anything else and national formats are read in its
// country; the deck's longest prefix in effect at now prices the number
// (or ErrNoRate); the scope is the deck row's country against the org's.
// Without an org (org nil) there is no emergency check and no scope, and
// only an international format ("+44…") can be read. Licenses, pools,
// credit and premium blocking are left out: they decide whether a call may
// go ahead, not what the number costs. A pure function of its arguments.
func Preview(deck *Deck, dialled string, org *OrgTerms, now time.Time) (Quote, error) {
	terms := OrgTerms{}
	if org != nil {
		terms = *org
		if d, ok := emergencyFirst(TrunkCustomer, dialled, terms); ok {
			return Quote{Number: d, Emergency: true, Scope: ScopeDomestic}, nil
		}
	}
	num, err := Normalize(dialled, terms.Country)
	if err != nil {
		return Quote{}, err
	}
	rate, err := deck.price(num, now)
	if err != nil {
		return Quote{Number: num}, err
	}
	q := Quote{Number: num, Rate: rate}
	switch {
	case org == nil:
		q.Scope = ScopeNone
	case terms.domestic(rate):
		q.Scope = ScopeDomestic
	default:
		q.Scope = ScopeInternational
	}
	return q, nil
}
