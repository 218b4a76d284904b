// The cluster-wide audit trail (cluster.go has the contract of every
// cluster-wide read): GET /v1/audit on any node merges this node's entries
// and every live peer's, each labelled with its node.
//
// Each node numbers its own entries (seq is its ledger's); the pages are
// merged and resumed as cluster_pages.go says, with one position per node
// in the cursor ("n1:412,n2:87"). Each node is asked for up to limit
// entries after its position (?scope=local&after=<seq>).

package api

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/valyala/fasthttp"
)

// nodeEntry is an audit entry with the node whose trail it is in.
type nodeEntry struct {
	ledger.AuditEntry
	Node string `json:"node,omitempty"`
}

// clusterAudit answers GET /v1/audit for the whole cluster: local is this
// node's page after its position in the cursor.
func (s *Server) clusterAudit(ctx *fasthttp.RequestCtx, f ledger.AuditFilter, cursor string, limit int) error {
	fo := s.cluster.Load()
	cur, err := parseCursor(cursor)
	if err != nil {
		return err
	}
	es, next, err := s.access.AuditEntries(f, cur[fo.self], limit)
	if err != nil {
		return err
	}
	sources := []pageSource[ledger.AuditEntry]{{node: fo.self, items: es, next: next}}
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
		sources = append(sources, pageSource[ledger.AuditEntry]{node: a.peer.Node, items: got.Entries, next: got.NextAfter})
	}
	entries := []nodeEntry{}
	more := mergePages(sources, cur, limit, auditPlace, func(node string, e ledger.AuditEntry) {
		entries = append(entries, nodeEntry{AuditEntry: e, Node: node})
	})
	resp := map[string]any{"entries": entries, "unavailable": unavailable}
	if more {
		resp["next_after"] = formatCursor(cur)
	}
	writeJSON(ctx, 200, resp)
	return nil
}

// auditPlace orders audit entries in a merge: by time, then seq.
func auditPlace(e ledger.AuditEntry) (time.Time, uint64) { return e.At, e.Seq }
