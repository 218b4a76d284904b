// An org's toll-free numbers: assign one (and the trunk that takes its
// calls) or take it away.

package api

import (
	"fmt"
	"strings"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/valyala/fasthttp"
)

// tollFreeNumber reads a toll-free number from a path segment ("+1800…" or
// digits) and refuses what the numbering plan does not call toll-free.
func tollFreeNumber(seg string) (string, error) {
	e164, err := rating.Normalize("+"+strings.TrimPrefix(seg, "+"), "")
	if err != nil {
		return "", err
	}
	if !rating.IsTollFree(e164) {
		return "", badRequest("+%s is not a toll-free number by its country's numbering plan", e164)
	}
	return e164, nil
}

func (s *Server) putTollFree(ctx *fasthttp.RequestCtx, org, seg string) error {
	var req struct {
		Trunk string `json:"trunk"`
	}
	if len(ctx.PostBody()) > 0 {
		if err := decode(ctx, &req); err != nil {
			return err
		}
	}
	num, err := tollFreeNumber(seg)
	if err != nil {
		return err
	}
	if err := s.ledger.PutTollFree(ledger.TollFree{Number: num, Org: org, Trunk: req.Trunk}); err != nil {
		return err
	}
	writeJSON(ctx, 200, map[string]any{"number": "+" + num, "org": org, "trunk": req.Trunk})
	return nil
}

func (s *Server) deleteTollFree(ctx *fasthttp.RequestCtx, org, seg string) error {
	num, err := tollFreeNumber(seg)
	if err != nil {
		return err
	}
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	found, err := s.ledger.DeleteTollFree(org, num)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: +%s is not a toll-free number of %s", errNotFound, num, org)
	}
	ctx.SetStatusCode(204)
	return nil
}
