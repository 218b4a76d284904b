package api

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// FuzzBearer: an Authorization header is untrusted bytes. Whatever it
// holds, authenticating it never panics, and it authenticates exactly
// when it is "Bearer " and the bootstrap token or the secret of a key
// that is not revoked — never a rotated-away secret, a revoked key's, or
// anything near one.
func FuzzBearer(f *testing.F) {
	reg := prometheus.NewRegistry()
	l, err := ledger.Open(f.TempDir(), ledger.Options{Registerer: reg})
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	gw, _ := gateway.New(gatewayConfig(), l, rating.SampleDeck(), clock.Real{}, reg, quiet())
	srv := New(l, gw, testToken, reg, time.Now, quiet())
	mk := func() (id, secret string) {
		id, _ = newKeyID()
		secret, hash, _ := newSecret(id)
		if _, err := l.CreateKey(ledger.APIKey{ID: id, Name: "f", Role: string(RoleOperatorRead), Hash: hash},
			ledger.AuditEntry{KeyID: BootstrapKeyID, Role: string(RoleOperatorAdmin), Action: "POST /v1/keys"}); err != nil {
			f.Fatal(err)
		}
		return id, secret
	}
	liveID, live := mk()
	rotatedID, rotatedAway := mk()
	_, fresh, _ := newSecret(rotatedID)
	if _, err := l.RotateKey(rotatedID, fresh, ledger.AuditEntry{KeyID: BootstrapKeyID, Role: "operator_admin", Action: "rotate"}); err != nil {
		f.Fatal(err)
	}
	revokedID, revoked := mk()
	if _, err := l.RevokeKey(revokedID, ledger.AuditEntry{KeyID: BootstrapKeyID, Role: "operator_admin", Action: "revoke"}); err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"Bearer " + live, "Bearer " + rotatedAway, "Bearer " + revoked, "Bearer " + testToken,
		"Bearer " + live[:len(live)-1], "Bearer cgk_", "Bearer cgk__", "bearer " + live, "Bearer  " + live, "Bearer " + live + " ",
		"Bearer cgk_" + strings.Repeat("f", 70) + "_x", "", "Basic dXNlcjpwYXNz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.Set("Authorization", header)
		// What the server was given, not the fuzzer's string: fasthttp
		// drops bytes a header value cannot hold.
		got := string(ctx.Request.Header.Peek("Authorization"))
		p, err := srv.authenticate(&ctx)
		switch {
		case got == "Bearer "+testToken:
			if err != nil || p.KeyID != BootstrapKeyID {
				t.Fatalf("the bootstrap token: %+v %v", p, err)
			}
		case got == "Bearer "+live:
			if err != nil || p.KeyID != liveID || p.Role != RoleOperatorRead {
				t.Fatalf("a live key: %+v %v", p, err)
			}
		default:
			if !errors.Is(err, errUnauthorized) {
				t.Fatalf("%q authenticated as %+v (%v)", got, p, err)
			}
		}
	})
}

// TestSecretsAreNotStored: what the ledger keeps of a key is its hash; the
// secret is nowhere in its record nor in any audit entry.
func TestSecretsAreNotStored(t *testing.T) {
	h := newHarness(t)
	r := h.mustDo("POST", "/v1/keys", `{"name":"ops","role":"support"}`, 201)
	secret := string(bytes.Split(bytes.Split(r.body, []byte(`"secret":"`))[1], []byte(`"`))[0])
	if !strings.HasPrefix(secret, "cgk_") || len(secret) < 4+16+1+43 {
		t.Fatalf("secret %q", secret)
	}
	for _, k := range h.ledger.Keys() {
		if strings.Contains(fmt.Sprintf("%+v %s", k, k.Hash), secret) {
			t.Fatalf("the stored key holds its secret: %+v", k)
		}
	}
	es, _, _ := h.ledger.AuditEntries(ledger.AuditFilter{}, 0, 100)
	if len(es) != 1 || strings.Contains(fmt.Sprintf("%+v", es), secret) || strings.Contains(fmt.Sprintf("%+v", es), "cgk_") {
		t.Fatalf("journal %+v", es)
	}
}

// BenchmarkAuthenticate: the cost of finding who a request is, per
// request: the bootstrap token (one constant-time compare) and an API key
// (its id from the secret, a lookup under the ledger's lock, a SHA-256
// and a constant-time compare, and its last use noted).
func BenchmarkAuthenticate(b *testing.B) {
	reg := prometheus.NewRegistry()
	l, err := ledger.Open(b.TempDir(), ledger.Options{Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	gw, _ := gateway.New(gatewayConfig(), l, rating.SampleDeck(), clock.Real{}, reg, quiet())
	srv := New(l, gw, testToken, reg, time.Now, quiet())
	id, _ := newKeyID()
	secret, hash, _ := newSecret(id)
	if _, err := l.CreateKey(ledger.APIKey{ID: id, Name: "b", Role: string(RoleOperatorRead), Hash: hash},
		ledger.AuditEntry{KeyID: BootstrapKeyID, Role: "operator_admin", Action: "POST /v1/keys"}); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, token string }{{"bootstrap", testToken}, {"key", secret}} {
		b.Run(tc.name, func(b *testing.B) {
			var ctx fasthttp.RequestCtx
			ctx.Request.Header.Set("Authorization", "Bearer "+tc.token)
			b.ReportAllocs()
			for range b.N {
				if _, err := srv.authenticate(&ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
