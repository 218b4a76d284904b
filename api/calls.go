// Calls up now: list them (with their remaining paid time), end one.

package api

import (
	"github.com/valyala/fasthttp"
)

// listCalls lists the calls up: all of them to an operator, its own org's
// to an org-scoped key. In cluster mode, every live node's, unless
// ?scope=local (cluster.go).
func (s *Server) listCalls(ctx *fasthttp.RequestCtx, who principal) error {
	local, err := localOnly(ctx)
	if err != nil {
		return err
	}
	calls := s.localCalls(who)
	if s.cluster.Load() != nil && !local {
		return s.clusterCalls(ctx, calls)
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
