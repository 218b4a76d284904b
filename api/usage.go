package api

import (
	"archive/zip"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
	"github.com/xuri/excelize/v2"
)

// The PSTN usage details report (README, Admin API: usage): every CDR of an org in a time
// range, as CSV that Excel opens, XLSX with typed cells, or JSON. All three
// are streamed from a Pebble iteration straight to the connection, so a
// million-row export holds one row in memory at a time (XLSX: excelize's
// stream writer keeps up to 16 MiB of sheet in memory and spills the rest
// to a temporary file, which is then zipped straight to the connection).

// CDRColumns are the usage report's columns, in order (the README's CDR columns).
var CDRColumns = []string{"call_id", "org", "user", "from", "to", "destination", "country", "type", "direction",
	"start", "answer", "end", "duration_s", "billed_s", "pool", "pool_minutes", "rate_per_minute", "charge",
	"currency", "disconnect_reason", "sip_status"}

// cdrSource calls fn for each CDR of the report, in order.
type cdrSource func(fn func(*ledger.CDR) error) error

func e164(n string) string {
	if n == "" || n[0] < '0' || n[0] > '9' || len(n) < 7 {
		return n
	}
	return "+" + n
}

func cdrRow(c *ledger.CDR) []string {
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	return []string{c.CallID, c.Org, c.User, e164(c.From), e164(c.To), c.Destination, c.Country, c.Type, string(c.Direction),
		ts(c.Start), ts(c.Answer), ts(c.End), strconv.Itoa(c.DurationS), strconv.Itoa(c.BilledS), c.Pool,
		strconv.Itoa(c.PoolMinutes), c.RatePerMinute.String(), money(c.Charge), c.Currency, string(c.DisconnectReason),
		strconv.Itoa(c.SIPStatus)}
}

// textColumns hold free text that comes from outside the gateway's own
// code (the call id, the user id, the uploaded deck's destination names,
// the disconnect reason); in CSV they are defused against formula
// injection.
var textColumns = map[int]bool{0: true, 2: true, 5: true, 19: true}

// defuse makes a spreadsheet read a cell as text when it starts like a
// formula (OWASP's CSV injection advice): a destination named
// `=HYPERLINK(...)` in a deck from a careless or hostile source must not run
// in the finance team's Excel. In XLSX every cell is typed, so text there is
// text already.
func defuse(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// writeUsageCSV writes RFC 4180 CSV with CRLF line ends and a UTF-8
// byte-order mark, which is what makes Excel read it as UTF-8.
func writeUsageCSV(w io.Writer, src cdrSource) error {
	if _, err := io.WriteString(w, "\ufeff"); err != nil {
		return err
	}
	cw := csv.NewWriter(w)
	cw.UseCRLF = true
	if err := cw.Write(CDRColumns); err != nil {
		return err
	}
	err := src(func(c *ledger.CDR) error {
		row := cdrRow(c)
		for i := range row {
			if textColumns[i] {
				row[i] = defuse(row[i])
			}
		}
		return cw.Write(row)
	})
	cw.Flush()
	if err != nil {
		return err
	}
	return cw.Error()
}

// intColumns are the usage report's integer columns: JSON numbers in the
// JSON report (money stays a decimal string, as everywhere in the API).
var intColumns = map[int]bool{12: true, 13: true, 15: true, 20: true}

// writeUsageJSON writes {"cdrs":[{column: value, …}, …]}.
func writeUsageJSON(w io.Writer, src cdrSource) error { return writeUsageJSONWith(w, src, nil) }

// writeUsageJSONWith is writeUsageJSON with, when unavailable is not nil
// (a cluster-wide report), "unavailable":[…] after the CDRs.
func writeUsageJSONWith(w io.Writer, src cdrSource, unavailable []Unavailable) error {
	if _, err := io.WriteString(w, `{"cdrs":[`); err != nil {
		return err
	}
	first := true
	row := make(map[string]any, len(CDRColumns))
	err := src(func(c *ledger.CDR) error {
		for i, v := range cdrRow(c) {
			if intColumns[i] {
				row[CDRColumns[i]] = json.RawMessage(v) // strconv.Itoa's digits
			} else {
				row[CDRColumns[i]] = v
			}
		}
		b, err := json.Marshal(row)
		if err != nil {
			return err
		}
		if !first {
			if _, err := io.WriteString(w, ","); err != nil {
				return err
			}
		}
		first = false
		_, err = w.Write(b)
		return err
	})
	if err != nil {
		return err
	}
	if unavailable != nil {
		b, err := json.Marshal(unavailable)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "],\"unavailable\":%s}\n", b); err != nil {
			return err
		}
		return nil
	}
	_, err = io.WriteString(w, "]}\n")
	return err
}

// xlsxNumber is an exact decimal as a spreadsheet number. XLSX stores a
// number as its decimal text; excelize writes a float64 as its shortest
// round-tripping text, which for money (a few digits) is the decimal's
// own text. Where it would not be, the value goes as text instead: the
// report never shows a number the ledger does not hold.
func xlsxNumber(d decimal.Decimal) any {
	f := d.InexactFloat64()
	if strconv.FormatFloat(f, 'f', -1, 64) == d.String() {
		return f
	}
	return d.String()
}

// writeUsageXLSX writes one sheet, "PSTN usage", with a header row, times
// as date-times, durations and counts as integers and money as numbers.
func writeUsageXLSX(w io.Writer, src cdrSource) error {
	f := excelize.NewFile()
	defer f.Close()
	const sheet = "PSTN usage"
	if err := f.SetSheetName("Sheet1", sheet); err != nil {
		return err
	}
	sw, err := f.NewStreamWriter(sheet)
	if err != nil {
		return err
	}
	bold, err := f.NewStyle(&excelize.Style{Font: &excelize.Font{Bold: true}})
	if err != nil {
		return err
	}
	custom := "yyyy-mm-dd hh:mm:ss"
	when, err := f.NewStyle(&excelize.Style{CustomNumFmt: &custom})
	if err != nil {
		return err
	}
	// At least cents, and every digit the ledger holds (sub-cent rates).
	moneyFmt := "0.00####"
	money2, err := f.NewStyle(&excelize.Style{CustomNumFmt: &moneyFmt})
	if err != nil {
		return err
	}
	widths := map[int]float64{1: 38, 2: 14, 3: 14, 4: 16, 5: 16, 6: 26, 10: 20, 11: 20, 12: 20, 20: 20}
	for col, wd := range widths {
		if err := sw.SetColWidth(col, col, wd); err != nil {
			return err
		}
	}
	if err := sw.SetPanes(&excelize.Panes{Freeze: true, YSplit: 1, TopLeftCell: "A2", ActivePane: "bottomLeft"}); err != nil {
		return err
	}
	header := make([]any, len(CDRColumns))
	for i, c := range CDRColumns {
		header[i] = excelize.Cell{StyleID: bold, Value: c}
	}
	if err := sw.SetRow("A1", header, excelize.RowOpts{}); err != nil {
		return err
	}
	at := func(t time.Time) any {
		if t.IsZero() {
			return nil
		}
		return excelize.Cell{StyleID: when, Value: t.UTC()}
	}
	n := 1
	row := make([]any, len(CDRColumns))
	err = src(func(c *ledger.CDR) error {
		n++
		if n > excelize.TotalRows {
			return fmt.Errorf("more than %d rows: narrow from/to or use format=csv", excelize.TotalRows-1)
		}
		row[0], row[1], row[2], row[3], row[4] = c.CallID, c.Org, c.User, e164(c.From), e164(c.To)
		row[5], row[6], row[7], row[8] = c.Destination, c.Country, c.Type, string(c.Direction)
		row[9], row[10], row[11] = at(c.Start), at(c.Answer), at(c.End)
		row[12], row[13], row[14], row[15] = c.DurationS, c.BilledS, c.Pool, c.PoolMinutes
		row[16] = xlsxNumber(c.RatePerMinute)
		row[17] = excelize.Cell{StyleID: money2, Value: xlsxNumber(c.Charge)}
		row[18], row[19], row[20] = c.Currency, string(c.DisconnectReason), c.SIPStatus
		cell, _ := excelize.CoordinatesToCellName(1, n)
		return sw.SetRow(cell, row)
	})
	if err != nil {
		return err
	}
	if err := sw.Flush(); err != nil {
		return err
	}
	// WriteTo builds the whole file in a bytes.Buffer first (88 MiB, and
	// twice that while it grows, for a million rows). The zip writer hook
	// lets the archive go straight to w instead; what excelize then hands
	// WriteTo is empty. (Its Zip64 header fix-up only applies past 4 GiB
	// per part, which the row limit keeps this sheet far below.)
	f.SetZipWriter(func(io.Writer) excelize.ZipWriter { return zip.NewWriter(w) })
	_, err = f.WriteTo(io.Discard)
	return err
}

func (s *Server) usage(ctx *fasthttp.RequestCtx, org string) error {
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	from, err := parseTimeArg(ctx, "from")
	if err != nil {
		return err
	}
	to, err := parseTimeArg(ctx, "to")
	if err != nil {
		return err
	}
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		return badRequest("from must be before to")
	}
	local, err := localOnly(ctx)
	if err != nil {
		return err
	}
	var write func(io.Writer, cdrSource) error
	name := fmt.Sprintf("pstn-usage-%s", org)
	format := string(ctx.QueryArgs().Peek("format"))
	switch format {
	case "csv":
		ctx.SetContentType("text/csv; charset=utf-8")
		ctx.Response.Header.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s.csv"`, name))
		write = writeUsageCSV
	case "xlsx":
		ctx.SetContentType("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
		ctx.Response.Header.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s.xlsx"`, name))
		write = writeUsageXLSX
	case "", "json":
		ctx.SetContentType("application/json")
		write = writeUsageJSON
	default:
		return badRequest("format=%q: want csv, xlsx or json", format)
	}
	if s.cluster.Load() != nil && !local {
		return s.clusterUsage(ctx, org, from, to, format, write)
	}
	return s.stream(ctx, "usage "+org, func(cctx context.Context, w io.Writer) error {
		return write(w, func(fn func(*ledger.CDR) error) error {
			return s.ledger.EachCDR(org, from, to, func(c *ledger.CDR) error {
				if err := cctx.Err(); err != nil {
					return fmt.Errorf("shutting down: %w", err)
				}
				return fn(c)
			})
		})
	})
}
