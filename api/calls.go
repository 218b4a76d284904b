// Calls up now: list them (with their remaining paid time), end one.

package api

import "github.com/valyala/fasthttp"

func (s *Server) listCalls(ctx *fasthttp.RequestCtx) error {
	calls := s.gw.Calls()
	for i := range calls {
		// The gateway keeps numbers as digits; the API speaks E.164.
		calls[i].From, calls[i].To = e164(calls[i].From), e164(calls[i].To)
	}
	writeJSON(ctx, 200, map[string]any{"calls": calls})
	return nil
}

// endCall ends a call up as an admin (BYE to both legs, CDR "admin").
func (s *Server) endCall(ctx *fasthttp.RequestCtx, id string) error {
	if err := s.gw.EndCall(id); err != nil {
		return err
	}
	ctx.SetStatusCode(204)
	return nil
}
