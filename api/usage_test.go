package api

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
	"github.com/xuri/excelize/v2"
)

// usageCalls puts three ended calls in acme's ledger: one on credits whose
// destination name (from an uploaded deck) is a spreadsheet formula, one unanswered, one on credits at a
// six-decimal rate.
func usageCalls(t *testing.T, h *harness) {
	t.Helper()
	l := h.ledger
	start := time.Now().UTC().Truncate(time.Second).Add(-time.Hour)
	call := func(id, dest, to, rate string, answered bool, secs int) {
		c := ledger.Call{ID: id, Details: ledger.Details{Org: "acme", User: "alice", From: "12125550100", To: to,
			Destination: dest, Country: "GB", Type: "geographic", Direction: "outbound",
			RatePerMinute: decimal.RequireFromString(rate), Currency: "USD"}, FirstIncrement: 60, NextIncrement: 60, Spill: true}
		if _, err := l.OpenCall(c, start); err != nil {
			t.Fatal(err)
		}
		if answered {
			if err := l.Answer(id, start.Add(2*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.CloseCall(id, ledger.CallEnd{At: start.Add(time.Duration(2+secs) * time.Second), Reason: ledger.ReasonCallerHangup, SIPStatus: 200}); err != nil {
			t.Fatal(err)
		}
		start = start.Add(time.Minute)
	}
	call("c1", `=HYPERLINK("http://evil.example","x")`, "442079460018", "0.12", true, 30)
	call("unanswered-1", "United Kingdom", "442079460019", "0.12", false, 0)
	call("c3", "United Kingdom", "442079460020", "0.123456", true, 30)
}

func TestUsageExportFormats(t *testing.T) {
	h := setup(t)
	usageCalls(t, h)

	r := h.mustDo("GET", "/v1/orgs/acme/usage?format=csv", "", 200)
	if !bytes.HasPrefix(r.body, []byte("\ufeff")) || !bytes.Contains(r.body, []byte("\r\n")) {
		t.Fatal("CSV without BOM or CRLF: Excel would not read it as UTF-8 rows")
	}
	recs, err := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(r.body, []byte("\ufeff")))).ReadAll()
	if err != nil || len(recs) != 4 {
		t.Fatalf("CSV: %d records, %v", len(recs), err)
	}
	col := map[string]int{}
	for i, c := range recs[0] {
		col[c] = i
	}
	first, second, third := recs[1], recs[2], recs[3]
	if first[col["destination"]] != `'=HYPERLINK("http://evil.example","x")` {
		t.Fatalf("formula destination not defused: %q", first[col["destination"]])
	}
	if first[col["charge"]] != "0.12" || first[col["billed_s"]] != "60" || first[col["duration_s"]] != "30" ||
		first[col["from"]] != "+12125550100" || first[col["to"]] != "+442079460018" || first[col["currency"]] != "USD" {
		t.Fatalf("first row %v", first)
	}
	if second[col["answer"]] != "" || second[col["charge"]] != "0.00" || second[col["billed_s"]] != "0" {
		t.Fatalf("unanswered row %v", second)
	}
	if third[col["rate_per_minute"]] != "0.123456" || third[col["charge"]] != "0.123456" || third[col["billed_s"]] != "60" {
		t.Fatalf("third row %v", third)
	}
	if _, err := time.Parse(time.RFC3339, first[col["start"]]); err != nil || !strings.HasSuffix(first[col["start"]], "Z") {
		t.Fatalf("start %q: want RFC 3339 UTC", first[col["start"]])
	}

	var js struct{ CDRs []map[string]any }
	if err := json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme/usage", "", 200).body, &js); err != nil || len(js.CDRs) != 3 ||
		js.CDRs[2]["charge"] != "0.123456" || js.CDRs[0]["destination"] != `=HYPERLINK("http://evil.example","x")` {
		t.Fatalf("JSON %+v %v", js, err)
	}
	// Integers are JSON numbers, money a decimal string, numbers E.164.
	if c := js.CDRs[0]; c["billed_s"] != float64(60) || c["duration_s"] != float64(30) || c["sip_status"] != float64(200) ||
		c["pool_minutes"] != float64(0) || c["charge"] != "0.12" || c["to"] != "+442079460018" {
		t.Fatalf("JSON CDR types: %#v", c)
	}

	r = h.mustDo("GET", "/v1/orgs/acme/usage?format=xlsx", "", 200)
	if ct := r.header.Get("Content-Type"); ct != "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" {
		t.Fatalf("content type %q", ct)
	}
	f, err := excelize.OpenReader(bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := f.GetRows("PSTN usage")
	if err != nil || len(rows) != 4 || strings.Join(rows[0], ",") != strings.Join(CDRColumns, ",") {
		t.Fatalf("xlsx rows %v %v", rows, err)
	}
	typ := func(cell string) excelize.CellType {
		ct, err := f.GetCellType("PSTN usage", cell)
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	cell := func(c int, row int) string {
		n, _ := excelize.CoordinatesToCellName(c+1, row)
		return n
	}
	// Money, durations and times are numbers, not text.
	for _, name := range []string{"charge", "billed_s", "duration_s", "rate_per_minute", "sip_status", "start"} {
		if ct := typ(cell(col[name], 4)); ct != excelize.CellTypeUnset && ct != excelize.CellTypeNumber {
			t.Errorf("%s is stored as %v, want a number", name, ct)
		}
	}
	raw := func(c int, row int) string {
		v, err := f.GetCellValue("PSTN usage", cell(c, row), excelize.Options{RawCellValue: true})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if raw(col["charge"], 4) != "0.123456" || raw(col["rate_per_minute"], 4) != "0.123456" || raw(col["billed_s"], 4) != "60" || rows[3][col["charge"]] != "0.123456" {
		t.Fatalf("xlsx values charge %s rate %s billed %s", raw(col["charge"], 4), raw(col["rate_per_minute"], 4), raw(col["billed_s"], 4))
	}
	if got := rows[1][col["start"]]; !strings.HasPrefix(got, time.Now().UTC().Format("2006-01-02")) && !strings.HasPrefix(got, time.Now().UTC().Add(-time.Hour).Format("2006-01-02")) {
		t.Fatalf("start shown as %q, want a date-time", got)
	}
	if rows[1][col["destination"]] != `=HYPERLINK("http://evil.example","x")` {
		t.Fatalf("xlsx destination %q: a text cell, kept as is", rows[1][col["destination"]])
	}
	// Range filter: from after the first call leaves the other two.
	from := time.Now().UTC().Add(-time.Hour + 30*time.Second).Format(time.RFC3339)
	recs, _ = csv.NewReader(bytes.NewReader(bytes.TrimPrefix(h.mustDo("GET", "/v1/orgs/acme/usage?format=csv&from="+from, "", 200).body, []byte("\ufeff")))).ReadAll()
	if len(recs) != 3 {
		t.Fatalf("from=%s: %d rows, want 2", from, len(recs)-1)
	}
	if r := h.do("GET", "/v1/orgs/acme/usage?from="+from+"&to="+from, ""); r.status != 422 {
		t.Fatalf("empty range: %d", r.status)
	}
}

func TestDefuse(t *testing.T) {
	for in, want := range map[string]string{"=1+1": "'=1+1", "+44": "'+44", "-2": "'-2", "@SUM(A1)": "'@SUM(A1)",
		"\tx": "'\tx", "abc": "abc", "": "", "4=4": "4=4"} {
		if got := defuse(in); got != want {
			t.Errorf("defuse(%q) = %q, want %q", in, got, want)
		}
	}
}

// generated is a source of n CDRs made on the fly, so the benchmark
// measures the export, not the store.
func generated(n int) cdrSource {
	return func(fn func(*ledger.CDR) error) error {
		t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		rate := decimal.RequireFromString("0.0123")
		c := ledger.CDR{Details: ledger.Details{Org: "acme", User: "alice", From: "12125550100", Destination: "United Kingdom",
			Country: "GB", Type: "geographic", Direction: "outbound", RatePerMinute: rate, Currency: "USD"},
			DisconnectReason: "caller_hangup", SIPStatus: 200}
		for i := range n {
			c.CallID = fmt.Sprintf("%08x-creditgate", i)
			c.To = fmt.Sprintf("4420794%05d", i%100000)
			c.Start = t0.Add(time.Duration(i) * time.Second)
			c.Answer = c.Start.Add(3 * time.Second)
			c.End = c.Answer.Add(time.Duration(i%600) * time.Second)
			c.DurationS = i % 600
			c.BilledS = (c.DurationS + 59) / 60 * 60
			c.Charge = rate.Mul(decimal.NewFromInt(int64(c.BilledS / 60)))
			if err := fn(&c); err != nil {
				return err
			}
		}
		return nil
	}
}

type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// peakHeap runs fn while sampling the heap every 10 ms and returns the
// highest live heap (as of each GC's mark: what the export holds on to)
// and the highest total heap (live plus garbage not yet collected), both
// above where they were at the start.
func peakHeap(fn func()) (live, total uint64) {
	runtime.GC()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(samples)
	base := [2]uint64{samples[0].Value.Uint64(), samples[1].Value.Uint64()}
	var peak [2]atomic.Uint64
	sample := func() {
		s := []metrics.Sample{{Name: samples[0].Name}, {Name: samples[1].Name}}
		metrics.Read(s)
		for i := range s {
			if v := s[i].Value.Uint64(); v > base[i] && v-base[i] > peak[i].Load() {
				peak[i].Store(v - base[i])
			}
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			sample()
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	})
	fn()
	runtime.GC() // the last mark sees what the export still held at its end
	sample()
	close(stop)
	wg.Wait()
	return peak[0].Load(), peak[1].Load()
}

// BenchmarkUsageExport exports 1,000,000 (with -short 20,000) generated
// CDRs as CSV and as XLSX, reporting rows/s, the output size and the peak
// heap during the export (live, and live plus uncollected garbage). Run: go test -run XXX -bench UsageExport
// -benchtime 1x ./api/
func BenchmarkUsageExport(b *testing.B) {
	n := 1_000_000
	if testing.Short() {
		n = 20_000
	}
	for _, tc := range []struct {
		name  string
		write func(io.Writer, cdrSource) error
	}{{"csv", writeUsageCSV}, {"xlsx", writeUsageXLSX}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				var w countingWriter
				var err error
				start := time.Now()
				live, total := peakHeap(func() { err = tc.write(&w, generated(n)) })
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(n)/time.Since(start).Seconds(), "rows/s")
				b.ReportMetric(float64(w.n.Load())/(1<<20), "MiB-out")
				b.ReportMetric(float64(live)/(1<<20), "peak-live-MiB")
				b.ReportMetric(float64(total)/(1<<20), "peak-heap-MiB")
			}
		})
	}
}

// TestUsageXLSXPastTheMemoryChunk writes enough rows that excelize spills
// the sheet to its temporary file, and reads the result back whole.
func TestUsageXLSXPastTheMemoryChunk(t *testing.T) {
	const n = 30_000 // about 20 MiB of sheet XML: past excelize's 16 MiB in memory
	var buf bytes.Buffer
	if err := writeUsageXLSX(&buf, generated(n)); err != nil {
		t.Fatal(err)
	}
	f, err := excelize.OpenReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := f.Rows("PSTN usage")
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	var last []string
	for rows.Next() {
		if count++; count == n+1 {
			if last, err = rows.Columns(); err != nil {
				t.Fatal(err)
			}
		}
	}
	var want ledger.CDR
	_ = generated(n)(func(c *ledger.CDR) error { want = *c; return nil })
	if count != n+1 || last[0] != want.CallID || last[17] != want.Charge.String() {
		t.Fatalf("%d rows, last %v; want %d, ending %s charged %s", count, last, n+1, want.CallID, want.Charge)
	}
}
