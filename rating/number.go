package rating

import (
	"errors"
	"strings"
)

// country is what national dialling needs to know about one country.
type country struct {
	code       string   // country calling code, digits
	trunk      string   // national trunk prefix stripped before the code is added ("" where there is none)
	intl       string   // international access prefix (besides "+")
	emergency  []string // numbers that reach emergency services
	nationalOK int      // minimum national significant number length
}

// countries lists the countries creditgate dials and rates. Issue #4 moves
// normalisation onto a libphonenumber port; this table stays as the source of
// emergency numbers, which callers must reach whatever else fails.
var countries = map[string]country{
	"US": {"1", "1", "011", []string{"911", "112"}, 10},
	"CA": {"1", "1", "011", []string{"911", "112"}, 10},
	"GB": {"44", "0", "00", []string{"999", "112"}, 9},
	"IE": {"353", "0", "00", []string{"112", "999"}, 7},
	"FR": {"33", "0", "00", []string{"112", "15", "17", "18"}, 9},
	"DE": {"49", "0", "00", []string{"112", "110"}, 6},
	"NL": {"31", "0", "00", []string{"112"}, 9},
	"BE": {"32", "0", "00", []string{"112", "101"}, 8},
	"LU": {"352", "", "00", []string{"112", "113"}, 6},
	"CH": {"41", "0", "00", []string{"112", "117", "144"}, 9},
	"AT": {"43", "0", "00", []string{"112", "133", "144"}, 6},
	"IT": {"39", "", "00", []string{"112", "113", "118"}, 6},
	"ES": {"34", "", "00", []string{"112", "091"}, 9},
	"PT": {"351", "", "00", []string{"112"}, 9},
	"DK": {"45", "", "00", []string{"112"}, 8},
	"NO": {"47", "", "00", []string{"112", "113"}, 8},
	"SE": {"46", "0", "00", []string{"112"}, 7},
	"FI": {"358", "0", "00", []string{"112"}, 6},
	"PL": {"48", "", "00", []string{"112", "997"}, 9},
	"CZ": {"420", "", "00", []string{"112", "155"}, 9},
	"GR": {"30", "", "00", []string{"112", "100"}, 10},
	"RO": {"40", "0", "00", []string{"112"}, 9},
	"HU": {"36", "06", "00", []string{"112"}, 8},
	"AU": {"61", "0", "0011", []string{"000", "112"}, 9},
	"NZ": {"64", "0", "00", []string{"111", "112"}, 8},
	"JP": {"81", "0", "010", []string{"110", "119"}, 9},
	"KR": {"82", "0", "00700", []string{"112", "119"}, 8},
	"SG": {"65", "", "000", []string{"999", "995"}, 8},
	"HK": {"852", "", "001", []string{"999", "112"}, 8},
	"IN": {"91", "0", "00", []string{"112", "100"}, 10},
	"CN": {"86", "0", "00", []string{"110", "120"}, 10},
	"BR": {"55", "0", "0021", []string{"190", "192", "193"}, 10},
	"MX": {"52", "", "00", []string{"911"}, 10},
	"AR": {"54", "0", "00", []string{"911", "107"}, 10},
	"ZA": {"27", "0", "00", []string{"10111", "112"}, 9},
	"IL": {"972", "0", "00", []string{"100", "101", "112"}, 8},
	"AE": {"971", "0", "00", []string{"999", "112"}, 8},
	"TR": {"90", "0", "00", []string{"112"}, 10},
	"PH": {"63", "0", "00", []string{"911", "112"}, 9},
}

// KnownCountry reports whether creditgate can dial for this ISO alpha-2 code.
func KnownCountry(iso string) bool {
	_, ok := countries[iso]
	return ok
}

// Errors of number handling; the gateway maps them to SIP statuses in one table.
var (
	ErrNotDialable = errors.New("not a dialable number")
)

// MaxDialled bounds what we even look at in a Request-URI user part.
const MaxDialled = 32

// cleanDialled drops the visual separators people and PBXs put into numbers
// and refuses anything else that is not a digit or a leading '+'.
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
// reaches emergency services. It is checked before anything else, on the
// number as dialled, so no deck, license or balance can stand in its way.
func IsEmergency(dialled, iso string) bool {
	d, ok := cleanDialled(dialled)
	if !ok {
		return false
	}
	c, ok := countries[iso]
	if !ok {
		return d == "112" || d == "911"
	}
	for _, e := range c.emergency {
		if d == e {
			return true
		}
	}
	return false
}

// Normalize turns what a caller in country iso dialled into E.164 digits
// without '+': "+44 20 7946 0018", "0044…" and, from a GB org, "020 7946 0018"
// all become "442079460018".
func Normalize(dialled, iso string) (string, error) {
	d, ok := cleanDialled(dialled)
	if !ok {
		return "", ErrNotDialable
	}
	c, known := countries[iso]
	var e164 string
	switch {
	case strings.HasPrefix(d, "+"):
		e164 = d[1:]
	case known && c.intl != "" && strings.HasPrefix(d, c.intl):
		e164 = d[len(c.intl):]
	case known && c.code == "1" && len(d) == 11 && d[0] == '1':
		e164 = d
	case known && c.trunk != "" && strings.HasPrefix(d, c.trunk) && len(d)-len(c.trunk) >= c.nationalOK:
		e164 = c.code + d[len(c.trunk):]
	case known && c.trunk == "" && len(d) >= c.nationalOK && len(d) <= 12:
		e164 = c.code + d
	case known && c.code == "1" && len(d) == 10:
		e164 = "1" + d
	default:
		return "", ErrNotDialable
	}
	if len(e164) < 7 || len(e164) > 15 || e164[0] == '0' || !allDigits(e164) {
		return "", ErrNotDialable
	}
	return e164, nil
}

// CallingCode is the country calling code of an ISO alpha-2 country ("" if
// unknown); the gateway routes emergency calls by it.
func CallingCode(iso string) string { return countries[iso].code }
