// Who is calling and what they may do: API keys with roles (README, API
// keys and roles). Every request behind the token is authenticated to a
// principal (a key id, its role and, for org roles, its org), then checked
// against the route's access column (api.go) before its handler runs.

package api

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// Role is what a key may do.
type Role string

// The roles. Operator roles see every org; org roles see one.
const (
	RoleOperatorAdmin Role = "operator_admin" // everything
	RoleOperatorRead  Role = "operator_read"  // every GET
	RoleSupport       Role = "support"        // every GET, and ending calls
	RoleOrgAdmin      Role = "org_admin"      // its own org: users, licenses, auto-recharge, contacts, funding, its calls, its keys
	RoleOrgRead       Role = "org_read"       // GETs of its own org
)

// Roles are every role, operator roles first.
var Roles = []Role{RoleOperatorAdmin, RoleOperatorRead, RoleSupport, RoleOrgAdmin, RoleOrgRead}

// OrgScoped reports whether a key of this role belongs to one org.
func (r Role) OrgScoped() bool { return r == RoleOrgAdmin || r == RoleOrgRead }

func (r Role) valid() bool {
	for _, x := range Roles {
		if r == x {
			return true
		}
	}
	return false
}

func (r Role) bit() roleSet {
	for i, x := range Roles {
		if r == x {
			return 1 << i
		}
	}
	return 0
}

// roleSet is a set of roles, one bit per entry of Roles.
type roleSet uint8

func rolesOf(rs ...Role) roleSet {
	var s roleSet
	for _, r := range rs {
		s |= r.bit()
	}
	return s
}

func (s roleSet) has(r Role) bool { return s&r.bit() != 0 }

// scope says how a route's object is tied to an org, which is how an
// org-scoped key is kept to its own org.
type scope uint8

const (
	scopeUnset scope = iota // a route without an access column: refused (a test fails on it)
	// scopeNone: no org's object (the document, whoami; and routes only
	// operator roles may call: trunks, the rate deck, creating orgs).
	scopeNone
	// scopePath: the route's {org} is the org.
	scopePath
	// scopeList: a list the handler filters to the key's org.
	scopeList
	// scopeCall: {id} is a call up; its org is the org.
	scopeCall
	// scopeKey: {id} is an API key; its org is the org.
	scopeKey
	// scopeBody: the org is in the request body (POST /v1/keys); the
	// handler checks it.
	scopeBody
)

// access is a route's permission column: which roles may call it at all
// (else 403 forbidden), and how an org-scoped key is kept to its org (an
// object of another org answers as if it did not exist: the same 404 as a
// missing one, so a key cannot learn what other orgs exist).
type access struct {
	roles roleSet
	scope scope
}

var (
	allRoles  = rolesOf(Roles...)
	readRoles = rolesOf(RoleOperatorAdmin, RoleOperatorRead, RoleSupport)

	// openRead: anyone with a key (the document, whoami).
	openRead = access{allRoles, scopeNone}
	// operatorRead: operator roles and support (trunks, rate previews).
	operatorRead = access{readRoles, scopeNone}
	// orgRead: every role; org roles on their own org only.
	orgRead = access{allRoles, scopePath}
	// listRead: every role; org roles see their own org's items only.
	listRead = access{allRoles, scopeList}
	// operatorWrite: operator admins only.
	operatorWrite = access{rolesOf(RoleOperatorAdmin), scopeNone}
	// orgWrite: operator admins, and an org's admins on their own org.
	orgWrite = access{rolesOf(RoleOperatorAdmin, RoleOrgAdmin), scopePath}
	// callEnd: operator admins, support, and an org's admins on their
	// org's calls.
	callEnd = access{rolesOf(RoleOperatorAdmin, RoleSupport, RoleOrgAdmin), scopeCall}
	// keyCreate and keyChange: operator admins, and an org's admins on
	// their own org's keys (the handler keeps them to org roles).
	keyCreate = access{rolesOf(RoleOperatorAdmin, RoleOrgAdmin), scopeBody}
	keyChange = access{rolesOf(RoleOperatorAdmin, RoleOrgAdmin), scopeKey}
)

// principal is who a request was authenticated as.
type principal struct {
	KeyID string
	Role  Role
	Org   string // "" for operator roles
}

// sees reports whether the principal may see org's objects.
func (p principal) sees(org string) bool { return !p.Role.OrgScoped() || p.Org == org }

// BootstrapKeyID is the key id of the admin token from the configuration:
// an operator_admin key that cannot be rotated or revoked through the API.
const BootstrapKeyID = "bootstrap"

// secretPrefix starts every secret the API makes, so a leaked one is
// recognisable in logs and by secret scanners.
const secretPrefix = "cgk_"

// newSecret makes a key's secret: cgk_<key hex>_<32 random bytes, base64url>.
// The id inside lets the API find the key and compare one hash in constant
// time, instead of looking a hash up in a map.
func newSecret(id string) (secret string, hash []byte, err error) {
	b, err := randomBytes(32)
	if err != nil {
		return "", nil, err
	}
	secret = secretPrefix + strings.TrimPrefix(id, "key_") + "_" + b64(b)
	h := sha256.Sum256([]byte(secret))
	return secret, h[:], nil
}

// newKeyID makes a key id: key_ and 16 hex digits (64 random bits).
func newKeyID() (string, error) {
	b, err := randomBytes(8)
	if err != nil {
		return "", err
	}
	return "key_" + hex.EncodeToString(b), nil
}

// authenticate finds who the bearer token belongs to. The bootstrap token
// and a key's hash are compared in constant time; a revoked key, a
// rotated-away secret and anything else are errUnauthorized.
func (s *Server) authenticate(ctx *fasthttp.RequestCtx) (principal, error) {
	h := ctx.Request.Header.Peek("Authorization")
	tok, ok := bytes.CutPrefix(h, []byte("Bearer "))
	if !ok || len(tok) == 0 {
		return principal{}, errUnauthorized
	}
	if len(s.token) > 0 && subtle.ConstantTimeCompare(tok, s.token) == 1 {
		s.bootstrapUsed.Store(s.now().UnixNano())
		return principal{KeyID: BootstrapKeyID, Role: RoleOperatorAdmin}, nil
	}
	rest, ok := bytes.CutPrefix(tok, []byte(secretPrefix))
	if !ok || s.access == nil {
		return principal{}, errUnauthorized
	}
	idHex, _, ok := bytes.Cut(rest, []byte("_"))
	if !ok || len(idHex) == 0 || len(idHex) > 64 {
		return principal{}, errUnauthorized
	}
	k, found := s.access.Key("key_" + string(idHex))
	sum := sha256.Sum256(tok)
	if !found || subtle.ConstantTimeCompare(sum[:], k.Hash) != 1 || k.Revoked() {
		return principal{}, errUnauthorized
	}
	s.access.KeyUsed(k.ID, s.now())
	return principal{KeyID: k.ID, Role: Role(k.Role), Org: k.Org}, nil
}

// errForbidden: the key's role may not do this.
var errForbidden = errors.New("forbidden")

// permit checks the principal against a route's access column, before the
// handler runs: the role (403), then the org of a path, call or key (the
// same 404 as a missing one). Lists and bodies are the handlers' to check.
func (s *Server) permit(p principal, r *route, args map[string]string) error {
	if r.access.scope == scopeUnset || !r.access.roles.has(p.Role) {
		return fmt.Errorf("%w: role %s may not %s %s", errForbidden, p.Role, r.method, r.pattern)
	}
	if !p.Role.OrgScoped() {
		return nil
	}
	switch r.access.scope {
	case scopePath:
		if org := args["org"]; !p.sees(org) {
			return fmt.Errorf("%w: %s", ledger.ErrUnknownOrg, org)
		}
	case scopeCall:
		if c, ok := s.callUp(args["id"]); !ok || !p.sees(c.Org) {
			return fmt.Errorf("%w: %s", ledger.ErrUnknownCall, args["id"])
		}
	case scopeKey:
		if k, ok := s.keyByID(args["id"]); !ok || !p.sees(k.Org) {
			return fmt.Errorf("%w: %s", ledger.ErrUnknownKey, args["id"])
		}
	}
	return nil
}

// keyByID finds a stored key (not the bootstrap one).
func (s *Server) keyByID(id string) (ledger.APIKey, bool) {
	if s.access == nil {
		return ledger.APIKey{}, false
	}
	return s.access.Key(id)
}

// bootstrapKey is the configured token as a key in lists.
func (s *Server) bootstrapKey() ledger.APIKey {
	k := ledger.APIKey{ID: BootstrapKeyID, Name: "bootstrap (http.admin_token)", Role: string(RoleOperatorAdmin), CreatedAt: s.started}
	if ns := s.bootstrapUsed.Load(); ns != 0 {
		k.LastUsedAt = time.Unix(0, ns).UTC()
	}
	return k
}
