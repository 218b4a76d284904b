// The rate deck: replace it, and preview what a number would be priced at.

package api

import (
	"bytes"
	"strings"
	"time"

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

// getRate is the rate preview: what a number would be priced at
// (rating.Preview decides; this reads the query and writes the answer).
func (s *Server) getRate(ctx *fasthttp.RequestCtx) error {
	args := ctx.QueryArgs()
	number := string(args.Peek("number"))
	// An unencoded + in a query string arrives as a space (form
	// encoding): "?number=+44…" typed into curl. A space before digits can
	// only have been the number's +.
	if len(number) > 1 && number[0] == ' ' && number[1] >= '0' && number[1] <= '9' {
		number = "+" + number[1:]
	}
	orgID := string(args.Peek("org"))
	var terms *rating.OrgTerms
	if orgID != "" {
		org, err := s.ledger.Org(orgID)
		if err != nil {
			return err
		}
		terms = &rating.OrgTerms{Country: org.Country, BlockPremium: org.BlockPremium}
	} else if !strings.HasPrefix(number, "+") {
		return badRequest("number %q: without org=, give E.164 with a leading +", number)
	}
	q, err := rating.Preview(s.gw.Deck(), number, terms, s.now())
	if err != nil {
		return err
	}
	if q.Emergency {
		// What the gateway would do: connect it free, before any rating.
		writeJSON(ctx, 200, map[string]any{"number": number, "emergency": true, "first_charge": "0.00"})
		return nil
	}
	r := q.Rate
	out := map[string]any{
		"number": "+" + q.Number, "prefix": r.Prefix, "country": r.Country, "destination": r.Destination, "type": r.Type,
		"rate_per_minute": r.PerMinute.String(), "connection_fee": money(r.ConnectionFee),
		"first_increment": int(r.FirstIncrement / time.Second), "next_increment": int(r.NextIncrement / time.Second),
		"effective_from": r.EffectiveFrom, "first_charge": money(r.FirstCharge()),
	}
	if q.Scope != rating.ScopeNone {
		out["domestic"] = q.Scope == rating.ScopeDomestic
		out["scope"] = string(q.Scope)
	}
	writeJSON(ctx, 200, out)
	return nil
}
