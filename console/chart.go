// The funding advisor's forecast as an SVG drawn here, server side: no
// chart library, no script, readable by a screen reader through its title
// and description.

package console

import (
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Chart geometry, in SVG user units (the image scales to its box).
const (
	chartW, chartH   = 600, 220
	padL, padR       = 70, 20
	padT, padB       = 20, 40
	chartDays        = 30
	plotW, plotH     = chartW - padL - padR, chartH - padT - padB
	maxLabelledTicks = 4
)

// burnChart draws the next 30 days of the org's available money at the
// advisor's burn per day (ledger.Advise: the average daily spend of the
// last 30 days), one bar per day for the money left that day, and a line
// at the day it reaches zero. Amounts are computed in decimal; only the
// pixel positions are floats.
func burnChart(o org, now time.Time, loc *time.Location) template.HTML {
	f := o.Forecast
	avail, err := decimal.NewFromString(o.Available)
	if f == nil || err != nil {
		return template.HTML(`<p>No forecast yet: the advisor needs a day of spending.</p>`)
	}
	burn, err := decimal.NewFromString(f.BurnPerDay)
	if err != nil {
		burn = decimal.Zero
	}
	top := avail
	if !top.IsPositive() {
		top = decimal.NewFromInt(1)
	}
	y := func(d decimal.Decimal) float64 {
		frac := d.Div(top).InexactFloat64()
		if frac < 0 {
			frac = 0
		}
		return padT + plotH*(1-frac)
	}
	var b strings.Builder
	zeroDay := -1
	summary := fmt.Sprintf("%s %s available, spending %s %s a day", o.Available, o.Currency, f.BurnPerDay, o.Currency)
	if f.ZeroAt != nil {
		days := int(f.ZeroAt.Sub(now).Hours() / 24)
		summary += fmt.Sprintf(": reaches zero on %s", f.ZeroAt.In(loc).Format("Mon 2 Jan 2006"))
		if days >= 0 && days <= chartDays {
			zeroDay = days
		}
	} else {
		summary += ": nothing is being spent, so it does not reach zero"
	}
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">`, chartW, chartH)
	fmt.Fprintf(&b, `<title id="chart-title">Forecast of available credit over %d days</title><desc id="chart-desc">%s</desc>`,
		chartDays, template.HTMLEscapeString(summary))
	// Axes and the amount ticks.
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" class="axis"/>`, padL, padT, padL, padT+plotH)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" class="axis"/>`, padL, padT+plotH, padL+plotW, padT+plotH)
	for i := 0; i <= maxLabelledTicks; i++ {
		v := top.Mul(decimal.NewFromInt(int64(i))).Div(decimal.NewFromInt(maxLabelledTicks))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" class="tick" text-anchor="end">%s</text>`, padL-6, y(v)+4, v.StringFixed(0))
	}
	barW := float64(plotW) / float64(chartDays+1)
	for d := 0; d <= chartDays; d++ {
		left := avail.Sub(burn.Mul(decimal.NewFromInt(int64(d))))
		if left.IsNegative() {
			left = decimal.Zero
		}
		x := padL + barW*float64(d)
		yy := y(left)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" class="bar"><title>day %d: %s %s</title></rect>`,
			x+1, yy, barW-2, float64(padT+plotH)-yy, d, left.StringFixed(2), o.Currency)
		if d%10 == 0 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="tick" text-anchor="middle">%s</text>`, x+barW/2, padT+plotH+16,
				now.AddDate(0, 0, d).In(loc).Format("2 Jan"))
		}
	}
	if zeroDay >= 0 {
		x := padL + barW*float64(zeroDay) + barW/2
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="zero"/><text x="%.1f" y="%d" class="zero-label" text-anchor="middle">zero</text>`,
			x, padT, x, padT+plotH, x, padT+plotH+32)
	}
	b.WriteString(`</svg>`)
	fmt.Fprintf(&b, `<p class="chart-note">%s.</p>`, template.HTMLEscapeString(summary))
	return template.HTML(b.String())
}
