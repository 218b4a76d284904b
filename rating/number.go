package rating

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// Numbering-plan knowledge (national formats, trunk and international
// prefixes, lengths, emergency short codes) comes from libphonenumber's
// metadata through github.com/nyaruka/phonenumbers, not from rules written
// here: it covers every country and is updated as plans change.

// KnownCountry reports whether iso is an ISO 3166 alpha-2 region with a
// numbering plan (so creditgate can dial for an org there and price calls to
// it).
func KnownCountry(iso string) bool {
	return len(iso) == 2 && iso != "ZZ" && phonenumbers.GetCountryCodeForRegion(iso) != 0
}

// CallingCode is the country calling code of an ISO alpha-2 country ("" if
// unknown); the gateway routes emergency calls by it.
func CallingCode(iso string) string {
	cc := phonenumbers.GetCountryCodeForRegion(iso)
	if cc == 0 {
		return ""
	}
	return strconv.Itoa(cc)
}

// CountryOf is the ISO alpha-2 region an E.164 number (digits without '+')
// belongs to, "" when the numbering plan does not say (a non-geographic or
// unassigned code).
func CountryOf(e164 string) string {
	var n phonenumbers.PhoneNumber
	if err := phonenumbers.ParseToNumber("+"+e164, "ZZ", &n); err != nil {
		return ""
	}
	r := phonenumbers.GetRegionCodeForNumber(&n)
	if r == "ZZ" || r == "001" {
		return ""
	}
	return r
}

// IsTollFree reports whether an E.164 number (digits without '+') is a
// toll-free (freephone) number by its country's numbering plan.
func IsTollFree(e164 string) bool {
	var n phonenumbers.PhoneNumber
	if err := phonenumbers.ParseToNumber("+"+e164, "ZZ", &n); err != nil {
		return false
	}
	return phonenumbers.GetNumberType(&n) == phonenumbers.TOLL_FREE
}

// ErrNotDialable is the refusal of a number that cannot be dialled; the
// error wrapping it says why (too short, unknown country code, …).
var ErrNotDialable = errors.New("not a dialable number")

func notDialable(dialled, why string) error {
	return fmt.Errorf("%w: %q %s", ErrNotDialable, dialled, why)
}

// MaxDialled bounds what we even look at in a Request-URI user part.
const MaxDialled = 32

// cleanDialled drops the visual separators people and PBXs put into numbers
// and refuses anything else that is not a digit or a leading '+'. It runs
// before the library so that letters (vanity numbers, "ext."), '*' and '#'
// service codes never reach a carrier as something else.
func cleanDialled(s string) (string, bool) {
	if len(s) == 0 || len(s) > MaxDialled {
		return "", false
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			b.WriteByte(c)
		case c == '+' && b.Len() == 0 && i == strings.IndexByte(s, '+'):
			b.WriteByte(c)
		case c == ' ' || c == '-' || c == '.' || c == '(' || c == ')':
		default:
			return "", false
		}
	}
	out := b.String()
	if out == "" || out == "+" {
		return "", false
	}
	return out, true
}

// IsEmergency reports whether what was dialled from an org in country iso
// reaches emergency services (112, 911, 999, 000, 15, …, by that country's
// plan). It is checked before anything else, on the number as dialled, so no
// deck, license or balance can stand in its way. An org whose country has no
// numbering plan still reaches 112 and 911.
func IsEmergency(dialled, iso string) bool {
	d, ok := cleanDialled(dialled)
	if !ok || d[0] == '+' {
		return false
	}
	if !KnownCountry(iso) {
		return d == "112" || d == "911"
	}
	return phonenumbers.IsEmergencyNumber(d, iso)
}

// Normalize turns what a caller in country iso dialled into E.164 digits
// without '+': "+44 20 7946 0018", "0044 20 7946 0018" (from FR),
// "011 44 20 7946 0018" (from US) and, from a GB org, "020 7946 0018" all
// become "442079460018".
//
// A number is accepted when its length is possible for its country's plan;
// whether the range is in service is left to the rate deck and the carrier,
// so a new range works the day the deck prices it.
func Normalize(dialled, iso string) (string, error) {
	return normalized.get(dialled, iso)
}

// normalize is Normalize without the cache.
func normalize(dialled, iso string) (string, error) {
	d, ok := cleanDialled(dialled)
	if !ok {
		return "", notDialable(dialled, "has characters other than digits, a leading '+' and separators, or is empty or too long")
	}
	region := iso
	if !KnownCountry(iso) {
		region = "ZZ" // only numbers in international format can be read
	}
	var n phonenumbers.PhoneNumber
	if err := phonenumbers.ParseToNumber(d, region, &n); err != nil {
		switch {
		case errors.Is(err, phonenumbers.ErrInvalidCountryCode):
			return "", notDialable(dialled, "has no valid country code")
		case errors.Is(err, phonenumbers.ErrTooShortNSN), errors.Is(err, phonenumbers.ErrTooShortAfterIDD):
			return "", notDialable(dialled, "is too short")
		}
		return "", notDialable(dialled, "is not a phone number")
	}
	switch phonenumbers.IsPossibleNumberWithReason(&n) {
	case phonenumbers.IS_POSSIBLE:
	case phonenumbers.TOO_SHORT, phonenumbers.IS_POSSIBLE_LOCAL_ONLY:
		return "", notDialable(dialled, "is incomplete (too short for its country; dial the area code)")
	case phonenumbers.TOO_LONG:
		return "", notDialable(dialled, "is too long for its country")
	case phonenumbers.INVALID_COUNTRY_CODE:
		return "", notDialable(dialled, "has no valid country code")
	default:
		return "", notDialable(dialled, "has a length no number of its country has")
	}
	e164 := e164Of(&n)
	if len(e164) > 15 || !allDigits(e164) {
		return "", notDialable(dialled, "is longer than E.164 allows")
	}
	// What we forward and rate must read back as itself, or the carrier
	// and the deck could see a different number from the one we decided on
	// (national prefixes inside odd national formats can shift digits).
	var back phonenumbers.PhoneNumber
	if d != "+"+e164 {
		if err := phonenumbers.ParseToNumber("+"+e164, "ZZ", &back); err != nil || e164Of(&back) != e164 ||
			phonenumbers.IsPossibleNumberWithReason(&back) != phonenumbers.IS_POSSIBLE {
			return "", notDialable(dialled, "does not read back as the same international number")
		}
	}
	return e164, nil
}

func e164Of(n *phonenumbers.PhoneNumber) string {
	return strconv.Itoa(int(n.GetCountryCode())) + phonenumbers.GetNationalSignificantNumber(n)
}
