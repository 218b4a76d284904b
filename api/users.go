// An org's users: their numbers and licenses.

package api

import (
	"fmt"
	"strings"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/valyala/fasthttp"
)

func (s *Server) putUser(ctx *fasthttp.RequestCtx, org, user string) error {
	var req struct {
		Numbers  []string `json:"numbers"`
		Licenses []string `json:"licenses"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	u := ledger.User{Org: org, ID: user}
	for _, n := range req.Numbers {
		if !strings.HasPrefix(n, "+") {
			return badRequest("number %q: want E.164 with a leading +", n)
		}
		e164, err := rating.Normalize(n, "")
		if err != nil {
			return badRequest("number %q: not an E.164 number", n)
		}
		u.Numbers = append(u.Numbers, e164)
	}
	for _, l := range req.Licenses {
		lic, err := rating.ParseLicense(l)
		if err != nil {
			return badRequest("%v", err)
		}
		u.Licenses = append(u.Licenses, string(lic))
	}
	if err := s.ledger.PutUser(u); err != nil {
		return err
	}
	stored, _ := s.ledger.User(org, user)
	writeJSON(ctx, 200, viewUser(stored))
	return nil
}

// deleteUser removes a user; 409 in_use while a call of theirs is up.
func (s *Server) deleteUser(ctx *fasthttp.RequestCtx, org, user string) error {
	found, err := s.ledger.DeleteUser(org, user)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: org %s has no user %s", errNotFound, org, user)
	}
	ctx.SetStatusCode(204)
	return nil
}

// viewUser is a user as the API shows it: numbers in E.164 with +.
func viewUser(u ledger.User) ledger.User {
	nums := make([]string, len(u.Numbers))
	for i, n := range u.Numbers {
		nums[i] = e164(n)
	}
	u.Numbers = nums
	if u.Licenses == nil {
		u.Licenses = []string{}
	}
	return u
}
