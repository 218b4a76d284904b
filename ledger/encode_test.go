package ledger

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// sameAsEncodingJSON fails unless marshalRecord writes exactly what
// encoding/json writes for v.
func sameAsEncodingJSON(t testing.TB, v any) {
	t.Helper()
	want, wantErr := json.Marshal(v)
	got, err := marshalRecord(v)
	if (err != nil) != (wantErr != nil) || string(got) != string(want) {
		t.Fatalf("%#v:\n got  %s (%v)\n want %s (%v)", v, got, err, want, wantErr)
	}
}

func TestRecordJSONIsEncodingJSON(t *testing.T) {
	t1 := time.Date(2026, 12, 2, 9, 30, 15, 123456789, time.UTC)
	paris := time.FixedZone("CET", 3600)
	odd := time.FixedZone("LMT", 561) // an offset with seconds
	cases := []struct {
		name string
		v    any
	}{
		{"zero balances", Balances{}},
		{"balances", Balances{Balance: d("48.51"), Held: d("0.60"), Funded: d("50"), Debited: d("-1.49")}},
		{"zero increment", Increment{}},
		{"pool increment", Increment{N: 3, Source: SourcePool, Seconds: 60, Minutes: 1, Month: "2026-12", Open: true}},
		{"credit increment", Increment{N: 1, Source: SourceCredits, Seconds: 1, Credit: d("0.0100")}},
		{"zero call state", CallState{}},
		{"call state", CallState{Answer: t1, LastAt: t1.Add(time.Second), Hold: Increment{N: 2, Source: SourceCredits, Seconds: 1, Credit: d("0.01")},
			Charge: d("0.02"), PoolMinutes: 4, BilledS: 2}},
		{"call state in another zone", CallState{LastAt: t1.In(paris), Charge: decimal.Zero}},
		{"call state with a seconds offset", CallState{LastAt: t1.In(odd)}},
		{"call state before year 0", CallState{LastAt: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"call state after 9999", CallState{LastAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"increment with an odd source", Increment{Source: "a<b>&\"\\\n\u2028é"}},
		{"debit entry", Entry{Seq: 1 << 40, At: t1, Kind: EntryDebit, Amount: d("-0.01"), Balance: d("49.99"), CallID: "5f0c-ab", N: 7}},
		{"funding entry", Entry{Seq: 2, At: t1, Kind: EntryFunding, Amount: d("50.00"), Balance: d("50.00"), Key: "first", Incident: "INC-42"}},
		{"entry with a hostile key", Entry{Kind: EntryFunding, Key: "<script>&\x00\xff", Replayed: true}},
		// Records that embed the hand-encoded ones are encoded whole.
		{"org", Org{ID: "acme", Name: "Acme", Country: "US", Region: "us", Currency: "USD", Balances: Balances{Balance: d("1.00")}}},
		{"call", Call{ID: "c1", Details: Details{Org: "acme", To: "33142278186"}, FirstIncrement: 1, NextIncrement: 1, Start: t1,
			CallState: CallState{LastAt: t1, Charge: d("0.01")}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { sameAsEncodingJSON(t, tc.v) })
	}
}

// FuzzRecordJSON: for any field values, the hand-written encoders write
// what encoding/json writes.
func FuzzRecordJSON(f *testing.F) {
	f.Add(int64(1764667815123456789), int64(0), "credits", "2026-12", "debit", "call-1", "key", int64(4851), int32(2), int64(7), uint64(9))
	f.Add(int64(-62135596800000000), int64(3600), "a<b", "\u2028", "\xff", "", "&", int64(-1), int32(-5), int64(0), uint64(0))
	f.Fuzz(func(t *testing.T, unixNano, offset int64, source, month, kind, callID, key string, cents int64, exp int32, n int64, seq uint64) {
		zone := time.FixedZone("z", int(offset%(30*3600)))
		at := time.Unix(0, unixNano).In(zone)
		amount := decimal.New(cents, exp%20)
		sameAsEncodingJSON(t, Balances{Balance: amount, Held: amount.Neg(), Funded: decimal.Zero, Debited: amount})
		inc := Increment{N: int(n), Source: source, Seconds: int(n % 3600), Minutes: int(n % 7), Month: month, Credit: amount, Open: n%2 == 0}
		sameAsEncodingJSON(t, inc)
		sameAsEncodingJSON(t, CallState{Answer: at, LastAt: at, Hold: inc, Charge: amount, PoolMinutes: int(n % 5), BilledS: int(n)})
		sameAsEncodingJSON(t, Entry{Seq: seq, At: at, Kind: kind, Amount: amount, Balance: amount, CallID: callID, N: int(n), Key: key, Incident: month})
	})
}

// BenchmarkRecordJSON: the records of one metering step (Balances,
// CallState, a debit Entry) by the hand-written encoders against
// encoding/json in the same run; x-encoding_json is how many times faster.
func BenchmarkRecordJSON(b *testing.B) {
	t1 := time.Date(2026, 12, 2, 9, 30, 15, 123456789, time.UTC)
	recs := []any{
		Balances{Balance: d("48.51"), Held: d("0.60"), Funded: d("50"), Debited: d("1.49")},
		CallState{Answer: t1, LastAt: t1.Add(time.Second), Hold: Increment{N: 2, Source: SourceCredits, Seconds: 1, Credit: d("0.01")}, Charge: d("0.02"), BilledS: 2},
		Entry{Seq: 12345, At: t1, Kind: EntryDebit, Amount: d("-0.01"), Balance: d("48.51"), CallID: "0b6f2a8e-1c1f-4c55-9d3e-6b7f2b4f9a10", N: 2},
	}
	var fast, std float64
	for _, bc := range []struct {
		name string
		enc  func(any) ([]byte, error)
		ns   *float64
	}{{"encoding_json", json.Marshal, &std}, {"hand_written", marshalRecord, &fast}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, r := range recs {
					if _, err := bc.enc(r); err != nil {
						b.Fatal(err)
					}
				}
			}
			*bc.ns = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(*bc.ns, "ns/step")
			if bc.ns == &fast && std > 0 {
				b.ReportMetric(std/fast, "x-encoding_json")
			}
		})
	}
}
