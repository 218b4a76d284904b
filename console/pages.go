// The pages: what each GET shows, read from the API as the session's key.

package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/creditgate/creditgate/rating"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

// pageData is what every template gets.
type pageData struct {
	Title  string
	Who    identity
	Signed bool
	CSRF   string
	Nav    []navItem
	Flash  string
	Error  string
	Page   any
}

type navItem struct {
	Label, Href string
	Current     bool
}

// Limits of what one page shows.
const (
	maxUsageRows = 200  // usage rows shown on the page; the downloads have all
	maxCallRows  = 1000 // live calls listed on one page (refreshed every 2 s)
	maxOrgRows   = 500  // orgs listed on the operator's page
)

var funcs = template.FuncMap{
	// when shows t in loc, to the second, with the zone's abbreviation.
	"when": func(loc *time.Location, t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		if loc == nil {
			loc = time.UTC
		}
		return t.In(loc).Format("2006-01-02 15:04:05 MST")
	},
	// whenRFC3339 is an RFC 3339 time of the API shown in loc.
	"whenRFC3339": func(loc *time.Location, s string) string {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil || s == "" {
			return "—"
		}
		if loc == nil {
			loc = time.UTC
		}
		return t.In(loc).Format("2006-01-02 15:04:05 MST")
	},
	"pct": func(used, total int) int {
		if total <= 0 {
			return 0
		}
		return used * 100 / total
	},
	"join": strings.Join,
	"path": url.PathEscape,
}

// parseTemplates builds one template per page: the layout with the page's
// file (and the shared partials) in it.
func parseTemplates() (map[string]*template.Template, error) {
	names, err := fs.Glob(templatesFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		page := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if page == "layout" || strings.HasPrefix(page, "_") {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templatesFS, "templates/layout.html", "templates/_*.html", n)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", page, err)
		}
		out[page] = t
	}
	return out, nil
}

// render writes the page; a template that fails is a bug, answered 500.
func (c *Console) render(ctx *fasthttp.RequestCtx, page string, d pageData) {
	c.renderNamed(ctx, page, "layout.html", d)
}

// renderNamed runs one named template of the page (the layout, or a
// fragment for htmx).
func (c *Console) renderNamed(ctx *fasthttp.RequestCtx, page, name string, d pageData) {
	t := c.pages[page]
	if t == nil {
		panic("console: no template " + page)
	}
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, name, d); err != nil {
		c.cfg.Log.Error("console template failed", "page", page, "error", err)
		ctx.Error("internal error", 500)
		return
	}
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(b.Bytes())
}

// data fills what every signed-in page has: who, the CSRF token, the
// navigation for the role, the flash messages of the URL.
func (c *Console) data(s *session, title string, d pageData) pageData {
	d.Title, d.Who, d.Signed, d.CSRF = title, s.who, true, s.csrf
	if s.who.operator() {
		d.Nav = []navItem{{Label: "Orgs", Href: Prefix + "/op/orgs"}, {Label: "Live", Href: Prefix + "/op/live"},
			{Label: "Rate deck", Href: Prefix + "/op/deck"}, {Label: "Audit", Href: Prefix + "/op/audit"}}
	} else {
		o := s.who.Org
		d.Nav = []navItem{{Label: "Overview", Href: orgPath(o)}, {Label: "Users", Href: orgPath(o, "/users")},
			{Label: "Usage", Href: orgPath(o, "/usage")}, {Label: "Live calls", Href: orgPath(o, "/calls")}}
	}
	return d
}

// get routes a signed-in GET.
func (c *Console) get(ctx *fasthttp.RequestCtx, s *session, path string) {
	// The last form's result, shown once; an htmx refresh leaves it for
	// the page.
	flash := func(d pageData) pageData {
		if ctx.Request.Header.Peek("HX-Request") != nil && ctx.QueryArgs().Has("partial") {
			return d
		}
		msg, errMsg := c.sessions.takeFlash(s.id)
		if d.Flash == "" {
			d.Flash = msg
		}
		if d.Error == "" {
			d.Error = errMsg
		}
		return d
	}
	if path == "/" {
		redirect(ctx, home(s.who))
		return
	}
	if path == "/login" {
		redirect(ctx, home(s.who))
		return
	}
	type page struct {
		pattern string
		show    func(ctx *fasthttp.RequestCtx, s *session, args []string) (string, string, pageData)
	}
	for _, p := range []page{
		{"/org/*", c.orgOverview},
		{"/org/*/users", c.orgUsers},
		{"/org/*/usage", c.orgUsage},
		{"/org/*/calls", c.orgCalls},
		{"/org/*/purchases/*", c.purchasePage},
		{"/op/orgs", c.opOrgs},
		{"/op/live", c.opLive},
		{"/op/deck", c.opDeck},
		{"/op/audit", c.opAudit},
	} {
		if args, ok := match(p.pattern, path); ok {
			tmpl, title, d := p.show(ctx, s, args)
			if tmpl == "" {
				return // answered already (a download)
			}
			d = flash(c.data(s, title, d))
			if ctx.Request.Header.Peek("HX-Request") != nil && ctx.QueryArgs().Has("partial") {
				c.renderNamed(ctx, tmpl, "fragment", d)
				return
			}
			c.render(ctx, tmpl, d)
			return
		}
	}
	for _, format := range []string{"csv", "xlsx"} {
		if args, ok := match("/org/*/usage."+format, path); ok {
			c.download(ctx, s, args[0], format)
			return
		}
	}
	ctx.SetStatusCode(404)
	c.render(ctx, "error", c.data(s, "Not found", pageData{Error: "No such page."}))
}

// errorPage shows what the API refused for a page (a 403 for another
// org's page, a 404), with the API's status.
func errorPage(ctx *fasthttp.RequestCtx, err error) (string, string, pageData) {
	var ae *apiError
	if asAPIError(err, &ae) {
		ctx.SetStatusCode(ae.Status)
	} else {
		ctx.SetStatusCode(500)
	}
	return "error", "Error", pageData{Error: formError(err)}
}

// location is the org's timezone (the API gives every org one, UTC when
// none was set).
func location(tz string) *time.Location {
	if loc, err := time.LoadLocation(tz); err == nil && tz != "" {
		return loc
	}
	return time.UTC
}

type overview struct {
	Org         org
	Loc         *time.Location
	Chart       template.HTML
	Minimum     string
	RegionsDiff bool
	IdemKey     string
	Threshold   string
	Amount      string
	Emails      string
	CanChange   bool
}

func (c *Console) orgOverview(ctx *fasthttp.RequestCtx, s *session, args []string) (string, string, pageData) {
	o, err := c.getOrg(s, args[0])
	if err != nil {
		return errorPage(ctx, err)
	}
	v := overview{Org: o, Loc: location(o.Timezone), Minimum: c.cfg.FundingMinimum.StringFixed(2),
		RegionsDiff: o.BillingRegion != "" && o.BillingRegion != o.Region, IdemKey: randomToken(),
		Threshold: o.AutoRecharge.Threshold, Amount: o.AutoRecharge.Amount, Emails: strings.Join(o.Contacts.Emails, "\n"),
		CanChange: s.who.Role == "org_admin" || s.who.Role == "operator_admin"}
	// The advisor's values pre-fill a form never set.
	if f := o.Forecast; f != nil && !o.AutoRecharge.Enabled {
		if isZero(v.Threshold) {
			v.Threshold = f.SuggestedThreshold
		}
		if isZero(v.Amount) {
			v.Amount = f.SuggestedAmount
		}
	}
	v.Chart = burnChart(o, c.cfg.Now(), v.Loc)
	return "org", o.Name, pageData{Page: v}
}

func isZero(s string) bool {
	d, err := decimal.NewFromString(s)
	return err != nil || d.IsZero()
}

type usersPage struct {
	Org      string
	Users    []user
	Licenses []string
	Credits  string
}

func (c *Console) orgUsers(ctx *fasthttp.RequestCtx, s *session, args []string) (string, string, pageData) {
	us, err := c.users(s, args[0])
	if err != nil {
		return errorPage(ctx, err)
	}
	return "users", "Users and licenses", pageData{Page: usersPage{Org: args[0], Users: us, Credits: string(rating.CommunicationsCredits),
		Licenses: []string{string(rating.CommunicationsCredits), string(rating.DomesticCallingPlan), string(rating.InternationalCallingPlan),
			string(rating.AudioConferencing)}}}
}

type callsPage struct {
	Org     string // "" on the operator's page
	Loc     *time.Location
	Calls   []liveCall
	More    int
	Back    string
	Refresh string
	Stats   *liveStats
}

func (c *Console) orgCalls(ctx *fasthttp.RequestCtx, s *session, args []string) (string, string, pageData) {
	o, err := c.getOrg(s, args[0])
	if err != nil {
		return errorPage(ctx, err)
	}
	cs, err := c.calls(s, args[0])
	if err != nil {
		return errorPage(ctx, err)
	}
	p := callsPage{Org: args[0], Loc: location(o.Timezone), Back: orgPath(args[0], "/calls"),
		Refresh: orgPath(args[0], "/calls?partial=1")}
	p.Calls, p.More = capCalls(cs)
	return "calls", "Live calls", pageData{Page: p}
}

func capCalls(cs []liveCall) ([]liveCall, int) {
	sort.Slice(cs, func(i, j int) bool { return cs[i].Start.Before(cs[j].Start) })
	if len(cs) > maxCallRows {
		return cs[:maxCallRows], len(cs) - maxCallRows
	}
	return cs, 0
}

type purchasePageData struct {
	Org      string
	Purchase purchase
}

func (c *Console) purchasePage(ctx *fasthttp.RequestCtx, s *session, args []string) (string, string, pageData) {
	var p purchase
	if err := c.do(s, "GET", "/v1/orgs/"+url.PathEscape(args[0])+"/purchases/"+url.PathEscape(args[1]), nil, &p); err != nil {
		return errorPage(ctx, err)
	}
	if p.State == "pending" {
		// Look again in 2 s, without JavaScript (the page's meta
		// refresh says the same).
		ctx.Response.Header.Set("Refresh", "2")
	}
	return "purchase", "Purchase " + p.ID, pageData{Page: purchasePageData{Org: args[0], Purchase: p}}
}

type orgsPage struct {
	Query string
	Orgs  []orgSummary
	More  int
}

// opOrgs lists the orgs whose id or name contains the query, the least
// available money first (near zero first).
func (c *Console) opOrgs(ctx *fasthttp.RequestCtx, s *session, _ []string) (string, string, pageData) {
	q := strings.TrimSpace(string(ctx.QueryArgs().Peek("q")))
	var all []orgSummary
	after := ""
	for {
		var page struct {
			Orgs      []orgSummary `json:"orgs"`
			NextAfter string       `json:"next_after"`
		}
		qs := url.Values{"limit": {"10000"}}
		if after != "" {
			qs.Set("after", after)
		}
		if err := c.do(s, "GET", "/v1/orgs?"+qs.Encode(), nil, &page); err != nil {
			return errorPage(ctx, err)
		}
		for _, o := range page.Orgs {
			if q == "" || strings.Contains(strings.ToLower(o.ID+" "+o.Name), strings.ToLower(q)) {
				all = append(all, o)
			}
		}
		if page.NextAfter == "" {
			break
		}
		after = page.NextAfter
	}
	avail := func(o orgSummary) decimal.Decimal {
		d, err := decimal.NewFromString(o.Available)
		if err != nil {
			return decimal.Zero
		}
		return d
	}
	sort.SliceStable(all, func(i, j int) bool { return avail(all[i]).LessThan(avail(all[j])) })
	p := orgsPage{Query: q, Orgs: all}
	if len(all) > maxOrgRows {
		p.Orgs, p.More = all[:maxOrgRows], len(all)-maxOrgRows
	}
	return "orgs", "Orgs", pageData{Page: p}
}

func (c *Console) opLive(ctx *fasthttp.RequestCtx, s *session, _ []string) (string, string, pageData) {
	cs, err := c.calls(s, "")
	if err != nil {
		return errorPage(ctx, err)
	}
	p := callsPage{Loc: time.UTC, Back: Prefix + "/op/live", Refresh: Prefix + "/op/live?partial=1"}
	p.Calls, p.More = capCalls(cs)
	// The figures come from the metrics, the whole gateway's, not from
	// the API (which filters the calls to an org key's own): an org
	// role's page lists its calls without them.
	if s.who.operator() {
		st := c.liveStats()
		p.Stats = &st
	}
	return "live", "Live", pageData{Page: p}
}

// opDeck is the upload form. It shows nothing of the API's, but asks
// who the key is all the same, so that a revoked key's session ends here
// too, as on every other page.
func (c *Console) opDeck(ctx *fasthttp.RequestCtx, s *session, _ []string) (string, string, pageData) {
	if err := c.do(s, "GET", "/v1/whoami", nil, nil); err != nil {
		return errorPage(ctx, err)
	}
	return "deck", "Rate deck", pageData{}
}

type auditPage struct {
	Org, Kind, Key string
	Entries        []auditEntry
	NextAfter      string
	Next           string
	Loc            *time.Location // nil: UTC
}

func (c *Console) opAudit(ctx *fasthttp.RequestCtx, s *session, _ []string) (string, string, pageData) {
	a := ctx.QueryArgs()
	p := auditPage{Org: string(a.Peek("org")), Kind: string(a.Peek("kind")), Key: string(a.Peek("key"))}
	q := url.Values{"limit": {"100"}}
	for k, v := range map[string]string{"org": p.Org, "kind": p.Kind, "key": p.Key, "after": string(a.Peek("after"))} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var out struct {
		Entries   []auditEntry    `json:"entries"`
		NextAfter json.RawMessage `json:"next_after"`
	}
	if err := c.do(s, "GET", "/v1/audit?"+q.Encode(), nil, &out); err != nil {
		return errorPage(ctx, err)
	}
	p.Entries = out.Entries
	if n := strings.Trim(string(out.NextAfter), `"`); n != "" && n != "null" {
		p.NextAfter = n
		q.Set("after", p.NextAfter)
		q.Del("limit")
		p.Next = Prefix + "/op/audit?" + q.Encode()
	}
	return "audit", "Audit trail", pageData{Page: p}
}
