// API keys: create (the secret shown once), list, rotate, revoke, and
// whoami. The ledger stores each key with the SHA-256 of its secret and
// journals every change in the same durable operation (ledger/keys.go); on
// a cluster node the key is a record of the shared configuration, so it
// works on every node, and its entry follows the change
// (ledger/keys_shared.go, cluster/replica_keys.go).

package api

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

func randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("%w: random bytes: %v", errInternal, err)
	}
	return b, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// keyView is a key in a list: never its secret or hash.
type keyView struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	Org        string     `json:"org"`
	CreatedAt  time.Time  `json:"created_at"`
	RotatedAt  *time.Time `json:"rotated_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

func viewKey(k ledger.APIKey) keyView {
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	return keyView{ID: k.ID, Name: k.Name, Role: k.Role, Org: k.Org, CreatedAt: k.CreatedAt,
		RotatedAt: opt(k.RotatedAt), RevokedAt: opt(k.RevokedAt), LastUsedAt: opt(k.LastUsedAt)}
}

func (s *Server) whoami(ctx *fasthttp.RequestCtx, rq *request) error {
	writeJSON(ctx, 200, map[string]string{"key_id": rq.who.KeyID, "role": string(rq.who.Role), "org": rq.who.Org})
	return nil
}

// listKeys pages through the keys by id, the bootstrap key first; an
// org-scoped key sees its own org's keys only.
func (s *Server) listKeys(ctx *fasthttp.RequestCtx, who principal) error {
	var all []ledger.APIKey
	if !who.Role.OrgScoped() {
		all = append(all, s.bootstrapKey()) // "bootstrap" sorts before every "key_…"
	}
	if s.access != nil {
		for _, k := range s.access.Keys() {
			if who.sees(k.Org) {
				all = append(all, k)
			}
		}
	}
	keys, resp, err := page(ctx, all, func(k ledger.APIKey) string { return k.ID })
	if err != nil {
		return err
	}
	out := make([]keyView, 0, len(keys))
	for _, k := range keys {
		out = append(out, viewKey(k))
	}
	resp["keys"] = out
	writeJSON(ctx, 200, resp)
	return nil
}

func (s *Server) auditOf(ctx *fasthttp.RequestCtx, rq *request, method, pattern string) ledger.AuditEntry {
	return ledger.AuditEntry{At: s.now(), KeyID: rq.who.KeyID, Role: string(rq.who.Role), Action: method + " " + pattern, Via: via(ctx)}
}

// createKey is POST /v1/keys {"name","role","org"}: org is required for
// org roles and refused for operator roles; an org admin may make keys of
// its own org with an org role only.
func (s *Server) createKey(ctx *fasthttp.RequestCtx, rq *request) error {
	var req struct {
		Name string `json:"name"`
		Role string `json:"role"`
		Org  string `json:"org"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	role := Role(req.Role)
	switch {
	case !role.valid():
		return badRequest("role %q: want one of operator_admin, operator_read, support, org_admin, org_read", req.Role)
	case req.Name == "" || len(req.Name) > ledger.MaxKeyNameLen:
		return badRequest("name: want 1 to %d characters", ledger.MaxKeyNameLen)
	case role.OrgScoped() && req.Org == "":
		return badRequest("org is required for role %s", role)
	case !role.OrgScoped() && req.Org != "":
		return badRequest("org: role %s belongs to no org", role)
	}
	if rq.who.Role.OrgScoped() {
		if !role.OrgScoped() {
			return fmt.Errorf("%w: role %s may only make org_admin and org_read keys of its org", errForbidden, rq.who.Role)
		}
		if !rq.who.sees(req.Org) {
			return fmt.Errorf("%w: %s", ledger.ErrUnknownOrg, req.Org)
		}
	}
	if s.access == nil {
		return fmt.Errorf("%w: no key store is configured", ledger.ErrUnavailable)
	}
	id, err := newKeyID()
	if err != nil {
		return err
	}
	secret, hash, err := newSecret(id)
	if err != nil {
		return err
	}
	e, err := s.access.CreateKey(ledger.APIKey{ID: id, Name: req.Name, Role: string(role), Org: req.Org, Hash: hash},
		s.auditOf(ctx, rq, "POST", "/v1/keys"))
	if err != nil {
		return err
	}
	// The key's created_at is its entry's time: one operation made both.
	writeJSON(ctx, 201, map[string]any{"id": id, "secret": secret, "name": req.Name, "role": string(role), "org": req.Org,
		"created_at": e.At})
	return nil
}

// fixedKey refuses changes to the bootstrap key, which the configuration
// owns.
func fixedKey(id string) error {
	if id == BootstrapKeyID {
		return badRequest("the bootstrap key is the configured admin token (http.admin_token): change it there, not through the API")
	}
	return nil
}

// rotateKey is POST /v1/keys/{id}/rotate: a new secret, the old one
// refused from the moment the change is applied.
func (s *Server) rotateKey(ctx *fasthttp.RequestCtx, rq *request) error {
	id := rq.arg("id")
	if err := fixedKey(id); err != nil {
		return err
	}
	secret, hash, err := newSecret(id)
	if err != nil {
		return err
	}
	if _, err := s.access.RotateKey(id, hash, s.auditOf(ctx, rq, "POST", "/v1/keys/{id}/rotate")); err != nil {
		return err
	}
	writeJSON(ctx, 200, map[string]string{"id": id, "secret": secret})
	return nil
}

// revokeKey is DELETE /v1/keys/{id}: the key stops working at once and
// stays listed, revoked.
func (s *Server) revokeKey(ctx *fasthttp.RequestCtx, rq *request) error {
	id := rq.arg("id")
	if err := fixedKey(id); err != nil {
		return err
	}
	if _, err := s.access.RevokeKey(id, s.auditOf(ctx, rq, "DELETE", "/v1/keys/{id}")); err != nil {
		return err
	}
	ctx.SetStatusCode(204)
	return nil
}
