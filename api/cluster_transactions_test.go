package api

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strconv"
	"testing"
	"time"
)

type txPage struct {
	Transactions []struct {
		Seq    uint64
		At     time.Time
		Kind   string
		Amount string
		Node   string
	}
	NextAfter   json.RawMessage `json:"next_after"`
	Unavailable unavailableList
}

// TestClusterTransactionsPageEveryEntryOnce: three real API servers over
// their own ledgers, each with fundings and calls of its own (random
// counts), and a dead peer. Paging node a's merged transactions with
// random limits gives every entry of every node's own list exactly once,
// labelled with its node, each node's in its own order (here not the
// time order: the calls' debits are dated at their increments, hours
// before the fundings made after them), the dead peer named on every page;
// the cursor is refused when it is not one.
func TestClusterTransactionsPageEveryEntryOnce(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 3))
	hs := map[string]*harness{"a": setup(t), "b": setup(t), "c": setup(t)}
	base := time.Now().UTC().Add(-2 * time.Hour)
	n := 0
	for _, name := range []string{"a", "b", "c", "b", "c", "a", "c"} {
		h := hs[name]
		h.mustDo("PUT", "/v1/orgs/acme/users/alice", `{"numbers":["+12125550100"],"licenses":["communications_credits"]}`, 200)
		for range rng.IntN(4) {
			n++
			endedCall(t, h, fmt.Sprintf("call-%d", n), base.Add(time.Duration(n)*time.Minute))
		}
		for range rng.IntN(3) {
			n++
			h.mustDo("POST", "/v1/orgs/acme/credits", fmt.Sprintf(`{"amount":"50.00","idempotency_key":"f%d"}`, n), 201)
		}
	}
	const timeout = 2 * time.Second
	hs["a"].srv.SetPeers("a", staticPeers{{Node: "b", URL: hs["b"].base}, {Node: "c", URL: hs["c"].base},
		{Node: "dead", URL: deadPeer(t)}}, timeout)
	for _, name := range []string{"b", "c"} {
		hs[name].srv.SetPeers(name, staticPeers{{Node: "a", URL: hs["a"].base}}, timeout)
	}
	want := map[string]bool{}
	for name, h := range hs {
		var own txPage
		must(t, json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme/transactions?scope=local&limit=10000", "", 200).body, &own))
		if own.NextAfter != nil || own.Unavailable != nil {
			t.Fatalf("%s's own list: %s", name, own.NextAfter)
		}
		for _, e := range own.Transactions {
			want[fmt.Sprintf("%s/%d", name, e.Seq)] = true
		}
	}
	for pass := 0; pass < 20; pass++ {
		seen := map[string]int{}
		last := map[string]uint64{}
		cursor := ""
		pages := 0
		for ; ; pages++ {
			if pages > 1000 {
				t.Fatal("paging does not end")
			}
			limit := 1 + rng.IntN(6)
			path := "/v1/orgs/acme/transactions?limit=" + strconv.Itoa(limit)
			if cursor != "" {
				path += "&after=" + url.QueryEscape(cursor)
			}
			var p txPage
			must(t, json.Unmarshal(hs["a"].mustDo("GET", path, "", 200).body, &p))
			if len(p.Transactions) > limit || p.Unavailable.nodes() != "dead" {
				t.Fatalf("page %d: %d entries for limit %d, unavailable %v", pages, len(p.Transactions), limit, p.Unavailable)
			}
			for _, e := range p.Transactions {
				seen[fmt.Sprintf("%s/%d", e.Node, e.Seq)]++
				if e.Seq <= last[e.Node] {
					t.Fatalf("page %d: %s's seq %d after %d", pages, e.Node, e.Seq, last[e.Node])
				}
				last[e.Node] = e.Seq
			}
			if p.NextAfter == nil {
				break
			}
			must(t, json.Unmarshal(p.NextAfter, &cursor))
		}
		if len(seen) != len(want) {
			t.Fatalf("pass %d: %d distinct entries over %d pages, want %d", pass, len(seen), pages, len(want))
		}
		for k, c := range seen {
			if c != 1 || !want[k] {
				t.Fatalf("pass %d: %s given %d times (in a node's own list: %v)", pass, k, c, want[k])
			}
		}
		if pass == 0 {
			t.Logf("%d entries on 3 nodes (%d calls and fundings made), %d pages", len(want), n, pages)
		}
	}
	for _, bad := range []string{"a", "a:x", ":3"} {
		if r := hs["a"].do("GET", "/v1/orgs/acme/transactions?after="+url.QueryEscape(bad), ""); r.status != 422 {
			t.Fatalf("after=%q: %d %s", bad, r.status, r.body)
		}
	}
}
