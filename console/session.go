// Sessions: who is signed in, with which key, until when; and the CSRF
// checks every POST passes before anything is read from its form.

package console

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Cookie names. The session cookie holds only a random id; the key it
// stands for never leaves the process after the login form.
const (
	sessionCookie = "creditgate_session"
	// loginCookie carries the login form's CSRF token (double submit):
	// before login there is no session to keep it in.
	loginCookie = "creditgate_login"
	// csrfField is the hidden field every form carries.
	csrfField = "csrf"
)

// identity is who a key is, as GET /v1/whoami answers.
type identity struct {
	KeyID string `json:"key_id"`
	Role  string `json:"role"`
	Org   string `json:"org"`
}

// operator says whether the role is one of the operator's (it sees every
// org); the API decides what each role may do, this only picks the pages.
func (id identity) operator() bool {
	switch id.Role {
	case "operator_admin", "operator_read", "support":
		return true
	}
	return false
}

// session is one signed-in browser. Its fields are immutable once
// created (a new login is a new session) but for the one-shot messages,
// which sessions.mu guards, and keyRefused.
type session struct {
	id      string
	secret  string // the API key, sent as the bearer token of every API call
	who     identity
	csrf    string
	expires time.Time

	// keyRefused is set by the first API call the key was refused on
	// (401: revoked, or rotated away); Handle then ends the session. An
	// atomic, not under mu: call sets it without taking the store's lock.
	keyRefused atomic.Bool

	// flash and flashErr are the last form's result, for the next page;
	// kept here rather than in the URL so that a link cannot put words
	// on a console page.
	flash, flashErr string
}

// sessions is the in-memory session store. A restart logs everyone out
// (README, Web console): nothing about a session is written to disk, so
// no key is either.
//
// Invariant: len(byID) ≤ max. Guarded by mu, which is never held across
// an API call or I/O.
type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
	max  int
}

func newSessions(max int) *sessions {
	return &sessions{byID: map[string]*session{}, max: max}
}

// add keeps s, first making room: expired sessions go, then, if still full,
// the one that would expire first.
func (st *sessions) add(s *session, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.byID) >= st.max {
		for id, o := range st.byID {
			if !now.Before(o.expires) {
				delete(st.byID, id)
			}
		}
	}
	for len(st.byID) >= st.max {
		var oldest *session
		for _, o := range st.byID {
			if oldest == nil || o.expires.Before(oldest.expires) {
				oldest = o
			}
		}
		delete(st.byID, oldest.id)
	}
	st.byID[s.id] = s
}

// get is the live session with that id, or nil; an expired one is dropped.
func (st *sessions) get(id string, now time.Time) *session {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.byID[id]
	if s == nil {
		return nil
	}
	if !now.Before(s.expires) {
		delete(st.byID, id)
		return nil
	}
	return s
}

func (st *sessions) remove(id string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.byID, id)
}

// setFlash keeps the last form's result for the session's next page.
func (st *sessions) setFlash(id, msg, errMsg string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s := st.byID[id]; s != nil {
		s.flash, s.flashErr = msg, errMsg
	}
}

// takeFlash returns the messages and forgets them.
func (st *sessions) takeFlash(id string) (msg, errMsg string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s := st.byID[id]; s != nil {
		msg, errMsg = s.flash, s.flashErr
		s.flash, s.flashErr = "", ""
	}
	return msg, errMsg
}

func (st *sessions) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.byID)
}

// randomToken is 32 random bytes, URL-safe: a session id or a CSRF token.
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// session is the request's live session, or nil.
func (c *Console) session(ctx *fasthttp.RequestCtx) *session {
	id := ctx.Request.Header.Cookie(sessionCookie)
	if len(id) == 0 {
		return nil
	}
	return c.sessions.get(string(id), c.cfg.Now())
}

// setCookie sets an HttpOnly, SameSite=Strict cookie for the console's
// path; Secure on TLS or when configured. maxAge 0 deletes it.
func (c *Console) setCookie(ctx *fasthttp.RequestCtx, name, value string, maxAge time.Duration) {
	var ck fasthttp.Cookie
	ck.SetKey(name)
	ck.SetValue(value)
	ck.SetPath(Prefix)
	ck.SetHTTPOnly(true)
	ck.SetSameSite(fasthttp.CookieSameSiteStrictMode)
	ck.SetSecure(c.cfg.SecureCookie || ctx.IsTLS())
	if maxAge > 0 {
		ck.SetMaxAge(int(maxAge / time.Second))
	} else {
		ck.SetMaxAge(-1)
		ck.SetExpire(fasthttp.CookieExpireDelete)
	}
	ctx.Response.Header.SetCookie(&ck)
}

// sameOrigin is the Origin (or, without one, Referer) check: a POST must
// come from a page of this host. A browser sends Origin on every POST; a
// request with neither header is refused as well.
func sameOrigin(ctx *fasthttp.RequestCtx) bool {
	host := ctx.Host()
	from := ctx.Request.Header.Peek("Origin")
	if len(from) == 0 || bytes.Equal(from, []byte("null")) {
		from = ctx.Request.Header.Peek("Referer")
	}
	if len(from) == 0 {
		return false
	}
	u, err := url.Parse(string(from))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return u.Host == string(host)
}

// tokenOK compares the form's token with the expected one in constant
// time; an empty expected token never matches.
func tokenOK(got []byte, want string) bool {
	return want != "" && subtle.ConstantTimeCompare(got, []byte(want)) == 1
}
