package rating

import (
	"encoding/csv"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func mustDeck(t *testing.T, csv string) *Deck {
	t.Helper()
	d, err := ParseDeck(strings.NewReader(csv))
	if err != nil {
		t.Fatalf("ParseDeck: %v", err)
	}
	return d
}

func TestSampleDeckParses(t *testing.T) {
	d := SampleDeck()
	if d.Rows() < 100 {
		t.Fatalf("sample deck has %d rows, want a realistic deck", d.Rows())
	}
	seen := map[string]map[Type]bool{}
	d.Rates(func(r Rate) {
		if seen[r.Country] == nil {
			seen[r.Country] = map[Type]bool{}
		}
		seen[r.Country][r.Type] = true
	})
	if len(seen) < 30 {
		t.Errorf("sample deck covers %d countries, want ≥ 30", len(seen))
	}
	for _, typ := range []Type{Geographic, Mobile, TollFree, Premium} {
		n := 0
		for _, types := range seen {
			if types[typ] {
				n++
			}
		}
		if n == 0 {
			t.Errorf("sample deck has no %s rows", typ)
		}
	}
}

const header = "prefix,country,destination,type,rate_per_minute,connection_fee,first_increment,next_increment,effective_from\n"

func TestParseDeckRefuses(t *testing.T) {
	cases := []struct {
		name, csv, want string
	}{
		{"empty", "", "line 1: empty deck"},
		{"missing column", "prefix,country,destination,type\n44,GB,UK,geographic\n", `missing column "rate_per_minute"`},
		{"unknown column", "prefix,country,destination,type,rate_per_minute,colour\n", `unknown column "colour"`},
		{"no rows", header, "deck has no rows"},
		{"plus in prefix", header + "+44,GB,UK,geographic,0.01,,,,\n", "line 2: prefix"},
		{"letters in prefix", header + "44a,GB,UK,geographic,0.01,,,,\n", "line 2: prefix"},
		{"bad country", header + "44,XX,UK,geographic,0.01,,,,\n", `line 2: country "XX"`},
		{"bad type", header + "44,GB,UK,landline,0.01,,,,\n", `line 2: type "landline"`},
		{"negative rate", header + "44,GB,UK,geographic,-0.01,,,,\n", "line 2: rate_per_minute"},
		{"float rate", header + "44,GB,UK,geographic,1e-2,,,,\n", "line 2: rate_per_minute"},
		{"too precise rate", header + "44,GB,UK,geographic,0.0000001,,,,\n", "at most 6 decimal places"},
		{"zero increment", header + "44,GB,UK,geographic,0.01,,0,60,\n", "line 2: first_increment"},
		{"fractional increment", header + "44,GB,UK,geographic,0.01,,1.5,60,\n", "line 2: first_increment"},
		{"bad date", header + "44,GB,UK,geographic,0.01,,60,60,yesterday\n", "line 2: effective_from"},
		{"every bad line named", header + "44,GB,UK,geographic,0.01,,,,\nx,GB,UK,geographic,0.01,,,,\n33,FR,FR,geographic,abc,,,,\n", "line 3: prefix"},
		{"duplicate prefix and time", header + "44,GB,UK,geographic,0.01,,,,\n44,GB,UK,geographic,0.02,,,,\n", "line 3: prefix 44 has two rows"},
		{"wrong field count", header + "44,GB,UK\n", "line 2: 3 fields, the header has 9"},
		{"decimal comma unquoted", "prefix,country,destination,type,rate_per_minute\n44,GB,UK,geographic,0.02\n4420,GB,United Kingdom - London,geographic,0,018\n",
			"line 3: 6 fields, the header has 5"},
		{"one field short after a quoted newline", header + "44,GB,\"United\nKingdom\",geographic,0.01,,,,\n33,FR,France,geographic,0.01,,,\n",
			"line 4: 8 fields, the header has 9"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDeck(strings.NewReader(tc.csv))
			if err == nil {
				t.Fatalf("accepted a bad deck (%d rows)", d.Rows())
			}
			if !errors.Is(err, ErrDeck) {
				t.Errorf("error %v is not ErrDeck", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	d, err := ParseDeck(strings.NewReader(header + "44,GB,UK,geographic,0.01,,,,\nx,GB,UK,geographic,0.01,,,,\n33,FR,FR,geographic,abc,,,,\n"))
	var de *DeckError
	if d != nil || !errors.As(err, &de) || len(de.Lines) != 2 || de.Lines[0].Line != 3 || de.Lines[1].Line != 4 {
		t.Fatalf("want lines 3 and 4 refused, got %v", err)
	}
}

func TestLookup(t *testing.T) {
	d := mustDeck(t, header+
		"44,GB,UK,geographic,0.02,,60,60,2026-01-01T00:00:00Z\n"+
		"447,GB,UK mobile,mobile,0.05,,60,60,2026-01-01T00:00:00Z\n"+
		"447,GB,UK mobile,mobile,0.04,,60,60,2026-12-01T00:00:00Z\n"+
		"4479,GB,UK mobile,mobile,0.09,,60,60,2027-01-01T00:00:00Z\n")
	cases := []struct {
		name, number string
		at           time.Time
		want         string // rate, "" for no match
	}{
		{"geographic", "442079460018", t0, "0.02"},
		{"longest prefix wins", "447700900123", t0, "0.05"},
		{"newer row in effect wins", "447700900123", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), "0.04"},
		{"future longer prefix not yet in effect", "447912345678", t0, "0.05"},
		{"future longer prefix takes over at its time", "447912345678", time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), "0.09"},
		{"no match", "33123456789", t0, ""},
		{"row before its time", "442079460018", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := d.Lookup(tc.number, tc.at)
			if tc.want == "" {
				if ok {
					t.Fatalf("matched %+v, want none", r)
				}
				return
			}
			if !ok || !r.PerMinute.Equal(decimal.RequireFromString(tc.want)) {
				t.Fatalf("got %v (ok=%v), want rate %s", r.PerMinute, ok, tc.want)
			}
		})
	}
}

func TestPrice(t *testing.T) {
	cases := []struct {
		name                 string
		rate, fee            string
		first, next          int
		dur                  time.Duration
		wantBilled           time.Duration
		wantIncs             int
		wantCharge, wantNext string
	}{
		{"per minute, 61 s is two minutes", "0.0200", "0", 60, 60, 61 * time.Second, 120 * time.Second, 2, "0.04", "0.02"},
		{"per minute, exact minute", "0.0200", "0", 60, 60, 60 * time.Second, 60 * time.Second, 1, "0.02", "0.02"},
		{"answered then dropped pays first increment", "0.0200", "0", 60, 60, 0, 60 * time.Second, 1, "0.02", "0.02"},
		{"per second", "0.6000", "0", 1, 1, 10500 * time.Millisecond, 11 * time.Second, 11, "0.11", "0.01"},
		{"30/6 with connection fee", "0.1200", "0.05", 30, 6, 31 * time.Second, 36 * time.Second, 2, "0.122", "0.012"},
		{"rounded up to 6 places", "0.0125", "0", 1, 1, 3 * time.Second, 3 * time.Second, 3, "0.000627", "0.000209"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := Rate{PerMinute: decimal.RequireFromString(tc.rate), ConnectionFee: decimal.RequireFromString(tc.fee),
				FirstIncrement: time.Duration(tc.first) * time.Second, NextIncrement: time.Duration(tc.next) * time.Second}
			billed, incs, charge := r.Billed(tc.dur)
			if billed != tc.wantBilled || incs != tc.wantIncs || !charge.Equal(decimal.RequireFromString(tc.wantCharge)) {
				t.Fatalf("Billed(%v) = %v, %d, %s; want %v, %d, %s", tc.dur, billed, incs, charge, tc.wantBilled, tc.wantIncs, tc.wantCharge)
			}
			if !r.NextCharge().Equal(decimal.RequireFromString(tc.wantNext)) {
				t.Fatalf("NextCharge = %s, want %s", r.NextCharge(), tc.wantNext)
			}
		})
	}
}

// The integer path of IncrementCharge must give what the rule says in
// decimals, for every rate a deck can hold and every increment length.
func FuzzIncrementCharge(f *testing.F) {
	for _, s := range []string{"0.0125", "0.6", "10", "0.000001", "999999.999999", "0", "1000000", "0.0000001", "123e3"} {
		f.Add(s, int64(1))
		f.Add(s, int64(60))
	}
	f.Fuzz(func(t *testing.T, rate string, secs int64) {
		r, err := decimal.NewFromString(rate)
		if err != nil || secs < 0 || secs > 1<<20 {
			return
		}
		got := Rate{PerMinute: r}.IncrementCharge(time.Duration(secs) * time.Second)
		want := RoundCharge(r.Mul(decimal.NewFromInt(secs)).Div(sixty))
		if !got.Equal(want) {
			t.Fatalf("IncrementCharge(%s/min, %ds) = %s; the rule gives %s", r, secs, got, want)
		}
	})
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		name, dialled, country, want string
	}{
		{"E.164 with plus", "+44 20 7946 0018", "US", "442079460018"},
		{"US 10 digit", "(212) 555-0100", "US", "12125550100"},
		{"US 1+10 digit", "1-212-555-0100", "US", "12125550100"},
		{"US international prefix", "011442079460018", "US", "442079460018"},
		{"GB national", "020 7946 0018", "GB", "442079460018"},
		{"GB mobile national", "07700 900123", "GB", "447700900123"},
		{"GB 00 prefix", "0033142278186", "GB", "33142278186"},
		{"FR national", "01 42 27 81 86", "FR", "33142278186"},
		{"FR mobile national", "06 12 34 56 78", "FR", "33612345678"},
		{"DE national", "030 1234567", "DE", "49301234567"},
		{"DE mobile national", "0151 23456789", "DE", "4915123456789"},
		{"IT keeps its leading zero", "06 6982 0000", "IT", "390669820000"},
		{"letters", "+44abc", "GB", ""},
		{"empty", "", "GB", ""},
		{"just plus", "+", "GB", ""},
		{"plus in the middle", "44+2079460018", "GB", ""},
		{"too short", "+4412", "GB", ""},
		{"too long", "+4412345678901234567", "GB", ""},
		{"sip uri junk", "alice@example.com", "GB", ""},
		{"national too short", "0123", "GB", ""},
		{"leading zero country code", "+0441234567", "GB", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Normalize(tc.dialled, tc.country)
			if tc.want == "" {
				if !errors.Is(err, ErrNotDialable) {
					t.Fatalf("Normalize(%q) = %q, %v; want ErrNotDialable", tc.dialled, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Normalize(%q, %s) = %q, %v; want %q", tc.dialled, tc.country, got, err, tc.want)
			}
		})
	}
}

func TestNumberCacheBounded(t *testing.T) {
	c := newNumberCache(100)
	for i := 0; i < 1000; i++ {
		n := fmt.Sprintf("+1212555%04d", i)
		if got, err := c.get(n, "US"); err != nil || got != n[1:] {
			t.Fatalf("get(%s) = %q, %v", n, got, err)
		}
		if c.len() > 200 {
			t.Fatalf("%d answers kept after %d numbers; want at most 200", c.len(), i+1)
		}
	}
	// A number in steady use stays while one-off numbers stream past.
	c.get("2125550100", "US")
	for i := 0; i < 1000; i++ {
		c.get(fmt.Sprintf("+4420794%05d", i), "GB")
		c.get("2125550100", "US")
	}
	c.mu.Lock()
	_, kept := c.cur[numberKey{"2125550100", "US"}]
	c.mu.Unlock()
	if !kept {
		t.Fatal("a number looked up all the time was dropped")
	}
	if _, err := c.get("12", "US"); !errors.Is(err, ErrNotDialable) {
		t.Fatalf("a refusal from the cache = %v; want ErrNotDialable", err)
	}
	if _, err := c.get("12", "US"); !errors.Is(err, ErrNotDialable) {
		t.Fatalf("the same refusal again = %v; want ErrNotDialable", err)
	}
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"+442079460018", "020 7946 0018", "011442079460018", "911", "(212) 555-0100", "++44", "0"} {
		f.Add(s, "GB")
		f.Add(s, "US")
	}
	f.Fuzz(func(t *testing.T, dialled, country string) {
		got, err := Normalize(dialled, country)
		// The cache answers as the parse would, first time and again.
		for i := 0; i < 2; i++ {
			want, wantErr := normalize(dialled, country)
			if got != want || fmt.Sprint(err) != fmt.Sprint(wantErr) {
				t.Fatalf("Normalize(%q, %q) = %q, %v; uncached %q, %v", dialled, country, got, err, want, wantErr)
			}
			got, err = Normalize(dialled, country)
		}
		if err != nil {
			if !errors.Is(err, ErrNotDialable) {
				t.Fatalf("Normalize(%q, %q): refusal %v is not ErrNotDialable", dialled, country, err)
			}
			return
		}
		if len(got) < 3 || len(got) > 15 || !allDigits(got) || got[0] == '0' {
			t.Fatalf("Normalize(%q, %q) = %q: not E.164", dialled, country, got)
		}
		// E.164 is a fixed point: normalising the result again from
		// anywhere gives it back.
		for _, from := range []string{country, "US", "GB", "ZZ"} {
			if again, err := Normalize("+"+got, from); err != nil || again != got {
				t.Fatalf("Normalize(+%s, %q) = %q, %v; want it unchanged", got, from, again, err)
			}
		}
	})
}

func FuzzParseDeck(f *testing.F) {
	f.Add(string(SampleDeckCSV[:600]))
	f.Add(header + "44,GB,UK,geographic,0.01,,,,\n")
	f.Add("prefix,country\n\"1,2\n")
	f.Add("prefix,country,destination,type,rate_per_minute\n4420,GB,United Kingdom - London,geographic,0,018\n")
	f.Fuzz(func(t *testing.T, in string) {
		d, err := ParseDeck(strings.NewReader(in))
		if err != nil {
			if d != nil || !errors.Is(err, ErrDeck) {
				t.Fatalf("refusal must return no deck and ErrDeck: %v", err)
			}
			return
		}
		n := 0
		d.Rates(func(r Rate) {
			n++
			if r.PerMinute.IsNegative() || r.FirstIncrement < time.Second || r.NextIncrement < time.Second || !KnownCountry(r.Country) {
				t.Fatalf("accepted a bad row %+v", r)
			}
			// Every accepted row must be found again by its own prefix.
			if got, ok := d.Lookup(r.Prefix, r.EffectiveFrom); !ok || got.Prefix != r.Prefix {
				t.Fatalf("row %+v not found by its prefix: %+v", r, got)
			}
		})
		if n != d.Rows() {
			t.Fatalf("deck says %d rows, holds %d", d.Rows(), n)
		}
		// An accepted deck has no row whose field count differs from the
		// header's: encoding/csv holding every record to the first one's
		// count must read it without complaint.
		cr := csv.NewReader(strings.NewReader(in))
		cr.FieldsPerRecord = 0
		if _, err := cr.ReadAll(); err != nil {
			t.Fatalf("accepted a deck encoding/csv refuses: %v", err)
		}
	})
}
