package console

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// How a session ends other than by signing out: its key revoked or
// rotated away (the API answers 401), its time up; and how htmx, which
// swaps no error answer and follows redirects inside its request, is told.

// orgState is what the tests' forms could change, without the console's
// own session count (which these tests change on purpose).
func (h *harness) orgState() string {
	h.t.Helper()
	s, _, _ := strings.Cut(h.state(), "live sessions")
	return s
}

// cookieDeleted says whether the answer deletes the session cookie.
func cookieDeleted(p page) bool {
	for _, ck := range (&http.Response{Header: p.header}).Cookies() {
		if ck.Name == sessionCookie && ck.MaxAge < 0 {
			return true
		}
	}
	return false
}

// A key the API stops accepting ends every session signed in with it, at
// that session's next request, whatever the request: the browser is sent
// to the login page, which says why, and nothing is changed.
func TestRefusedKeyEndsTheSession(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()

	keyChanges := []struct {
		name   string
		change func(id string) (newSecret string)
	}{
		{"revoked", func(id string) string { h.api("DELETE", "/v1/keys/"+id, "", 204); return "" }},
		{"rotated", func(id string) string {
			var r struct {
				Secret string `json:"secret"`
			}
			if err := json.Unmarshal(h.api("POST", "/v1/keys/"+id+"/rotate", "", 200), &r); err != nil || r.Secret == "" {
				t.Fatalf("rotate: %v %+v", err, r)
			}
			return r.Secret
		}},
	}
	nexts := []struct {
		name string
		htmx bool
		do   func(b *browser, csrf string) page
	}{
		{"page", false, func(b *browser, _ string) page { return b.get("/console/org/acme") }},
		{"page with no data of the API's", false, func(b *browser, _ string) page { return b.get("/console/op/deck") }},
		{"download", false, func(b *browser, _ string) page { return b.get("/console/org/acme/usage.csv") }},
		{"form", false, func(b *browser, csrf string) page {
			return b.post("/console/org/acme/contacts", url.Values{"csrf": {csrf}, "emails": {"new@acme.example"}}, h.base)
		}},
		{"htmx refresh", true, func(b *browser, _ string) page { return b.getHX("/console/org/acme/calls?partial=1") }},
		{"htmx hang-up", true, func(b *browser, csrf string) page {
			return b.postWith("/console/calls/no-such-call/hangup", url.Values{"csrf": {csrf}, "back": {"/console/org/acme/calls"}},
				h.base, htmxHeaders)
		}},
	}
	for _, kc := range keyChanges {
		for _, next := range nexts {
			t.Run(kc.name+"/"+next.name, func(t *testing.T) {
				id, secret := h.keyWithID("acme admin "+kc.name+" "+next.name, "org_admin", "acme")
				b := h.browser()
				csrf := b.login(secret)
				other := h.browser() // a second session of the same key
				other.login(secret)
				n := h.console.sessions.len()
				newSecret := kc.change(id)
				before := h.orgState()

				res := next.do(b, csrf)
				if next.htmx {
					if res.status != 401 || res.header.Get("HX-Redirect") != "/console/login?why=key" {
						t.Fatalf("%d, HX-Redirect %q: want 401 sending htmx to /console/login?why=key\n%s", res.status, res.header.Get("HX-Redirect"), res.body)
					}
				} else if res.status != 303 || res.location != "/console/login?why=key" {
					t.Fatalf("%d to %q: want 303 to /console/login?why=key\n%s", res.status, res.location, res.body)
				}
				if !cookieDeleted(res) {
					t.Fatalf("the session cookie is not deleted: %v", res.header)
				}
				if got := h.console.sessions.len(); got != n-1 {
					t.Fatalf("%d sessions, want %d: this one ended", got, n-1)
				}
				if after := h.orgState(); after != before {
					t.Fatalf("something changed:\nbefore %s\nafter  %s", before, after)
				}
				if lp := b.get("/console/login?why=key"); lp.status != 200 || !strings.Contains(lp.body, "the API no longer accepts your key") {
					t.Fatalf("the login page does not say why (%d):\n%s", lp.status, lp.body)
				}
				if p := b.get("/console/org/acme"); p.status != 303 || !strings.HasPrefix(p.location, "/console/login") {
					t.Fatalf("the ended session still works: %d %q", p.status, p.location)
				}
				// The other session of the key ends at its own next request.
				if p := other.get("/console/org/acme/users"); p.status != 303 || p.location != "/console/login?why=key" {
					t.Fatalf("the key's other session: %d %q, want 303 to /console/login?why=key", p.status, p.location)
				}
				if got := h.console.sessions.len(); got != n-2 {
					t.Fatalf("%d sessions, want %d: both of the key's ended", got, n-2)
				}
				// The key itself cannot sign in again; a rotated key's new
				// secret can.
				again := h.browser()
				lp := again.get("/console/login")
				if res := again.post("/console/login", url.Values{"csrf": {lp.csrf(t)}, "key": {secret}}, h.base); res.status != 401 {
					t.Fatalf("signing in again with the old secret: %d, want 401", res.status)
				}
				if newSecret != "" {
					again.login(newSecret)
				}
			})
		}
	}
}

// htmx follows a redirect inside its request and swaps no 4xx answer, so a
// refusal it got would show nothing: the console answers htmx with the
// real status and HX-Redirect (which htmx reads on any status) to a page
// that shows the message.
func TestHtmxRefusalsShowAMessage(t *testing.T) {
	h := newHarness(t)
	h.setupAcme()
	b := h.browser()
	csrf := b.login(operatorToken)
	hangup := func(token string) url.Values {
		return url.Values{"csrf": {token}, "back": {"/console/org/acme/calls"}}
	}

	// A CSRF refusal: 403, and htmx sends the page to the form's page,
	// which shows the refusal once.
	before := h.state()
	res := b.postWith("/console/calls/no-such-call/hangup", hangup(otherToken(csrf)), h.base, htmxHeaders)
	if res.status != 403 || res.header.Get("HX-Redirect") != "/console/org/acme/calls" || res.location != "" {
		t.Fatalf("htmx post with a wrong token: %d, HX-Redirect %q, Location %q", res.status, res.header.Get("HX-Redirect"), res.location)
	}
	if after := h.state(); after != before {
		t.Fatalf("a refused htmx post changed something:\nbefore %s\nafter  %s", before, after)
	}
	if p := b.get("/console/org/acme/calls"); p.status != 200 || !strings.Contains(p.body, `role="alert"`) || !strings.Contains(p.body, "(CSRF check)") {
		t.Fatalf("the calls page does not show the refusal (%d):\n%s", p.status, p.body)
	}
	if p := b.get("/console/org/acme/calls"); strings.Contains(p.body, "(CSRF check)") {
		t.Fatalf("the refusal is shown twice:\n%s", p.body)
	}
	// Without htmx the refusal is the answer itself.
	if res := b.post("/console/calls/no-such-call/hangup", hangup(otherToken(csrf)), h.base); res.status != 403 || !strings.Contains(res.body, "(CSRF check)") {
		t.Fatalf("plain post with a wrong token: %d\n%s", res.status, res.body)
	}

	// The session expires while the live calls page refreshes itself.
	h.clock.Advance(sessionTTL)
	res = b.getHX("/console/org/acme/calls?partial=1")
	if res.status != 401 || res.header.Get("HX-Redirect") != "/console/login?why=ended" || res.location != "" || strings.Contains(res.body, "<form") {
		t.Fatalf("htmx refresh after expiry: %d, HX-Redirect %q, Location %q\n%s", res.status, res.header.Get("HX-Redirect"), res.location, res.body)
	}
	before = h.state()
	res = b.postWith("/console/calls/no-such-call/hangup", hangup(csrf), h.base, htmxHeaders)
	if res.status != 403 || res.header.Get("HX-Redirect") != "/console/login?why=ended" {
		t.Fatalf("htmx post after expiry: %d, HX-Redirect %q", res.status, res.header.Get("HX-Redirect"))
	}
	if after := h.state(); after != before {
		t.Fatalf("a post after expiry changed something:\nbefore %s\nafter  %s", before, after)
	}
	if lp := b.get("/console/login?why=ended"); lp.status != 200 || !strings.Contains(lp.body, "Your session has ended") {
		t.Fatalf("the login page does not say the session ended (%d):\n%s", lp.status, lp.body)
	}
	// Never signed in: htmx is sent to the login page, no message.
	if res := h.browser().getHX("/console/org/acme/calls?partial=1"); res.status != 401 || res.header.Get("HX-Redirect") != "/console/login" {
		t.Fatalf("htmx refresh with no session: %d, HX-Redirect %q", res.status, res.header.Get("HX-Redirect"))
	}
	// A link cannot put its own words on the login page.
	if lp := h.browser().get("/console/login?why=Call+evil"); strings.Contains(lp.body, "evil") || strings.Contains(lp.body, `role="alert"`) {
		t.Fatalf("the URL put words on the login page:\n%s", lp.body)
	}
}
