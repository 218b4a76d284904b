package ledger

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// The records every billing increment rewrites — an org's Balances, a
// call's CallState (with its Increment) and a debit's Entry — are encoded
// by hand: encoding/json's reflection, and its re-validation of what
// decimal.Decimal and time.Time marshal, were most of the ledger's CPU per
// operation. The bytes are exactly what encoding/json writes for the same
// value (FuzzRecordJSON compares them), so records on disk read back the
// same whichever encoder wrote them. Anything unusual (a string that needs
// escaping, a year outside 0–9999) is handed to encoding/json.

func (b Balances) appendJSON(out []byte) ([]byte, bool) {
	out = append(out, `{"balance":`...)
	out = appendDecimal(out, b.Balance)
	out = append(out, `,"held":`...)
	out = appendDecimal(out, b.Held)
	out = append(out, `,"funded":`...)
	out = appendDecimal(out, b.Funded)
	out = append(out, `,"debited":`...)
	out = appendDecimal(out, b.Debited)
	return append(out, '}'), true
}

func (inc Increment) appendJSON(out []byte) ([]byte, bool) {
	ok := true
	out = append(out, `{"n":`...)
	out = strconv.AppendInt(out, int64(inc.N), 10)
	out = append(out, `,"source":`...)
	out, ok = appendString(out, inc.Source, ok)
	out = append(out, `,"seconds":`...)
	out = strconv.AppendInt(out, int64(inc.Seconds), 10)
	if inc.Minutes != 0 {
		out = append(out, `,"minutes":`...)
		out = strconv.AppendInt(out, int64(inc.Minutes), 10)
	}
	if inc.Month != "" {
		out = append(out, `,"month":`...)
		out, ok = appendString(out, inc.Month, ok)
	}
	if !inc.Credit.IsZero() {
		out = append(out, `,"credit":`...)
		out = appendDecimal(out, inc.Credit)
	}
	out = append(out, `,"open":`...)
	out = strconv.AppendBool(out, inc.Open)
	return append(out, '}'), ok
}

func (s CallState) appendJSON(out []byte) ([]byte, bool) {
	ok := true
	out = append(out, '{')
	if !s.Answer.IsZero() {
		out = append(out, `"answer":`...)
		out, ok = appendTime(out, s.Answer, ok)
		out = append(out, ',')
	}
	out = append(out, `"last_at":`...)
	out, ok = appendTime(out, s.LastAt, ok)
	out = append(out, `,"hold":`...)
	var hok bool
	out, hok = s.Hold.appendJSON(out)
	out = append(out, `,"charge":`...)
	out = appendDecimal(out, s.Charge)
	if s.PoolMinutes != 0 {
		out = append(out, `,"pool_minutes":`...)
		out = strconv.AppendInt(out, int64(s.PoolMinutes), 10)
	}
	if s.BilledS != 0 {
		out = append(out, `,"billed_s":`...)
		out = strconv.AppendInt(out, int64(s.BilledS), 10)
	}
	for _, f := range []struct {
		key string
		t   time.Time
	}{{`,"hold_from":`, s.HoldFrom}, {`,"alive":`, s.Alive}, {`,"expires":`, s.Expires}} {
		if !f.t.IsZero() {
			out = append(out, f.key...)
			out, ok = appendTime(out, f.t, ok)
		}
	}
	if len(s.Tail) > 0 {
		tail, err := json.Marshal(s.Tail)
		if err != nil {
			return out, false
		}
		out = append(out, `,"tail":`...)
		out = append(out, tail...)
	}
	return append(out, '}'), ok && hok
}

func (e Entry) appendJSON(out []byte) ([]byte, bool) {
	ok := true
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, e.Seq, 10)
	out = append(out, `,"at":`...)
	out, ok = appendTime(out, e.At, ok)
	out = append(out, `,"kind":`...)
	out, ok = appendString(out, e.Kind, ok)
	out = append(out, `,"amount":`...)
	out = appendDecimal(out, e.Amount)
	out = append(out, `,"balance":`...)
	out = appendDecimal(out, e.Balance)
	if e.CallID != "" {
		out = append(out, `,"call_id":`...)
		out, ok = appendString(out, e.CallID, ok)
	}
	if e.N != 0 {
		out = append(out, `,"n":`...)
		out = strconv.AppendInt(out, int64(e.N), 10)
	}
	if e.Key != "" {
		out = append(out, `,"idempotency_key":`...)
		out, ok = appendString(out, e.Key, ok)
	}
	if e.Incident != "" {
		out = append(out, `,"incident":`...)
		out, ok = appendString(out, e.Incident, ok)
	}
	return append(out, '}'), ok
}

// appendDecimal writes d as decimal.Decimal's MarshalJSON does by default:
// its String() in quotes.
func appendDecimal(out []byte, d decimal.Decimal) []byte {
	if decimal.MarshalJSONWithoutQuotes {
		return appendDecimalString(out, d)
	}
	out = append(out, '"')
	out = appendDecimalString(out, d)
	return append(out, '"')
}

// appendDecimalString appends d.String() without its big.Int round trip
// when the coefficient fits an int64 and the exponent is 0 to −18 (every
// amount the ledger keeps): digits, then the point where the exponent puts
// it, trailing zeros trimmed — decimal's own rule with its default
// TrimTrailingZeros and no scientific notation. Anything else is
// d.String().
func appendDecimalString(out []byte, d decimal.Decimal) []byte {
	e := -int(d.Exponent())
	if !decimal.TrimTrailingZeros || decimal.UseScientificNotation || e < 0 || e > 18 || d.NumDigits() > 18 {
		return append(out, d.String()...)
	}
	c := d.CoefficientInt64()
	if e == 0 {
		return strconv.AppendInt(out, c, 10)
	}
	if c < 0 {
		out = append(out, '-')
		c = -c
	}
	var buf [20]byte
	digits := strconv.AppendInt(buf[:0], c, 10)
	var intPart, frac []byte
	zeros := 0
	if len(digits) > e {
		intPart, frac = digits[:len(digits)-e], digits[len(digits)-e:]
	} else {
		intPart, frac, zeros = []byte{'0'}, digits, e-len(digits)
	}
	for len(frac) > 0 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}
	out = append(out, intPart...)
	if len(frac) == 0 {
		return out
	}
	out = append(out, '.')
	for range zeros {
		out = append(out, '0')
	}
	return append(out, frac...)
}

// appendTime writes t as time.Time's MarshalJSON does: RFC 3339 with
// nanoseconds, quoted. Years outside 0–9999 and zone offsets of a day or
// more (which MarshalJSON refuses), and offsets with seconds, are left to
// encoding/json.
func appendTime(out []byte, t time.Time, ok bool) ([]byte, bool) {
	if y := t.Year(); y < 0 || y > 9999 {
		return out, false
	}
	if _, off := t.Zone(); off%60 != 0 || off <= -24*3600 || off >= 24*3600 {
		return out, false
	}
	out = append(out, '"')
	out = t.AppendFormat(out, time.RFC3339Nano)
	return append(out, '"'), ok
}

// appendString writes s quoted when it needs no escaping under
// encoding/json's rules (printable ASCII other than `"`, `\`, and the
// HTML-sensitive <, >, &); anything else is left to encoding/json.
func appendString(out []byte, s string, ok bool) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return out, false
		}
	}
	out = append(out, '"')
	out = append(out, s...)
	return append(out, '"'), ok
}

// marshalRecord encodes one record: by its own encoder when it has one and
// the value is ordinary, else by encoding/json. It switches on the exact
// type, not on an interface: Org embeds Balances and Call embeds
// CallState, and a promoted method would encode them as that part alone.
func marshalRecord(v any) ([]byte, error) {
	var b []byte
	ok := false
	switch r := v.(type) {
	case Balances:
		b, ok = r.appendJSON(make([]byte, 0, 128))
	case CallState:
		b, ok = r.appendJSON(make([]byte, 0, 192))
	case Entry:
		b, ok = r.appendJSON(make([]byte, 0, 192))
	}
	if ok {
		return b, nil
	}
	return json.Marshal(v)
}
