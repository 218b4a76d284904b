// Package console is creditgate's web console (README, Web console): server
// rendered html/template pages and embedded assets, served on the admin
// listener under /console/.
//
// The console is a thin client of the admin API, in process: every read and
// every change is a request to the API's own handler with the session's key
// as its bearer token and X-Creditgate-Via: console, so roles, org
// isolation, validation and the audit trail are the API's and nothing here
// decides them again. What the console adds is the browser's side: a
// session cookie for the key, CSRF tokens on every form, and HTML.
//
// Every form works without JavaScript (POST, then a redirect to a page
// that shows the result); htmx, vendored in assets/, only refreshes the
// live calls and hangs a call up without a reload.
package console

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"strings"
	"time"

	"github.com/creditgate/creditgate/internal/panics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

// Prefix is where the console is served.
const Prefix = "/console"

//go:embed assets
var assetsFS embed.FS

//go:embed templates/*.html
var templatesFS embed.FS

// Config is what the console needs; cmd/creditgate fills it from the
// config file (configs.Default holds the defaults: nothing is defaulted
// here).
type Config struct {
	// API is the admin API's handler (api.Server.Handle); every read and
	// change goes through it.
	API fasthttp.RequestHandler
	// Gatherer is the registry /metrics serves; the operator's live page
	// reads calls, refusals and fraud-guard trips from it.
	Gatherer prometheus.Gatherer
	// Now is the clock sessions expire by.
	Now func() time.Time
	Log *slog.Logger
	// SessionTTL is how long a session lasts after login.
	SessionTTL time.Duration
	// MaxSessions bounds the sessions in memory; a login past it first
	// drops expired sessions, then the one closest to expiry.
	MaxSessions int
	// SecureCookie marks the cookie Secure whatever the connection; it is
	// Secure anyway on a TLS connection.
	SecureCookie bool
	// FundingMinimum is the smallest one-time purchase (funding.minimum),
	// shown on the form before it is submitted; the API enforces it.
	FundingMinimum decimal.Decimal
}

// Console serves the web console. It is safe for concurrent use; its one
// lock is the session store's (sessions.mu), never held across an API call.
type Console struct {
	cfg      Config
	sessions *sessions
	pages    map[string]*template.Template
	rates    rateSampler
}

// New checks cfg and builds the console.
func New(cfg Config) (*Console, error) {
	switch {
	case cfg.API == nil:
		return nil, errors.New("console: no API handler")
	case cfg.Now == nil:
		return nil, errors.New("console: no clock")
	case cfg.Log == nil:
		return nil, errors.New("console: no logger")
	case cfg.SessionTTL < time.Minute:
		return nil, fmt.Errorf("console: session TTL %s: want at least 1m", cfg.SessionTTL)
	case cfg.MaxSessions < 1:
		return nil, fmt.Errorf("console: max sessions %d: want at least 1", cfg.MaxSessions)
	}
	pages, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	return &Console{cfg: cfg, sessions: newSessions(cfg.MaxSessions), pages: pages}, nil
}

// Handle serves one request under Prefix. A panic is contained to the
// request, as in the API. A session whose key the API refused during the
// request (401: revoked, or rotated away) is ended here, after its page or
// form ran, and the browser sent to the login page, which says why.
func (c *Console) Handle(ctx *fasthttp.RequestCtx) {
	defer panics.Recover(c.cfg.Log, panics.HTTP, func() {
		ctx.Response.Reset()
		ctx.SetConnectionClose()
		ctx.Error("internal error", 500)
	}, "method", string(ctx.Method()), "path", string(ctx.Path()))
	securityHeaders(ctx)
	path := strings.TrimPrefix(string(ctx.Path()), Prefix)
	if path == "" {
		path = "/"
	}
	if strings.HasPrefix(path, "/assets/") {
		c.asset(ctx, strings.TrimPrefix(path, "/assets/"))
		return
	}
	method := string(ctx.Method())
	switch {
	case path == "/login" && method == "GET":
		c.loginPage(ctx, "")
		return
	case path == "/login" && method == "POST":
		c.login(ctx)
		return
	}
	sess := c.session(ctx)
	if sess == nil {
		// A cookie without a live session: it expired, was signed out,
		// or the process restarted; the login page says so.
		why := ""
		if len(ctx.Request.Header.Cookie(sessionCookie)) > 0 {
			why = whyEnded
		}
		if method == "POST" {
			// An expired or unknown session changes nothing: no form
			// is read, no API call is made.
			ctx.SetStatusCode(403)
			if htmx(ctx) {
				// htmx swaps no error answer: send the page to the login.
				ctx.Response.Header.Set("HX-Redirect", loginURL(whyEnded))
				return
			}
			c.render(ctx, "login", pageData{Title: "Sign in", Error: "Your session has expired or you are signed out: sign in again. Nothing was changed."})
			return
		}
		toLogin(ctx, 401, why)
		return
	}
	switch {
	case method == "POST":
		c.post(ctx, sess, path)
	case method != "GET" && method != "HEAD":
		ctx.Error("method not allowed", 405)
	default:
		c.get(ctx, sess, path)
	}
	if sess.keyRefused.Load() {
		// The API refused the session's key during this request: the
		// session is over, whatever the page or form made of the
		// refusal. Its other sessions end at their own next request.
		c.sessions.remove(sess.id)
		c.cfg.Log.Info("console session ended: key refused by the API", "key_id", sess.who.KeyID)
		ctx.Response.Reset()
		securityHeaders(ctx)
		c.setCookie(ctx, sessionCookie, "", 0)
		toLogin(ctx, 401, whyKey)
	}
}

// securityHeaders: pages are the session's own: never cached by a shared
// cache, never framed (clickjacking), never sniffed into something else.
func securityHeaders(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
}

// htmx says whether the request is htmx's (a refresh, a boosted form).
// htmx follows redirects inside its XHR and swaps no 4xx answer, so such a
// request is sent elsewhere with HX-Redirect instead (htmx reads it on any
// status) and keeps its real status.
func htmx(ctx *fasthttp.RequestCtx) bool {
	return string(ctx.Request.Header.Peek("HX-Request")) == "true"
}

// toLogin sends the browser to the login page, which says why (a fixed
// message per why, never words from the URL): a 303 for a page or a form,
// for htmx the status with HX-Redirect.
func toLogin(ctx *fasthttp.RequestCtx, status int, why string) {
	if htmx(ctx) {
		ctx.SetStatusCode(status)
		ctx.Response.Header.Set("HX-Redirect", loginURL(why))
		return
	}
	redirect(ctx, loginURL(why))
}

// redirect answers 303 See Other: after a POST the browser GETs the page
// (redirect-after-post), so a reload never posts again.
func redirect(ctx *fasthttp.RequestCtx, to string) {
	ctx.Response.Header.Set("Location", to)
	ctx.SetStatusCode(303)
}

// asset serves an embedded file; they change only with the binary.
func (c *Console) asset(ctx *fasthttp.RequestCtx, name string) {
	if name == "" || strings.Contains(name, "..") || strings.HasSuffix(name, ".md") {
		ctx.Error("not found", 404)
		return
	}
	b, err := assetsFS.ReadFile("assets/" + name)
	if err != nil {
		ctx.Error("not found", 404)
		return
	}
	switch {
	case strings.HasSuffix(name, ".js"):
		ctx.SetContentType("text/javascript; charset=utf-8")
	case strings.HasSuffix(name, ".css"):
		ctx.SetContentType("text/css; charset=utf-8")
	case strings.HasSuffix(name, ".svg"):
		ctx.SetContentType("image/svg+xml")
	default:
		ctx.SetContentType("application/octet-stream")
	}
	ctx.Response.Header.Set("Cache-Control", "public, max-age=3600")
	ctx.SetBody(b)
}

// AssetBytes is the size of the embedded assets a page loads (the
// stylesheet and htmx), for the page-weight figure.
func AssetBytes() int {
	n := 0
	for _, name := range []string{"console.css", "htmx.min.js"} {
		b, _ := assetsFS.ReadFile("assets/" + name)
		n += len(b)
	}
	return n
}
