// The rate deck: replace it, and preview what a number would be priced at.

package api

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/valyala/fasthttp"
)

func (s *Server) putRates(ctx *fasthttp.RequestCtx) error {
	body := ctx.PostBody()
	deck, err := rating.ParseDeck(bytes.NewReader(body))
	if err != nil {
		return err
	}
	if err := s.ledger.PutDeck(body); err != nil {
		return err
	}
	s.gw.SetDeck(deck)
	s.log.Info("rate deck replaced", "rows", deck.Rows())
	writeJSON(ctx, 200, map[string]any{"rows": deck.Rows()})
	return nil
}

func (s *Server) getRate(ctx *fasthttp.RequestCtx) error {
	args := ctx.QueryArgs()
	number := string(args.Peek("number"))
	orgID := string(args.Peek("org"))
	country := ""
	var org ledger.Org
	if orgID != "" {
		var err error
		if org, err = s.ledger.Org(orgID); err != nil {
			return err
		}
		country = org.Country
	} else if !strings.HasPrefix(number, "+") {
		return badRequest("number %q: without org=, give E.164 with a leading +", number)
	}
	if orgID != "" && rating.IsEmergency(number, country) {
		// What the gateway would do: connect it free, before any rating.
		writeJSON(ctx, 200, map[string]any{"number": number, "emergency": true, "first_charge": "0.00"})
		return nil
	}
	e164, err := rating.Normalize(number, country)
	if err != nil {
		return err
	}
	r, ok := s.gw.Deck().Lookup(e164, s.now())
	if !ok {
		return fmt.Errorf("%w: +%s", rating.ErrNoRate, e164)
	}
	out := map[string]any{
		"number": "+" + e164, "prefix": r.Prefix, "country": r.Country, "destination": r.Destination, "type": r.Type,
		"rate_per_minute": r.PerMinute.String(), "connection_fee": money(r.ConnectionFee),
		"first_increment": int(r.FirstIncrement / time.Second), "next_increment": int(r.NextIncrement / time.Second),
		"effective_from": r.EffectiveFrom, "first_charge": money(r.FirstCharge()),
	}
	if orgID != "" {
		out["domestic"] = r.Country == org.Country
		out["scope"] = "international"
		if r.Country == org.Country {
			out["scope"] = "domestic"
		}
	}
	writeJSON(ctx, 200, out)
	return nil
}
