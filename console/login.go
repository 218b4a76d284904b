// Signing in and out.

package console

import (
	"errors"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// loginTokenTTL is how long a login form's CSRF cookie lasts.
const loginTokenTTL = time.Hour

// asAPIError is errors.As for the API's refusals.
func asAPIError(err error, target **apiError) bool { return errors.As(err, target) }

// Why a session ended, in the login page's URL (?why=): only these fixed
// messages can be shown, so a link cannot put words on the page.
const (
	whyEnded = "ended" // a cookie without a live session
	whyKey   = "key"   // the API refused the session's key
)

var whyMessages = map[string]string{
	whyEnded: "Your session has ended (it expired, was signed out, or the gateway restarted): sign in again. Nothing was changed.",
	whyKey:   "You were signed out: the API no longer accepts your key (it was revoked, or rotated to a new secret). What you asked was not done; sign in with a current key.",
}

// loginURL is the login page, saying why when why is one of whyMessages'.
func loginURL(why string) string {
	if why == "" {
		return Prefix + "/login"
	}
	return Prefix + "/login?why=" + why
}

// loginPage shows the sign-in form with a fresh double-submit token: the
// same random value in a cookie and in the form's hidden field.
func (c *Console) loginPage(ctx *fasthttp.RequestCtx, errMsg string) {
	tok := randomToken()
	c.setCookie(ctx, loginCookie, tok, loginTokenTTL)
	d := pageData{Title: "Sign in", CSRF: tok, Error: errMsg}
	if ctx.QueryArgs().Has("signed_out") {
		d.Flash = "Signed out."
	}
	if msg, ok := whyMessages[string(ctx.QueryArgs().Peek("why"))]; ok && d.Error == "" {
		d.Error = msg
	}
	if errMsg != "" {
		ctx.SetStatusCode(401)
	}
	c.render(ctx, "login", d)
}

// login checks the form's origin and token, asks the API who the key is,
// and starts a session. A refused login changes nothing and says why
// without telling a wrong key from a revoked one.
func (c *Console) login(ctx *fasthttp.RequestCtx) {
	v := values{ctx}
	if !sameOrigin(ctx) || !tokenOK([]byte(v.get(csrfField)), string(ctx.Request.Header.Cookie(loginCookie))) {
		ctx.SetStatusCode(403)
		c.render(ctx, "login", pageData{Title: "Sign in", Error: "The sign-in form was refused (CSRF check): reload the page and try again."})
		return
	}
	key := strings.TrimSpace(v.get("key"))
	if key == "" {
		c.loginPage(ctx, "Enter an API key.")
		return
	}
	who, err := c.whoami(key)
	if err != nil {
		var ae *apiError
		if asAPIError(err, &ae) && ae.Status == 401 {
			c.cfg.Log.Info("console login refused", "reason", "unknown key")
			c.loginPage(ctx, "That key was not accepted: it is wrong, revoked or rotated.")
			return
		}
		c.cfg.Log.Error("console login failed", "error", err)
		c.loginPage(ctx, "Sign-in failed: "+err.Error())
		return
	}
	if who.Role == "" || (!who.operator() && who.Org == "") {
		c.loginPage(ctx, "This key has no role the console knows.")
		return
	}
	s := &session{id: randomToken(), secret: key, who: who, csrf: randomToken(), expires: c.cfg.Now().Add(c.cfg.SessionTTL)}
	c.sessions.add(s, c.cfg.Now())
	c.setCookie(ctx, sessionCookie, s.id, c.cfg.SessionTTL)
	c.setCookie(ctx, loginCookie, "", 0)
	c.cfg.Log.Info("console login", "key_id", who.KeyID, "role", who.Role, "org", who.Org)
	redirect(ctx, home(who))
}

// home is the first page of a role.
func home(who identity) string {
	if who.operator() {
		return Prefix + "/op/orgs"
	}
	return orgPath(who.Org)
}
