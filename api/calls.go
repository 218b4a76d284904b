// Calls up now: list them (with their remaining paid time), end one.

package api

import (
	"slices"

	"github.com/creditgate/creditgate/gateway"
	"github.com/valyala/fasthttp"
)

// listCalls lists the calls up: all of them to an operator, its own org's
// to an org-scoped key.
func (s *Server) listCalls(ctx *fasthttp.RequestCtx, who principal) error {
	calls := s.gw.Calls()
	if who.Role.OrgScoped() {
		calls = slices.DeleteFunc(calls, func(c gateway.CallInfo) bool { return c.Org != who.Org })
	}
	for i := range calls {
		// The gateway keeps numbers as digits; the API speaks E.164.
		calls[i].From, calls[i].To = e164(calls[i].From), e164(calls[i].To)
	}
	writeJSON(ctx, 200, map[string]any{"calls": calls})
	return nil
}

// endCall ends a call up as an admin (BYE to both legs, CDR "admin").
func (s *Server) endCall(ctx *fasthttp.RequestCtx, rq *request) error {
	if err := s.gw.EndCall(rq.arg("id")); err != nil {
		return err
	}
	rq.gone = true
	ctx.SetStatusCode(204)
	return nil
}
