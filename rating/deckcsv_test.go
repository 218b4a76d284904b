package rating

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// csvRead is what encoding/csv gives back for a field it wrote: with CRLF
// line ends the writer drops every \r of a field; without, a \r\n inside a
// quoted field reads back as \n. ParseDeck then trims the spaces around a
// value. Nothing else may change.
func csvRead(s string, crlf bool) string {
	if crlf {
		s = strings.ReplaceAll(s, "\r", "")
	} else {
		s = strings.ReplaceAll(s, "\r\n", "\n")
	}
	return strings.TrimSpace(s)
}

// FuzzDeckRoundTrip writes a deck with encoding/csv — destinations the
// fuzzer chooses (commas, quotes, newlines, anything), rates, fees and
// increments from it, the columns in an order it picks — parses it with
// ParseDeck, and compares every field of every row with what was written:
// no field dropped, moved to another column or altered, every row on the
// line it started on. Then one row gets a field too many or too few, and
// the deck must be refused naming that row's line with both counts.
func FuzzDeckRoundTrip(f *testing.F) {
	f.Add("United Kingdom - London", "0,018", uint32(18000), uint32(0), uint16(59), uint16(0), uint8(0), false, uint8(1))
	f.Add("Paris, \"centre\"\nand suburbs", "  ", uint32(7), uint32(1234567), uint16(0), uint16(5), uint8(3), true, uint8(0))
	f.Add("a\r\nb\rc", "=1+1", uint32(1), uint32(0), uint16(3599), uint16(3599), uint8(7), false, uint8(6))
	f.Add(" lead", strings.Repeat("x", 201), uint32(0), uint32(99), uint16(1), uint16(1), uint8(200), true, uint8(19))
	f.Fuzz(func(t *testing.T, dest1, dest2 string, rate, fee uint32, first, next uint16, order uint8, crlf bool, corrupt uint8) {
		cols := append(append([]string{}, requiredColumns...), optionalColumns...)
		rand.New(rand.NewPCG(uint64(order), 0)).Shuffle(len(cols), func(i, j int) { cols[i], cols[j] = cols[j], cols[i] })
		money := func(n uint32) string { return decimal.New(int64(n%1_000_000_000), -int32(n%7)).String() }
		rows := []map[string]string{
			{"prefix": "44", "country": "GB", "destination": dest1, "type": "geographic", "rate_per_minute": money(rate),
				"connection_fee": money(fee), "first_increment": strconv.Itoa(int(first)%3600 + 1), "next_increment": strconv.Itoa(int(next)%3600 + 1)},
			{"prefix": "4420", "country": "GB", "destination": dest2, "type": "mobile", "rate_per_minute": money(fee),
				"first_increment": strconv.Itoa(int(next)%3600 + 1), "effective_from": "2026-01-01T00:00:00Z"},
			{"prefix": "1800", "country": "US", "destination": "United States - toll free", "type": "toll_free", "rate_per_minute": money(rate + fee)},
		}

		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		w.UseCRLF = crlf
		write := func(rec []string) int {
			t.Helper()
			w.Flush()
			line := bytes.Count(buf.Bytes(), []byte("\n")) + 1
			if err := w.Write(rec); err != nil {
				t.Fatal(err)
			}
			return line
		}
		write(cols)
		// One row (corrupt/4 % 3) gets a field too many (1), one too few
		// (2) or one of its values twice, as a cell split at a comma would be
		// (3); 0 leaves every row whole.
		bad, how := int(corrupt/4)%3, corrupt%4
		lines := make([]int, len(rows))
		want := map[int]string{} // line → what its refusal must say
		for i, row := range rows {
			rec := make([]string, 0, len(cols)+1)
			for _, c := range cols {
				rec = append(rec, row[c])
			}
			if i == bad {
				switch how {
				case 1:
					rec = append(rec, dest2)
				case 2:
					rec = rec[:len(rec)-1]
				case 3:
					k := int(corrupt) % len(rec)
					rec = append(rec[:k+1], rec[k:]...)
				}
			}
			lines[i] = write(rec)
			switch d := csvRead(row["destination"], crlf); {
			case len(rec) != len(cols):
				want[lines[i]] = fmt.Sprintf("%d fields, the header has %d", len(rec), len(cols))
			case d == "" || len(d) > 200:
				want[lines[i]] = "destination"
			}
		}
		w.Flush()

		d, err := ParseDeck(bytes.NewReader(buf.Bytes()))
		if len(want) > 0 {
			var de *DeckError
			if d != nil || !errors.As(err, &de) {
				t.Fatalf("deck with bad lines %v accepted:\n%s", want, buf.Bytes())
			}
			if len(de.Lines) != len(want) {
				t.Fatalf("refusal names %+v, want exactly the lines %v:\n%s", de.Lines, want, buf.Bytes())
			}
			for _, l := range de.Lines {
				if !strings.Contains(l.Err, want[l.Line]) || want[l.Line] == "" {
					t.Fatalf("line %d refused with %q, want %q:\n%s", l.Line, l.Err, want[l.Line], buf.Bytes())
				}
			}
			return
		}
		if err != nil {
			t.Fatalf("a deck of valid rows refused: %v\n%s", err, buf.Bytes())
		}
		got := map[string]Rate{}
		d.Rates(func(r Rate) { got[r.Prefix] = r })
		if len(got) != len(rows) || d.Rows() != len(rows) {
			t.Fatalf("%d rows written, %d parsed", len(rows), len(got))
		}
		for i, row := range rows {
			r := got[row["prefix"]]
			incr := func(s string) time.Duration {
				if s == "" {
					return time.Minute
				}
				n, _ := strconv.Atoi(s)
				return time.Duration(n) * time.Second
			}
			var from time.Time
			if s := row["effective_from"]; s != "" {
				from, _ = time.Parse(time.RFC3339, s)
			}
			fee := row["connection_fee"]
			if fee == "" {
				fee = "0"
			}
			switch {
			case r.Line != lines[i],
				r.Country != row["country"],
				r.Destination != csvRead(row["destination"], crlf),
				string(r.Type) != row["type"],
				r.PerMinute.String() != row["rate_per_minute"],
				r.ConnectionFee.String() != fee,
				r.FirstIncrement != incr(row["first_increment"]),
				r.NextIncrement != incr(row["next_increment"]),
				!r.EffectiveFrom.Equal(from):
				t.Fatalf("row written on line %d as %q\nparsed as %+v\n%s", lines[i], row, r, buf.Bytes())
			}
		}
	})
}
