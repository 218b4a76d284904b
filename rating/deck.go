// Package rating prices a dialled number: it turns what a caller dialled into
// an E.164 number, finds the rate-deck row for it, and says what each billing
// increment costs. It holds no state beyond the deck it is given and never
// touches the network or disk, so every rule here is tested by tables.
package rating

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Type is the kind of destination a deck row prices.
type Type string

const (
	Geographic Type = "geographic"
	Mobile     Type = "mobile"
	TollFree   Type = "toll_free"
	Premium    Type = "premium"
	Special    Type = "special"
)

func parseType(s string) (Type, bool) {
	switch t := Type(s); t {
	case Geographic, Mobile, TollFree, Premium, Special:
		return t, true
	}
	return "", false
}

// Rate is one row of the rate deck. Increments are whole seconds.
type Rate struct {
	Prefix         string          `json:"prefix"`
	Country        string          `json:"country"`
	Destination    string          `json:"destination"`
	Type           Type            `json:"type"`
	PerMinute      decimal.Decimal `json:"rate_per_minute"`
	ConnectionFee  decimal.Decimal `json:"connection_fee"`
	FirstIncrement time.Duration   `json:"-"`
	NextIncrement  time.Duration   `json:"-"`
	EffectiveFrom  time.Time       `json:"effective_from"`
	Line           int             `json:"-"`
}

// Limits on what a deck may hold, so a hostile or mistaken upload is refused
// instead of eating memory.
const (
	MaxDeckRows      = 1_000_000
	MaxPrefixDigits  = 15
	MaxIncrementSecs = 3600
)

// Deck is an immutable, parsed rate deck. Lookups are safe from any
// goroutine and allocate nothing.
//
// Rows hang off a digit trie: a lookup walks the dialled number one digit at
// a time, one array index per digit, and keeps the deepest row already in
// effect — the longest prefix — in a single pass. A map per prefix length
// would cost one string hash per digit instead.
type Deck struct {
	nodes []trieNode
	// rates holds every row, each prefix's rows together and newest
	// effective_from first, so a lookup takes the first one in effect.
	rates []Rate
	from  []int64 // rates[i].EffectiveFrom in Unix nanoseconds
	rows  int
}

// trieNode is one digit position. child[d] is the node for the next digit d
// (0: none; node 0 is the root, never a child); rows is the span of rates
// priced at exactly this prefix.
type trieNode struct {
	child      [10]uint32
	first, end uint32
}

// Rows is the number of rows in the deck.
func (d *Deck) Rows() int { return d.rows }

// LineError is one refused row of a deck.
type LineError struct {
	Line int
	Err  string
}

// DeckError lists every refused row, so an operator fixes a deck in one pass.
type DeckError struct {
	Lines []LineError
}

func (e *DeckError) Error() string {
	var b strings.Builder
	b.WriteString("rate deck refused:")
	for i, l := range e.Lines {
		if i == 20 {
			fmt.Fprintf(&b, " … and %d more", len(e.Lines)-20)
			break
		}
		fmt.Fprintf(&b, " line %d: %s;", l.Line, l.Err)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// ErrDeck is matched by errors.Is for any deck refusal.
var ErrDeck = errors.New("bad rate deck")

func (e *DeckError) Is(target error) bool { return target == ErrDeck }

var requiredColumns = []string{"prefix", "country", "destination", "type", "rate_per_minute"}
var optionalColumns = []string{"connection_fee", "first_increment", "next_increment", "effective_from"}

// ParseDeck reads a rate-deck CSV (header row first, column order free) and
// refuses the whole deck, naming every bad line, if any row is bad. Over
// 80 lines because each column's rule sits where the row is read, in the
// order of the README's column list; the per-field parsing it calls is
// already split out.
func ParseDeck(r io.Reader) (*Deck, error) {
	cr := csv.NewReader(r)
	// Every row must have as many fields as the header: a row with one
	// more (a decimal comma left unquoted: 0,018) or one fewer would price
	// its columns from the wrong places. The count is checked below rather
	// than by csv (FieldsPerRecord = 0) so the refusal names both counts.
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &DeckError{Lines: []LineError{{Line: 1, Err: "empty deck: a header row is required"}}}
		}
		return nil, &DeckError{Lines: []LineError{{Line: 1, Err: err.Error()}}}
	}
	fields := len(header)
	col := map[string]int{}
	for i, h := range header {
		name := strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		if _, dup := col[name]; dup {
			return nil, &DeckError{Lines: []LineError{{Line: 1, Err: fmt.Sprintf("column %q appears twice", name)}}}
		}
		known := false
		for _, c := range append(requiredColumns[:len(requiredColumns):len(requiredColumns)], optionalColumns...) {
			if c == name {
				known = true
			}
		}
		if !known {
			return nil, &DeckError{Lines: []LineError{{Line: 1, Err: fmt.Sprintf("unknown column %q", name)}}}
		}
		col[name] = i
	}
	for _, c := range requiredColumns {
		if _, ok := col[c]; !ok {
			return nil, &DeckError{Lines: []LineError{{Line: 1, Err: fmt.Sprintf("missing column %q", c)}}}
		}
	}

	byPrefix := make(map[string][]Rate)
	rows := 0
	var bad []LineError
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// A malformed record has no fields to ask the position of; the
			// CSV error carries its line.
			line := 0
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				line = pe.StartLine
			}
			bad = append(bad, LineError{Line: line, Err: err.Error()})
			if len(bad) > 1000 {
				break
			}
			continue
		}
		line, _ := cr.FieldPos(0)
		if len(rec) != fields {
			bad = append(bad, LineError{Line: line, Err: fmt.Sprintf("%d fields, the header has %d (a comma in a value must be quoted)", len(rec), fields)})
			if len(bad) > 1000 {
				break
			}
			continue
		}
		if rows >= MaxDeckRows {
			bad = append(bad, LineError{Line: line, Err: fmt.Sprintf("more than %d rows", MaxDeckRows)})
			break
		}
		rate, err := parseRow(rec, col)
		if err != nil {
			bad = append(bad, LineError{Line: line, Err: err.Error()})
			if len(bad) > 1000 {
				break
			}
			continue
		}
		rate.Line = line
		byPrefix[rate.Prefix] = append(byPrefix[rate.Prefix], rate)
		rows++
	}
	if len(bad) > 0 {
		return nil, &DeckError{Lines: bad}
	}
	if rows == 0 {
		return nil, &DeckError{Lines: []LineError{{Line: 2, Err: "deck has no rows"}}}
	}
	for p, rows := range byPrefix {
		sort.SliceStable(rows, func(i, j int) bool { return rows[i].EffectiveFrom.After(rows[j].EffectiveFrom) })
		for i := 1; i < len(rows); i++ {
			if rows[i].EffectiveFrom.Equal(rows[i-1].EffectiveFrom) {
				bad = append(bad, LineError{Line: rows[i].Line, Err: fmt.Sprintf("prefix %s has two rows effective from the same time (line %d)", p, rows[i-1].Line)})
			}
		}
	}
	if len(bad) > 0 {
		sort.Slice(bad, func(i, j int) bool { return bad[i].Line < bad[j].Line })
		return nil, &DeckError{Lines: bad}
	}
	return buildDeck(byPrefix, rows), nil
}

// buildDeck lays the rows out in the trie. Prefixes are inserted in sorted
// order so that the same deck always builds the same layout.
func buildDeck(byPrefix map[string][]Rate, rows int) *Deck {
	prefixes := make([]string, 0, len(byPrefix))
	for p := range byPrefix {
		prefixes = append(prefixes, p)
	}
	sort.Strings(prefixes)
	d := &Deck{nodes: make([]trieNode, 1, len(prefixes)*2+1), rates: make([]Rate, 0, rows), from: make([]int64, 0, rows), rows: rows}
	for _, p := range prefixes {
		n := uint32(0)
		for i := 0; i < len(p); i++ {
			c := p[i] - '0'
			if d.nodes[n].child[c] == 0 {
				d.nodes = append(d.nodes, trieNode{})
				d.nodes[n].child[c] = uint32(len(d.nodes) - 1)
			}
			n = d.nodes[n].child[c]
		}
		d.nodes[n].first = uint32(len(d.rates))
		for _, r := range byPrefix[p] {
			d.rates = append(d.rates, r)
			from := int64(math.MinInt64) // no effective_from: in effect since forever
			if !r.EffectiveFrom.IsZero() {
				from = r.EffectiveFrom.UnixNano()
			}
			d.from = append(d.from, from)
		}
		d.nodes[n].end = uint32(len(d.rates))
	}
	return d
}

func field(rec []string, col map[string]int, name string) string {
	i, ok := col[name]
	if !ok || i >= len(rec) {
		return ""
	}
	return strings.TrimSpace(rec[i])
}

func parseRow(rec []string, col map[string]int) (Rate, error) {
	var r Rate
	r.Prefix = field(rec, col, "prefix")
	if r.Prefix == "" || len(r.Prefix) > MaxPrefixDigits || !allDigits(r.Prefix) {
		return r, fmt.Errorf("prefix %q: want 1 to %d digits, no +", r.Prefix, MaxPrefixDigits)
	}
	r.Country = strings.ToUpper(field(rec, col, "country"))
	if !KnownCountry(r.Country) {
		return r, fmt.Errorf("country %q: not a known ISO 3166 alpha-2 code", r.Country)
	}
	r.Destination = field(rec, col, "destination")
	if r.Destination == "" || len(r.Destination) > 200 {
		return r, fmt.Errorf("destination: want a name of 1 to 200 characters")
	}
	t, ok := parseType(field(rec, col, "type"))
	if !ok {
		return r, fmt.Errorf("type %q: want geographic, mobile, toll_free, premium or special", field(rec, col, "type"))
	}
	r.Type = t
	var err error
	if r.PerMinute, err = parseMoney(field(rec, col, "rate_per_minute")); err != nil {
		return r, fmt.Errorf("rate_per_minute: %w", err)
	}
	r.ConnectionFee = decimal.Zero
	if s := field(rec, col, "connection_fee"); s != "" {
		if r.ConnectionFee, err = parseMoney(s); err != nil {
			return r, fmt.Errorf("connection_fee: %w", err)
		}
	}
	if r.FirstIncrement, err = parseIncrement(field(rec, col, "first_increment")); err != nil {
		return r, fmt.Errorf("first_increment: %w", err)
	}
	if r.NextIncrement, err = parseIncrement(field(rec, col, "next_increment")); err != nil {
		return r, fmt.Errorf("next_increment: %w", err)
	}
	if s := field(rec, col, "effective_from"); s != "" {
		if r.EffectiveFrom, err = time.Parse(time.RFC3339, s); err != nil {
			return r, fmt.Errorf("effective_from %q: want RFC 3339, e.g. 2026-01-01T00:00:00Z", s)
		}
		r.EffectiveFrom = r.EffectiveFrom.UTC()
		if y := r.EffectiveFrom.Year(); y < 1970 || y > 2200 {
			return r, fmt.Errorf("effective_from %q: want a year from 1970 to 2200", s)
		}
	}
	return r, nil
}

func parseIncrement(s string) (time.Duration, error) {
	if s == "" {
		return 60 * time.Second, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxIncrementSecs {
		return 0, fmt.Errorf("%q: want whole seconds from 1 to %d", s, MaxIncrementSecs)
	}
	return time.Duration(n) * time.Second, nil
}

// parseMoney accepts a plain non-negative decimal string of at most
// MaxRateDecimals places; no exponents, no signs, no thousands separators.
func parseMoney(s string) (decimal.Decimal, error) {
	if s == "" {
		return decimal.Zero, errors.New("missing")
	}
	dot := false
	places := 0
	for i, c := range s {
		switch {
		case c >= '0' && c <= '9':
			if dot {
				places++
			}
		case c == '.' && !dot && i > 0 && i < len(s)-1:
			dot = true
		default:
			return decimal.Zero, fmt.Errorf("%q: want a plain decimal like 0.0125", s)
		}
	}
	if places > MaxRateDecimals {
		return decimal.Zero, fmt.Errorf("%q: at most %d decimal places", s, MaxRateDecimals)
	}
	if len(s) > 20 {
		return decimal.Zero, fmt.Errorf("%q: too long", s)
	}
	return decimal.RequireFromString(s), nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Lookup finds the row for an E.164 number given as digits without '+':
// the longest matching prefix, and among its rows the newest already in
// effect at now. A future row takes over at its time without a reload; a
// prefix whose rows are all in the future does not hide a shorter one.
func (d *Deck) Lookup(digits string, now time.Time) (Rate, bool) {
	at := now.UnixNano()
	best := -1
	n := uint32(0)
	for i := 0; i < len(digits); i++ {
		c := digits[i] - '0'
		if c > 9 {
			break
		}
		n = d.nodes[n].child[c]
		if n == 0 {
			break
		}
		node := &d.nodes[n]
		for j := node.first; j < node.end; j++ {
			if d.from[j] <= at {
				best = int(j)
				break
			}
		}
	}
	if best < 0 {
		return Rate{}, false
	}
	return d.rates[best], true
}

// Rates calls fn for every row, in prefix order, newest row of a prefix
// first; the admin API exports the deck in force with it.
func (d *Deck) Rates(fn func(Rate)) {
	for i := range d.rates {
		fn(d.rates[i])
	}
}
