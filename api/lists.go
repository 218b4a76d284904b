// Lists of orgs, an org's users, trunks and an org's toll-free numbers,
// paged by id: ?after=<the last id of the previous page>&limit=N (default
// 1000, at most 10000), next_after in the answer while more follow — the
// cursor style of transactions, with ids for sequence numbers.

package api

import (
	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// page cuts items (sorted by key) to those after the cursor, at most
// limit of them, and says the next cursor ("" at the end).
func page[T any](ctx *fasthttp.RequestCtx, items []T, key func(T) string) ([]T, map[string]any, error) {
	limit, err := uintArg(ctx, "limit", 1000, 10000)
	if err != nil {
		return nil, nil, err
	}
	if limit == 0 {
		return nil, nil, badRequest("limit=0: want 1 to 10000")
	}
	after := string(ctx.QueryArgs().Peek("after"))
	i := 0
	for i < len(items) && after != "" && key(items[i]) <= after {
		i++
	}
	items = items[i:]
	resp := map[string]any{}
	if uint64(len(items)) > limit {
		items = items[:limit]
		resp["next_after"] = key(items[len(items)-1])
	}
	return items, resp, nil
}

// orgSummary is an org in a list: who it is and its money, without the
// per-org work of GET /v1/orgs/{org} (pools, forecast).
type orgSummary struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Country   string `json:"country"`
	Region    string `json:"region"`
	Currency  string `json:"currency"`
	Balance   string `json:"balance"`
	Available string `json:"available"`
	Held      string `json:"held"`
}

// listOrgs lists every org to an operator, its own to an org-scoped key.
func (s *Server) listOrgs(ctx *fasthttp.RequestCtx, who principal) error {
	all := s.ledger.OrgIDs()
	if who.Role.OrgScoped() {
		all = nil
		if _, err := s.ledger.Org(who.Org); err == nil {
			all = []string{who.Org}
		}
	}
	ids, resp, err := page(ctx, all, func(id string) string { return id })
	if err != nil {
		return err
	}
	out := make([]orgSummary, 0, len(ids))
	for _, id := range ids {
		o, err := s.ledger.Org(id)
		if err != nil {
			continue // deleted meanwhile
		}
		out = append(out, orgSummary{ID: o.ID, Name: o.Name, Country: o.Country, Region: o.Region, Currency: o.Currency,
			Balance: money(o.Balance), Available: money(o.Available()), Held: money(o.Held)})
	}
	resp["orgs"] = out
	writeJSON(ctx, 200, resp)
	return nil
}

func (s *Server) listUsers(ctx *fasthttp.RequestCtx, org string) error {
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	users, resp, err := page(ctx, s.ledger.UsersOf(org), func(u ledger.User) string { return u.ID })
	if err != nil {
		return err
	}
	out := make([]ledger.User, 0, len(users))
	for _, u := range users {
		out = append(out, viewUser(u))
	}
	resp["users"] = out
	writeJSON(ctx, 200, resp)
	return nil
}

func (s *Server) listTrunks(ctx *fasthttp.RequestCtx) error {
	trunks, resp, err := page(ctx, s.ledger.Trunks(), func(t ledger.Trunk) string { return t.ID })
	if err != nil {
		return err
	}
	for i := range trunks {
		trunks[i].Password = "" // never shown back
	}
	if trunks == nil {
		trunks = []ledger.Trunk{}
	}
	resp["trunks"] = trunks
	writeJSON(ctx, 200, resp)
	return nil
}

func (s *Server) listTollFree(ctx *fasthttp.RequestCtx, org string) error {
	if _, err := s.ledger.Org(org); err != nil {
		return err
	}
	nums, resp, err := page(ctx, s.ledger.TollFreeNumbers(org), func(tf ledger.TollFree) string { return tf.Number })
	if err != nil {
		return err
	}
	out := make([]tollFree, 0, len(nums))
	for _, tf := range nums {
		out = append(out, tollFree{Number: "+" + tf.Number, Trunk: tf.Trunk})
	}
	resp["toll_free"] = out
	writeJSON(ctx, 200, resp)
	return nil
}
