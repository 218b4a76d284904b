package console

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestLoginGoodAndBadKey(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()

	t.Run("good key", func(t *testing.T) {
		b := h.browser()
		lp := b.get("/console/login")
		if lp.status != 200 || !strings.Contains(lp.body, `<label for="key">API key</label>`) {
			t.Fatalf("login page %d:\n%s", lp.status, lp.body)
		}
		res := b.post("/console/login", url.Values{"csrf": {lp.csrf(t)}, "key": {operatorToken}}, h.base)
		if res.status != 303 || res.location != "/console/op/orgs" {
			t.Fatalf("login: %d to %q, want 303 to /console/op/orgs\n%s", res.status, res.location, res.body)
		}
		var sc *http.Cookie
		for _, ck := range (&http.Response{Header: res.header}).Cookies() {
			if ck.Name == sessionCookie {
				sc = ck
			}
		}
		if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Path != "/console" || sc.MaxAge != int(sessionTTL/time.Second) {
			t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, path /console, max-age %d", sc, int(sessionTTL/time.Second))
		}
		orgs := b.get("/console/op/orgs")
		if orgs.status != 200 || !strings.Contains(orgs.body, `href="/console/org/acme"`) || !strings.Contains(orgs.body, "50.00 USD") {
			t.Fatalf("orgs page %d:\n%s", orgs.status, orgs.body)
		}
		// Messages come from the session, not the URL: a link cannot put
		// words on a console page.
		if p := b.get("/console/org/acme?err=Call+support+at+evil&msg=Pwned"); strings.Contains(p.body, "evil") || strings.Contains(p.body, "Pwned") {
			t.Fatalf("the URL put words on the page:\n%s", p.body)
		}
		// The operator sees the org's page too, times in its zone.
		op := b.get("/console/org/acme")
		if op.status != 200 || !strings.Contains(op.body, `<dd id="available">50.00 USD</dd>`) || !strings.Contains(op.body, "America/New_York") {
			t.Fatalf("org page %d:\n%s", op.status, op.body)
		}
	})

	t.Run("bad key", func(t *testing.T) {
		b := h.browser()
		lp := b.get("/console/login")
		res := b.post("/console/login", url.Values{"csrf": {lp.csrf(t)}, "key": {"not-a-key-at-all-0123456789"}}, h.base)
		if res.status != 401 || !strings.Contains(res.body, "was not accepted") {
			t.Fatalf("bad key: %d\n%s", res.status, res.body)
		}
		if after := b.get("/console/op/orgs"); after.status != 303 || after.location != "/console/login" {
			t.Fatalf("after a bad key the console let us in: %d %s", after.status, after.location)
		}
		if n := h.console.sessions.len(); n != 1 {
			t.Fatalf("%d sessions, want only the good key's", n)
		}
	})

	t.Run("login form without its token", func(t *testing.T) {
		b := h.browser()
		b.get("/console/login")
		for _, v := range []url.Values{{"key": {operatorToken}}, {"key": {operatorToken}, "csrf": {"forged"}}} {
			if res := b.post("/console/login", v, h.base); res.status != 403 {
				t.Fatalf("login with csrf %q: %d, want 403", v.Get("csrf"), res.status)
			}
		}
		lp := b.get("/console/login")
		if res := b.post("/console/login", url.Values{"csrf": {lp.csrf(t)}, "key": {operatorToken}}, "http://evil.example"); res.status != 403 {
			t.Fatalf("login from another origin: %d, want 403", res.status)
		}
	})
}

func TestSessionExpiresAndLogout(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	b := h.browser()
	b.login(operatorToken)

	h.clock.Advance(sessionTTL - time.Second)
	if p := b.get("/console/op/orgs"); p.status != 200 {
		t.Fatalf("a second before expiry: %d", p.status)
	}
	h.clock.Advance(time.Second)
	if p := b.get("/console/op/orgs"); p.status != 303 || p.location != "/console/login?why=ended" {
		t.Fatalf("at expiry: %d %q, want 303 to the login saying why", p.status, p.location)
	}
	if p := b.get("/console/login?why=ended"); !strings.Contains(p.body, "Your session has ended") {
		t.Fatalf("the login page does not say the session ended:\n%s", p.body)
	}
	if n := h.console.sessions.len(); n != 0 {
		t.Fatalf("%d sessions after expiry", n)
	}

	csrf := b.login(operatorToken)
	before := b.client.Jar.Cookies(mustURL(t, h.base+"/console/"))
	res := b.post("/console/logout", url.Values{"csrf": {csrf}}, h.base)
	if res.status != 303 || !strings.HasPrefix(res.location, "/console/login") {
		t.Fatalf("logout: %d %q", res.status, res.location)
	}
	if p := b.get("/console/op/orgs"); p.status != 303 {
		t.Fatalf("after logout: %d", p.status)
	}
	// The old cookie, replayed, is no session either.
	replay := h.browser()
	replay.client.Jar.SetCookies(mustURL(t, h.base+"/console/"), before)
	if p := replay.get("/console/op/orgs"); p.status != 303 {
		t.Fatalf("replayed cookie after logout: %d", p.status)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// changes are the forms whose sample, posted with the right token, must
// change what state() sees: the proof that the refusals below are
// refusals and not forms that never did anything. The others' samples
// are refused by the API itself in this fixture (no call to hang up, no
// payment provider for a purchase) and are checked to get past the CSRF
// check only.
var changes = map[string]bool{"logout": true, "auto-recharge": true, "contacts": true, "license": true, "deck": true}

// Every form of the table refuses a missing token, a wrong token, a post
// from another origin and an expired session, with nothing changed.
func TestEveryFormRefusesForgedAndExpiredPosts(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	fill := func(p string) string {
		return strings.NewReplacer("{org}", "acme", "{user}", "alice", "{call}", "no-such-call").Replace(p)
	}
	for _, f := range forms {
		t.Run(f.name, func(t *testing.T) {
			b := h.browser()
			csrf := b.login(operatorToken)
			path := "/console" + fill(f.samplePath)
			with := func(token string) url.Values {
				v := url.Values{}
				for k, vs := range f.sampleValues {
					v[k] = vs
				}
				if token != "" {
					v.Set("csrf", token)
				}
				return v
			}
			cases := []struct {
				name   string
				values url.Values
				origin string
			}{
				{"no token", with(""), h.base},
				{"wrong token", with(otherToken(csrf)), h.base},
				{"another session's token", with(h.browser().login(operatorToken)), h.base},
				{"another origin", with(csrf), "https://evil.example"},
				{"no origin", with(csrf), ""},
			}
			before := h.state()
			for _, tc := range cases {
				res := b.post(path, tc.values, tc.origin)
				if res.status != 403 {
					t.Fatalf("%s: %d, want 403\n%s", tc.name, res.status, res.body)
				}
				if after := h.state(); after != before {
					t.Fatalf("%s changed something:\nbefore %s\nafter  %s", tc.name, before, after)
				}
			}

			// The same post, right token, after the session expired.
			h.clock.Advance(sessionTTL)
			before = h.state()
			if res := b.post(path, with(csrf), h.base); res.status != 403 || !strings.Contains(res.body, "expired") {
				t.Fatalf("expired session: %d, want 403\n%s", res.status, res.body)
			}
			if after := h.state(); after != before {
				t.Fatalf("expired session changed something:\nbefore %s\nafter  %s", before, after)
			}

			// Signed in again, the right token gets through.
			csrf = b.login(operatorToken)
			before = h.state()
			res := b.post(path, with(csrf), h.base)
			if res.status != 303 {
				t.Fatalf("right token: %d, want 303\n%s", res.status, res.body)
			}
			if changed := h.state() != before; changed != changes[f.name] {
				t.Fatalf("right token: changed %v, want %v (flash %q)", changed, changes[f.name], res.location)
			}
		})
	}
}

// otherToken is csrf with its first character changed: never equal to
// csrf, whatever that character was (a fixed "x" prefix was the token
// itself whenever the token began with x).
func otherToken(csrf string) string {
	first := byte('x')
	if csrf[0] == first {
		first = 'y'
	}
	return string(first) + csrf[1:]
}
