// Every form that changes something, in one table: the POST handler finds
// its form here after the CSRF checks, and the tests walk the same table,
// so a new form is covered by them the day it is added.

package console

import (
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/creditgate/creditgate/rating"
	"github.com/valyala/fasthttp"
)

// form is one form that changes something. Its submit gets the "*"
// segments of the path and the form's values, makes its API calls with the
// session's key, and says where to send the browser next.
type form struct {
	name    string
	pattern string // path under Prefix; "*" is one segment
	// sample fills the form as a user would, for the tests only: the
	// path with {org}, {user} and {call} for the fixture's, and values.
	samplePath   string
	sampleValues url.Values
	submit       func(c *Console, s *session, args []string, v values) (outcome, error)
	// page is the page that holds the form, where a refusal is shown.
	page func(args []string, v values) string
}

// outcome is where a form that went through sends the browser, and what
// that page tells the user once.
type outcome struct{ next, msg string }

func overviewPage(args []string, _ values) string { return orgPath(args[0]) }

// backPage is the form's "back" field when it is a console page (the
// hang-up button is on two pages), else the console's home.
func backPage(_ []string, v values) string {
	back := v.get("back")
	if !strings.HasPrefix(back, Prefix+"/") || strings.HasPrefix(back, Prefix+"//") || strings.ContainsAny(back, "\\\r\n") {
		return Prefix + "/"
	}
	return back
}

// values reads a form's fields from the body only (never the query
// string), urlencoded or multipart.
type values struct{ ctx *fasthttp.RequestCtx }

func (v values) get(name string) string {
	if b := v.ctx.PostArgs().Peek(name); b != nil {
		return string(b)
	}
	if mf, err := v.ctx.MultipartForm(); err == nil {
		if vs := mf.Value[name]; len(vs) > 0 {
			return vs[0]
		}
	}
	return ""
}

// file is an uploaded file's bytes, or nil. The API bounds the body the
// console is given (api.MaxDeckBody), so the whole file is in memory
// already.
func (v values) file(name string) ([]byte, error) {
	mf, err := v.ctx.MultipartForm()
	if err != nil || len(mf.File[name]) == 0 {
		return nil, nil
	}
	fh := mf.File[name][0]
	f, err := fh.Open()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, fh.Size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("read the uploaded file: %w", err)
	}
	return b, nil
}

var forms = []form{
	{name: "logout", pattern: "/logout", samplePath: "/logout", page: backPage,
		submit: func(c *Console, s *session, _ []string, _ values) (outcome, error) {
			c.sessions.remove(s.id)
			return outcome{next: Prefix + "/login?signed_out=1"}, nil
		}},
	{name: "purchase", pattern: "/org/*/purchase", samplePath: "/org/{org}/purchase",
		sampleValues: url.Values{"amount": {"60.00"}, "payment_method": {"pm_card_visa"}, "idempotency_key": {"sample-purchase"}},
		page:         overviewPage,
		submit:       (*Console).submitPurchase},
	{name: "auto-recharge", pattern: "/org/*/auto-recharge", samplePath: "/org/{org}/auto-recharge",
		sampleValues: url.Values{"threshold": {"10.00"}, "amount": {"70.00"}},
		page:         overviewPage,
		submit:       (*Console).submitAutoRecharge},
	{name: "contacts", pattern: "/org/*/contacts", samplePath: "/org/{org}/contacts",
		sampleValues: url.Values{"emails": {"finance@example.com"}},
		page:         overviewPage,
		submit:       (*Console).submitContacts},
	{name: "license", pattern: "/org/*/users/*/license", samplePath: "/org/{org}/users/{user}/license",
		sampleValues: url.Values{"license": {string(rating.DomesticCallingPlan)}, "action": {"assign"}},
		page:         func(a []string, _ values) string { return orgPath(a[0], "/users") },
		submit:       (*Console).submitLicense},
	{name: "hang-up", pattern: "/calls/*/hangup", samplePath: "/calls/{call}/hangup",
		sampleValues: url.Values{"back": {Prefix + "/"}},
		page:         backPage,
		submit:       (*Console).submitHangup},
	{name: "deck", pattern: "/op/deck", samplePath: "/op/deck",
		sampleValues: url.Values{"deck": {"prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n44,GB,United Kingdom,geographic,0.020,60,60\n"}},
		page:         func([]string, values) string { return Prefix + "/op/deck" },
		submit:       (*Console).submitDeck},
}

// match reports whether path fits pattern, and the "*" segments (each
// unescaped once, as the browser escaped it).
func match(pattern, path string) ([]string, bool) {
	want := strings.Split(strings.Trim(pattern, "/"), "/")
	got := strings.Split(strings.Trim(path, "/"), "/")
	if len(want) != len(got) {
		return nil, false
	}
	var args []string
	for i, w := range want {
		switch {
		case w == "*" && got[i] != "":
			a, err := url.PathUnescape(got[i])
			if err != nil || strings.ContainsAny(a, "/?#") {
				return nil, false
			}
			args = append(args, a)
		case w != got[i]:
			return nil, false
		}
	}
	return args, true
}

// post is every POST but the login's: the session is live (Handle checked);
// here the origin and the CSRF token are checked before the form is read
// any further, then its submit runs.
func (c *Console) post(ctx *fasthttp.RequestCtx, s *session, path string) {
	var f *form
	var args []string
	for i := range forms {
		if a, ok := match(forms[i].pattern, path); ok {
			f, args = &forms[i], a
			break
		}
	}
	if f == nil {
		ctx.Error("not found", 404)
		return
	}
	v := values{ctx}
	if !sameOrigin(ctx) || !tokenOK([]byte(v.get(csrfField)), s.csrf) {
		c.cfg.Log.Warn("console form refused: CSRF check failed", "form", f.name, "key_id", s.who.KeyID)
		ctx.SetStatusCode(403)
		if htmx(ctx) {
			// htmx swaps no 403: the form's page, loaded whole, shows
			// the refusal once (HX-Redirect is read on any status). A
			// cross-site request cannot send HX-Request without a
			// preflight this server never grants, nor the SameSite
			// cookie, so this path is the session's own page.
			c.sessions.setFlash(s.id, "", csrfRefused)
			ctx.Response.Header.Set("HX-Redirect", f.page(args, v))
			return
		}
		c.render(ctx, "error", c.data(s, "Refused", pageData{Error: csrfRefused}))
		return
	}
	out, err := f.submit(c, s, args, v)
	if err != nil {
		c.sessions.setFlash(s.id, "", formError(err))
		redirect(ctx, f.page(args, v))
		return
	}
	if f.name == "logout" {
		c.setCookie(ctx, sessionCookie, "", 0)
	}
	c.sessions.setFlash(s.id, out.msg, "")
	redirect(ctx, out.next)
}

// csrfRefused is what a form refused by the CSRF checks says.
const csrfRefused = "This form was refused: it did not come from a console page of this session (CSRF check). Nothing was changed; reload the page and try again."

// formError is what a refused change tells the user: the API's message,
// and for a rate deck every line it refused.
func formError(err error) string {
	var ae *apiError
	if !asAPIError(err, &ae) {
		return err.Error()
	}
	msg := ae.Error()
	if ae.Status == 403 {
		msg = "Your key's role may not do this. " + msg
	}
	if len(ae.Lines) > 0 {
		var b strings.Builder
		b.WriteString(msg)
		for i, l := range ae.Lines {
			if i == 50 {
				fmt.Fprintf(&b, "\n… and %d more lines", len(ae.Lines)-50)
				break
			}
			fmt.Fprintf(&b, "\nline %d: %s", l.Line, l.Error)
		}
		msg = b.String()
	}
	return msg
}

func orgPath(org string, rest ...string) string {
	return Prefix + "/org/" + url.PathEscape(org) + strings.Join(rest, "")
}

func (c *Console) submitPurchase(s *session, args []string, v values) (outcome, error) {
	org := args[0]
	key := v.get("idempotency_key")
	if key == "" {
		return outcome{}, fmt.Errorf("the form had no idempotency key: reload the page")
	}
	var p purchase
	err := c.do(s, "POST", "/v1/orgs/"+url.PathEscape(org)+"/purchases", map[string]string{
		"amount": strings.TrimSpace(v.get("amount")), "idempotency_key": key,
		"payment_method": strings.TrimSpace(v.get("payment_method")), "customer": strings.TrimSpace(v.get("customer"))}, &p)
	if err != nil {
		return outcome{}, err
	}
	return outcome{next: orgPath(org, "/purchases/", url.PathEscape(p.ID))}, nil
}

func (c *Console) submitAutoRecharge(s *session, args []string, v values) (outcome, error) {
	org := args[0]
	req := map[string]any{"enabled": v.get("enabled") == "on", "threshold": strings.TrimSpace(v.get("threshold")),
		"amount": strings.TrimSpace(v.get("amount")), "payment_method": strings.TrimSpace(v.get("payment_method")),
		"customer": strings.TrimSpace(v.get("customer"))}
	if err := c.do(s, "PUT", "/v1/orgs/"+url.PathEscape(org)+"/auto-recharge", req, nil); err != nil {
		return outcome{}, err
	}
	return outcome{next: orgPath(org), msg: "Auto-recharge saved."}, nil
}

func (c *Console) submitContacts(s *session, args []string, v values) (outcome, error) {
	org := args[0]
	emails := []string{}
	for _, e := range strings.FieldsFunc(v.get("emails"), func(r rune) bool { return r == ',' || r == '\n' || r == '\r' || r == ' ' }) {
		emails = append(emails, e)
	}
	req := map[string]any{"contacts": map[string]any{"emails": emails, "webhook": strings.TrimSpace(v.get("webhook")),
		"webhook_secret": v.get("webhook_secret")}}
	if err := c.do(s, "PATCH", "/v1/orgs/"+url.PathEscape(org), req, nil); err != nil {
		return outcome{}, err
	}
	return outcome{next: orgPath(org), msg: "Notification contacts saved."}, nil
}

// submitLicense assigns or removes one license of a user: the user as the
// API has it now, with that license added or taken away, put back whole.
func (c *Console) submitLicense(s *session, args []string, v values) (outcome, error) {
	org, id := args[0], args[1]
	lic, err := rating.ParseLicense(v.get("license"))
	if err != nil {
		return outcome{}, err
	}
	action := v.get("action")
	if action != "assign" && action != "remove" {
		return outcome{}, fmt.Errorf("action %q: want assign or remove", action)
	}
	u, err := c.user(s, org, id)
	if err != nil {
		return outcome{}, err
	}
	lics := []string{}
	for _, l := range u.Licenses {
		if l != string(lic) {
			lics = append(lics, l)
		}
	}
	if action == "assign" {
		lics = append(lics, string(lic))
	}
	req := map[string]any{"numbers": u.Numbers, "licenses": lics}
	if err := c.do(s, "PUT", "/v1/orgs/"+url.PathEscape(org)+"/users/"+url.PathEscape(id), req, nil); err != nil {
		return outcome{}, err
	}
	verb := "assigned to"
	if action == "remove" {
		verb = "removed from"
	}
	return outcome{next: orgPath(org, "/users"), msg: fmt.Sprintf("%s %s %s.", lic, verb, id)}, nil
}

func (c *Console) submitHangup(s *session, args []string, v values) (outcome, error) {
	if err := c.do(s, "DELETE", "/v1/calls/"+url.PathEscape(args[0]), nil, nil); err != nil {
		return outcome{}, err
	}
	return outcome{next: backPage(args, v), msg: "Call " + args[0] + " ended."}, nil
}

func (c *Console) submitDeck(s *session, _ []string, v values) (outcome, error) {
	deck, err := v.file("file")
	if err != nil {
		return outcome{}, err
	}
	if len(deck) == 0 {
		deck = []byte(v.get("deck"))
	}
	if len(strings.TrimSpace(string(deck))) == 0 {
		return outcome{}, fmt.Errorf("no rate deck: choose a CSV file or paste one")
	}
	var out struct {
		Rows int `json:"rows"`
	}
	if err := c.call(s, "PUT", "/v1/rates", "text/csv", deck).decode(&out); err != nil {
		return outcome{}, err
	}
	return outcome{next: Prefix + "/op/deck", msg: fmt.Sprintf("Rate deck replaced: %d rows.", out.Rows)}, nil
}
