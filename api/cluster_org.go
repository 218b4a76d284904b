// The cluster-wide org (cluster.go has the contract of every cluster-wide
// read): GET /v1/orgs/{org} on any node answers the cluster's money.
//
//	balance    the node's books, the account read from etcd now
//	           (cluster.Books.OrgNow: etcd's funded − spent, less this
//	           node's unreported spend; every node's is the same figure up
//	           to a report interval of the others' spend)
//	held       Σ of every live node's held (money is held only in a
//	           node's own ledger, for its own calls)
//	available  balance − held
//	pools      total and used from the node's books (cluster.Books.Pools:
//	           etcd's pool records, which count every node's minutes once,
//	           a dead node's included); held Σ of every live node's held
//	           minutes; available = total − used − held
//	forecast   the advisor over the whole cluster's CDRs: each node's
//	           inputs (its spend per day of one window, ending at the
//	           asking node's now) summed, then one computation
//	           (ledger.AdviceInputs: the per-day spend adds up, the 95th
//	           percentile day and the suggestions do not)
//
// Held money and minutes and CDRs live only on the node that has the
// calls, so each live peer is asked for its own view (?scope=local, with
// ?advice_at= when the forecast is to be computed); a peer that does not
// answer is named in "unavailable" and "partial" is true: the held figures
// and the forecast then lack its part (its held money is still out of the
// balance's available on that node). The cluster's forecast is kept
// adviceTTL like a single node's, only when no node was missing.

package api

import (
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
	"github.com/valyala/fasthttp"
)

// adviceSource computes funding advice from inputs that add up across
// ledgers (*ledger.Ledger, cluster.Books).
type adviceSource interface {
	AdviceInputs(org string, now time.Time) (ledger.AdviceInputs, error)
	AdviceFrom(in ledger.AdviceInputs, available decimal.Decimal) ledger.Advice
}

// orgNow reads an org with its balance read from the money of record
// now (cluster.Books.OrgNow); books without it answer Org.
type orgNow interface {
	OrgNow(id string) (ledger.Org, error)
}

// freshOrg is the org for the org's GET in cluster mode.
func (s *Server) freshOrg(id string) (ledger.Org, error) {
	if b, ok := s.ledger.(orgNow); ok {
		return b.OrgNow(id)
	}
	return s.ledger.Org(id)
}

// clusterAdviceKey is the advice cache's key of an org's cluster-wide
// advice, beside the node's own (the org id): ids have no NUL.
func clusterAdviceKey(org string) string { return org + "\x00cluster" }

// getOrg answers GET /v1/orgs/{org}: in cluster mode the cluster's, or the
// node's own view with ?scope=local.
func (s *Server) getOrg(ctx *fasthttp.RequestCtx, id string) error {
	f := s.cluster.Load()
	local, err := localOnly(ctx)
	if err != nil {
		return err
	}
	adviceAt, err := adviceAtArg(ctx, f != nil && local)
	if err != nil {
		return err
	}
	if f == nil {
		return s.writeOrgByID(ctx, 200, id, nil)
	}
	if local {
		return s.localOrg(ctx, f, id, adviceAt)
	}
	return s.clusterOrg(ctx, f, id)
}

// adviceAtArg reads ?advice_at= (RFC 3339), which only a node's own view
// in cluster mode takes: the end of the window of its forecast inputs.
func adviceAtArg(ctx *fasthttp.RequestCtx, allowed bool) (time.Time, error) {
	v := string(ctx.QueryArgs().Peek("advice_at"))
	if v == "" {
		return time.Time{}, nil
	}
	if !allowed {
		return time.Time{}, badRequest("advice_at: only with scope=local in cluster mode (what a node asks its peers)")
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, badRequest("advice_at=%q: want an RFC 3339 time", v)
	}
	return t, nil
}

// localOrg is the node's own view, labelled with the node, with its
// forecast inputs for the window that ends at adviceAt if given.
func (s *Server) localOrg(ctx *fasthttp.RequestCtx, f *fanOut, id string, adviceAt time.Time) error {
	o, err := s.freshOrg(id)
	if err != nil {
		return err
	}
	if adviceAt.IsZero() {
		v, err := s.viewOrg(o)
		if err != nil {
			return err
		}
		v.Node = f.self
		writeJSON(ctx, 200, v)
		return nil
	}
	src, ok := s.ledger.(adviceSource)
	if !ok {
		return fmt.Errorf("%w: this node's books cannot give forecast inputs", ledger.ErrUnavailable)
	}
	v, err := s.viewOrgFacts(o)
	if err != nil {
		return err
	}
	in, err := src.AdviceInputs(id, adviceAt)
	if err != nil {
		return err
	}
	// The node's own forecast from the same read of its CDRs.
	v.Node, v.AdviceInputs, v.Forecast = f.self, &in, s.viewForecast(src.AdviceFrom(in, o.Available()), o.Available())
	writeJSON(ctx, 200, v)
	return nil
}

// peerOrg is what the cluster's view reads of a peer's own view.
type peerOrg struct {
	Held  string `json:"held"`
	Pools []struct {
		Plan  string `json:"plan"`
		Month string `json:"month"`
		Held  int    `json:"held"`
	} `json:"pools"`
	AdviceInputs *ledger.AdviceInputs `json:"advice_inputs"`
}

// clusterOrg answers with the cluster's view of the org.
func (s *Server) clusterOrg(ctx *fasthttp.RequestCtx, f *fanOut, id string) error {
	o, err := s.freshOrg(id)
	if err != nil {
		return err
	}
	v, err := s.viewOrgFacts(o)
	if err != nil {
		return err
	}
	now := s.now()
	src, canAdd := s.ledger.(adviceSource)
	cached, fresh := s.cachedAdvice(clusterAdviceKey(id), now)
	var inputs ledger.AdviceInputs
	q := url.Values{}
	if canAdd && !fresh {
		if inputs, err = src.AdviceInputs(id, now); err != nil {
			s.log.Warn("funding advice unavailable", "org", id, "err", err)
			canAdd = false
		} else {
			// Every peer's window ends where this node's does.
			q.Set("advice_at", inputs.At.Format(time.RFC3339Nano))
		}
	}
	unavailable := []Unavailable{}
	answers, listErr := s.askPeers(ctx, "GET", "/v1/orgs/"+url.PathEscape(id), q)
	if listErr != nil {
		unavailable = append(unavailable, Unavailable{Node: "*", Error: "listing the peers: " + listErr.Error()})
	}
	held := o.Held
	poolHeld := map[string]int{}
	for _, a := range answers {
		var got peerOrg
		if a.err == nil && a.status == 200 {
			a.err = readPeerOrg(a.body, &got, q.Has("advice_at"), inputs)
		}
		if a.err != nil || a.status != 200 {
			unavailable = append(unavailable, Unavailable{Node: a.peer.Node, Error: a.reason()})
			continue
		}
		h, _ := decimal.NewFromString(got.Held) // checked by readPeerOrg
		held = held.Add(h)
		for _, p := range got.Pools {
			poolHeld[p.Plan+"\x00"+p.Month] += p.Held
		}
		if got.AdviceInputs != nil {
			inputs, _ = inputs.Add(*got.AdviceInputs) // checked by readPeerOrg
		}
	}
	o.Held = held
	v.Held, v.Available = money(held), money(o.Available())
	for i := range v.Pools {
		p := &v.Pools[i]
		p.Held += poolHeld[p.Plan+"\x00"+p.Month]
		p.Available = p.Total - p.Used - p.Held
	}
	partial := len(unavailable) > 0
	v.Partial, v.Unavailable = &partial, &unavailable
	switch {
	case fresh:
		v.Forecast = s.viewForecast(cached, o.Available())
	case canAdd:
		a := src.AdviceFrom(inputs, o.Available())
		if !partial {
			s.keepAdvice(clusterAdviceKey(id), a)
		}
		v.Forecast = s.viewForecast(a, o.Available())
	}
	writeJSON(ctx, 200, v)
	return nil
}

// readPeerOrg decodes a peer's own view and checks what the cluster's
// adds of it: its held money, and its forecast inputs (when asked: want)
// over the window of mine.
func readPeerOrg(body []byte, got *peerOrg, want bool, mine ledger.AdviceInputs) error {
	if err := json.Unmarshal(body, got); err != nil {
		return fmt.Errorf("unreadable answer: %w", err)
	}
	if _, err := decimal.NewFromString(got.Held); err != nil {
		return fmt.Errorf("unreadable answer: held %q", got.Held)
	}
	switch {
	case want && got.AdviceInputs == nil:
		return fmt.Errorf("its answer has no forecast inputs")
	case want:
		if _, err := mine.Add(*got.AdviceInputs); err != nil {
			return fmt.Errorf("its forecast inputs: %w", err)
		}
	}
	return nil
}
