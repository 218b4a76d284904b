package rating

import "strings"

// HighRisk returns the longest of prefixes (E.164 digit prefixes of ranges
// known for revenue-share fraud, configs' fraud.high_risk_prefixes) that
// e164 (digits without '+') starts with, or "" if none does. Whether a
// call there goes ahead is the org's fraud guard's to say.
func HighRisk(prefixes []string, e164 string) (prefix string) {
	for _, p := range prefixes {
		if len(p) > len(prefix) && strings.HasPrefix(e164, p) {
			prefix = p
		}
	}
	return prefix
}
