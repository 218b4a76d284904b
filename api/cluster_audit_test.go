package api

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// auditPage is a cluster-wide GET /v1/audit answer.
type auditPage struct {
	Entries     []nodeEntry     `json:"entries"`
	NextAfter   json.RawMessage `json:"next_after"`
	Unavailable unavailableList `json:"unavailable"`
}

// TestClusterAuditThroughPeers: three real API servers, each with its own
// ledger (so its own audit trail and seq numbers), node a told b and c
// are its peers, and one peer nothing listens on. Paged through a with a
// small limit, the merged trail gives every entry of a, b and c exactly
// once, labelled with its node, each page in (at, node, seq) order, the
// dead peer named on every page; a filter applies on every node; the
// cursor of a cluster page is node:seq pairs and a plain seq is refused;
// the local-only form is the single-node answer.
func TestClusterAuditThroughPeers(t *testing.T) {
	a, b, c := setup(t), setup(t), setup(t)
	const timeout = 500 * time.Millisecond
	a.srv.SetPeers("a", staticPeers{{Node: "b", URL: b.base}, {Node: "c", URL: c.base}, {Node: "dead", URL: deadPeer(t)}}, timeout)
	// More entries on each, interleaved in time.
	for i := 0; i < 5; i++ {
		for j, h := range []*harness{a, b, c} {
			h.mustDo("PUT", fmt.Sprintf("/v1/orgs/acme/users/u%d%d", j, i), `{"numbers":[],"licenses":["communications_credits"]}`, 200)
		}
	}
	want := map[string]int{}
	for node, h := range map[string]*harness{"a": a, "b": b, "c": c} {
		es, _, err := h.ledger.AuditEntries(ledger.AuditFilter{}, 0, 1000)
		must(t, err)
		for _, e := range es {
			want[fmt.Sprintf("%s/%d", node, e.Seq)]++
		}
	}

	seen := map[string]int{}
	after, pages := "", 0
	for {
		path := "/v1/audit?limit=4"
		if after != "" {
			path += "&after=" + url.QueryEscape(after)
		}
		var p auditPage
		must(t, json.Unmarshal(a.mustDo("GET", path, "", 200).body, &p))
		pages++
		if p.Unavailable.nodes() != "dead" {
			t.Fatalf("page %d: unavailable %+v, want the dead peer", pages, p.Unavailable)
		}
		for i, e := range p.Entries {
			seen[fmt.Sprintf("%s/%d", e.Node, e.Seq)]++
			if i > 0 && earlier(e.Node, e.At, e.Seq, p.Entries[i-1].Node, p.Entries[i-1].At, p.Entries[i-1].Seq) {
				t.Fatalf("page %d out of order at %d: %+v", pages, i, p.Entries)
			}
		}
		if len(p.NextAfter) == 0 {
			break
		}
		if err := json.Unmarshal(p.NextAfter, &after); err != nil || !strings.Contains(after, ":") {
			t.Fatalf("page %d: next_after %s is not a node:seq cursor", pages, p.NextAfter)
		}
		if pages > 100 {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("merged trail gave %d distinct entries over %d pages, the nodes hold %d", len(seen), pages, len(want))
	}
	for k, n := range want {
		if seen[k] != n {
			t.Fatalf("entry %s given %d times, want once (given: %v)", k, seen[k], seen)
		}
	}
	t.Logf("%d entries of 3 nodes over %d pages of 4", len(seen), pages)

	// A filter applies on every node.
	var users auditPage
	must(t, json.Unmarshal(a.mustDo("GET", "/v1/audit?kind=user", "", 200).body, &users))
	nodes := map[string]int{}
	for _, e := range users.Entries {
		if e.Kind != "user" {
			t.Fatalf("kind=user gave %+v", e)
		}
		nodes[e.Node]++
	}
	if len(users.Entries) != 15 || nodes["a"] != 5 || nodes["b"] != 5 || nodes["c"] != 5 || len(users.NextAfter) != 0 {
		t.Fatalf("kind=user: %d entries by node %v, next %s; want 5 of each, no more", len(users.Entries), nodes, users.NextAfter)
	}

	// A plain seq is a single node's cursor: refused in cluster mode.
	if r := a.do("GET", "/v1/audit?after=12", ""); r.status != 422 {
		t.Fatalf("after=12 in cluster mode: %d %s", r.status, r.body)
	}
	// The local-only form is the single-node answer.
	var own map[string]json.RawMessage
	must(t, json.Unmarshal(b.mustDo("GET", "/v1/audit?scope=local&limit=2", "", 200).body, &own))
	if _, ok := own["unavailable"]; ok || string(own["next_after"]) == "" || strings.Contains(string(own["entries"]), `"node"`) {
		t.Fatalf("b's local trail: %v", own)
	}
}

// TestMergeAuditPagesEveryEntryOnce: nodes' journals with random times, a
// filter, and a scan bound as the ledger's (a node's page may stop after
// few matches, or none, with more to read), paged with random limits.
// Every matching entry of every node is given exactly once and each page
// is in merged order.
func TestMergeAuditPagesEveryEntryOnce(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0))
		t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
		type journal struct {
			node    string
			entries []ledger.AuditEntry // seq order, gaps in seq
			match   map[uint64]bool
		}
		var js []journal
		total := 0
		for n := 0; n < 1+rng.IntN(4); n++ {
			j := journal{node: fmt.Sprintf("n%d", n+1), match: map[uint64]bool{}}
			seq, at := uint64(0), t0
			for i := 0; i < rng.IntN(40); i++ {
				seq += 1 + uint64(rng.IntN(3))
				at = at.Add(time.Duration(rng.IntN(3)) * time.Second) // equal times too
				j.entries = append(j.entries, ledger.AuditEntry{Seq: seq, At: at})
				if rng.IntN(3) > 0 {
					j.match[seq] = true
					total++
				}
			}
			js = append(js, j)
		}
		// page is AuditEntries: after, limit, and at most scan entries read.
		scan := 1 + rng.IntN(6)
		page := func(j journal, after uint64, limit int) ([]ledger.AuditEntry, uint64) {
			var out []ledger.AuditEntry
			read := 0
			for i, e := range j.entries {
				if e.Seq <= after {
					continue
				}
				read++
				if j.match[e.Seq] {
					out = append(out, e)
				}
				if len(out) == limit || read == scan {
					if i+1 < len(j.entries) {
						return out, e.Seq
					}
					return out, 0
				}
			}
			return out, 0
		}
		cur := map[string]uint64{}
		seen := map[string]int{}
		for pages := 0; ; pages++ {
			if pages > 10_000 {
				t.Fatalf("seed %d: paging does not end", seed)
			}
			limit := 1 + rng.IntN(5)
			var srcs []pageSource[ledger.AuditEntry]
			for _, j := range js {
				es, next := page(j, cur[j.node], limit)
				srcs = append(srcs, pageSource[ledger.AuditEntry]{node: j.node, items: es, next: next})
			}
			var out []nodeEntry
			more := mergePages(srcs, cur, limit, auditPlace, func(node string, e ledger.AuditEntry) {
				out = append(out, nodeEntry{AuditEntry: e, Node: node})
			})
			if len(out) > limit {
				t.Fatalf("seed %d: %d entries for limit %d", seed, len(out), limit)
			}
			for i, e := range out {
				seen[fmt.Sprintf("%s/%d", e.Node, e.Seq)]++
				if i > 0 && earlier(e.Node, e.At, e.Seq, out[i-1].Node, out[i-1].At, out[i-1].Seq) {
					t.Fatalf("seed %d: page out of order: %+v", seed, out)
				}
			}
			// The cursor survives its text form.
			back, err := parseCursor(formatCursor(cur))
			must(t, err)
			cur = back
			if !more {
				break
			}
		}
		if len(seen) != total {
			t.Fatalf("seed %d: %d distinct entries given, %d match", seed, len(seen), total)
		}
		for k, n := range seen {
			if n != 1 {
				t.Fatalf("seed %d: %s given %d times", seed, k, n)
			}
		}
	}
}
