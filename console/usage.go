// The usage report page and its downloads, proxied through the session.

package console

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

// usageRow is the part of a CDR (the JSON report's row) the page shows.
type usageRow struct {
	CallID           string `json:"call_id"`
	User             string `json:"user"`
	From             string `json:"from"`
	To               string `json:"to"`
	Destination      string `json:"destination"`
	Answer           string `json:"answer"`
	BilledS          int64  `json:"billed_s"`
	Charge           string `json:"charge"`
	Currency         string `json:"currency"`
	DisconnectReason string `json:"disconnect_reason"`
}

type usagePage struct {
	Org, From, To string
	Rows          []usageRow
	Count         int
	Charge        string
	Currency      string
	BilledS       int64
	CSV, XLSX     string
	Loc           *time.Location
}

// usageQuery is the report's date filter as the API takes it: from and to
// as dates (YYYY-MM-DD, midnight UTC, as the API reads them); empty: open.
func usageQuery(ctx *fasthttp.RequestCtx) (from, to string, q url.Values, err error) {
	q = url.Values{}
	from = strings.TrimSpace(string(ctx.QueryArgs().Peek("from")))
	to = strings.TrimSpace(string(ctx.QueryArgs().Peek("to")))
	for name, v := range map[string]string{"from": from, "to": to} {
		if v == "" {
			continue
		}
		if _, perr := time.Parse(time.DateOnly, v); perr != nil {
			return from, to, q, fmt.Errorf("%s %q: want a date, YYYY-MM-DD", name, v)
		}
		q.Set(name, v)
	}
	return from, to, q, nil
}

// orgUsage shows the first maxUsageRows CDRs of the range and the totals
// of all of them, read from the API's JSON report as it streams (one row
// in memory at a time past the first page).
func (c *Console) orgUsage(ctx *fasthttp.RequestCtx, s *session, args []string) (string, string, pageData) {
	orgID := args[0]
	from, to, q, err := usageQuery(ctx)
	p := usagePage{Org: orgID, From: from, To: to}
	if err != nil {
		ctx.SetStatusCode(422)
		return "usage", "Usage", pageData{Page: p, Error: err.Error()}
	}
	o, err := c.getOrg(s, orgID)
	if err != nil {
		return errorPage(ctx, err)
	}
	p.Loc, p.Currency = location(o.Timezone), o.Currency
	base := orgPath(orgID, "/usage.")
	p.CSV, p.XLSX = base+"csv", base+"xlsx"
	if len(q) > 0 {
		p.CSV += "?" + q.Encode()
		p.XLSX += "?" + q.Encode()
	}
	q.Set("format", "json")
	r := c.call(s, "GET", "/v1/orgs/"+url.PathEscape(orgID)+"/usage?"+q.Encode(), "", nil)
	body, err := r.stream()
	if err != nil {
		return errorPage(ctx, err)
	}
	if cl, ok := body.(io.Closer); ok {
		defer cl.Close()
	}
	charge := decimal.Zero
	err = eachCDR(body, func(row usageRow) {
		p.Count++
		if d, err := decimal.NewFromString(row.Charge); err == nil {
			charge = charge.Add(d)
		}
		p.BilledS += row.BilledS
		if len(p.Rows) < maxUsageRows {
			p.Rows = append(p.Rows, row)
		}
	})
	if err != nil {
		return errorPage(ctx, err)
	}
	p.Charge = charge.StringFixed(2)
	return "usage", "Usage", pageData{Page: p}
}

// eachCDR decodes {"cdrs":[{…},…]} one row at a time.
func eachCDR(r io.Reader, fn func(usageRow)) error {
	dec := json.NewDecoder(r)
	for _, want := range []string{"{", "cdrs", "["} {
		t, err := dec.Token()
		if err != nil {
			return fmt.Errorf("usage report: %w", err)
		}
		if fmt.Sprint(t) != want {
			return fmt.Errorf("usage report: want %s, got %v", want, t)
		}
	}
	for dec.More() {
		var row usageRow
		if err := dec.Decode(&row); err != nil {
			return fmt.Errorf("usage report: %w", err)
		}
		fn(row)
	}
	return nil
}

// download passes the API's CSV or XLSX export through, streamed as the
// API produces it: the browser never holds the key, only the session.
func (c *Console) download(ctx *fasthttp.RequestCtx, s *session, orgID, format string) {
	_, _, q, err := usageQuery(ctx)
	if err != nil {
		ctx.Error(err.Error(), 422)
		return
	}
	q.Set("format", format)
	r := c.call(s, "GET", "/v1/orgs/"+url.PathEscape(orgID)+"/usage?"+q.Encode(), "", nil)
	body, err := r.stream()
	if err != nil {
		tmpl, title, d := errorPage(ctx, err)
		c.render(ctx, tmpl, c.data(s, title, d))
		return
	}
	in := &r.rc.Response.Header
	ctx.SetContentType(string(in.ContentType()))
	if cd := in.Peek("Content-Disposition"); len(cd) > 0 {
		ctx.Response.Header.SetBytesV("Content-Disposition", cd)
	}
	ctx.SetBodyStream(body, -1)
}
