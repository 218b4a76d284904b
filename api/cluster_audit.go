// The cluster-wide audit trail (cluster.go has the contract of every
// cluster-wide read): GET /v1/audit on any node merges this node's entries
// and every live peer's, each labelled with its node.
//
// Each node numbers its own entries (seq is its ledger's), so a page of
// the merged trail is resumed with one position per node: the cursor
// "n1:412,n2:87" (node ids query-escaped, comma-separated) says that
// node n1's entries up to seq 412 and n2's up to 87 were given; a node it
// does not name starts from its first entry. next_after is such a cursor
// while any node has more. Within a page entries are merged by time (at,
// then node, then seq), each node's in its own seq order; so every entry
// of every node that answered is given exactly once over the pages, and
// the page order is by time except across a page break (a node's next
// entries may be older than the previous page's last).
//
// Each node is asked for up to limit entries after its position
// (?scope=local&after=<seq>); a page stops after limit entries, or where a
// node that has more ran out of what it sent (so the merge never skips
// past one of its entries). A node that does not answer is named in
// "unavailable" and keeps its position in next_after, so its entries are
// given on a later page once it is back.

package api

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// nodeEntry is an audit entry with the node whose trail it is in.
type nodeEntry struct {
	ledger.AuditEntry
	Node string `json:"node,omitempty"`
}

// maxCursorNodes bounds the positions one cursor may carry.
const maxCursorNodes = 1000

// parseAuditCursor reads a cluster cursor: "node:seq" pairs, comma-separated.
func parseAuditCursor(v string) (map[string]uint64, error) {
	cur := map[string]uint64{}
	if v == "" {
		return cur, nil
	}
	parts := strings.Split(v, ",")
	if len(parts) > maxCursorNodes {
		return nil, badRequest("after: at most %d nodes", maxCursorNodes)
	}
	for _, p := range parts {
		n, s, ok := strings.Cut(p, ":")
		node, err := url.QueryUnescape(n)
		if !ok || err != nil || node == "" {
			return nil, badRequest("after=%q: in cluster mode, the next_after of the previous page (node:seq,…)", v)
		}
		seq, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, badRequest("after=%q: %q is not a seq", v, s)
		}
		cur[node] = seq
	}
	return cur, nil
}

// formatAuditCursor writes a cursor, nodes in order.
func formatAuditCursor(cur map[string]uint64) string {
	nodes := make([]string, 0, len(cur))
	for n := range cur {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	var b strings.Builder
	for i, n := range nodes {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(url.QueryEscape(n))
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(cur[n], 10))
	}
	return b.String()
}

// auditSource is one node's page: its entries in seq order, and next, its
// cursor when it has more (0: none).
type auditSource struct {
	node    string
	entries []ledger.AuditEntry
	next    uint64
}

// clusterAudit answers GET /v1/audit for the whole cluster: local is this
// node's page after its position in the cursor.
func (s *Server) clusterAudit(ctx *fasthttp.RequestCtx, f ledger.AuditFilter, cursor string, limit int) error {
	fo := s.cluster.Load()
	cur, err := parseAuditCursor(cursor)
	if err != nil {
		return err
	}
	es, next, err := s.access.AuditEntries(f, cur[fo.self], limit)
	if err != nil {
		return err
	}
	sources := []auditSource{{node: fo.self, entries: es, next: next}}
	unavailable := []Unavailable{}
	// Each peer is asked from its own position, so one request per peer.
	answers, listErr := s.askPeersEach(ctx, "GET", "/v1/audit", func(p Peer) url.Values {
		q := url.Values{"limit": {strconv.Itoa(limit)}, "after": {strconv.FormatUint(cur[p.Node], 10)}}
		for k, v := range map[string]string{"org": f.Org, "kind": f.Kind, "key": f.KeyID} {
			if v != "" {
				q.Set(k, v)
			}
		}
		return q
	})
	if listErr != nil {
		unavailable = append(unavailable, Unavailable{Node: "*", Error: "listing the peers: " + listErr.Error()})
	}
	for _, a := range answers {
		var got struct {
			Entries   []ledger.AuditEntry `json:"entries"`
			NextAfter uint64              `json:"next_after"`
		}
		if a.err == nil && a.status == 200 {
			if err := json.Unmarshal(a.body, &got); err != nil {
				a.err = fmt.Errorf("unreadable answer: %w", err)
			}
		}
		if a.err != nil || a.status != 200 {
			unavailable = append(unavailable, Unavailable{Node: a.peer.Node, Error: a.reason()})
			continue
		}
		sources = append(sources, auditSource{node: a.peer.Node, entries: got.Entries, next: got.NextAfter})
	}
	entries, more := mergeAudit(sources, cur, limit)
	resp := map[string]any{"entries": entries, "unavailable": unavailable}
	if more {
		resp["next_after"] = formatAuditCursor(cur)
	}
	writeJSON(ctx, 200, resp)
	return nil
}

// mergeAudit takes up to limit entries from the sources by (at, node,
// seq), each source in its own order, and moves cur to what was taken. It
// stops early where a source that has more ran out of entries (its
// position moves to its next). more: some source has entries not given.
func mergeAudit(sources []auditSource, cur map[string]uint64, limit int) (out []nodeEntry, more bool) {
	out = []nodeEntry{}
	pos := make([]int, len(sources))
	for len(out) < limit {
		best := -1
		for i, src := range sources {
			if pos[i] == len(src.entries) {
				if src.next != 0 {
					// Its next entry is unknown and may be older than
					// any other's: the page ends here.
					cur[src.node] = max(cur[src.node], src.next)
					return out, true
				}
				continue
			}
			if best < 0 || earlier(src.node, src.entries[pos[i]], sources[best].node, sources[best].entries[pos[best]]) {
				best = i
			}
		}
		if best < 0 {
			return out, false
		}
		e := sources[best].entries[pos[best]]
		pos[best]++
		cur[sources[best].node] = e.Seq
		out = append(out, nodeEntry{AuditEntry: e, Node: sources[best].node})
	}
	for i, src := range sources {
		if pos[i] < len(src.entries) || src.next != 0 {
			return out, true
		}
	}
	return out, false
}

// earlier orders entries of the merged trail: by time, then node, then seq.
func earlier(na string, a ledger.AuditEntry, nb string, b ledger.AuditEntry) bool {
	if c := a.At.Compare(b.At); c != 0 {
		return c < 0
	}
	if na != nb {
		return na < nb
	}
	return a.Seq < b.Seq
}
