package gateway

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// Digest authentication of customer and conferencing trunks that have a
// username: on top of the source address, every INVITE must carry
// Proxy-Authorization for the trunk's credentials (RFC 3261 §22, MD5 as SIP
// PBXes speak it). Nonces are stateless — a timestamp signed with a key of
// this process — so a challenge costs no memory per caller, and they expire
// after nonceTTL, after which the caller is challenged again with stale=true.
var (
	ErrAuthRequired = errors.New("digest authentication required")
	ErrAuthFailed   = errors.New("digest credentials do not match the trunk's")
)

// challengeError asks for (new) credentials; it is an ErrAuthRequired.
type challengeError struct{ stale bool }

func (e challengeError) Error() string { return ErrAuthRequired.Error() }
func (e challengeError) Unwrap() error { return ErrAuthRequired }

const nonceTTL = 5 * time.Minute

type digestAuth struct {
	realm string
	key   [32]byte
	now   func() time.Time
}

func newDigestAuth(realm string, now func() time.Time) *digestAuth {
	d := &digestAuth{realm: realm, now: now}
	_, _ = rand.Read(d.key[:])
	return d
}

func (d *digestAuth) sign(ts []byte) []byte {
	m := hmac.New(sha256.New, d.key[:])
	m.Write(ts)
	return m.Sum(nil)[:16]
}

func (d *digestAuth) nonce() string {
	b := make([]byte, 8, 24)
	binary.BigEndian.PutUint64(b, uint64(d.now().UnixNano()))
	return base64.RawURLEncoding.EncodeToString(append(b, d.sign(b)...))
}

// fresh reports whether n is a nonce of ours (ok) and, if so, whether it
// has outlived nonceTTL (stale).
func (d *digestAuth) fresh(n string) (ok, stale bool) {
	b, err := base64.RawURLEncoding.DecodeString(n)
	if err != nil || len(b) != 24 || !hmac.Equal(b[8:], d.sign(b[:8])) {
		return false, false
	}
	age := d.now().Sub(time.Unix(0, int64(binary.BigEndian.Uint64(b[:8]))))
	return true, age < -time.Minute || age > nonceTTL
}

// challenge is the Proxy-Authenticate header of a 407.
func (d *digestAuth) challenge(stale bool) sip.Header {
	c := digest.Challenge{Realm: d.realm, Nonce: d.nonce(), Algorithm: "MD5", QOP: []string{"auth"}, Stale: stale}
	return sip.NewHeader("Proxy-Authenticate", c.String())
}

// check verifies an INVITE's credentials for trunk t; nil means the caller
// proved it knows the trunk's password.
func (d *digestAuth) check(req *sip.Request, t ledger.Trunk) error {
	h := req.GetHeader("Proxy-Authorization")
	if h == nil {
		return challengeError{}
	}
	cred, err := digest.ParseCredentials(h.Value())
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAuthFailed, err)
	}
	if cred.Realm != d.realm {
		return challengeError{} // credentials for another server
	}
	ok, stale := d.fresh(cred.Nonce)
	if !ok || stale {
		return challengeError{stale: ok}
	}
	if cred.Username != t.Username || (cred.Algorithm != "" && cred.Algorithm != "MD5") {
		return ErrAuthFailed
	}
	chal := &digest.Challenge{Realm: d.realm, Nonce: cred.Nonce, Opaque: cred.Opaque, Algorithm: cred.Algorithm}
	if cred.QOP != "" {
		chal.QOP = []string{cred.QOP}
	}
	want, err := digest.Digest(chal, digest.Options{Method: string(req.Method), URI: cred.URI,
		Username: t.Username, Password: t.Password, Count: cred.Nc, Cnonce: cred.Cnonce})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAuthFailed, err)
	}
	if subtle.ConstantTimeCompare([]byte(want.Response), []byte(cred.Response)) != 1 {
		return ErrAuthFailed
	}
	return nil
}
