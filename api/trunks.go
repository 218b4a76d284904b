// Trunks: where calls come from and go to.

package api

import (
	"fmt"

	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

func (s *Server) putTrunk(ctx *fasthttp.RequestCtx, id string) error {
	var req struct {
		Kind      string   `json:"kind"`
		Org       string   `json:"org"`
		Addresses []string `json:"addresses"`
		URI       string   `json:"uri"`
		Prefixes  []string `json:"prefixes"`
		MaxCalls  int      `json:"max_calls"`
		Username  string   `json:"username"`
		Password  string   `json:"password"`
		// Liveness (README, No customer pays for a call nobody is
		// on): keepalive unset is on; 0 s is the configured limit.
		Keepalive        *bool `json:"keepalive"`
		MaxCallDurationS int   `json:"max_call_duration_s"`
	}
	if err := decode(ctx, &req); err != nil {
		return err
	}
	t := ledger.Trunk{ID: id, Kind: req.Kind, Org: req.Org, Addresses: req.Addresses, URI: req.URI,
		Prefixes: req.Prefixes, MaxCalls: req.MaxCalls, Username: req.Username, Password: req.Password,
		Keepalive: req.Keepalive, MaxCallDurationS: req.MaxCallDurationS}
	if err := gateway.ValidateTrunk(t); err != nil {
		return err
	}
	if t.Org != "" {
		if _, err := s.ledger.Org(t.Org); err != nil {
			return badRequest("trunk org %q does not exist", t.Org)
		}
	}
	if err := s.ledger.PutTrunk(t); err != nil {
		return err
	}
	s.gw.ReloadTrunks()
	t.Password = ""
	writeJSON(ctx, 200, t)
	return nil
}

// deleteTrunk removes a trunk; 409 in_use while a call came in on it or
// may go out on it, or while it delivers a toll-free number.
func (s *Server) deleteTrunk(ctx *fasthttp.RequestCtx, id string) error {
	if s.gw.TrunkInUse(id) {
		return fmt.Errorf("%w: trunk %s has calls up", ledger.ErrInUse, id)
	}
	found, err := s.ledger.DeleteTrunk(id)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: no trunk %s", errNotFound, id)
	}
	s.gw.ReloadTrunks()
	ctx.SetStatusCode(204)
	return nil
}
